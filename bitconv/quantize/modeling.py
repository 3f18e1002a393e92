"""Torch modules for packed weights and `load()`, which turns a bitconv folder into a transformers model.

`PackedLinear` keeps the stored codes in memory exactly as the file has them and unpacks them in forward
(torch bit operations); `load(..., dequantize=True)` instead decodes every weight once into ordinary
modules, which is faster to run and uses float memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bitconv.errors import FormatError
from bitconv.format.reader import is_bitconv_folder, open_bitconv_folder
from bitconv.format.spec import TensorSpec
from bitconv.format.vocab import (
    SUFFIX_CODES,
    SUFFIX_OUTLIER_IDX,
    SUFFIX_OUTLIER_VAL,
    SUFFIX_SCALE,
    SUFFIX_ZERO,
    category_of,
)
from bitconv.quantize.config import QuantConfig
from bitconv.quantize.kinds import module_kind
from bitconv.quantize.schemes import QuantizedWeight, decode, expand, quantize_activations_int8
from bitconv.quantize.schemes import dequantize as dequantize_weight
from bitconv.quantize.source import check_model_shapes, load_config, model_class_for, resolve_name

_SHIFTS = {bits: torch.arange(0, 8, bits, dtype=torch.uint8) for bits in (1, 2, 4)}
_POW3 = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int16)


def unpack_codes_torch(spec: TensorSpec, packed: torch.Tensor) -> torch.Tensor:
    """Stored codes -> int8 codes [out, in]; the torch twin of bitconv.quantize.schemes.decode_codes (tested equal)."""
    out, n_in = spec.shape
    if spec.scheme == "int8":
        return packed.to(torch.int8)
    if spec.scheme == "ternary" and spec.packing == "base3":
        rest = packed.to(torch.int16).unsqueeze(-1)
        digits = (rest // _POW3) % 3
        return (digits.reshape(out, -1)[:, :n_in] - 1).to(torch.int8)
    bits = {"ternary": 2, "binary": 1, "uint4": 4, "uint2": 2}[spec.scheme]
    codes = (packed.unsqueeze(-1) >> _SHIFTS[bits].to(packed.device)) & ((1 << bits) - 1)
    codes = codes.reshape(out, -1)[:, :n_in].to(torch.int8)
    if spec.scheme == "ternary":
        return codes - 2
    if spec.scheme == "binary":
        return codes * 2 - 1
    return codes


class PackedLinear(nn.Module):
    """A linear layer whose weight stays packed (2-bit ternary, base-3, 1-bit, 4/2-bit or int8) in memory."""

    def __init__(self, spec: TensorSpec, arrays: dict, bias: torch.Tensor | None = None, activations: str = "none"):
        super().__init__()
        self.spec = spec
        self.activations = activations
        self.in_features, self.out_features = spec.shape[1], spec.shape[0]
        self.register_buffer("qcodes", torch.from_numpy(arrays[SUFFIX_CODES].copy()))
        self.register_buffer("qscale", torch.from_numpy(arrays[SUFFIX_SCALE].copy()).float())
        for suffix, attr in ((SUFFIX_ZERO, "qzero"), (SUFFIX_OUTLIER_IDX, "outlier_idx"), (SUFFIX_OUTLIER_VAL, "outlier_val")):
            self.register_buffer(attr, torch.from_numpy(arrays[suffix].copy()) if suffix in arrays else None)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    def weight_float(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        spec = self.spec
        codes = unpack_codes_torch(spec, self.qcodes).to(torch.float32)
        if self.qzero is not None:
            codes = codes - expand(self.qzero.float(), spec.shape, spec.granularity, spec.group_size)
        w = codes * expand(self.qscale.float(), spec.shape, spec.granularity, spec.group_size)
        if self.outlier_idx is not None and self.outlier_idx.numel():
            w = w.reshape(-1)
            w[self.outlier_idx] = self.outlier_val.float()
            w = w.reshape(spec.shape)
        return w.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activations == "int8":
            x = quantize_activations_int8(x)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight_float(x.dtype), bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.spec.scheme}, "
                f"granularity={self.spec.granularity}, activations={self.activations}")


def _quantize_input_hook(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: a dequantized linear (or Conv1D) still rounds its input to int8 per token (W1.58A8)."""
    return (quantize_activations_int8(args[0]),) + tuple(args[1:])


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_name, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def load(path: str | os.PathLike, *, dequantize: bool = False, dtype: torch.dtype = torch.float32,
         model_class=None):
    """A bitconv folder as a transformers model (eval mode), built from the class named in config.json.

    Quantized projections become `PackedLinear` (codes kept packed), or
    ordinary float modules decoded once (`dequantize=True`). `model.bitconv_config` holds the quantization_config.
    """
    folder = Path(path).expanduser()
    raw_config, reader = open_bitconv_folder(folder)  # every file check, and config.json's sizes against the tensors
    qc = raw_config["quantization_config"]
    cfg = QuantConfig.from_dict(qc)
    config = load_config(folder, error=FormatError)
    if hasattr(config, "quantization_config"):
        # transformers would look for a quantizer named "bitconv"; the weights are ours to place
        delattr(config, "quantization_config")
    cls = model_class or model_class_for(config, error=FormatError, where=str(folder / "config.json"))
    check_model_shapes(cls, config, reader.logical_shapes(), str(folder))  # on the meta device, before any memory
    torch.manual_seed(0)  # parameters missing from the file (none expected) would be initialised reproducibly
    model = cls.from_config(config) if cls.__name__.startswith("Auto") else cls(config)
    prefix = getattr(model, "base_model_prefix", "") or ""
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    known = set(params) | set(buffers)

    state = {}
    for name, arr in reader.iter_plain():
        target = resolve_name(name, known, prefix)
        if target is None:
            raise FormatError(f"{folder}: tensor '{name}' has no place in {cls.__name__}; the folder does not match its config.json")
        state[target] = torch.from_numpy(arr.copy())
    packed_modules = []
    for name, spec in reader.specs.items():
        target = resolve_name(name, known, prefix)
        if target is None or not target.endswith(".weight"):
            raise FormatError(f"{folder}: quantized tensor '{name}' has no place in {cls.__name__}")
        mod_path = target[: -len(".weight")]
        module = model.get_submodule(mod_path)
        arrays = reader.quantized_arrays(name)
        bias_name = mod_path + ".bias"
        bias = state.pop(bias_name, None) if bias_name in params else None
        # the activation mode belongs to the block projections; an int8 embedding or lm_head keeps float inputs
        activations = "none" if category_of(name, module_kind(module)) == "embedding" else cfg.activations
        # an embedding table is looked up, not multiplied: it is decoded once (a tied lm_head shares it)
        if dequantize or isinstance(module, nn.Embedding):
            weight = dequantize_weight(decode(spec, arrays))
            state[target] = weight.t().contiguous() if spec.layout == "conv1d" else weight
            if bias is not None:
                state[bias_name] = bias
            if activations == "int8":
                module.register_forward_pre_hook(_quantize_input_hook)
        else:
            _set_module(model, mod_path, PackedLinear(spec, arrays, bias, activations))
            packed_modules.append(mod_path + ".")
    missing, unexpected = model.load_state_dict(state, strict=False)
    # old checkpoints carry buffers that newer transformers rebuild itself (non-persistent), e.g. position_ids
    unexpected = [u for u in unexpected if u not in buffers]
    if unexpected:
        raise FormatError(f"{folder}: tensors {unexpected[:3]} do not fit {cls.__name__}")
    tied = set(_tied_parameter_names(model))
    really_missing = [m for m in missing if m not in tied and not m.startswith(tuple(packed_modules))]
    if really_missing:
        raise FormatError(f"{folder}: weights {really_missing[:3]} are missing from the packed files; re-convert the model")
    model.tie_weights()
    model.bitconv_config = qc
    return model.to(dtype).eval()


