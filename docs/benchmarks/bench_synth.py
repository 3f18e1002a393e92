"""Generation speed of `teacher:N` (bitconv.data.synth): transformers' own cache (`HFDecoder`, the generic path)
against the Llama-family decoder (`KVDecoder`), same model (bf16 on a GPU, as `teacher:N` runs it), batch and
sampler (top-k 50, top-p 0.95).

    PYTHONPATH=. python docs/benchmarks/bench_synth.py --model SmolLM2-135M-Instruct.Q4_1.gguf \
        --batch 2048 --length 512 --steps 64 [--json synth.json]

Each path decodes `--steps` steps from the start token after one warm-up step (`generic`, `fast`). A step of
the generic path attends over the static cache's whole `--length` wherever it is; a step of the fast path only
over the positions so far, so the fast path also decodes one whole `--length` sequence batch (`fast_full`: the
rate `teacher:N` gets). `agreement` feeds the generic path's tokens for 8 of the sequences to the fast path and
prints the largest logit difference over the `--steps` steps (bf16 rounding only, if the two compute the same
model). One JSON object per line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bitconv.data.decode import HFDecoder, KVDecoder
from bitconv.data.synth import SynthOptions, sample_next


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode(step, ids: torch.Tensor, steps: int, opts: SynthOptions, device: torch.device,
           keep_rows: int = 0) -> tuple[float, list]:
    """Seconds for steps 1..steps (step 0 warms up), writing sampled tokens into `ids`; the logits of the first
    `keep_rows` sequences at every step."""
    gen = torch.Generator(device=device).manual_seed(0)
    kept = []
    for t in range(steps + 1):
        if t == 1:
            sync(device)
            start = time.perf_counter()
        logits = step(ids[:, t], t)
        if keep_rows:
            kept.append(logits[:keep_rows].float().cpu())
        ids[:, t + 1] = sample_next(logits, opts, gen)
    sync(device)
    return time.perf_counter() - start, kept


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
    rows = []
    with torch.no_grad():
        ids = torch.full((args.batch, args.length), start_id, dtype=torch.long, device=device)
        check_rows = min(8, args.batch)
        generic_seconds, generic_logits = decode(HFDecoder(model, args.length), ids, steps, opts, device,
                                                 keep_rows=check_rows)
        rows.append(report("generic", generic_seconds, steps, args.batch, device))
        teacher_ids = ids[:check_rows].clone()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        fast_seconds, _ = decode(KVDecoder(model, args.batch, args.length), ids, steps, opts, device)
        rows.append(report("fast", fast_seconds, steps, args.batch, device,
                           speedup=round(generic_seconds / fast_seconds, 2)))
        full_seconds, _ = decode(KVDecoder(model, args.batch, args.length), ids, args.length - 2, opts, device)
        rows.append(report("fast_full", full_seconds, args.length - 2, args.batch, device))
        check = KVDecoder(model, check_rows, args.length)
        diff = max(float((check(teacher_ids[:, t], t).float().cpu() - generic_logits[t]).abs().max())
                   for t in range(steps + 1))
        scale = max(float(g.abs().max()) for g in generic_logits)
        rows.append({"path": "agreement", "max_abs_logit_diff": round(diff, 4), "max_abs_logit": round(scale, 2)})
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"torch": torch.__version__, "device": torch.cuda.get_device_name(device)
                       if device.type == "cuda" else "cpu", "args": vars(args), "results": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
