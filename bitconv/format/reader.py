"""Reads a bitconv folder: the packed files' tensors and specs, and its config.json (no torch needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from bitconv.errors import FormatError
from bitconv.format.safetensors import read_safetensors_header
from bitconv.format.spec import TensorSpec
from bitconv.format.vocab import (
    FORMAT_NAME,
    FORMAT_VERSION,
    META_FORMAT,
    META_TENSORS,
    META_VERSION,
    QUANT_METHOD,
    ST_DTYPES,
)


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
            raise FormatError(f"{folder}: no model.safetensors or model.safetensors.index.json; is this a bitconv output folder?")
        self.files = [folder / f for f in files]
        self.specs: dict[str, TensorSpec] = {}
        self.locations: dict[str, tuple[Path, dict, int]] = {}
        for path in self.files:
            if not path.exists():
                raise FormatError(f"{path}: shard listed in the index is missing; re-download or re-convert the model")
            header, data_start = read_safetensors_header(path)
            meta = header.pop("__metadata__", {}) or {}
            if meta.get(META_FORMAT) != FORMAT_NAME:
                raise FormatError(f"{path}: not a bitconv packed file (no '{META_FORMAT}' metadata)")
            version = int(meta.get(META_VERSION, -1))
            if version != FORMAT_VERSION:
                raise FormatError(f"{path}: format version {version}, this bitconv reads version {FORMAT_VERSION}; upgrade bitconv")
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
            raise FormatError(f"{self.folder}: tensor '{name}' is missing from the packed files")
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
            raise FormatError(f"{path}: tensor '{name}' has unsupported dtype {dtype}")
        arr = np.frombuffer(buf, dtype=np.dtype(ST_DTYPES[dtype]).newbyteorder("<")).reshape(info["shape"])
        return arr.astype(arr.dtype.newbyteorder("="), copy=False)

    def quantized_arrays(self, name: str) -> dict[str, np.ndarray]:
        spec = self.specs[name]
        arrays = {}
        for suffix, (dtype, shape) in spec.stored().items():
            arr = self.raw(name + suffix)
            if tuple(arr.shape) != tuple(shape) or self.locations[name + suffix][1]["dtype"] != dtype:
                raise FormatError(
                    f"tensor '{name + suffix}' is {self.locations[name + suffix][1]['dtype']}{list(arr.shape)}, "
                    f"the spec needs {dtype}{list(shape)}; the file is corrupt"
                )
            arrays[suffix] = arr
        return arrays

    def iter_plain(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in self.plain_names():
            yield name, self.raw(name)


def read_bitconv_config(folder: Path) -> dict:
    """config.json of a bitconv output folder, after checking it names the bitconv quantization method."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FormatError(f"{folder}: no config.json; is this a bitconv output folder (from `bitconv convert`)?")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: not valid JSON ({exc}); re-convert the model") from None
    method = (config.get("quantization_config") or {}).get("quant_method")
    if method != QUANT_METHOD:
        raise FormatError(f"{folder}: not a bitconv output folder (quantization_config.quant_method is {method!r}, "
                           f"not {QUANT_METHOD!r}); convert the model with `bitconv convert` first")
    return config


def read_quantization_config(folder: Path) -> dict:
    return read_bitconv_config(folder)["quantization_config"]


def is_bitconv_folder(path: str | os.PathLike) -> bool:
    try:
        read_quantization_config(Path(path))
        return True
    except FormatError:
        return False
