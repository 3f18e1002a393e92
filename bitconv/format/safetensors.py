"""safetensors files: a streaming writer whose tensor list is fixed up front, the header reader, shards.

The writer knows every output tensor's dtype and shape before it sees any data (they follow from the
source shapes and the options), so it writes the safetensors header first and then each tensor as it is
produced: the model is never held in memory whole. Files are written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterable

import numpy as np

from bitconv.errors import FormatError, InternalError
from bitconv.format.spec import FilePlan, PlannedTensor, file_metadata
from bitconv.format.vocab import NP_TO_ST


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


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """Returns (header without __metadata__ merged in, data start). Checks the file is not truncated."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise FormatError(f"{path}: not a safetensors file (shorter than 8 bytes); re-download or re-convert it")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100_000_000:
                raise FormatError(f"{path}: corrupt safetensors header (length {n} for a {size}-byte file); re-download it")
            header = json.loads(fh.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise FormatError(f"{path}: corrupt safetensors header (not JSON); re-download or re-convert it") from None
    data_start = 8 + n
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if data_start + end > size:
        raise FormatError(
            f"{path}: truncated ({size} bytes, the header needs {data_start + end}); re-download or re-convert it"
        )
    return header, data_start



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
