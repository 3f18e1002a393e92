"""Writes the golden vectors: formats/golden/golden.safetensors and expected.json.

    python formats/golden/make_golden.py            # rewrite them (only when the format version changes)
    python formats/golden/make_golden.py --check    # exit 1 if the reference writer no longer reproduces them

The weights come from a closed formula (no random generator), so they are the same on every machine.
expected.json holds, for every logical tensor, its spec and decoded float32 values (row-major), computed by
the reference decoder when the files were made; every reader is tested against them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
from pathlib import Path

import torch

from bitconv.format.safetensors import StreamingSafetensorsWriter
from bitconv.format.spec import FilePlan, PlannedTensor
from bitconv.quantize.config import QuantConfig
from bitconv.quantize.schemes import dequantize, encode, quantize

HERE = Path(__file__).resolve().parent

# (logical name, shape, QuantConfig): K values deliberately not multiples of 4, 5, 8 or the group size
CASES = [
    ("ternary_tensor.weight", (3, 10), QuantConfig.for_bits(1.58)),
    ("ternary_channel.weight", (4, 7), QuantConfig.for_bits(1.58, "channel")),
    ("ternary_group.weight", (2, 13), QuantConfig.for_bits(1.58, "group:4", scale_method="mse")),
    ("ternary_base3.weight", (3, 11), QuantConfig.for_bits(1.58, packing="base3")),
    ("ternary_outliers.weight", (4, 9), QuantConfig.for_bits(1.58, keep_outliers=0.1)),
    ("binary.weight", (3, 11), QuantConfig.for_bits(1)),
    ("int8.weight", (3, 6), QuantConfig.for_bits(8)),
    ("uint4.weight", (2, 9), QuantConfig.for_bits(4, "group:4")),
    ("uint2.weight", (2, 9), QuantConfig.for_bits(2, "group:4")),
]


def weight(shape: tuple[int, int], salt: int) -> torch.Tensor:
    out, n_in = shape
    values = [[math.sin(1.7 * r + 0.61 * c + salt) * (1 + 0.25 * ((r * 7 + c * 3) % 5)) for c in range(n_in)]
              for r in range(out)]
    return torch.tensor(values, dtype=torch.float32)


def build(folder: Path) -> dict:
    arrays, specs, expected = {}, {}, {}
    for salt, (name, shape, cfg) in enumerate(CASES):
        q = quantize(weight(shape, salt), cfg)
        specs[name] = q.spec
        for suffix, arr in encode(q).items():
            arrays[name + suffix] = arr
        expected[name] = {"spec": q.spec.to_json(), "values": dequantize(q).flatten().tolist()}
    from bitconv.format.vocab import NP_TO_ST

    plan = FilePlan("golden.safetensors",
                    [PlannedTensor(n, NP_TO_ST[a.dtype], tuple(a.shape)) for n, a in sorted(arrays.items())], specs)
    writer = StreamingSafetensorsWriter(folder / "golden.safetensors", plan)
    for n, a in arrays.items():
        writer.write(n, a)
    writer.close()
    return expected


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        expected = build(Path(tmp))
        data = (Path(tmp) / "golden.safetensors").read_bytes()
    text = json.dumps(expected, indent=1, sort_keys=True) + "\n"
    if args.check:
        same = data == (HERE / "golden.safetensors").read_bytes() and text == (HERE / "expected.json").read_text()
        print("golden vectors reproduced" if same else "golden vectors DIFFER from the reference writer")
        return 0 if same else 1
    (HERE / "golden.safetensors").write_bytes(data)
    (HERE / "expected.json").write_text(text)
    print(f"wrote golden.safetensors ({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}) and expected.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
