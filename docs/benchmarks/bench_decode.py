"""Where a decoded token's time goes: ONNX Runtime's profile of greedy decoding through an exported decoder.

    PYTHONPATH=$PWD python docs/benchmarks/bench_decode.py [--onnx A.onnx B.onnx ...] [--threads 1] [--tokens 32]

Without --onnx it builds GPT-2 small (the full-size config, random weights, seed 0), converts it with bitconv's
defaults and exports it with target op. For every model: the prompt (8 tokens) is run once, then --tokens
one-token steps through the key/value cache exactly as `bitconv generate` runs them (bitconv.ort.generate:
the cache updated in place where the graph allows it, else fed back as arrays), once with ONNX Runtime's
profiler on and once off. Printed per model, per token (medians over the steps):
  - the wall time of a step without the profiler (what a user gets) and with it;
  - the graph's node executions per token and the time inside each op type's kernels;
  - the runtime outside the kernels (model_run minus the kernels: scheduling, allocation, input/output
    handling) and Python outside session.run (feeds, bindings, argmax): wall minus model_run.
Give several --onnx files (e.g. an export by an older bitconv) to compare them in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

PROMPT = list(range(100, 108))
PRODUCT_OPS = ("TernaryMatMul", "MatMulNBits", "Int8MatMul", "HalfMatMul", "MatMul", "Gemm", "FusedMatMul")


def _decoder(path: Path, threads: int, profile_dir: Path | None):
    from onnxruntime import InferenceSession

    from bitconv import ort as bort
    from bitconv.ort.generate import OnnxDecoder

    options = bort.session_options(threads, spin=False if threads > 1 else None)
    if profile_dir is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_dir / path.stem)
    session = InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return OnnxDecoder(path, session=session)


def step_walls(decoder, tokens: int) -> list[float]:
    """Seconds of each one-token step after the prompt (the prompt's pass is not timed)."""
    stream = decoder.tokens(PROMPT, tokens + 1)
    next(stream)
    walls = []
    for _ in range(tokens):
        start = time.perf_counter()
        next(stream)
        walls.append(time.perf_counter() - start)
    return walls


def profile(path: Path, threads: int, tokens: int, workdir: Path) -> dict:
    """Per-token medians: wall (unprofiled and profiled), model_run, kernels by op type, node executions."""
    plain = _decoder(path, threads, None)
    step_walls(plain, 2)  # warm-up
    wall = statistics.median(step_walls(plain, tokens))
    profiled = _decoder(path, threads, workdir)
    walls = step_walls(profiled, tokens)
    events = json.loads(Path(profiled.session.end_profiling()).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    steps = runs[-tokens:]  # the last `tokens` runs are the timed steps; before them, the prompt's run
    per_step = [defaultdict(float) for _ in steps]
    counts = [0] * len(steps)
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        for i, (begin, end) in enumerate(steps):
            if begin <= e["ts"] <= end:
                per_step[i][e["args"]["op_name"]] += e["dur"]
                counts[i] += 1
                break
    ops = sorted({op for step in per_step for op in step})
    kernels = {op: statistics.median(step[op] for step in per_step) / 1e3 for op in ops}
    # each part from the same step, then the median over steps (medians of parts taken apart need not add up)
    parts = []
    for step, (begin, end), wall_s in zip(per_step, steps, walls):
        products = sum(us for op, us in step.items() if op in PRODUCT_OPS) / 1e3
        kernel = sum(step.values()) / 1e3
        run = (end - begin) / 1e3
        parts.append((products, kernel - products, run - kernel, wall_s * 1e3 - run))
    return {"wall_ms": wall * 1e3, "profiled_wall_ms": statistics.median(walls) * 1e3,
            "parts_ms": [statistics.median(p[i] for p in parts) for i in range(4)],
            "nodes": statistics.median(counts), "kernels": kernels}


def report(name: str, r: dict) -> list[str]:
    products = ", ".join(op for op in r["kernels"] if op in PRODUCT_OPS)
    labels = (f"matrix products ({products})", "other kernels", "runtime outside the kernels (model_run - kernels)",
              "Python outside session.run (wall - model_run)")
    lines = [f"### {name}", "",
             f"- wall per token: {r['wall_ms']:.2f} ms without the profiler ({1e3 / r['wall_ms']:.1f} tok/s), "
             f"{r['profiled_wall_ms']:.2f} ms with it",
             f"- node executions per token: {r['nodes']:.0f}",
             "", "| part of a profiled token (median over steps) | ms |", "|---|---|"]
    lines += [f"| {label} | {ms:.2f} |" for label, ms in zip(labels, r["parts_ms"])]
    lines += ["", "| op type | ms per token (median over steps) |", "|---|---|"]
    lines += [f"| {op} | {ms:.3f} |" for op, ms in sorted(r["kernels"].items(), key=lambda kv: -kv[1])]
    return lines + [""]


def build_gpt2(workdir: Path) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    import bitconv
    from bitconv.export.onnx import export_onnx

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(str(workdir / "src"))
    folder = bitconv.convert(str(workdir / "src"), str(workdir / "gpt2-1.58"), progress=False).out
    return export_onnx(folder, workdir / "op" / "model.onnx", target="op").path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", type=Path, nargs="*", help="decoders exported by bitconv (default: GPT-2 small)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=32, help="one-token steps profiled after the prompt")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        workdir = Path(tmp)
        paths = args.onnx or [build_gpt2(workdir)]
        print(f"load average before: {os.getloadavg()}; threads {args.threads}; prompt {len(PROMPT)} tokens, "
              f"{args.tokens} steps")
        for path in paths:
            print("\n".join(report(str(path), profile(path, args.threads, args.tokens, workdir))))
        print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
