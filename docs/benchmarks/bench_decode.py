"""Decode speed and file size: GPT-2 small (full-size config, random weights) ternary ONNX with bitconv.TernaryMatMul
vs the float32 ONNX export of the same converted model, with the key/value cache, same thread counts.

    PYTHONPATH=$PWD python docs/benchmarks/bench_decode.py [--new-tokens 32] [--repeats 5] [--threads 1 2]

Prints a Markdown table (medians of --repeats runs of greedy decoding; ratios within the same run) and the .onnx
sizes against the float16 size of the model (every parameter once, 2 bytes). Above 1 thread both models run with
the intra-op pool's idle workers busy-waiting (`spin`, ONNX Runtime's default) and sleeping (`no-spin`).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def decode_tokens_per_s(path: Path, threads: int, spin: bool | None, prompt: list[int], new_tokens: int,
                        repeats: int) -> float:
    from bitconv.ort.generate import OnnxDecoder

    decoder = OnnxDecoder(path, threads=threads, spin=spin)
    decoder.greedy(prompt, 2)  # warm-up: first-run allocations
    rates = []
    for _ in range(repeats):
        logits, past = decoder.step(np.array([prompt]), decoder.empty_cache())
        start = time.perf_counter()
        for _ in range(new_tokens):  # timed: one-token steps through the cache only
            token = int(np.argmax(logits[0, -1]))
            logits, past = decoder.step(np.array([[token]]), past)
        rates.append(new_tokens / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    import bitconv
    from bitconv.export.onnx import export_onnx

    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config())  # 124M parameters, the gpt2 (small) shape
        n_params = sum(p.numel() for p in model.parameters())  # the tied lm_head counted once
        model.save_pretrained(str(tmp / "src"))
        del model
        folder = bitconv.convert(str(tmp / "src"), str(tmp / "gpt2-1.58"), progress=False).out
        op = export_onnx(folder, tmp / "op" / "model.onnx", target="op")
        flt = export_onnx(folder, tmp / "float" / "model.onnx", target="float")
        fp16_bytes = 2 * n_params
        prompt = list(range(100, 108))
        print(f"parameters {n_params:,}; prompt {len(prompt)} tokens, {args.new_tokens} new tokens timed, "
              f"median of {args.repeats}")
        print("| threads | float32 ONNX tok/s | ternary op ONNX tok/s | op / float32 |")
        print("|---|---|---|---|")
        pools = []
        for threads in args.threads:
            pools += [("1", 1, None)] if threads == 1 else [(f"{threads} spin", threads, True),
                                                            (f"{threads} no-spin", threads, False)]
        for label, threads, spin in pools:
            rate_float = decode_tokens_per_s(flt.path, threads, spin, prompt, args.new_tokens, args.repeats)
            rate_op = decode_tokens_per_s(op.path, threads, spin, prompt, args.new_tokens, args.repeats)
            print(f"| {label} | {rate_float:.1f} | {rate_op:.1f} | {rate_op / rate_float:.2f}x |")
        print()
        print("| file | bytes | vs fp16 model |")
        print("|---|---|---|")
        print(f"| fp16 model (2 bytes x {n_params:,} parameters) | {fp16_bytes:,} | 100% |")
        for label, result in (("ternary op .onnx (fp16 embeddings)", op), ("float .onnx", flt)):
            print(f"| {label} | {result.n_bytes:,} | {100 * result.n_bytes / fp16_bytes:.1f}% |")


if __name__ == "__main__":
    main()
