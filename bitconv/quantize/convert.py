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
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bitconv.display import task_progress
from bitconv.errors import BitconvError, InternalError, OptionError, SourceError
from bitconv.format.atomic import check_output, staged_folder, write_json_atomic
from bitconv.format.safetensors import StreamingSafetensorsWriter, shard_names, split_into_shards
from bitconv.format.spec import FilePlan, PlannedTensor
from bitconv.format.vocab import (
    FORMAT_NAME,
    FORMAT_VERSION,
    NP_TO_ST,
    QUANT_METHOD,
    SIDE_FILES,
    TRANSFORMERS_GUARD,
    TRANSFORMERS_GUARD_KEY,
)
from bitconv.quantize.config import QuantConfig, parse_size
from bitconv.quantize.plan import Plan, PlanRow, plan_for_source
from bitconv.quantize.schemes import encode, quantize
from bitconv.quantize.source import Source, open_source
from bitconv.report.model_card import conversion_card


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


def _float_dtype(source_dtype: str | None) -> str:
    """config.json's dtype, what `from_pretrained` computes in by default: the folder stores its float tensors in
    float16, so a float32 source would double them in memory; a bfloat16 source keeps bfloat16's range."""
    return "bfloat16" if source_dtype == "bfloat16" else "float16"


def _write_config(src: Source, cfg: QuantConfig, folder: Path) -> None:
    config = src.config.to_dict()
    config["quantization_config"] = _quantization_config(cfg, src)
    config["dtype"] = _float_dtype(config.get("dtype"))
    config[TRANSFORMERS_GUARD_KEY] = TRANSFORMERS_GUARD
    config["_name_or_path"] = _source_label(src)  # transformers records the absolute folder it read
    write_json_atomic(folder / "config.json", config)


def _copy_side_files(src: Source, folder: Path) -> None:
    if src.kind == "gguf":
        from bitconv.quantize.source import load_tokenizer

        load_tokenizer(Path(src.folder) / src.gguf_file).save_pretrained(str(folder))
        return
    for name in SIDE_FILES:
        path = Path(src.folder) / name
        if path.exists():
            shutil.copyfile(path, folder / name)
    _copy_sentence_transformers_modules(Path(src.folder), folder)


def _copy_sentence_transformers_modules(source: Path, folder: Path) -> None:
    """sentence-transformers keeps the modules after the transformer (pooling, normalisation, dense layers) in the
    sub-folders modules.json names; SentenceTransformer(folder) needs them, unchanged."""
    modules = source / "modules.json"
    if not modules.is_file():
        return
    for module in json.loads(modules.read_text()):
        path = Path(module.get("path") or ".")
        if path != Path(".") and not path.is_absolute() and ".." not in path.parts and (source / path).is_dir():
            shutil.copytree(source / path, folder / path)


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
        raise SourceError(f"{file_of}: tensor '{row.name}' {exc}; repair the checkpoint or keep it in float16 "
                           f"with --keep '{re.escape(row.name)}'") from None
    if q.spec != row.spec:
        raise InternalError(f"tensor '{row.name}' quantized as {q.spec}, planned {row.spec}")
    return {row.name + suffix: arr for suffix, arr in encode(q).items()}


def convert(source: str | os.PathLike, out: str | os.PathLike, config: QuantConfig | None = None, *,
            revision: str | None = None, force: bool = False, dry_run: bool = False, allow_pickle: bool = False,
            outliers: dict[str, list[int]] | None = None, max_shard_size: str | int = "2GB",
            progress: bool = True) -> ConversionResult:
    """Convert a checkpoint (Hub id, folder or .gguf) into a packed bitconv folder at `out`.

    `config` holds every quantization option (default: BitNet b1.58 ternary, `QuantConfig()`); the keywords
    are about input and output only. `outliers` maps a quantized tensor's name to flat indices into its
    [out, in] weight that are kept in fp16 (super weights found by `bitconv recover --super-weights`),
    instead of the `keep_outliers` choice.
    """
    start = time.perf_counter()
    cfg = config if config is not None else QuantConfig()
    if not isinstance(cfg, QuantConfig):
        raise OptionError(f"config must be a QuantConfig, not {type(cfg).__name__}; e.g. QuantConfig.for_bits(1.58)")
    max_bytes = parse_size(max_shard_size) if isinstance(max_shard_size, str) else int(max_shard_size)
    out = Path(out).expanduser()
    source_path = Path(str(source)).expanduser()
    local_inputs = [source_path] if source_path.exists() else []
    if not dry_run:
        check_output(out, force=force, inputs=local_inputs)
    src = open_source(source, revision=revision, allow_pickle=allow_pickle)
    if not dry_run:
        check_output(out, force=force, inputs=[src.folder])
    plan = plan_for_source(src, cfg, outliers)
    if cfg.scheme != "fp16" and not plan.quantized and not dry_run:  # a dry run shows the plan and why
        raise SourceError(f"{src.spec}: no quantizable layers found (2-D Linear/Conv1D projection weights inside "
                          "repeated blocks); check the model, or select tensors with --only PATTERN")
    if dry_run:
        return ConversionResult(out, plan, src.n_bytes, sum(r.n_bytes for r in plan.rows), time.perf_counter() - start)

    shards = split_into_shards([r.stored for r in plan.rows], max_bytes)
    names = shard_names(len(shards))
    writers: list[StreamingSafetensorsWriter] = []
    try:
        with staged_folder(out) as tmp:
            file_plans = []
            for fname, tensors in zip(names, shards):
                fp = FilePlan(fname, tensors)
                stored_names = {t.name for t in tensors}
                fp.specs = {r.name: r.spec for r in plan.quantized if r.stored[0].name in stored_names}
                file_plans.append(fp)
            writers = [StreamingSafetensorsWriter(tmp / fp.filename, fp) for fp in file_plans]
            writer_of = {t.name: w for w, fp in zip(writers, file_plans) for t in fp.tensors}
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
            card = conversion_card(Path(str(src.spec)).name, _source_label(src), src.revision, cfg.to_dict(), plan.totals())
            (tmp / "README.md").write_text(card)
    except BaseException:  # includes KeyboardInterrupt: close what is open; staged_folder removed the files
        for w in writers:
            if not w.fh.closed:
                w.abort()
        raise
    output_bytes = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    return ConversionResult(out, plan, src.n_bytes, output_bytes, time.perf_counter() - start)
