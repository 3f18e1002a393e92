"""Conversion speed and peak memory on full-size GPT-2 configs with random weights.

    python docs/benchmarks/bench_convert.py                 # GPT-2 small and medium, ternary per tensor
    python docs/benchmarks/bench_convert.py --sizes small   # quicker

For each size it writes a random fp32 safetensors checkpoint (tensor by tensor, so the benchmark itself stays
small), then runs `python -m bitconv convert` in a child process and reports wall time, source MB/s and the
child's peak RSS against the target 2 x largest tensor + 600 MB. Results are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {"small": dict(n_layer=12, n_embd=768, n_head=12), "medium": dict(n_layer=24, n_embd=1024, n_head=16)}


def write_random_gpt2(folder: Path, size: str, seed: int = 0) -> tuple[int, int]:
    """Writes config.json + model.safetensors; returns (total bytes, largest tensor bytes)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from bitconv.format import FilePlan, PlannedTensor, StreamingSafetensorsWriter

    config = GPT2Config(**SIZES[size])
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in GPT2LMHeadModel(config).state_dict().items() if k != "lm_head.weight"}
    folder.mkdir(parents=True)
    config.architectures = ["GPT2LMHeadModel"]
    config.save_pretrained(str(folder))
    plan = FilePlan("model.safetensors", [PlannedTensor(k, "F32", s) for k, s in shapes.items()])
    writer = StreamingSafetensorsWriter(folder / "model.safetensors", plan)
    rng = np.random.default_rng(seed)
    for name, shape in shapes.items():
        writer.write(name, (rng.standard_normal(shape, dtype=np.float32) * 0.02))
    writer.close()
    sizes = [4 * int(np.prod(s)) for s in shapes.values()]
    return sum(sizes), max(sizes)


def run_convert(src: Path, out: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one `bitconv convert` child process."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bitconv", "convert", str(src), "--bits", "1.58", "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    # ru_maxrss of the children is the largest child's peak, in KB on Linux; one child runs at a time
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="small,medium")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            src = Path(tmp) / f"gpt2-{size}"
            total, largest = write_random_gpt2(src, size)
            seconds, peak_mb = run_convert(src, Path(tmp) / f"gpt2-{size}-1.58")
            out_bytes = (Path(tmp) / f"gpt2-{size}-1.58" / "model.safetensors").stat().st_size
            target_mb = 2 * largest / 1e6 + 600
            rows.append(dict(size=size, source_mb=total / 1e6, largest_tensor_mb=largest / 1e6, seconds=seconds,
                             mb_per_s=total / 1e6 / seconds, peak_rss_mb=peak_mb, rss_target_mb=target_mb,
                             output_mb=out_bytes / 1e6))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"machine: {cpu}, {len(__import__('os').sched_getaffinity(0))} cores; python {platform.python_version()}")
    print("| size | source MB | largest tensor MB | seconds (incl. start-up) | source MB/s | peak RSS MB | RSS target MB | output MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['source_mb']:.0f} | {r['largest_tensor_mb']:.0f} | {r['seconds']:.1f} | "
              f"{r['mb_per_s']:.0f} | {r['peak_rss_mb']:.0f} | {r['rss_target_mb']:.0f} | {r['output_mb']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
