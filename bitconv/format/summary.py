"""What is stored in a bitconv folder: per tensor scheme, shape, bytes and bits per weight; totals by category."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bitconv.format.reader import open_bitconv_folder
from bitconv.format.vocab import SCHEMES, ST_ITEMSIZE, category_of, category_totals


@dataclass
class TensorRow:
    name: str
    category: str
    scheme: str
    shape: list[int]
    n_params: int
    n_bytes: int

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.n_bytes / self.n_params if self.n_params else 0.0


@dataclass
class FolderSummary:
    folder: str
    quantization_config: dict
    tensors: list[TensorRow]
    file_bytes: int

    def totals(self) -> dict[str, dict]:
        return category_totals((r.category, r.n_params, r.n_bytes) for r in self.tensors)

    @property
    def n_quantized(self) -> int:
        return sum(r.scheme in SCHEMES for r in self.tensors)

    def to_json(self) -> dict:
        return {"folder": self.folder, "quantization_config": self.quantization_config, "file_bytes": self.file_bytes,
                "tensors": [dict(asdict(r), bits_per_weight=r.bits_per_weight) for r in self.tensors],
                "totals": self.totals()}


def summarize(folder: str | Path) -> FolderSummary:
    folder = Path(folder).expanduser()
    config, reader = open_bitconv_folder(folder)
    qc = config["quantization_config"]
    rows = []
    for name, spec in sorted(reader.specs.items()):
        rows.append(TensorRow(name, category_of(name, ndim=2), spec.scheme,
                              list(spec.shape), spec.shape[0] * spec.shape[1], spec.n_bytes()))
    for name in reader.plain_names():
        info = reader.locations[name][1]
        n = int(np.prod(info["shape"], dtype=np.int64))
        category = category_of(name, ndim=len(info["shape"])) if info["dtype"] in ("F16", "F32", "BF16") else "other"
        rows.append(TensorRow(name, category, info["dtype"].lower(), list(info["shape"]), n,
                              n * ST_ITEMSIZE[info["dtype"]]))
    rows.sort(key=lambda r: r.name)
    return FolderSummary(str(folder), qc, rows, sum(f.stat().st_size for f in reader.files))
