"""Spec objects of the packed format: one quantized weight's entry, planned tensors and files, file metadata."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from bitconv.errors import FormatError
from bitconv.format.packing import base3_row_bytes, packed_row_bytes
from bitconv.format.vocab import (
    FORMAT_NAME,
    FORMAT_VERSION,
    GRANULARITIES,
    META_FORMAT,
    META_TENSORS,
    META_VERSION,
    SCHEME_BITS,
    SCHEMES,
    ST_ITEMSIZE,
    SUFFIX_CODES,
    SUFFIX_OUTLIER_IDX,
    SUFFIX_OUTLIER_VAL,
    SUFFIX_SCALE,
    SUFFIX_ZERO,
)


@dataclass(frozen=True)
class TensorSpec:
    """The `bitconv.tensors` entry of one quantized weight (logical shape [out, in], linear layout)."""

    scheme: str
    shape: tuple[int, int]
    dtype: str = "float32"
    packing: str = "2bit"
    granularity: str = "tensor"
    group_size: int | None = None
    scale_method: str = "absmean"
    n_outliers: int = 0
    layout: str = "linear"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    @property
    def n_groups(self) -> int:
        return -(-self.shape[1] // self.group_size) if self.granularity == "group" else 1

    def scale_shape(self) -> tuple[int, ...]:
        out = self.shape[0]
        return {"tensor": (1,), "channel": (out,), "group": (out, self.n_groups)}[self.granularity]

    def stored(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Suffix -> (safetensors dtype, shape) of every stored tensor."""
        out, n_in = self.shape
        if self.scheme == "ternary":
            row = base3_row_bytes(n_in) if self.packing == "base3" else packed_row_bytes(n_in, 2)
            codes = ("U8", (out, row))
        elif self.scheme == "int8":
            codes = ("I8", (out, n_in))
        else:
            codes = ("U8", (out, packed_row_bytes(n_in, SCHEME_BITS[self.scheme])))
        stored = {SUFFIX_CODES: codes, SUFFIX_SCALE: ("F32", self.scale_shape())}
        if self.scheme in ("uint4", "uint2"):
            stored[SUFFIX_ZERO] = ("U8", (out, self.n_groups))
        if self.n_outliers:
            stored[SUFFIX_OUTLIER_IDX] = ("I64", (self.n_outliers,))
            stored[SUFFIX_OUTLIER_VAL] = ("F16", (self.n_outliers,))
        return stored

    def n_bytes(self) -> int:
        return sum(ST_ITEMSIZE[d] * int(np.prod(s)) for d, s in self.stored().values())

    def to_json(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_json(cls, name: str, d: dict) -> "TensorSpec":
        try:
            spec = cls(**d)
        except TypeError as exc:
            raise FormatError(f"tensor '{name}': malformed bitconv.tensors entry ({exc})") from None
        if spec.scheme not in SCHEMES:
            raise FormatError(f"tensor '{name}': unknown scheme '{spec.scheme}' (this reader knows {', '.join(SCHEMES)})")
        if spec.granularity not in GRANULARITIES:
            raise FormatError(f"tensor '{name}': unknown granularity '{spec.granularity}'")
        return spec


@dataclass
class PlannedTensor:
    """One tensor of an output file: its name, dtype and shape, known before its data exists."""

    name: str
    st_dtype: str
    shape: tuple[int, ...]

    @property
    def n_bytes(self) -> int:
        return ST_ITEMSIZE[self.st_dtype] * int(np.prod(self.shape, dtype=np.int64))


@dataclass
class FilePlan:
    filename: str
    tensors: list[PlannedTensor] = field(default_factory=list)
    specs: dict[str, TensorSpec] = field(default_factory=dict)

    @property
    def n_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)


def file_metadata(specs: dict[str, TensorSpec]) -> dict[str, str]:
    return {
        "format": "pt",
        META_FORMAT: FORMAT_NAME,
        META_VERSION: str(FORMAT_VERSION),
        META_TENSORS: json.dumps({k: specs[k].to_json() for k in sorted(specs)}, sort_keys=True, separators=(",", ":")),
    }


