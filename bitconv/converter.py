"""The conversion plan (which tensor gets which scheme) and the streaming pipeline that carries it out.

source -> plan -> quantize -> pack -> write. The plan is computed from tensor names, shapes and module kinds
alone, so the output files' layout is known before any weight is read; the weights then stream through one
at a time into files written under a temporary folder that is renamed into place at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bitconv.errors import BitconvError
from bitconv.format import (
    FORMAT_NAME, FORMAT_VERSION, NP_TO_ST, QUANT_METHOD, FilePlan, PlannedTensor, StreamingSafetensorsWriter,
    TensorSpec, shard_names, split_into_shards, write_json_atomic,
)
from bitconv.schemes import QuantConfig, encode, quantize, spec_for
from bitconv.source import TOKENIZER_FILES, Source, module_kinds, open_source, resolve_name

EMBEDDING_NAME = re.compile(r"(^|\.)(wte|wpe|embed_tokens|embed_positions|word_embeddings|position_embeddings|"
                            r"token_type_embeddings|shared|lm_head|embeddings?)(\.|$)")
BLOCK_INDEX = re.compile(r"\.\d+\.")  # weights inside a repeated block: h.3., layers.11., layer.0.
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")
UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(KB|MB|GB|TB)?\s*", str(text).upper())
    if not m:
        raise BitconvError(f"cannot read size {text!r}: write e.g. 2GB or 500MB")
    return int(float(m.group(1)) * UNITS.get(m.group(2) or "", 1))


def category_of(name: str, kind: str | None = None, ndim: int = 2) -> str:
    """Where the bytes are: 'linear' (projections inside the repeated blocks), 'embedding' (incl. lm_head), 'other'.

    `kind` is the module kind from the model class when known; without it the name decides.
    """
    if ndim == 2 and (kind == "embedding" or EMBEDDING_NAME.search(name)):
        return "embedding"
    projection = kind in ("linear", "conv1d") or (kind is None and name.endswith(".weight"))
    if ndim == 2 and projection and BLOCK_INDEX.search(name):
        return "linear"
    return "other"


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

    def totals(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for r in self.rows:
            t = out.setdefault(r.category, {"n_params": 0, "n_bytes": 0})
            t["n_params"] += r.n_params
            t["n_bytes"] += r.n_bytes
        return out


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
            raise BitconvError(f"--keep/--only pattern {pattern!r} is not a valid regular expression ({exc})") from None
    rows = []
    for name, shape, dtype in names_shapes_dtypes:
        param = resolve_name(name, known, prefix)
        kind = kinds.get(param) if param else None
        category = category_of(name, kind, len(shape)) if dtype in FLOAT_DTYPES else "other"
        is_matrix = len(shape) == 2 and name.endswith(".weight")
        row = PlanRow(name, tuple(shape), dtype, category, "fp16", "kept in float16")
        if dtype not in FLOAT_DTYPES:
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
        if row.action not in ("fp16", "copy"):
            out_in = (shape[1], shape[0]) if kind == "conv1d" else tuple(shape)
            # explicit fp16 positions (super weights from `recover`) replace the --keep-outliers count
            explicit = len(set(outliers[name])) if outliers and name in outliers else None
            row.spec = spec_for(cfg, out_in, row.action, "conv1d" if kind == "conv1d" else "linear", dtype, explicit)
            row.stored = [PlannedTensor(name + suffix, dt, shp) for suffix, (dt, shp) in row.spec.stored().items()]
        elif row.action == "copy":
            st = {"int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
            if dtype not in st:
                raise BitconvError(f"tensor '{name}' has dtype {dtype}, which bitconv cannot store")
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
        raise BitconvError(f"outliers given for '{unplanned[0]}', which this conversion does not quantize")
    if cfg.scheme != "fp16" and not plan.quantized:
        raise BitconvError(f"{src.spec}: no quantizable layers found (2-D projection weights inside repeated blocks); "
                           "check the model, or select tensors with --only PATTERN")
    return plan


@dataclass
class ConversionResult:
    out: Path
    plan: Plan
    source_bytes: int
    output_bytes: int
    seconds: float


def _source_label(src: Source) -> str:
    """How outputs name their source: the Hub id, or a local folder's / file's name -- never the path, so the
    same checkpoint converted from two places gives the same bytes."""
    return src.spec if src.kind == "hub" else Path(src.spec).name


def _quantization_config(cfg: QuantConfig, src: Source) -> dict:
    return {"quant_method": QUANT_METHOD, "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            **cfg.to_dict(), "source": _source_label(src), "source_revision": src.revision}


def _write_config(src: Source, cfg: QuantConfig, folder: Path) -> None:
    config = src.config.to_dict()
    config["quantization_config"] = _quantization_config(cfg, src)
    config["_name_or_path"] = _source_label(src)  # transformers records the absolute folder it read
    write_json_atomic(folder / "config.json", config)


def _copy_side_files(src: Source, folder: Path) -> None:
    if src.kind == "gguf":
        from bitconv.source import load_tokenizer

        load_tokenizer(Path(src.folder) / src.gguf_file).save_pretrained(str(folder))
        return
    for name in TOKENIZER_FILES:
        path = Path(src.folder) / name
        if path.exists():
            shutil.copyfile(path, folder / name)


def _model_card(src: Source, cfg: QuantConfig, plan: Plan) -> str:
    lines = [f"# {Path(str(src.spec)).name} converted by bitconv", "",
             f"Source: `{_source_label(src)}`" + (f" (revision `{src.revision}`)" if src.revision else ""),
             f"Format: {FORMAT_NAME} version {FORMAT_VERSION} (see bitconv's formats/SPEC.md)", "",
             "| category | parameters | bytes |", "|---|---|---|"]
    for category, t in sorted(plan.totals().items()):
        lines.append(f"| {category} | {t['n_params']:,} | {t['n_bytes']:,} |")
    lines += ["", "Options:", "", "```json", json.dumps(cfg.to_dict(), indent=2, sort_keys=True), "```", "",
              "Naive post-training ternarization of a pretrained model usually destroys its accuracy: "
              "measure it with `bitconv eval` and recover it with `bitconv recover`.", ""]
    return "\n".join(lines)


def _to_array(tensor: torch.Tensor, planned: PlannedTensor) -> np.ndarray:
    if planned.st_dtype == "F16":
        return tensor.detach().to(torch.float16).contiguous().numpy()
    arr = tensor.detach().contiguous().numpy()
    assert NP_TO_ST[arr.dtype] == planned.st_dtype
    return arr


def _emit(row: PlanRow, tensor: torch.Tensor, cfg: QuantConfig, file_of: str,
          outlier_idx: list[int] | None = None) -> dict[str, np.ndarray]:
    if row.spec is None:
        return {row.name: _to_array(tensor, row.stored[0])}
    weight = tensor.t() if row.spec.layout == "conv1d" else tensor
    explicit = torch.tensor(outlier_idx, dtype=torch.long) if outlier_idx is not None else None
    try:
        q = quantize(weight, cfg, scheme=row.spec.scheme, layout=row.spec.layout, source_dtype=row.source_dtype,
                     outlier_idx=explicit)
    except BitconvError as exc:  # name the file and tensor, say how to get past it
        raise BitconvError(f"{file_of}: tensor '{row.name}' {exc}; repair the checkpoint or keep it in float16 "
                           f"with --keep '{re.escape(row.name)}'") from None
    if q.spec != row.spec:
        raise BitconvError(f"internal error: tensor '{row.name}' quantized as {q.spec}, planned {row.spec}")
    return {row.name + suffix: arr for suffix, arr in encode(q).items()}


def convert(source: str | os.PathLike, out: str | os.PathLike, bits: float | str = 1.58, *,
            granularity: str | None = None, scale: str = "absmean", packing: str = "2bit",
            keep_outliers: float | str = 0.0, embeddings: str = "fp16", activations: str = "none",
            keep: tuple[str, ...] = (), only: tuple[str, ...] = (), revision: str | None = None,
            force: bool = False, dry_run: bool = False, allow_pickle: bool = False,
            outliers: dict[str, list[int]] | None = None,
            max_shard_size: str | int = "2GB", progress: bool = True) -> ConversionResult:
    """Convert a checkpoint (Hub id, folder or .gguf) into a packed bitconv folder at `out`.

    `outliers` maps a quantized tensor's name to flat indices into its [out, in] weight that are kept in
    fp16 (super weights found by `bitconv recover --super-weights`), instead of the `keep_outliers` choice.
    """
    from bitconv.schemes import parse_fraction

    start = time.perf_counter()
    cfg = QuantConfig.for_bits(bits, granularity, scale_method=scale, packing=packing,
                               keep_outliers=parse_fraction(keep_outliers), embeddings=embeddings,
                               activations=activations, keep=tuple(keep), only=tuple(only))
    out = Path(out).expanduser()
    if out.exists() and not force and not dry_run:
        raise BitconvError(f"{out} already exists; choose another --out or pass --force to replace it")
    src = open_source(source, revision=revision, allow_pickle=allow_pickle)
    if out.resolve() == Path(src.folder).resolve():
        raise BitconvError(f"{out} is the source folder; bitconv never writes into its input, choose another --out")
    plan = plan_for_source(src, cfg, outliers)
    if dry_run:
        return ConversionResult(out, plan, src.n_bytes, sum(r.n_bytes for r in plan.rows), time.perf_counter() - start)

    max_bytes = parse_size(max_shard_size) if isinstance(max_shard_size, str) else int(max_shard_size)
    shards = split_into_shards([r.stored for r in plan.rows], max_bytes)
    names = shard_names(len(shards))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    writers: list[StreamingSafetensorsWriter] = []
    try:
        file_plans = []
        for fname, tensors in zip(names, shards):
            fp = FilePlan(fname, tensors)
            stored_names = {t.name for t in tensors}
            fp.specs = {r.name: r.spec for r in plan.quantized if r.stored[0].name in stored_names}
            file_plans.append(fp)
        writers = [StreamingSafetensorsWriter(tmp / fp.filename, fp) for fp in file_plans]
        writer_of = {t.name: w for w, fp in zip(writers, file_plans) for t in fp.tensors}
        from bitconv.progress import task_progress

        with task_progress(f"converting {src.spec}", total=len(plan.rows), enabled=progress) as advance:
            for row in plan.rows:
                explicit = (outliers or {}).get(row.name)
                for name, arr in _emit(row, src.get(row.name), cfg, src.file_of(row.name), explicit).items():
                    writer_of[name].write(name, arr)
                advance(row.name)
        for w in writers:
            w.close()
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(fp.n_bytes for fp in file_plans), "format": FORMAT_NAME},
                     "weight_map": {t.name: fp.filename for fp in file_plans for t in fp.tensors}}
            write_json_atomic(tmp / "model.safetensors.index.json", index)
        _write_config(src, cfg, tmp)
        _copy_side_files(src, tmp)
        (tmp / "README.md").write_text(_model_card(src, cfg, plan))
        if out.exists():
            old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:  # includes KeyboardInterrupt: never leave a half-written folder behind
        for w in writers:
            if not w.fh.closed:
                w.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    output_bytes = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    return ConversionResult(out, plan, src.n_bytes, output_bytes, time.perf_counter() - start)
