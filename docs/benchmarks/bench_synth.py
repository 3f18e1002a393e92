"""Generation speed of `teacher:N` (bitconv.data.synth): `sample_batch`, the very loop teacher:N runs (the model
in bf16 on a GPU, transformers' preallocated cache, top-k 50 then top-p 0.95), for one batch of `--batch` whole
sequences of `--length` tokens, after a warm-up batch of 8-token sequences in the same decoder (`decode`). A second
path with each step compiled (`decode_compiled`, `teacher:N?compile=1`) measured 3x slower on one H200 and was
removed with the option (docs/benchmarks/recover.md).

    PYTHONPATH=. python docs/benchmarks/bench_synth.py --model SmolLM2-135M-Instruct.Q4_1.gguf \
        --batch 2048 --length 512 [--json synth.json]

Prints one JSON object; tokens/s counts the sampled tokens (the start token is given).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch

from bitconv.data.decode import HFDecoder
from bitconv.data.synth import SynthOptions, sample_batch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--device", default="cuda", help="cpu only checks the script")
    ap.add_argument("--json")
    args = ap.parse_args()
    device = torch.device(args.device)
    from transformers import AutoModelForCausalLM

    from bitconv.quantize.source import load_original

    model = load_original(args.model, model_class=AutoModelForCausalLM).eval()
    model = model.to(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    opts = SynthOptions(n_tokens=args.batch * args.length, length=args.length, batch=args.batch)
    start_id = 0 if model.config.bos_token_id is None else model.config.bos_token_id
    gen = torch.Generator(device=device).manual_seed(0)
    step = HFDecoder(model, args.length)
    sample_batch(model, start_id, args.batch, replace(opts, length=8), gen, device, step)  # warm-up
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    sample_batch(model, start_id, args.batch, opts, gen, device, step)
    sync(device)
    seconds = time.perf_counter() - start
    steps = args.length - 1
    row = {"path": "decode", "batch": args.batch, "steps": steps, "seconds": round(seconds, 3),
           "step_ms": round(1000 * seconds / steps, 2), "tokens_per_s": round(args.batch * steps / seconds),
           "peak_gpu_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 1) if device.type == "cuda" else None}
    print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"torch": torch.__version__, "device": torch.cuda.get_device_name(device)
                       if device.type == "cuda" else "cpu", "args": vars(args), "results": [row]}, fh, indent=1)


if __name__ == "__main__":
    main()
