"""Quantization-aware training modules: fake-quantized weights with latent full-precision copies.

Each projection that `convert` quantizes keeps its ordinary float weight as the trained (latent) parameter;
`attach` turns the module into its fake-quantizing twin (the same object, its class swapped for a subclass
whose forward computes `schemes.fake_quantize(w)` once per call: the quantizer `convert` uses, a straight-
through gradient, no host synchronisation). During warm-up the forward pass sees
w_eff = (1 - lam) * w + lam * q(w), lam held in a 0-d buffer so that changing it recompiles nothing.
Parameter names and the state dict stay the plain model's; `detach` restores the original classes, leaving a
plain transformers model whose weights are the latent ones, so `save_pretrained` + `bitconv.convert`
reproduce exactly what the last training step saw (at lam = 1).

Learned scales (`attach(..., learn_scales=True)`, ternary absmean only): each unit of the granularity gets a trained
scale s = exp(`bitconv_log_scale`), initialised to its absmean; the forward pass uses s * clamp(round(w / s), -1, 1),
the weight keeps its identity gradient and s gets LSQ's (Esser et al. 2020): round(w/s) - w/s where the rounding
is passed through (|w/s| < 1.5), the clamped sign outside, scaled by 1/sqrt(weights per unit). The packed format
is unchanged: `detach` writes latent weights c * s / f (c the codes, f the share of non-zero codes in the unit),
whose absmean is s and whose codes are c, so `convert` stores exactly the learned scale and codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bitconv.errors import InternalError, TrainingError
from bitconv.quantize.config import QuantConfig
from bitconv.quantize.kinds import CONV1D, module_kind
from bitconv.quantize.schemes import expand, fake_quantize, quantize_activations_int8, reduce_units

LEARNED_SCALE = "bitconv_log_scale"  # a learned scale's parameter name (the trainer never weight-decays them)


class _FakeQuantMixin:
    """Shared by the fake-quantizing subclasses: the weight this forward uses, in the linear layout's logic."""

    bitconv_cfg: QuantConfig
    bitconv_act_int8: bool

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        return quantize_activations_int8(x) if self.bitconv_act_int8 else x

    def _quantized(self, w: torch.Tensor) -> torch.Tensor:
        """The weight [out, in] this forward computes with."""
        log_scale = getattr(self, LEARNED_SCALE, None)
        if log_scale is None:
            return fake_quantize(w, self.bitconv_cfg, self.bitconv_outlier_idx, self.bitconv_blend)
        cfg = self.bitconv_cfg
        scale = expand(log_scale.exp(), tuple(w.shape), cfg.granularity, cfg.group_size)
        return _LearnedScale.apply(w, scale, self.bitconv_blend, self.bitconv_grad_scale)


class _LearnedScale(torch.autograd.Function):
    """blend * s * clamp(round(w / s), -1, 1) + (1 - blend) * w; gradients as the module docstring says."""

    @staticmethod
    def forward(ctx, w, scale, blend, grad_scale):  # noqa: D401 - torch API
        ctx.save_for_backward(w, scale, blend)
        ctx.grad_scale = grad_scale
        q = (w.detach() / scale).round().clamp(-1, 1) * scale
        return torch.lerp(w.detach(), q.to(w.dtype), blend)

    @staticmethod
    def backward(ctx, grad):
        w, scale, blend = ctx.saved_tensors
        t = w.float() / scale
        codes = t.round().clamp(-1, 1)
        d_scale = grad.float() * torch.where(t.abs() < 1.5, codes - t, codes) * (blend * ctx.grad_scale)
        return grad, d_scale.sum_to_size(scale.shape), None, None


class _FakeQuantLinear(_FakeQuantMixin):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._inputs(x), self._quantized(self.weight), self.bias)


class _FakeQuantConv1D(_FakeQuantMixin):
    """GPT-2's Conv1D stores [in, out]; the quantizer sees [out, in] as `convert` does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self._quantized(self.weight.t()).t()
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
           outliers: dict[str, torch.Tensor] | None = None, learn_scales: bool = False) -> list[QuantizedModule]:
    """Fake-quantize the weights named in `weight_names` (e.g. 'bert.encoder.layer.0.output.dense.weight'); with
    `learn_scales`, with a trained scale per unit (ternary absmean without outliers: RecoverConfig checks)."""
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
        if learn_scales:
            w = _as_out_in(module).detach().float()
            absmean = reduce_units(w.abs(), cfg.granularity, cfg.group_size, "mean")
            setattr(module, LEARNED_SCALE, nn.Parameter(absmean.clamp(min=1e-12).log()))
            module.bitconv_grad_scale = 1.0 / math.sqrt(w.numel() / absmean.numel())
        attached.append(QuantizedModule(mod_name, module))
    return attached


def set_quantization(attached: list[QuantizedModule], cfg: QuantConfig, blend: float) -> None:
    """Switch every fake quantizer to `cfg` (a progressive schedule's phase) and warm-up blend `blend`."""
    for q in attached:
        if q.module.bitconv_cfg != cfg:
            q.module.bitconv_cfg = cfg
        q.module.bitconv_blend.fill_(float(blend))


def _as_out_in(module: nn.Module) -> torch.Tensor:
    """The weight as the quantizer sees it, [out, in] (a view: GPT-2's Conv1D stores [in, out])."""
    return module.weight.t() if isinstance(module, _FakeQuantConv1D) else module.weight


def _bake_learned_scale(module: nn.Module) -> None:
    """Latent weights c * s / f (see the module docstring) in place of the trained ones; the scale parameter goes."""
    cfg = module.bitconv_cfg
    with torch.no_grad():
        w = _as_out_in(module)
        scale = getattr(module, LEARNED_SCALE).exp()
        full = expand(scale, tuple(w.shape), cfg.granularity, cfg.group_size)
        codes = (w.float() / full).round().clamp(-1, 1)
        nonzero = reduce_units(codes.abs(), cfg.granularity, cfg.group_size, "mean")
        per_code = torch.where(nonzero > 0, scale / nonzero.clamp(min=1e-12), torch.zeros_like(scale))
        w.copy_((codes * expand(per_code, tuple(w.shape), cfg.granularity, cfg.group_size)).to(w.dtype))
    delattr(module, LEARNED_SCALE)
    del module.bitconv_grad_scale


def detach(model: nn.Module, attached: list[QuantizedModule]) -> None:
    """Restore the original module classes, leaving the latent weights in place as plain parameters (learned
    scales baked into them)."""
    for q in attached:
        m = q.module
        if hasattr(m, LEARNED_SCALE):
            _bake_learned_scale(m)
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
