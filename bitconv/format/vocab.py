"""The packed format's vocabulary (formats/SPEC.md): names, versions, suffixes, schemes and the one dtype table.

Everything that reads or writes bitconv files takes its words from here, so that a name is spelt once.
No torch: exporters, the Hub client and `inspect` use this without importing it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

FORMAT_NAME = "bitconv-packed"
FORMAT_VERSION = 1
QUANT_METHOD = "bitconv"
# config.json key and value that make transformers without bitconv refuse a folder instead of loading random
# projections (it skips an unknown quant_method); bitconv's quantizer removes them (formats/SPEC.md)
TRANSFORMERS_GUARD_KEY = "transformers_weights"
TRANSFORMERS_GUARD = "bitconv-packed weights need bitconv: pip install bitconv, then import bitconv before from_pretrained"

# keys of every packed file's safetensors __metadata__
META_FORMAT = "bitconv.format"
META_VERSION = "bitconv.format_version"
META_TENSORS = "bitconv.tensors"

# stored tensors of one quantized weight X.weight: X.weight + suffix
SUFFIX_CODES = ".qcodes"
SUFFIX_SCALE = ".qscale"
SUFFIX_ZERO = ".qzero"
SUFFIX_OUTLIER_IDX = ".outlier_idx"
SUFFIX_OUTLIER_VAL = ".outlier_val"


class Scheme(StrEnum):
    """How a weight's values are coded; FP16 is the "not quantized" choice of a conversion, never stored as a scheme."""

    TERNARY = "ternary"
    BINARY = "binary"
    INT8 = "int8"
    UINT4 = "uint4"
    UINT2 = "uint2"
    FP16 = "fp16"


class Granularity(StrEnum):
    TENSOR = "tensor"
    CHANNEL = "channel"
    GROUP = "group"


class Packing(StrEnum):
    TWO_BIT = "2bit"
    BASE3 = "base3"


class Layout(StrEnum):
    LINEAR = "linear"
    CONV1D = "conv1d"  # GPT-2's Conv1D stores [in, out]; the codes are always stored in the linear layout


class Category(StrEnum):
    """Where the bytes are, for every size report: block projections, embeddings (incl. lm_head), the rest."""

    LINEAR = "linear"
    EMBEDDING = "embedding"
    OTHER = "other"


SCHEMES = tuple(s.value for s in Scheme if s is not Scheme.FP16)  # the schemes a file may store
SCHEME_BITS = {"ternary": 2, "binary": 1, "int8": 8, "uint4": 4, "uint2": 2}  # stored bits per code
GRANULARITIES = tuple(g.value for g in Granularity)
PACKINGS = tuple(p.value for p in Packing)
CATEGORIES = tuple(c.value for c in Category)
# the user-facing widths (--bits) and the scheme each selects
BITS_TO_SCHEME = {1.58: "ternary", 1.0: "binary", 8.0: "int8", 4.0: "uint4", 2.0: "uint2", 16.0: "fp16"}


@dataclass(frozen=True)
class DType:
    """One row of the dtype table: the safetensors name, the short (numpy / torch) name, bytes per element."""

    st: str
    name: str
    itemsize: int

    @property
    def numpy(self) -> np.dtype | None:
        return None if self.st == "BF16" else np.dtype(self.name if self.name != "bool" else np.bool_)


DTYPES = (
    DType("F64", "float64", 8), DType("F32", "float32", 4), DType("F16", "float16", 2), DType("BF16", "bfloat16", 2),
    DType("I64", "int64", 8), DType("I32", "int32", 4), DType("I16", "int16", 2), DType("I8", "int8", 1),
    DType("U8", "uint8", 1), DType("BOOL", "bool", 1),
)
DTYPE_BY_ST = {d.st: d for d in DTYPES}
DTYPE_BY_NAME = {d.name: d for d in DTYPES}
ST_ITEMSIZE = {d.st: d.itemsize for d in DTYPES}
# safetensors name <-> numpy dtype, for the dtypes numpy has (not BF16)
ST_DTYPES = {d.st: d.numpy.type for d in DTYPES if d.numpy is not None}
NP_TO_ST = {d.numpy: d.st for d in DTYPES if d.numpy is not None}
FLOAT_DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64")


def torch_dtype(st: str):
    """The torch dtype of a safetensors dtype name (imports torch; None for names outside the table)."""
    import torch

    row = DTYPE_BY_ST.get(st)
    return getattr(torch, row.name) if row is not None else None


# files a converted folder carries beside the weights, copied unchanged from the source
SIDE_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
    "merges.txt", "tokenizer.model", "added_tokens.json", "generation_config.json", "chat_template.jinja",
    "sentence_bert_config.json", "modules.json", "config_sentence_transformers.json",
    "preprocessor_config.json",  # image models: resizing and normalisation of the pixels
)

def category_totals(rows, *, all_categories: bool = False, with_total: bool = False) -> dict[str, dict]:
    """The one count of parameters and bytes per category, for plans, folders, models in memory and cards.

    `rows` yields (category, n_params, n_bytes). Each category gets n_params, n_bytes and bits_per_weight
    (None without parameters); `all_categories` lists empty ones too, `with_total` adds a "total" row.
    """
    totals: dict[str, dict] = {c: {"n_params": 0, "n_bytes": 0} for c in CATEGORIES} if all_categories else {}
    for category, n_params, n_bytes in rows:
        t = totals.setdefault(category, {"n_params": 0, "n_bytes": 0})
        t["n_params"] += int(n_params)
        t["n_bytes"] += int(n_bytes)
    if with_total:
        totals["total"] = {"n_params": sum(t["n_params"] for t in totals.values()),
                           "n_bytes": sum(t["n_bytes"] for t in totals.values())}
    for t in totals.values():
        t["bits_per_weight"] = 8 * t["n_bytes"] / t["n_params"] if t["n_params"] else None
    return totals


EMBEDDING_NAME = re.compile(r"(^|\.)(wte|wpe|embed_tokens|embed_positions|word_embeddings|position_embeddings|"
                            r"token_type_embeddings|shared|lm_head|embeddings?)(\.|$)")
BLOCK_INDEX = re.compile(r"\.\d+\.")  # weights inside a repeated block: h.3., layers.11., layer.0.


def category_of(name: str, kind: str | None = None, ndim: int = 2) -> str:
    """Where the bytes are: 'linear' (projections inside the repeated blocks), 'embedding' (incl. lm_head), 'other'.

    `kind` is the module kind from the model class when known; without it the name decides.
    """
    if ndim == 2 and (kind == "embedding" or EMBEDDING_NAME.search(name)):
        return Category.EMBEDDING.value
    projection = kind in ("linear", "conv1d") or (kind is None and name.endswith(".weight"))
    if ndim == 2 and projection and BLOCK_INDEX.search(name):
        return Category.LINEAR.value
    return Category.OTHER.value
