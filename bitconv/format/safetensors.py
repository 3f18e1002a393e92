"""safetensors files: a streaming writer whose tensor list is fixed up front, the header reader, shards.

The writer knows every output tensor's dtype and shape before it sees any data (they follow from the
source shapes and the options), so it writes the safetensors header first and then each tensor as it is
produced: the model is never held in memory whole. Files are written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np

from bitconv.errors import FormatError, InternalError
from bitconv.format import strict_json
from bitconv.format.spec import FilePlan, PlannedTensor, file_metadata
from bitconv.format.vocab import NP_TO_ST, ST_ITEMSIZE


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
            raise InternalError(f"tensor '{name}' is not in the plan of {self.path.name}")
        offset, planned = self.slots[name]
        array = np.require(array, requirements="C")  # not ascontiguousarray: it makes 0-d tensors 1-d
        if NP_TO_ST.get(array.dtype) != planned.st_dtype or tuple(array.shape) != tuple(planned.shape):
            raise InternalError(
                f"tensor '{name}' is {array.dtype}{list(array.shape)}, planned {planned.st_dtype}{list(planned.shape)}"
            )
        self.fh.seek(self.data_start + offset)
        self.fh.write(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
        self.written.add(name)

    def close(self) -> None:
        missing = set(self.slots) - self.written
        self.fh.close()
        if missing:
            self.tmp_path.unlink(missing_ok=True)
            raise InternalError(f"{len(missing)} planned tensors never written, e.g. '{sorted(missing)[0]}'")
        os.replace(self.tmp_path, self.path)

    def abort(self) -> None:
        self.fh.close()
        self.tmp_path.unlink(missing_ok=True)


MAX_HEADER_BYTES = 100_000_000  # as the safetensors crate
MAX_DIMS = 8
MAX_ITEMSIZE = max(ST_ITEMSIZE.values())


def open_regular(path: str | os.PathLike, *, fix: str = "re-download or re-convert it") -> BinaryIO:
    """`path` opened for reading, after checking it is a regular file.

    A FIFO named like a model file would block `open` (until a writer comes) and every read: it is refused from
    `stat` first, and the file is opened without blocking and checked again, so a swap in between cannot hang us.
    """
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise FormatError(f"{path}: not a regular file (a FIFO, a device or a folder); {fix}")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise FormatError(f"{path}: missing; {fix}") from None
    except OSError as exc:
        raise FormatError(f"{path}: cannot be read ({exc.strerror}); check its permissions") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FormatError(f"{path}: not a regular file (a FIFO, a device or a folder); {fix}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_json_file(path: str | os.PathLike, *, fix: str, max_bytes: int = MAX_HEADER_BYTES):
    """A JSON file (config.json, an index) read by the strict rules of bitconv.format.strict_json."""
    path = Path(path)
    with open_regular(path, fix=fix) as fh:
        raw = fh.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise FormatError(f"{path}: larger than {max_bytes:,} bytes, too large for a JSON file of a model; {fix}")
    try:
        return strict_json.loads(raw)
    except strict_json.StrictJSONError as exc:
        raise FormatError(f"{path}: not valid JSON ({exc}); {fix}") from None


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict, int]:
    """The header of a safetensors file and where its data start, after every check of formats/SPEC.md
    "Validation" on the file and its header (as strict as the safetensors crate).

    Each tensor's entry is returned as {"dtype", "shape", "data_offsets"} (other members dropped), plus
    "__metadata__" (an object of strings) when the file has one.
    """
    path = Path(path)
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(8)
        if len(head) < 8:
            raise FormatError(f"{path}: not a safetensors file (shorter than 8 bytes); re-download or re-convert it")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > MAX_HEADER_BYTES:
            raise FormatError(f"{path}: corrupt safetensors header (length {n} for a {size}-byte file); re-download it")
        raw = fh.read(n)
    if len(raw) != n:
        raise FormatError(f"{path}: truncated while reading its header; re-download or re-convert it")
    if not raw.startswith(b"{"):
        raise FormatError(f"{path}: corrupt safetensors header (it does not start with '{{'); re-download or re-convert it")
    try:
        header = strict_json.loads(raw)
    except strict_json.StrictJSONError as exc:
        raise FormatError(f"{path}: corrupt safetensors header ({exc}); re-download or re-convert it") from None
    data_size = size - 8 - n
    checked: dict = {}
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise FormatError(f"{path}: '__metadata__' must be a JSON object of strings; the file is corrupt")
            checked[name] = entry
        else:
            checked[name] = _checked_entry(path, name, entry, data_size)
    _check_tiling(path, checked, data_size)
    return checked, 8 + n


def _checked_entry(path: Path, name: str, entry, data_size: int) -> dict:
    if not isinstance(entry, dict):
        raise FormatError(f"{path}: tensor '{name}': its header entry is not a JSON object; the file is corrupt")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise FormatError(f"{path}: tensor '{name}': its header entry has no 'dtype' string; the file is corrupt")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(strict_json.is_size(d) for d in shape):
        raise FormatError(f"{path}: tensor '{name}': 'shape' must be a list of at most {MAX_DIMS} integers from 0 to "
                          "2^63-1; the file is corrupt")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(strict_json.is_size(o) for o in offsets)
            or offsets[1] < offsets[0]):
        raise FormatError(f"{path}: tensor '{name}': 'data_offsets' must be two integers [begin, end] with "
                          "0 <= begin <= end; the file is corrupt")
    if dtype not in ST_ITEMSIZE:
        raise FormatError(f"{path}: tensor '{name}' has unsupported dtype '{dtype[:48]}' (this reader knows "
                          f"{', '.join(ST_ITEMSIZE)})")
    begin, end = offsets
    if end > data_size:
        raise FormatError(f"{path}: truncated (tensor '{name}' ends at data byte {end} of {data_size}); "
                          "re-download or re-convert it")
    if end - begin != math.prod(shape) * ST_ITEMSIZE[dtype]:
        raise FormatError(f"{path}: tensor '{name}' is {end - begin} bytes, which is not what its dtype {dtype} and "
                          f"shape {shape} need; the file is corrupt")
    if math.prod(d for d in shape if d) * MAX_ITEMSIZE > 2**63 - 1:
        # only an empty tensor gets here: numpy cannot make an array whose non-zero sizes exceed 2^63-1 bytes, not
        # even an empty one, so a reader (or an exporter converting it to another dtype) would fail on it later
        raise FormatError(f"{path}: tensor '{name}' has shape {shape}, too large for an array of any dtype even with "
                          "a 0 dimension; the file is corrupt")
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}


def _check_tiling(path: Path, header: dict, data_size: int) -> None:
    """As the safetensors crate: in order of their offsets the tensors cover the data exactly, without gaps (hidden
    bytes) or overlaps (two tensors sharing bytes), the first at 0 and the last ending at the end of the file."""
    spans = sorted((e["data_offsets"][0], e["data_offsets"][1], name) for name, e in header.items()
                   if name != "__metadata__")
    at = 0
    for begin, end, name in spans:
        if begin != at:
            raise FormatError(f"{path}: tensor '{name}' starts at data byte {begin}, but the tensors before it end at "
                              f"{at} ({'a gap' if begin > at else 'an overlap'}); tensors must tile the data without "
                              "gaps or overlaps; the file is corrupt")
        at = end
    if at != data_size:
        raise FormatError(f"{path}: {data_size - at} bytes after the last tensor (data ends at {at}, the file at "
                          f"{data_size}); the file is corrupt")


def read_weight_map(index: Path) -> dict[str, str]:
    """The `weight_map` of a model.safetensors.index.json, each shard a plain file name of the index's folder.

    A shard given as an absolute path or with a folder part (`../x`, `sub/x`) is refused before any file is
    opened: a downloaded index must not make a reader open files outside the model folder.
    """
    index = Path(index)
    fix = "re-download or re-convert the model"
    data = read_json_file(index, fix=fix)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise FormatError(f"{index}: no 'weight_map' object; {fix}")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not _plain_file_name(shard):
            raise FormatError(f"{index}: tensor '{name}' is mapped to {shard!r}, which is not a plain file name in "
                              f"the model folder; {fix}")
    return weight_map


def _plain_file_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0") and Path(name).name == name


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
