"""Reads a bitconv folder: the packed files' tensors and specs, and its config.json (no torch needed).

Files are untrusted input: everything here follows formats/SPEC.md "Validation (what every reader must refuse)",
as the C reader does, so both accept and refuse the same files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from bitconv.errors import FormatError
from bitconv.format.safetensors import open_regular, read_json_file, read_safetensors_header, read_weight_map
from bitconv.format.spec import TensorSpec, specs_from_metadata
from bitconv.format.strict_json import is_int
from bitconv.format.vocab import FORMAT_NAME, FORMAT_VERSION, QUANT_METHOD, ST_DTYPES, SUFFIX_CODES

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
KNOWN_BITS = (16, 8, 4, 2, 1.58, 1)


class PackedReader:
    """Reads a bitconv folder: raw stored tensors and the per-tensor specs.

    Opening checks every rule of SPEC "Validation" on the files, their headers, the bitconv metadata and the shard
    index; `quantized_arrays` checks a weight's stored values before anyone decodes them. Anything broken is a
    FormatError naming the file (and the tensor).
    """

    def __init__(self, folder: Path):
        folder = Path(folder)
        self.folder = folder
        index = folder / INDEX_NAME
        weight_map = None
        if os.path.lexists(index):
            weight_map = read_weight_map(index)
            files = sorted(set(weight_map.values()))
        elif os.path.lexists(folder / SINGLE_NAME):
            files = [SINGLE_NAME]
        else:
            raise FormatError(f"{folder}: no {SINGLE_NAME} or {INDEX_NAME}; is this a bitconv output folder?")
        self.files = [folder / f for f in files]
        self.specs: dict[str, TensorSpec] = {}
        self.locations: dict[str, tuple[Path, dict, int]] = {}
        for path in self.files:
            header, data_start = read_safetensors_header(path)
            meta = header.pop("__metadata__", None) or {}
            for name, spec in specs_from_metadata(path, meta, header).items():
                if name in self.specs:
                    raise FormatError(f"{path}: packed weight '{name}' is also in another shard; re-convert the model")
                self.specs[name] = spec
            for name, info in header.items():
                if name in self.locations:
                    raise FormatError(f"{path}: tensor '{name}' is also stored in {self.locations[name][0].name}; "
                                      "re-convert the model")
                if weight_map is not None and weight_map.get(name) != path.name:
                    raise FormatError(f"{path}: tensor '{name}' is not mapped to this shard by {INDEX_NAME}; "
                                      "re-download or re-convert the model")
                self.locations[name] = (path, info, data_start)
        if weight_map is not None:
            missing = sorted(set(weight_map) - set(self.locations))
            if missing:
                raise FormatError(f"{index}: tensor '{missing[0]}' is mapped to {weight_map[missing[0]]}, which does "
                                  "not hold it; re-download or re-convert the model")

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
        with open_regular(path) as fh:
            fh.seek(data_start + begin)
            buf = fh.read(end - begin)
        if len(buf) != end - begin:
            raise FormatError(f"{path}: truncated while reading tensor '{name}' (the file changed after it was "
                              "opened); re-download or re-convert it")
        if dtype == "BF16":
            u16 = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
            return u16.view(np.float32).reshape(info["shape"])
        arr = np.frombuffer(buf, dtype=np.dtype(ST_DTYPES[dtype]).newbyteorder("<")).reshape(info["shape"])
        return arr.astype(arr.dtype.newbyteorder("="), copy=False)

    def quantized_arrays(self, name: str) -> dict[str, np.ndarray]:
        """The stored arrays of packed weight `name` by suffix, after checking their values (SPEC "Stored values")."""
        spec = self.specs[name]
        arrays = {suffix: self.raw(name + suffix) for suffix in spec.stored()}
        spec.check_values(arrays, f"{self.locations[name + SUFFIX_CODES][0]}: tensor '{name}'")
        return arrays

    def iter_plain(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in self.plain_names():
            yield name, self.raw(name)

    def logical_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every weight's shape as the model holds it: packed weights by their spec (a Conv1D's transposed), plain
        tensors as stored."""
        shapes = {name: tuple(self.locations[name][1]["shape"]) for name in self.plain_names()}
        for name, spec in self.specs.items():
            shapes[name] = spec.shape[::-1] if spec.layout == "conv1d" else spec.shape
        return shapes


def open_bitconv_folder(folder: str | os.PathLike) -> tuple[dict, PackedReader]:
    """config.json and the packed files of a bitconv folder, every check done: the one way every command (load,
    eval, inspect, export, push) opens a folder, so they all accept and refuse the same folders."""
    folder = Path(folder).expanduser()
    config = read_bitconv_config(folder)
    reader = PackedReader(folder)
    check_config_sizes(folder / "config.json", config, reader.logical_shapes())
    return config, reader


