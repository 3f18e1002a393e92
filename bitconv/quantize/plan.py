"""The conversion plan: from names, shapes and module kinds alone, what happens to each tensor and how many
bytes it will take. `convert` writes what the plan says; `recover` trains exactly the tensors it quantizes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from bitconv.errors import OptionError, SourceError
from bitconv.format.spec import PlannedTensor, TensorSpec
from bitconv.format.vocab import FLOAT_DTYPE_NAMES, category_of, category_totals
from bitconv.quantize.config import QuantConfig
from bitconv.quantize.schemes import spec_for
from bitconv.quantize.source import Source, module_kinds, resolve_name


@dataclass
class PlanRow:
    name: str
    shape: tuple[int, ...]
    source_dtype: str
    category: str
    action: str  # a scheme name (ternary, int8, ...), "fp16", or "copy" (non-float tensors)
    reason: str
    spec: TensorSpec | None = None
    stored: list[PlannedTensor] = field(default_factory=list)

    @property
    def n_params(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def n_bytes(self) -> int:
        return sum(t.n_bytes for t in self.stored)


@dataclass
class Plan:
    rows: list[PlanRow]
    cfg: QuantConfig

    @property
    def quantized(self) -> list[PlanRow]:
        return [r for r in self.rows if r.spec is not None]

    def totals(self) -> dict[str, dict]:
        return category_totals((r.category, r.n_params, r.n_bytes) for r in self.rows)


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(re.search(p, name) for p in patterns)


def make_plan(names_shapes_dtypes: list[tuple[str, tuple[int, ...], str]], cfg: QuantConfig,
              kinds: dict[str, str] | None = None, prefix: str = "",
              outliers: dict[str, list[int]] | None = None) -> Plan:
    """Decide, from names, shapes and module kinds alone, what happens to each tensor."""
    kinds = kinds or {}
    known = set(kinds)
    for pattern in cfg.keep + cfg.only:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise OptionError(f"--keep/--only pattern {pattern!r} is not a valid regular expression ({exc})") from None
    rows = []
    for name, shape, dtype in names_shapes_dtypes:
        param = resolve_name(name, known, prefix)
        kind = kinds.get(param) if param else None
        category = category_of(name, kind, len(shape)) if dtype in FLOAT_DTYPE_NAMES else "other"
        is_matrix = len(shape) == 2 and name.endswith(".weight")
        row = PlanRow(name, tuple(shape), dtype, category, "fp16", "kept in float16")
        if dtype not in FLOAT_DTYPE_NAMES:
            row.action, row.reason = "copy", "not a float tensor"
        elif cfg.scheme == "fp16":
            row.reason = "--bits 16"
        elif _matches(name, cfg.keep):
            row.reason = "--keep"
        elif cfg.only and not _matches(name, cfg.only):
            row.reason = "not matched by --only"
        elif category == "embedding" and is_matrix:
            if cfg.embeddings == "int8":
                row.action, row.reason = "int8", "--embeddings int8"
            else:
                row.reason = "embeddings/lm_head stay float16 (--embeddings int8 to quantize)"
        elif is_matrix and (category == "linear" or (cfg.only and kind in ("linear", "conv1d"))):
            row.action, row.reason = cfg.scheme, "--only" if cfg.only else "block projection"
        elif is_matrix and kind in ("linear", "conv1d"):
            row.reason = "projection outside the repeated blocks (head); --only to quantize it"
        elif is_matrix and kind is not None:
            row.reason = f"held by a module of kind '{kind}', not a Linear/Conv1D projection"
        elif len(shape) != 2:
            row.reason = f"{len(shape)}-D: norms, biases and convolutions stay float16"
        if row.action not in ("fp16", "copy"):
            out_in = (shape[1], shape[0]) if kind == "conv1d" else tuple(shape)
            # explicit fp16 positions (super weights from `recover`) replace the --keep-outliers count
            explicit = len(set(outliers[name])) if outliers and name in outliers else None
            row.spec = spec_for(cfg, out_in, row.action, "conv1d" if kind == "conv1d" else "linear", dtype, explicit)
            row.stored = [PlannedTensor(name + suffix, dt, shp) for suffix, (dt, shp) in row.spec.stored().items()]
        elif row.action == "copy":
            st = {"int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
            if dtype not in st:
                raise SourceError(f"tensor '{name}' has dtype {dtype}, which bitconv cannot store")
            row.stored = [PlannedTensor(name, st[dtype], tuple(shape))]
        else:
            row.stored = [PlannedTensor(name, "F16", tuple(shape))]
        rows.append(row)
    return Plan(rows, cfg)


def plan_for_source(src: Source, cfg: QuantConfig, outliers: dict[str, list[int]] | None = None) -> Plan:
    kinds, prefix = module_kinds(src.config)
    plan = make_plan([(n, src.shape(n), src.dtype(n)) for n in src.names()], cfg, kinds, prefix, outliers)
    unplanned = sorted(set(outliers or {}) - {r.name for r in plan.quantized})
    if unplanned:
        raise OptionError(f"outliers given for '{unplanned[0]}', which this conversion does not quantize")
    return plan
