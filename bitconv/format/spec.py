"""Spec objects of the packed format: one quantized weight's entry, planned tensors and files, file metadata."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bitconv.errors import FormatError
from bitconv.format import strict_json
from bitconv.format.packing import TERNARY_ZERO_CODE, base3_row_bytes, packed_row_bytes
from bitconv.format.strict_json import is_size
from bitconv.format.vocab import (
    FORMAT_NAME,
    FORMAT_VERSION,
    GRANULARITIES,
    LAYOUTS,
    META_FORMAT,
    META_TENSORS,
    META_VERSION,
    PACKINGS,
    PART_SUFFIXES,
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
    def from_json(cls, name: str, d, path: str = "bitconv.tensors") -> "TensorSpec":
        """An entry of `bitconv.tensors`, checked by formats/SPEC.md "Validation": every member that decoding
        depends on is required and known (none is read as a default); `path` names the file in messages."""
        where = f"{path}: tensor '{name}'"
        if not isinstance(d, dict):
            raise FormatError(f"{where}: its bitconv.tensors entry is not a JSON object; the file is corrupt")
        choices = {}
        for key, known in (("scheme", SCHEMES), ("packing", PACKINGS), ("granularity", GRANULARITIES),
                           ("layout", LAYOUTS)):
            value = d.get(key)
            if not isinstance(value, str):
                raise FormatError(f"{where}: its bitconv.tensors entry has no '{key}' string (one of "
                                  f"{', '.join(known)}); the file is corrupt")
            if value not in known:
                raise FormatError(f"{where}: unknown {key} {value[:48]!r} (this reader knows {', '.join(known)}); "
                                  "upgrade bitconv or re-convert the model")
            choices[key] = value
        if choices["packing"] == "base3" and choices["scheme"] != "ternary":
            raise FormatError(f"{where}: packing base3 is defined for ternary only, not {choices['scheme']}")
        for key in ("dtype", "scale_method"):
            if key in d and not isinstance(d[key], str):
                raise FormatError(f"{where}: '{key}' in its bitconv.tensors entry must be a string")
        shape = d.get("shape")
        if not isinstance(shape, list) or len(shape) != 2 or not all(is_size(s) for s in shape):
            raise FormatError(f"{where}: its bitconv.tensors entry needs a shape [out, in] of two integers from 0 to "
                              "2^63-1; the file is corrupt")
        group_size = d.get("group_size", "missing")
        if choices["granularity"] == "group":
            if not is_size(group_size) or group_size < 1:
                raise FormatError(f"{where}: group_size must be a positive integer for group granularity; "
                                  "the file is corrupt")
        elif group_size is not None:
            raise FormatError(f"{where}: group_size must be null unless the granularity is group; the file is corrupt")
        n_outliers = d.get("n_outliers")
        if not is_size(n_outliers):
            raise FormatError(f"{where}: n_outliers must be an integer >= 0; the file is corrupt")
        numel = shape[0] * shape[1]
        if numel > 2**63 - 1:
            raise FormatError(f"{where}: shape {shape} is too large; the file is corrupt")
        if n_outliers > numel:
            raise FormatError(f"{where}: n_outliers {n_outliers} is more than its {numel} weights; the file is corrupt")
        return cls(scheme=choices["scheme"], shape=tuple(shape), dtype=d.get("dtype", "float32"),
                   packing=choices["packing"], granularity=choices["granularity"], group_size=group_size,
                   scale_method=d.get("scale_method", "absmean"), n_outliers=n_outliers, layout=choices["layout"])

    def check_values(self, arrays: dict[str, np.ndarray], where: str) -> None:
        """The stored values of formats/SPEC.md "Validation" ("Stored values"), checked before any decoding: finite
        scales, zero points within the code range, no reserved ternary code, outlier indices in range and strictly
        increasing, and zero trits under a ternary weight's outliers. `where` names the file and tensor."""
        scale = arrays[SUFFIX_SCALE]
        bad = np.flatnonzero(~np.isfinite(scale.reshape(-1)))
        if bad.size:
            raise FormatError(f"{where}: scale {bad[0]} is NaN or infinite; the file is corrupt")
        if SUFFIX_ZERO in arrays:
            top = (1 << SCHEME_BITS[self.scheme]) - 1
            high = np.flatnonzero(arrays[SUFFIX_ZERO].reshape(-1) > top)
            if high.size:
                value = arrays[SUFFIX_ZERO].reshape(-1)[high[0]]
                raise FormatError(f"{where}: zero point {high[0]} is {value}, above the {self.scheme} maximum {top}; "
                                  "the file is corrupt")
        codes = arrays[SUFFIX_CODES]
        if self.scheme == "ternary" and self.packing == "2bit":
            reserved = _reserved_2bit_codes(codes, self.shape[1])
            if reserved is not None:
                raise FormatError(f"{where}: reserved code at row {reserved[0]} column {reserved[1]}; "
                                  "the file is corrupt")
        if self.scheme == "ternary" and self.packing == "base3":
            high = np.argwhere(codes > 242)
            if high.size:
                raise FormatError(f"{where}: base-3 byte {codes[tuple(high[0])]} at row {high[0][0]} is above 242; "
                                  "the file is corrupt")
        if self.n_outliers:
            self._check_outliers(arrays[SUFFIX_OUTLIER_IDX], codes, where)

    def _check_outliers(self, idx: np.ndarray, codes: np.ndarray, where: str) -> None:
        out, n_in = self.shape
        outside = np.flatnonzero((idx < 0) | (idx >= out * n_in))
        if outside.size:
            raise FormatError(f"{where}: outlier index {idx[outside[0]]} falls outside the weight; the file is corrupt")
        repeat = np.flatnonzero(np.diff(idx) <= 0)
        if repeat.size:
            k = repeat[0] + 1
            raise FormatError(f"{where}: outlier indices must increase strictly, but index {k} is {idx[k]} after "
                              f"{idx[k - 1]}; the file is corrupt")
        if self.scheme != "ternary":
            return
        rows, cols = idx // n_in, idx % n_in
        if self.packing == "2bit":
            zero = (codes[rows, cols // 4] >> (2 * (cols % 4)).astype(np.uint8)) & 3 == TERNARY_ZERO_CODE
        else:
            zero = (codes[rows, cols // 5] // (3 ** (cols % 5))) % 3 == 1
        nonzero = np.flatnonzero(~zero)
        if nonzero.size:
            k = nonzero[0]
            raise FormatError(f"{where}: a nonzero code under outlier {k} (row {rows[k]}, column {cols[k]}); "
                              "the file is corrupt")


def _reserved_2bit_codes(packed: np.ndarray, n_in: int) -> tuple[int, int] | None:
    """(row, column) of the first element whose 2-bit code is 0, or None; padding codes are not elements."""
    nonzero = (packed | (packed >> 1)) & 0x55  # bit 2k set where code k of the byte is not 0
    full, rest = divmod(n_in, 4)
    bad = nonzero[:, :full] != 0x55
    if rest:
        mask = 0x55 & ((1 << (2 * rest)) - 1)
        bad = np.concatenate([bad, (nonzero[:, full:full + 1] & mask) != mask], axis=1)
    hit = np.argwhere(bad)
    if not hit.size:
        return None
    row, byte = (int(v) for v in hit[0])
    for k in range(4):
        if not (packed[row, byte] >> (2 * k)) & 3:
            return row, 4 * byte + k
    raise AssertionError("unreachable: a flagged byte holds a zero code")


def specs_from_metadata(path: Path, meta: dict, stored: dict[str, dict]) -> dict[str, TensorSpec]:
    """The packed weights of one safetensors file, from its `__metadata__`, checked against its stored tensors
    (`stored`: name -> header entry) by formats/SPEC.md "Validation": the bitconv metadata, each entry, and every
    part stored with exactly the dtype and shape its entry needs, no part without an entry."""
    if meta.get(META_FORMAT) != FORMAT_NAME:
        raise FormatError(f"{path}: not a bitconv packed file (no '{META_FORMAT}' metadata); convert the model with "
                          "`bitconv convert`")
    version = meta.get(META_VERSION)
    if version != str(FORMAT_VERSION):  # exactly "1": " 1", "01" or "1.0" would be 1 to some readers only
        raise FormatError(f"{path}: format version {version!r}, this bitconv reads version {FORMAT_VERSION}; "
                          "upgrade bitconv")
    if META_TENSORS not in meta:
        raise FormatError(f"{path}: no '{META_TENSORS}' metadata; the file is corrupt")
    try:
        entries = strict_json.loads(meta[META_TENSORS])
    except strict_json.StrictJSONError as exc:
        raise FormatError(f"{path}: the '{META_TENSORS}' metadata is not a JSON object ({exc}); "
                          "the file is corrupt") from None
    if not isinstance(entries, dict):
        raise FormatError(f"{path}: the '{META_TENSORS}' metadata is not a JSON object; the file is corrupt")
    specs: dict[str, TensorSpec] = {}
    owned: set[str] = set()
    for name, entry in entries.items():
        spec = TensorSpec.from_json(name, entry, str(path))
        if name in stored:
            raise FormatError(f"{path}: '{name}' is both a packed weight and a stored tensor; the file is corrupt")
        for suffix, (dtype, shape) in spec.stored().items():
            part = stored.get(name + suffix)
            if part is None:
                raise FormatError(f"{path}: tensor '{name + suffix}' is missing (needed by packed weight '{name}'); "
                                  "the file is corrupt")
            if part["dtype"] != dtype or tuple(part["shape"]) != tuple(shape):
                raise FormatError(f"{path}: tensor '{name + suffix}' is {part['dtype']}{part['shape']}, its spec "
                                  f"needs {dtype}{list(shape)}; the file is corrupt")
            owned.add(name + suffix)
        specs[name] = spec
    for name in stored:
        suffix = next((s for s in PART_SUFFIXES if name.endswith(s)), None)
        if suffix is not None and name not in owned:
            raise FormatError(f"{path}: tensor '{name}' is named as a part ({suffix}) of packed weight "
                              f"'{name[:-len(suffix)]}', whose bitconv.tensors entry is missing or has no such part; "
                              "the file is corrupt")
    return specs


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


