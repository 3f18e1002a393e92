"""Exporters from a bitconv folder to other runtimes, one contract for all:

    export_onnx(folder, out, *, force, ...)       -> OnnxExportResult     (bitconv op, stock MatMulNBits, float)
    export_gguf(folder, out, *, force, ...)       -> GGUFExportResult     (llama.cpp TQ2_0 / TQ1_0)
    export_hf_bitnet(folder, out, *, force, ...)  -> HFBitNetExportResult (transformers' quant_method "bitnet")

Each checks its output first (exists without `force`, or is, holds or sits inside the input: refused), writes
under a temporary name and renames, and returns an `ExportResult`: the path, its size, and the tensors it could
not store in the target's packed form with the reason (`fallbacks`). Byte layouts live in bitconv.format.layouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ExportResult:
    path: Path
    target: str
    fallbacks: dict[str, str] = field(default_factory=dict)  # tensor or module -> why it is not in the packed form

    @property
    def n_bytes(self) -> int:
        """Bytes written: the file (with an ONNX external-data file beside it), or every file of the folder."""
        if self.path.is_dir():
            return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        data = self.path.with_name(self.path.name + ".data")
        return self.path.stat().st_size + (data.stat().st_size if data.is_file() else 0)
