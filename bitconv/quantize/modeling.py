"""Torch modules that keep packed weights in memory as the file stores them, and `load()`.

`load()` is a thin call of transformers' `from_pretrained`: bitconv registers a quantizer for `quant_method:
bitconv` with transformers (bitconv.quantize.hf_quantizer), which puts these modules in place of the quantized
weights' modules and lets transformers read the stored tensors into them, with its own key renaming, device_map,
dtype and Hub download. `AutoModelFor...from_pretrained(folder)` after `import bitconv` gives the same model.

- `PackedLinear` (projections, also GPT-2's Conv1D) and `PackedEmbedding` (an `nn.Embedding` stored as int8) hold
  the codes, scales, zero points and outliers as buffers named after the stored suffixes (`qcodes`, `qscale`, ...).
  A PackedLinear decodes its weight in forward; on a GPU it keeps the decoded weight after the first forward by
  default (`weight_cache`): as fast as the float model, at its memory. `set_weight_cache(model, False)` decodes every
  forward instead and keeps only the codes. A PackedEmbedding decodes only the rows it looks up.
- `TiedPacked` stands where a module was tied to a packed embedding (GPT-2's lm_head): it stores nothing and decodes
  the embedding's codes.
- `dequantize_modules` (transformers' `model.dequantize()`, `load(..., dequantize=True)`) turns all of them into
  ordinary modules once: faster on a CPU, float memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bitconv.errors import FormatError, SourceError
from bitconv.format.spec import TensorSpec
from bitconv.format.vocab import (
    QUANT_METHOD,
    SUFFIX_CODES,
    SUFFIX_OUTLIER_IDX,
    SUFFIX_OUTLIER_VAL,
    SUFFIX_SCALE,
    SUFFIX_ZERO,
    torch_dtype,
)
from bitconv.quantize.schemes import QuantizedWeight, decode, expand, quantize_activations_int8

# every stored tensor of a quantized weight X.weight is X.weight + suffix; its module holds it as buffer suffix[1:]
STORED_SUFFIXES = (SUFFIX_CODES, SUFFIX_SCALE, SUFFIX_ZERO, SUFFIX_OUTLIER_IDX, SUFFIX_OUTLIER_VAL)
_SHIFTS = {bits: torch.arange(0, 8, bits, dtype=torch.uint8) for bits in (1, 2, 4)}
_POW3 = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int16)


def unpack_codes_torch(spec: TensorSpec, packed: torch.Tensor) -> torch.Tensor:
    """Stored code rows -> int8 codes [rows, in]; the torch twin of bitconv.quantize.schemes.decode_codes (tested equal).

    `packed` holds all rows of the weight or any subset of them (an embedding's looked-up rows).
    """
    n_rows, n_in = packed.shape[0], spec.shape[1]
    if spec.scheme == "int8":
        return packed.to(torch.int8)
    if spec.scheme == "ternary" and spec.packing == "base3":
        digits = (packed.to(torch.int16).unsqueeze(-1) // _POW3.to(packed.device)) % 3
        return (digits.reshape(n_rows, -1)[:, :n_in] - 1).to(torch.int8)
    bits = {"ternary": 2, "binary": 1, "uint4": 4, "uint2": 2}[spec.scheme]
    codes = (packed.unsqueeze(-1) >> _SHIFTS[bits].to(packed.device)) & ((1 << bits) - 1)
    codes = codes.reshape(n_rows, -1)[:, :n_in].to(torch.int8)
    if spec.scheme == "ternary":
        return codes - 2
    if spec.scheme == "binary":
        return codes * 2 - 1
    return codes


def register_stored_buffers(module: nn.Module, spec: TensorSpec, device: torch.device | str | None = None) -> None:
    """Empty buffers for the tensors `spec` stores (absent ones registered as None), for transformers to fill."""
    stored = spec.stored()
    for suffix in STORED_SUFFIXES:
        if suffix in stored:
            st_dtype, shape = stored[suffix]
            module.register_buffer(suffix[1:], torch.empty(shape, dtype=torch_dtype(st_dtype), device=device))
        else:
            module.register_buffer(suffix[1:], None)


def decode_stored(module: nn.Module, spec: TensorSpec, dtype: torch.dtype = torch.float32,
                  rows: torch.Tensor | None = None) -> torch.Tensor:
    """The float weight [out, in] (or only `rows` of it) from a module's stored buffers (register_stored_buffers)."""
    if rows is not None and module.outlier_idx is not None and module.outlier_idx.numel():
        return decode_stored(module, spec, dtype)[rows]  # outliers are flat indices into the whole weight

    def take(t: torch.Tensor) -> torch.Tensor:
        return t if rows is None else t[rows]

    w = unpack_codes_torch(spec, take(module.qcodes)).to(torch.float32)
    shape = (w.shape[0], spec.shape[1])
    if module.qzero is not None:
        w = w - expand(take(module.qzero).float(), shape, spec.granularity, spec.group_size)
    scale = module.qscale if spec.granularity == "tensor" else take(module.qscale)
    w = w * expand(scale.float(), shape, spec.granularity, spec.group_size)
    if module.outlier_idx is not None and module.outlier_idx.numel():
        w = w.reshape(-1)
        w[module.outlier_idx] = module.outlier_val.float()
        w = w.reshape(shape)
    return w.to(dtype)


def register_weight_marker(module: nn.Module, dtype: torch.dtype, device: torch.device | str | None) -> None:
    """A float `weight` with no elements, not saved: code that asks a projection or an embedding for its weight's
    dtype or device (T5's feed-forward, transformers' weight initialisation) gets the model's, and `.to(dtype)` or
    `.half()` cast it with the model. The values are in the codes; reading them from `weight` fails loudly (no
    elements) instead of giving wrong numbers."""
    module.register_buffer("weight", torch.empty(0, dtype=dtype, device=device), persistent=False)


class PackedLinear(nn.Module):
    """A linear layer whose weight stays packed (2-bit ternary, base-3, 1-bit, 4/2-bit or int8) in memory."""

    def __init__(self, spec: TensorSpec, bias: nn.Parameter | None = None, activations: str = "none",
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        super().__init__()
        self.spec = spec
        self.activations = activations
        self.out_features, self.in_features = spec.shape
        register_stored_buffers(self, spec, device)
        register_weight_marker(self, dtype, device)
        self.bias = bias
        # None: keep the decoded weight on a GPU (speed), decode every forward on a CPU (memory); set_weight_cache()
        self.weight_cache: bool | None = None
        self._decoded: torch.Tensor | None = None

    @classmethod
    def from_arrays(cls, spec: TensorSpec, arrays: dict, bias: torch.Tensor | None = None,
                    activations: str = "none") -> "PackedLinear":
        """A PackedLinear holding the stored arrays of one weight (numpy, as PackedReader.quantized_arrays gives)."""
        param = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None
        module = cls(spec, param, activations, device="cpu")
        for suffix, array in arrays.items():
            module.register_buffer(suffix[1:], torch.from_numpy(array.copy()))
        return module

    def weight_float(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return decode_stored(self, self.spec, dtype)

    def _weight_for(self, dtype: torch.dtype) -> torch.Tensor:
        cache = self.weight_cache if self.weight_cache is not None else self.qcodes.is_cuda
        if not cache:
            return self.weight_float(dtype)
        if self._decoded is None or self._decoded.dtype != dtype:
            self._decoded = self.weight_float(dtype)
        return self._decoded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activations == "int8":
            x = quantize_activations_int8(x)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self._weight_for(x.dtype), bias)

    def _apply(self, fn, recurse=True):
        self._decoded = None  # decoded for the old device or dtype
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.spec.scheme}, "
                f"granularity={self.spec.granularity}, activations={self.activations}")