def _tied_parameter_names(model) -> list[str]:
    """Parameters that share storage with an earlier one (e.g. lm_head.weight tied to the embeddings)."""
    seen, tied = {}, []
    for name, p in model.named_parameters(remove_duplicate=False):
        if p.data_ptr() in seen:
            tied.append(name)
        seen.setdefault(p.data_ptr(), name)
    tied_keys = getattr(model, "_tied_weights_keys", None) or []
    if isinstance(tied_keys, dict):
        tied_keys = list(tied_keys)
    return tied + list(tied_keys)


def load_any(source: str | os.PathLike, dtype: torch.dtype = torch.float32, model_class=None):
    """A bitconv folder through `load()`, anything else (Hub id, folder, GGUF) as the original model."""
    from bitconv.quantize.source import load_original

    if Path(str(source)).expanduser().is_dir() and is_bitconv_folder(Path(str(source)).expanduser()):
        return load(source, dtype=dtype, model_class=model_class)
    return load_original(source, dtype=dtype, model_class=model_class)


def packed_weight(module: PackedLinear) -> QuantizedWeight:
    """The stored arrays of a PackedLinear as a QuantizedWeight (for exporters)."""
    arrays = {SUFFIX_CODES: module.qcodes.numpy(), SUFFIX_SCALE: module.qscale.numpy()}
    for suffix, attr in ((SUFFIX_ZERO, "qzero"), (SUFFIX_OUTLIER_IDX, "outlier_idx"), (SUFFIX_OUTLIER_VAL, "outlier_val")):
        if getattr(module, attr) is not None:
            arrays[suffix] = getattr(module, attr).numpy()
    return decode(module.spec, arrays)
