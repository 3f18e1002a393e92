"""The packed format (formats/SPEC.md): constants, per-tensor entries, a streaming safetensors writer and a reader.

The writer knows every output tensor's dtype and shape before it sees any data (they follow from the
source shapes and the options), so it writes the safetensors header first and then each tensor as it is
produced: the model is never held in memory whole. Files are written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from bitconv.errors import BitconvError
from bitconv.packing import base3_row_bytes, packed_row_bytes

FORMAT_NAME = "bitconv-packed"
FORMAT_VERSION = 1
QUANT_METHOD = "bitconv"

META_FORMAT = "bitconv.format"
META_VERSION = "bitconv.format_version"
META_TENSORS = "bitconv.tensors"

SUFFIX_CODES = ".qcodes"
SUFFIX_SCALE = ".qscale"
SUFFIX_ZERO = ".qzero"
SUFFIX_OUTLIER_IDX = ".outlier_idx"
SUFFIX_OUTLIER_VAL = ".outlier_val"

SCHEMES = ("ternary", "binary", "int8", "uint4", "uint2")
SCHEME_BITS = {"ternary": 2, "binary": 1, "int8": 8, "uint4": 4, "uint2": 2}
GRANULARITIES = ("tensor", "channel", "group")
PACKINGS = ("2bit", "base3")

# safetensors dtype names <-> numpy
ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
NP_TO_ST = {np.dtype(v): k for k, v in ST_DTYPES.items()}
ST_ITEMSIZE = {"BF16": 2, **{k: np.dtype(v).itemsize for k, v in ST_DTYPES.items()}}


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
            raise BitconvError(f"tensor '{name}': malformed bitconv.tensors entry ({exc})") from None
        if spec.scheme not in SCHEMES:
            raise BitconvError(f"tensor '{name}': unknown scheme '{spec.scheme}' (this reader knows {', '.join(SCHEMES)})")
        if spec.granularity not in GRANULARITIES:
            raise BitconvError(f"tensor '{name}': unknown granularity '{spec.granularity}'")
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


class StreamingSafetensorsWriter:
    """Writes one safetensors file whose tensor list is fixed up front; data arrive one tensor at a time.

    Tensors may arrive in any order: each is written at its own offset. `close()` checks that every
    planned tensor was written, then renames the temporary file into place.
    """

    def __init__(self, path: Path, plan: FilePlan):
        self.path = Path(path)
        self.tmp_path = self.path.with_name(self.path.name + ".partial")
        header: dict = {"__metadata__": file_metadata(plan.specs)}
        offset = 0
        self.slots: dict[str, tuple[int, PlannedTensor]] = {}
        for t in sorted(plan.tensors, key=lambda t: t.name):
            header[t.name] = {"dtype": t.st_dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.n_bytes]}
            self.slots[t.name] = (offset, t)
            offset += t.n_bytes
        raw = json.dumps(header, separators=(",", ":"), sort_keys=False).encode()
        raw += b" " * ((-len(raw)) % 8)  # data start aligned to 8 bytes, as safetensors itself does
        self.data_start = 8 + len(raw)
        self.total = offset
        self.written: set[str] = set()
        self.fh = open(self.tmp_path, "wb")
        self.fh.write(struct.pack("<Q", len(raw)))
        self.fh.write(raw)
        self.fh.truncate(self.data_start + offset)

    def write(self, name: str, array: np.ndarray) -> None:
        if name not in self.slots:
            raise BitconvError(f"internal error: tensor '{name}' is not in the plan of {self.path.name}")
        offset, planned = self.slots[name]
        array = np.ascontiguousarray(array)
        if NP_TO_ST.get(array.dtype) != planned.st_dtype or tuple(array.shape) != tuple(planned.shape):
            raise BitconvError(
                f"internal error: tensor '{name}' is {array.dtype}{list(array.shape)}, planned {planned.st_dtype}{list(planned.shape)}"
            )
        self.fh.seek(self.data_start + offset)
        self.fh.write(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
        self.written.add(name)

    def close(self) -> None:
        missing = set(self.slots) - self.written
        self.fh.close()
        if missing:
            self.tmp_path.unlink(missing_ok=True)
            raise BitconvError(f"internal error: {len(missing)} planned tensors never written, e.g. '{sorted(missing)[0]}'")
        os.replace(self.tmp_path, self.path)

    def abort(self) -> None:
        self.fh.close()
        self.tmp_path.unlink(missing_ok=True)


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """Returns (header without __metadata__ merged in, data start). Checks the file is not truncated."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise BitconvError(f"{path}: not a safetensors file (shorter than 8 bytes); re-download or re-convert it")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100_000_000:
                raise BitconvError(f"{path}: corrupt safetensors header (length {n} for a {size}-byte file); re-download it")
            header = json.loads(fh.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BitconvError(f"{path}: corrupt safetensors header (not JSON); re-download or re-convert it") from None
    data_start = 8 + n
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if data_start + end > size:
        raise BitconvError(
            f"{path}: truncated ({size} bytes, the header needs {data_start + end}); re-download or re-convert it"
        )
    return header, data_start


class PackedReader:
    """Reads a bitconv folder or file: raw stored tensors and the per-tensor specs."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        self.folder = folder
        index = folder / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        elif (folder / "model.safetensors").exists():
            files = ["model.safetensors"]
        else:
            raise BitconvError(f"{folder}: no model.safetensors or model.safetensors.index.json; is this a bitconv output folder?")
        self.files = [folder / f for f in files]
        self.specs: dict[str, TensorSpec] = {}
        self.locations: dict[str, tuple[Path, dict, int]] = {}
        for path in self.files:
            if not path.exists():
                raise BitconvError(f"{path}: shard listed in the index is missing; re-download or re-convert the model")
            header, data_start = read_safetensors_header(path)
            meta = header.pop("__metadata__", {}) or {}
            if meta.get(META_FORMAT) != FORMAT_NAME:
                raise BitconvError(f"{path}: not a bitconv packed file (no '{META_FORMAT}' metadata)")
            version = int(meta.get(META_VERSION, -1))
            if version != FORMAT_VERSION:
                raise BitconvError(f"{path}: format version {version}, this bitconv reads version {FORMAT_VERSION}; upgrade bitconv")
            for name, entry in json.loads(meta.get(META_TENSORS, "{}")).items():
                self.specs[name] = TensorSpec.from_json(name, entry)
            for name, info in header.items():
                self.locations[name] = (path, info, data_start)

    def stored_names(self) -> list[str]:
        return sorted(self.locations)

    def plain_names(self) -> list[str]:
        """Tensors stored as ordinary (unquantized) tensors."""
        owned = {name + suffix for name, spec in self.specs.items() for suffix in spec.stored()}
        return [n for n in self.stored_names() if n not in owned]

    def raw(self, name: str) -> np.ndarray:
        if name not in self.locations:
            raise BitconvError(f"{self.folder}: tensor '{name}' is missing from the packed files")
        path, info, data_start = self.locations[name]
        dtype = info["dtype"]
        begin, end = info["data_offsets"]
        with open(path, "rb") as fh:
            fh.seek(data_start + begin)
            buf = fh.read(end - begin)
        if dtype == "BF16":
            u16 = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
            return u16.view(np.float32).reshape(info["shape"])
        if dtype not in ST_DTYPES:
            raise BitconvError(f"{path}: tensor '{name}' has unsupported dtype {dtype}")
        arr = np.frombuffer(buf, dtype=np.dtype(ST_DTYPES[dtype]).newbyteorder("<")).reshape(info["shape"])
        return arr.astype(arr.dtype.newbyteorder("="), copy=False)

    def quantized_arrays(self, name: str) -> dict[str, np.ndarray]:
        spec = self.specs[name]
        arrays = {}
        for suffix, (dtype, shape) in spec.stored().items():
            arr = self.raw(name + suffix)
            if tuple(arr.shape) != tuple(shape) or self.locations[name + suffix][1]["dtype"] != dtype:
                raise BitconvError(
                    f"tensor '{name + suffix}' is {self.locations[name + suffix][1]['dtype']}{list(arr.shape)}, "
                    f"the spec needs {dtype}{list(shape)}; the file is corrupt"
                )
            arrays[suffix] = arr
        return arrays

    def iter_plain(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in self.plain_names():
            yield name, self.raw(name)


def write_text_atomic(path: Path, text: str) -> None:
    """Write under a temporary name and rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj, indent: int = 2) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def shard_names(n: int) -> list[str]:
    if n == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def split_into_shards(groups: Iterable[list[PlannedTensor]], max_shard_bytes: int) -> list[list[PlannedTensor]]:
    """Greedy, in order; the tensors of one weight (codes, scale, ...) never straddle two shards."""
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for group in groups:
        n = sum(t.n_bytes for t in group)
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].extend(group)
        size += n
    return shards
