"""Quantization-aware training modules: fake-quantized weights with latent full-precision copies.

Each projection that `convert` quantizes keeps its ordinary float weight as the trained (latent) parameter;
`attach` turns the module into its fake-quantizing twin (the same object, its class swapped for a subclass
whose forward computes `schemes.fake_quantize(w)` once per call: the quantizer `convert` uses, a straight-
through gradient, no host synchronisation). During warm-up the forward pass sees
w_eff = (1 - lam) * w + lam * q(w), lam held in a 0-d buffer so that changing it recompiles nothing.
Parameter names and the state dict stay the plain model's; `detach` restores the original classes, leaving a
plain transformers model whose weights are the latent ones, so `save_pretrained` + `bitconv.convert`
reproduce exactly what the last training step saw (at lam = 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bitconv.errors import InternalError, TrainingError
from bitconv.quantize.config import QuantConfig
from bitconv.quantize.kinds import CONV1D, module_kind
from bitconv.quantize.schemes import fake_quantize, quantize_activations_int8


class _FakeQuantMixin:
    """Shared by the fake-quantizing subclasses: the weight this forward uses, in the linear layout's logic."""

    bitconv_cfg: QuantConfig
    bitconv_act_int8: bool

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        return quantize_activations_int8(x) if self.bitconv_act_int8 else x


class _FakeQuantLinear(_FakeQuantMixin):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = fake_quantize(self.weight, self.bitconv_cfg, self.bitconv_outlier_idx, self.bitconv_blend)
        return F.linear(self._inputs(x), w, self.bias)


class _FakeQuantConv1D(_FakeQuantMixin):
    """GPT-2's Conv1D stores [in, out]; the quantizer sees [out, in] as `convert` does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = fake_quantize(self.weight.t(), self.bitconv_cfg, self.bitconv_outlier_idx, self.bitconv_blend).t()
        x = self._inputs(x)
        out = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), w)
        return out.reshape(*x.shape[:-1], w.shape[-1])


_TWINS: dict[type, type] = {}


def _twin(cls: type) -> type:
    """The fake-quantizing subclass of a module class (made once per class)."""
    if cls not in _TWINS:
        mixin = _FakeQuantConv1D if module_kind_of_class(cls) == CONV1D else _FakeQuantLinear
        _TWINS[cls] = type(f"FakeQuant{cls.__name__}", (mixin, cls), {"bitconv_original_class": cls})
    return _TWINS[cls]


def module_kind_of_class(cls: type) -> str:
    from transformers.pytorch_utils import Conv1D

    return CONV1D if issubclass(cls, Conv1D) else "linear"


@dataclass
class QuantizedModule:
    name: str  # module name; its weight tensor is f"{name}.weight"
    module: nn.Module


def attach(model: nn.Module, weight_names: set[str], cfg: QuantConfig,
           outliers: dict[str, torch.Tensor] | None = None) -> list[QuantizedModule]:
    """Fake-quantize the weights named in `weight_names` (e.g. 'bert.encoder.layer.0.output.dense.weight')."""
    outliers = outliers or {}
    attached = []
    modules = dict(model.named_modules())
    for weight_name in sorted(weight_names):
        mod_name = weight_name[: -len(".weight")]
        module = modules.get(mod_name)
        if module is None or module_kind(module) not in ("linear", CONV1D) or not isinstance(module.weight, nn.Parameter):
            raise TrainingError(f"tensor '{weight_name}' planned for quantization has no linear module in the model")
        if hasattr(module, "bitconv_original_class"):
            raise InternalError(f"{mod_name} is already fake-quantized")
        device = module.weight.device
        idx = outliers.get(weight_name)
        module.register_buffer("bitconv_blend", torch.tensor(1.0, device=device), persistent=False)
        module.register_buffer("bitconv_outlier_idx", None if idx is None else
                               torch.unique(idx.to(device=device, dtype=torch.long)), persistent=False)
        module.bitconv_cfg = cfg
        module.bitconv_act_int8 = cfg.activations == "int8"
        module.__class__ = _twin(type(module))
        attached.append(QuantizedModule(mod_name, module))
    return attached


def set_quantization(attached: list[QuantizedModule], cfg: QuantConfig, blend: float) -> None:
    """Switch every fake quantizer to `cfg` (a progressive schedule's phase) and warm-up blend `blend`."""
    for q in attached:
        if q.module.bitconv_cfg != cfg:
            q.module.bitconv_cfg = cfg
        q.module.bitconv_blend.fill_(float(blend))


def detach(model: nn.Module, attached: list[QuantizedModule]) -> None:
    """Restore the original module classes, leaving the latent weights in place as plain parameters."""
    for q in attached:
        m = q.module
        m.__class__ = m.bitconv_original_class
        for buffer in ("bitconv_blend", "bitconv_outlier_idx"):
            del m._buffers[buffer]
        del m.bitconv_cfg, m.bitconv_act_int8


def quantized_weight_names(model: nn.Module, cfg: QuantConfig) -> set[str]:
    """The weights `convert` quantizes, by its own plan, so training and conversion agree."""
    from bitconv.quantize.plan import make_plan
    from bitconv.quantize.source import module_kinds

    config = model.config
    # convert reads the saved checkpoint, whose config names this model's own class
    config.architectures = [type(model).__name__]
    kinds, prefix = module_kinds(config)
    rows = [(name, tuple(t.shape), str(t.dtype).replace("torch.", "")) for name, t in model.state_dict().items()]
    return {row.name for row in make_plan(rows, cfg, kinds, prefix).quantized}
