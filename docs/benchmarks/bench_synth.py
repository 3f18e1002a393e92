"""Generation speed of `teacher:N` (bitconv.data.synth): the model (bf16 on a GPU, as `teacher:N` runs it) decoding
through transformers' preallocated cache (bitconv.data.decode.HFDecoder) with the sampler of teacher:N (top-k 50,
then top-p 0.95), `--batch` sequences at once.

    PYTHONPATH=. python docs/benchmarks/bench_synth.py --model SmolLM2-135M-Instruct.Q4_1.gguf \
        --batch 2048 --length 512 --steps 64 [--json synth.json]

Times `--steps` steps from the start token after one warm-up step. The cache is preallocated for `--length`
positions and every step attends over all of them, so a step costs the same wherever it is in the sequence.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bitconv.data.decode import HFDecoder
from bitconv.data.synth import SynthOptions, sample_next


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode(step, ids: torch.Tensor, steps: int, opts: SynthOptions, device: torch.device) -> float:
    """Seconds for steps 1..steps (step 0 warms up), writing sampled tokens into `ids`."""
    gen = torch.Generator(device=device).manual_seed(0)
    for t in range(steps + 1):
        if t == 1:
            sync(device)
            start = time.perf_counter()
        logits = step(ids[:, t], t)
        ids[:, t + 1] = sample_next(logits, opts, gen)
    sync(device)
    return time.perf_counter() - start


def report(path: str, seconds: float, steps: int, batch: int, device: torch.device, **extra) -> dict:
    row = {"path": path, "batch": batch, "steps": steps, "seconds": round(seconds, 3),
           "step_ms": round(1000 * seconds / steps, 2), "tokens_per_s": round(batch * steps / seconds),
           "peak_gpu_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 1) if device.type == "cuda" else None,
           **extra}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--device", default="cuda", help="cpu only checks the script")
    ap.add_argument("--json")
    args = ap.parse_args()
    device = torch.device(args.device)
    from transformers import AutoModelForCausalLM

    from bitconv.quantize.source import load_original

    model = load_original(args.model, model_class=AutoModelForCausalLM).eval()
    model = model.to(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    opts = SynthOptions(n_tokens=args.batch * args.length, length=args.length, batch=args.batch)
    steps = min(args.steps, args.length - 2)
    start_id = 0 if model.config.bos_token_id is None else model.config.bos_token_id
    with torch.no_grad():
        ids = torch.full((args.batch, args.length), start_id, dtype=torch.long, device=device)
        seconds = decode(HFDecoder(model, args.length), ids, steps, opts, device)
        rows = [report("decode", seconds, steps, args.batch, device)]
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"torch": torch.__version__, "device": torch.cuda.get_device_name(device)
                       if device.type == "cuda" else "cpu", "args": vars(args), "results": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
