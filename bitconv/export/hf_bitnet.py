"""`bitconv export FOLDER --hf-bitnet OUT/`: a folder that plain transformers loads (quant_method "bitnet").

The layout is the one transformers' BitNet integration reads (transformers/integrations/bitnet.py and
quantizers/quantizer_bitnet.py, transformers 5.x):

- `linear_class: "bitlinear"` (the default): each converted nn.Linear `X` has `X.weight`, uint8
  `[out / 4, in]`, packed along the *output* dimension: bits `2 * i` of byte `[j, c]` hold `t + 1` (0, 1, 2)
  of row `i * out / 4 + j`, column `c`; and `X.weight_scale` `[1]`, the *inverse* of the scale
  (BitLinear computes `(x_q @ T^T) / (x_scale * weight_scale)`).
- `linear_class: "autobitlinear"` with `quantization_mode: "offline"`: the same packed weight, and
  `X.weight_scale` the scale itself (AutoBitLinear computes `(x_q @ T^T) * weight_scale`).

Both classes have one scale per tensor and always quantize activations to int8 per token. A bitconv weight
that does not fit (channel or group scales, fp16 outliers, `out` not a multiple of 4) is written dequantized
as an ordinary nn.Linear weight and listed in `modules_to_not_convert`, and reported; so is every other
nn.Linear of the model (lm_head, layers kept in fp16). Models whose projections are not nn.Linear (GPT-2's
Conv1D) are refused: transformers would not replace them.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bitconv.errors import ExportError
from bitconv.export import ExportResult
from bitconv.format.atomic import check_output, staged_folder
from bitconv.format.layouts import HF_BITNET_VALUES_PER_BYTE as VALUES_PER_BYTE
from bitconv.format.layouts import pack_output_dim
from bitconv.format.reader import PackedReader, read_bitconv_config
from bitconv.format.vocab import SIDE_FILES, TRANSFORMERS_GUARD_KEY

LINEAR_CLASSES = ("bitlinear", "autobitlinear")


@dataclass
class HFBitNetExportResult(ExportResult):  # fallbacks: module name -> why it stays nn.Linear
    linear_class: str = "bitlinear"
    converted: list[str] = field(default_factory=list)  # module names now BitLinear
    not_converted: list[str] = field(default_factory=list)  # every nn.Linear left as is (fallbacks included)
    activation_note: str = ""


def _meta_model(config: dict):
    """The model skeleton on the meta device (no memory), to see which weights belong to nn.Linear modules."""
    import torch
    from transformers import AutoConfig

    from bitconv.quantize.source import model_class_for

    plain = {k: v for k, v in config.items() if k != "quantization_config"}
    hf_config = AutoConfig.for_model(**plain)
    with torch.device("meta"):
        return model_class_for(hf_config, default="AutoModelForCausalLM")(hf_config)


def _fit_problem(spec, out_rows: int) -> str:
    if spec.scheme not in ("ternary", "binary"):
        return f"scheme {spec.scheme} is not ternary"
    if spec.granularity != "tensor":
        return f"{spec.granularity} scales (BitNet layers have one scale per tensor)"
    if spec.n_outliers:
        return f"{spec.n_outliers} fp16 outliers"
    if out_rows % VALUES_PER_BYTE:
        return f"{out_rows} output rows is not a multiple of {VALUES_PER_BYTE}"
    return ""


def export_hf_bitnet(folder: Path | str, out: Path | str, *, linear_class: str = "bitlinear", force: bool = False,
                     progress: bool = True) -> HFBitNetExportResult:
    """Write a transformers BitNet folder at `out` from a bitconv folder."""
    import torch.nn as nn
    from safetensors.numpy import save_file
    from transformers.quantizers.quantizers_utils import should_convert_module

    from bitconv.display import task_progress
    from bitconv.quantize.hf_quantizer import model_weight_names
    from bitconv.quantize.schemes import decode, dequantize

    folder, out = Path(folder), Path(out)
    if linear_class not in LINEAR_CLASSES:
        raise ExportError(f"unknown linear class {linear_class!r}: use {' or '.join(LINEAR_CLASSES)}")
    config = read_bitconv_config(folder)
    qc = config["quantization_config"]
    check_output(out, force=force, inputs=[folder], option="--hf-bitnet")
    reader = PackedReader(folder)
    model = _meta_model(config)
    modules = dict(model.named_modules())
    linear_names = sorted(n for n, m in modules.items() if isinstance(m, nn.Linear))
    model_names = model_weight_names(model, reader.specs)  # as transformers renames them (ViT's attention.attention)
    kept_in_fp32 = model._keep_in_fp32_modules or []  # transformers' BitNet layers do not replace these (T5's wo)

    result = HFBitNetExportResult(out, f"hf-bitnet:{linear_class}", linear_class=linear_class)
    tensors: dict[str, np.ndarray] = {}
    non_linear = []
    with task_progress(f"writing {out.name}", total=len(reader.specs) + len(reader.plain_names()),
                       enabled=progress) as advance:
        for name, spec in sorted(reader.specs.items()):
            module_name = model_names[name].removesuffix(".weight")
            if not isinstance(modules.get(module_name), nn.Linear):
                non_linear.append(name)
                continue
            q = decode(spec, reader.quantized_arrays(name))
            problem = _fit_problem(spec, spec.shape[0]) or (
                "" if should_convert_module(module_name, kept_in_fp32) else "transformers keeps it in float32")
            if problem:
                result.fallbacks[module_name] = problem
                tensors[name] = dequantize(q).numpy().astype(np.float32)
            else:
                scale = float(q.scale.reshape(-1)[0])
                tensors[name] = pack_output_dim(q.codes.numpy())
                weight_scale = (1.0 / scale if scale else 1.0) if linear_class == "bitlinear" else scale
                tensors[name.removesuffix("weight") + "weight_scale"] = np.array([weight_scale], dtype=np.float32)
                result.converted.append(module_name)
            advance(name)
        for name in reader.plain_names():
            # float32: transformers 5 keeps each tensor's stored dtype when loading, and BitNet layers on the
            # CPU need every input in the model's float32 (fp16 embeddings would feed them fp16 activations)
            arr = reader.raw(name)
            tensors[name] = np.ascontiguousarray(arr.astype(np.float32) if arr.dtype.kind == "f" else arr)
            advance(name)
    if non_linear:
        model_type = config.get("model_type")
        raise ExportError(
            f"{folder}: {model_type} keeps its projections outside nn.Linear (e.g. '{non_linear[0]}'), which "
            "transformers' BitNet integration does not replace; --hf-bitnet supports models built from nn.Linear "
            "(the Llama family)"
        )
    if not result.converted:
        raise ExportError(f"{folder}: no weight fits transformers' BitNet layers ({next(iter(result.fallbacks.values()), 'none quantized')}); "
                           "convert with --bits 1.58 --granularity tensor")
    result.not_converted = [n for n in linear_names if n not in result.converted]
    if qc.get("activations") != "int8":
        result.activation_note = (
            "transformers' BitNet layers always quantize activations to int8 per token; this folder was converted "
            f"with activations {qc.get('activations')!r}, so outputs differ slightly from bitconv.load() "
            "(convert with --activations int8 for the same arithmetic)"
        )

    # without bitconv's quantization_config and the guard that makes transformers refuse a bitconv folder
    hf_config = {k: v for k, v in config.items() if k not in ("quantization_config", TRANSFORMERS_GUARD_KEY)}
    hf_config["dtype"] = "float32"
    hf_config["quantization_config"] = {
        "quant_method": "bitnet", "linear_class": linear_class, "quantization_mode": "offline",
        "modules_to_not_convert": result.not_converted, "use_rms_norm": False, "rms_norm_eps": 1e-6,
    }
    with staged_folder(out, option="--hf-bitnet") as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
        for name in SIDE_FILES:  # tokenizer and generation files, unchanged
            if (folder / name).is_file():
                shutil.copyfile(folder / name, tmp / name)
    return result