def read_bitconv_config(folder: Path) -> dict:
    """config.json of a bitconv output folder, after checking its quantization_config (SPEC "The folder"):
    quant_method bitconv, format bitconv-packed, format_version the integer 1, bits one of 16, 8, 4, 2, 1.58, 1."""
    folder = Path(folder)
    path = folder / "config.json"
    if not os.path.lexists(path):
        raise FormatError(f"{folder}: no config.json; is this a bitconv output folder (from `bitconv convert`)?")
    config = read_json_file(path, fix="re-convert the model")
    qc = config.get("quantization_config") if isinstance(config, dict) else None
    method = qc.get("quant_method") if isinstance(qc, dict) else None
    if method != QUANT_METHOD:
        raise FormatError(f"{folder}: not a bitconv output folder (quantization_config.quant_method is {method!r}, "
                          f"not {QUANT_METHOD!r}); convert the model with `bitconv convert` first")
    if qc.get("format") != FORMAT_NAME:
        raise FormatError(f"{path}: quantization_config.format is {qc.get('format')!r}, not {FORMAT_NAME!r}; "
                          "re-convert the model")
    version = qc.get("format_version")
    if not is_int(version) or version != FORMAT_VERSION:
        raise FormatError(f"{path}: format version {version!r}, this bitconv reads version {FORMAT_VERSION}; "
                          "upgrade bitconv")
    bits = qc.get("bits")
    if type(bits) not in (int, float) or bits not in KNOWN_BITS:
        raise FormatError(f"{path}: quantization_config.bits is {bits!r}, not one of "
                          f"{', '.join(map(str, KNOWN_BITS))}; re-convert the model")
    return config


# the model sizes of config.json that decide how much memory a model built from it takes
SIZE_KEYS = ("vocab_size", "hidden_size", "n_embd", "d_model", "embedding_size", "num_hidden_layers", "n_layer",
             "num_layers", "intermediate_size", "n_inner", "num_attention_heads", "n_head", "num_key_value_heads",
             "head_dim", "max_position_embeddings", "n_positions", "n_ctx", "type_vocab_size")
TOKEN_EMBEDDING = re.compile(r"(^|\.)(wte|embed_tokens|word_embeddings|shared|embed_in)\.weight$")
POSITION_EMBEDDING = re.compile(r"(^|\.)(wpe|position_embeddings)\.weight$")
BLOCK = re.compile(r"^((?:.*\.)?(?:layers|h|layer|blocks))\.(\d+)\.")


def check_config_sizes(path: Path, config: dict, shapes: dict[str, tuple[int, ...]]) -> None:
    """The model sizes in config.json (`path`) against the stored tensors' `shapes`, before anything is built from
    them: a config.json that says vocab_size 2^31 beside a 96-row embedding would otherwise make a model (or a
    GGUF vocabulary) of 2^31 rows. Sizes are positive integers; the vocabulary and width match the token
    embedding, the layer count the numbered blocks, the context the position embedding; an FFN width is a
    dimension some tensor has; no more heads than the width."""
    fix = "the folder's config.json does not match its weights: re-convert the model"
    for key in SIZE_KEYS:
        value = config.get(key)
        if value is not None and (not is_int(value) or value < 1):
            raise FormatError(f"{path}: {key} is {value!r}, not a positive integer; {fix}")

    def same(key: str, value, actual: int, what: str) -> None:
        if value is not None and value != actual:
            raise FormatError(f"{path}: {key} is {value}, but {what} is {actual}; {fix}")

    width = None
    token = next((s for n, s in sorted(shapes.items()) if TOKEN_EMBEDDING.search(n) and len(s) == 2), None)
    if token is not None:
        same("vocab_size", config.get("vocab_size"), token[0], "the token embedding's row count")
        width_key = next((k for k in ("embedding_size", "hidden_size", "n_embd", "d_model") if config.get(k)), None)
        if width_key:
            same(width_key, config[width_key], token[1], "the token embedding's width")
        width = token[1]
    position = next((s for n, s in sorted(shapes.items()) if POSITION_EMBEDDING.search(n) and len(s) == 2), None)
    if position is not None:
        for key in ("max_position_embeddings", "n_positions"):
            same(key, config.get(key), position[0], "the position embedding's row count")
    families: dict[str, set[int]] = {}
    for name in shapes:
        match = BLOCK.match(name)
        if match:
            families.setdefault(match.group(1), set()).add(int(match.group(2)))
    if len(families) == 1:  # one stack of blocks (not an encoder and a decoder)
        n_blocks = max(next(iter(families.values()))) + 1
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            same(key, config.get(key), n_blocks, "the number of stored blocks")
    dims = {d for s in shapes.values() for d in s}
    for key in ("intermediate_size", "n_inner"):
        value = config.get(key)
        if value is not None and value not in dims:
            raise FormatError(f"{path}: {key} is {value}, but no stored tensor has a dimension of that size; {fix}")
    for key in ("num_attention_heads", "n_head", "num_key_value_heads"):
        value = config.get(key)
        if value is not None and width is not None and value > width:
            raise FormatError(f"{path}: {key} is {value}, more than the model's width {width}; {fix}")


def read_quantization_config(folder: Path) -> dict:
    return read_bitconv_config(folder)["quantization_config"]


def is_bitconv_folder(path: str | os.PathLike) -> bool:
    """True when the folder's config.json names the bitconv method; whether the folder is readable is for
    `read_bitconv_config` and `PackedReader` to say (a folder that claims to be bitconv's is never read as
    anything else)."""
    path = Path(path) / "config.json"
    if not os.path.lexists(path):
        return False
    try:
        config = read_json_file(path, fix="re-convert the model")
    except FormatError:
        return False
    qc = config.get("quantization_config") if isinstance(config, dict) else None
    return isinstance(qc, dict) and qc.get("quant_method") == QUANT_METHOD