class PackedEmbedding(nn.Module):
    """A model's token embedding whose table stays packed (int8 with --embeddings int8); a lookup decodes only its
    rows. (Smaller tables, positions and token types, are decoded once at load.)"""

    def __init__(self, spec: TensorSpec, padding_idx: int | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None):
        super().__init__()
        self.spec = spec
        self.num_embeddings, self.embedding_dim = spec.shape
        self.padding_idx = padding_idx
        register_stored_buffers(self, spec, device)
        register_weight_marker(self, dtype, device)  # the lookups' dtype

    def weight_float(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return decode_stored(self, self.spec, dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = decode_stored(self, self.spec, self.weight.dtype, rows=ids.reshape(-1))
        return rows.reshape(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, scheme={self.spec.scheme}"


class TiedPacked(nn.Module):
    """A module tied to a PackedEmbedding (an lm_head, or T5's encoder embeddings): it stores nothing of its own and
    decodes the embedding's codes, as a linear layer (`as_linear`) or as an embedding.

    It has no `weight`: transformers, seeing one, would resize a tied bias (RoBERTa's) to that weight's rows."""

    def __init__(self, source: PackedEmbedding, as_linear: bool, activations: str = "none",
                 bias: nn.Parameter | None = None):
        super().__init__()
        self._source = (source,)  # a tuple, not a submodule: the codes are stored, loaded and moved once
        self.as_linear = as_linear
        self.activations = activations
        self.out_features, self.in_features = source.spec.shape
        self.bias = bias  # its own (RoBERTa's lm_head.decoder), tied by transformers where the model says so

    @property
    def source(self) -> PackedEmbedding:
        return self._source[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.as_linear:
            return self.source(x)
        if self.activations == "int8":
            x = quantize_activations_int8(x)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.source.weight_float(x.dtype), bias)


def set_weight_cache(model: nn.Module, enabled: bool | None) -> None:
    """Choose memory or speed for every PackedLinear: True keeps each decoded weight after its first forward (the
    float model's memory and speed), False decodes every forward (only the codes in memory), None (the default)
    keeps them on GPUs and not on CPUs."""
    for module in model.modules():
        if isinstance(module, PackedLinear):
            module.weight_cache = enabled
            module._decoded = None


def _quantize_input_hook(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: a dequantized linear (or Conv1D) still rounds its input to int8 per token (W1.58A8)."""
    return (quantize_activations_int8(args[0]),) + tuple(args[1:])


def replace_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_name, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def _float_module(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The ordinary module a packed one stands for, with its weight decoded once."""
    from transformers.pytorch_utils import Conv1D

    weight = nn.Parameter(module.weight_float(dtype), requires_grad=False)
    if isinstance(module, PackedEmbedding):
        dense = nn.Embedding(module.num_embeddings, module.embedding_dim, module.padding_idx, device="meta")
        dense.weight = weight
        return dense
    out_features, in_features = module.spec.shape
    if module.spec.layout == "conv1d":
        dense = Conv1D(out_features, in_features)
        dense.weight = nn.Parameter(weight.t().contiguous(), requires_grad=False)
    else:
        dense = nn.Linear(in_features, out_features, bias=False, device="meta")
        dense.weight = weight
    dense.bias = nn.Parameter(module.bias.detach().to(dtype), requires_grad=False) if module.bias is not None else None
    if module.activations == "int8":
        dense.register_forward_pre_hook(_quantize_input_hook)
    return dense


def dequantize_modules(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Replace every packed module by the ordinary module it stands for, decoded once (ties kept as ties)."""
    dtype = dtype or model.dtype
    replaced: dict[nn.Module, nn.Module] = {}
    for path, module in list(model.named_modules()):
        if isinstance(module, (PackedLinear, PackedEmbedding)):
            replaced[module] = _float_module(module, dtype)
            replace_module(model, path, replaced[module])
    tied = getattr(model, "all_tied_weights_keys", None)
    for path, module in list(model.named_modules()):
        if isinstance(module, TiedPacked):
            source = replaced[module.source]
            if module.as_linear:
                dense = nn.Linear(module.in_features, module.out_features, bias=False, device="meta")
                dense.bias = module.bias
                if module.activations == "int8":
                    dense.register_forward_pre_hook(_quantize_input_hook)
            else:
                dense = nn.Embedding(source.num_embeddings, source.embedding_dim, source.padding_idx, device="meta")
            dense.weight = source.weight
            replace_module(model, path, dense)
            if tied is not None:  # save_pretrained then stores the tied weight once, as transformers does
                source_path = next(p for p, m in model.named_modules() if m is source)
                tied[f"{path}.weight"] = f"{source_path}.weight"
    return model


def _bitconv_model_config(source: str | os.PathLike, revision: str | None) -> tuple[str, object]:
    """The folder (user's ~ expanded) or Hub id, and its transformers config (only config.json is downloaded)."""
    from huggingface_hub.errors import LocalEntryNotFoundError
    from transformers import AutoConfig

    from bitconv.hub.ids import is_repo_id
    from bitconv.quantize.source import hub_unreachable

    path = Path(str(source)).expanduser()
    local = path.is_dir()
    text = str(path) if local else str(source)
    if not local and not is_repo_id(text):
        raise SourceError(f"'{text}' does not exist (neither a folder nor a Hub id)")
    try:
        config = AutoConfig.from_pretrained(text, revision=revision)
    except OSError as exc:
        if isinstance(exc.__cause__, LocalEntryNotFoundError):
            raise hub_unreachable(text) from None
        raise SourceError(f"{text}: no usable config.json ({str(exc).splitlines()[0]})") from None
    method = (getattr(config, "quantization_config", None) or {}).get("quant_method")
    if method != QUANT_METHOD:
        raise FormatError(f"{text}: not a bitconv output folder (quantization_config.quant_method is {method!r}, "
                          f"not {QUANT_METHOD!r}); convert the model with `bitconv convert` first")
    return text, config


def load(source: str | os.PathLike, *, dequantize: bool = False, dtype: torch.dtype | str | None = None,
         device_map=None, revision: str | None = None, weight_cache: bool | None = None, model_class=None):
    """A bitconv folder or Hub id as a transformers model in eval mode, through `from_pretrained`.

    Quantized weights stay packed (`PackedLinear`, `PackedEmbedding`) or, with `dequantize=True`, become ordinary
    modules decoded once. `dtype` None keeps the stored precision (config.json's dtype; float16 unless the source was
    bfloat16); `device_map` as in transformers ("cuda", "auto", ...); `weight_cache` as in set_weight_cache().
    `model_class` defaults to the class named in config.json. `model.bitconv_config` holds the quantization_config.
    """
    import bitconv.quantize.hf_quantizer  # noqa: F401 - registers bitconv's quantizer with transformers
    from bitconv.quantize.source import model_class_for

    source, config = _bitconv_model_config(source, revision)
    cls = model_class or model_class_for(config)
    try:
        model, info = cls.from_pretrained(source, config=config, revision=revision, dtype=dtype or "auto",
                                          device_map=device_map, output_loading_info=True)
    except OSError as exc:  # transformers reports unreadable or missing files as OSError
        raise SourceError(f"{source}: transformers cannot read it ({str(exc).splitlines()[0]})") from None
    missing = sorted(set(info["missing_keys"]) - set(getattr(model, "all_tied_weights_keys", {}) or {}))
    if missing:
        raise FormatError(f"{source}: weights {missing[:3]} are missing from the packed files; re-convert the model")
    if info["unexpected_keys"]:
        raise FormatError(f"{source}: tensors {sorted(info['unexpected_keys'])[:3]} do not fit {cls.__name__}; "
                          "the folder does not match its config.json")
    if dequantize:
        model = model.dequantize()
    else:
        set_weight_cache(model, weight_cache)
    return model.eval()


def load_any(source: str | os.PathLike, dtype: torch.dtype = torch.float32, model_class=None):
    """A bitconv folder through `load()`, anything else (Hub id, folder, GGUF) as the original model."""
    from bitconv.format.reader import is_bitconv_folder
    from bitconv.quantize.source import load_original

    path = Path(str(source)).expanduser()
    if path.is_dir() and is_bitconv_folder(path):
        return load(path, dtype=dtype, model_class=model_class)
    return load_original(source, dtype=dtype, model_class=model_class)


def packed_weight(module: PackedLinear) -> QuantizedWeight:
    """The stored arrays of a PackedLinear as a QuantizedWeight (for exporters)."""
    arrays = {suffix: getattr(module, suffix[1:]).cpu().numpy() for suffix in STORED_SUFFIXES
              if getattr(module, suffix[1:]) is not None}
    return decode(module.spec, arrays)
