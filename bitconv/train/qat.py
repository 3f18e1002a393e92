"""Quantization-aware training modules: fake-quantized weights with latent full-precision copies.

Each quantized projection keeps its ordinary float weight as the trained (latent) parameter; a
parametrization replaces what the forward pass sees by `schemes.fake_quantize(w, cfg)` (the quantizer
`convert` uses, with a straight-through gradient), blended with the latent weight during warm-up:
w_eff = (1 - lam) * w + lam * q(w). Removing the parametrizations leaves a plain transformers model
whose weights are the latent ones, so `save_pretrained` + `bitconv.convert` reproduce exactly what the
last training step saw (at lam = 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from bitconv.errors import BitconvError
from bitconv.quantize.config import QuantConfig
from bitconv.quantize.kinds import CONV1D, LINEAR, module_kind
from bitconv.quantize.schemes import fake_quantize, quantize_activations_int8


class FakeQuantWeight(nn.Module):
    """Parametrization: latent weight -> blended fake-quantized weight (module layout kept)."""

    def __init__(self, cfg: QuantConfig, layout: str, outlier_idx: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        self.layout = layout  # "conv1d": GPT-2 stores [in, out]; the quantizer sees [out, in] like convert
        self.blend = 1.0
        # explicit fp16 positions (super weights), flat indices into the [out, in] weight
        self.register_buffer("outlier_idx", outlier_idx, persistent=False)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.blend <= 0.0:
            return weight
        w = weight.t() if self.layout == "conv1d" else weight
        q = fake_quantize(w, self.cfg, outlier_idx=self.outlier_idx)
        q = q.t() if self.layout == "conv1d" else q
        if self.blend >= 1.0:
            return q
        return weight + self.blend * (q - weight)


def _quantize_input(module: nn.Module, args: tuple) -> tuple:
    return (quantize_activations_int8(args[0]),) + tuple(args[1:])


@dataclass
class QuantizedModule:
    name: str  # module name; its weight tensor is f"{name}.weight"
    module: nn.Module
    parametrization: FakeQuantWeight
    hook: object | None = None  # the int8 activation pre-hook's handle


def module_layout(module: nn.Module) -> str:
    return CONV1D if module_kind(module) == CONV1D else LINEAR


def attach(model: nn.Module, weight_names: set[str], cfg: QuantConfig,
           outliers: dict[str, torch.Tensor] | None = None) -> list[QuantizedModule]:
    """Fake-quantize the weights named in `weight_names` (e.g. 'bert.encoder.layer.0.output.dense.weight')."""
    outliers = outliers or {}
    attached = []
    modules = dict(model.named_modules())
    for weight_name in sorted(weight_names):
        mod_name = weight_name[: -len(".weight")]
        module = modules.get(mod_name)
        if module is None or not isinstance(getattr(module, "weight", None), torch.Tensor):
            raise BitconvError(f"tensor '{weight_name}' planned for quantization has no module in the model")
        p = FakeQuantWeight(cfg, module_layout(module), outliers.get(weight_name))
        parametrize.register_parametrization(module, "weight", p, unsafe=True)
        hook = module.register_forward_pre_hook(_quantize_input) if cfg.activations == "int8" else None
        attached.append(QuantizedModule(mod_name, module, p, hook))
    return attached


def set_quantization(attached: list[QuantizedModule], cfg: QuantConfig, blend: float) -> None:
    """Switch every fake quantizer to `cfg` (a progressive schedule's phase) and warm-up blend `blend`."""
    for q in attached:
        q.parametrization.cfg = cfg
        q.parametrization.blend = float(blend)


def detach(model: nn.Module, attached: list[QuantizedModule]) -> None:
    """Remove the fake quantizers, leaving the latent weights in place as plain parameters."""
    for q in attached:
        parametrize.remove_parametrizations(q.module, "weight", leave_parametrized=False)
        if q.hook is not None:
            q.hook.remove()


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
