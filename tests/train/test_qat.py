import pytest
import torch
from torch import nn

from bitconv.quantize.config import QuantConfig
from bitconv.quantize.schemes import dequantize, expand, quantize, reduce_units, roundtrip
from bitconv.train import qat


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 8)

    def forward(self, x):
        return self.proj(x)


def test_forward_sees_the_convert_quantizer_and_gradients_reach_the_latent_weight():
    torch.manual_seed(0)
    model = nn.Sequential(Block())
    latent = model[0].proj.weight.detach().clone()
    cfg = QuantConfig.for_bits(1.58)
    attached = qat.attach(model, {"0.proj.weight"}, cfg)
    x = torch.randn(3, 16)
    expected = x @ dequantize(quantize(latent, cfg)).t() + model[0].proj.bias
    assert torch.allclose(model(x), expected, atol=1e-6)
    model(x).sum().backward()
    grad = model[0].proj.weight.grad
    assert grad is not None and torch.allclose(grad, x.sum(0).expand(8, 16))  # straight-through: d/dw of x @ w.T
    qat.set_quantization(attached, cfg, 0.0)
    assert torch.allclose(model(x), x @ latent.t() + model[0].proj.bias, atol=1e-6)
    qat.set_quantization(attached, cfg, 0.25)
    blended = 0.75 * latent + 0.25 * dequantize(quantize(latent, cfg))
    assert torch.allclose(model(x), x @ blended.t() + model[0].proj.bias, atol=1e-6)
    assert set(model.state_dict()) == {"0.proj.weight", "0.proj.bias"}  # the plain model's names while training
    qat.detach(model, attached)
    assert type(model[0].proj) is nn.Linear and torch.equal(model[0].proj.weight, latent)
    assert set(model.state_dict()) == {"0.proj.weight", "0.proj.bias"}


def test_int8_activations_and_explicit_outliers():
    torch.manual_seed(0)
    model = nn.Sequential(Block())
    latent = model[0].proj.weight.detach().clone()
    cfg = QuantConfig.for_bits(1.58, activations="int8")
    idx = torch.tensor([5, 40])
    qat.attach(model, {"0.proj.weight"}, cfg, {"0.proj.weight": idx})
    w = dequantize(quantize(latent, cfg, outlier_idx=idx))
    assert w.flatten()[idx].tolist() == latent.flatten()[idx].half().float().tolist()  # kept in fp16
    x = torch.randn(2, 16)
    s = 127.0 / x.abs().amax(-1, keepdim=True)
    xq = torch.clamp(torch.round(x * s), -128, 127) / s
    assert torch.allclose(model(x), xq @ w.t() + model[0].proj.bias, atol=1e-6)


def test_conv1d_layout_is_quantized_as_out_by_in():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = nn.Module()
    model.c = Conv1D(8, 16)  # weight [in=16, out=8]
    latent = model.c.weight.detach().clone()
    cfg = QuantConfig.for_bits(1.58, "channel")
    qat.attach(model, {"c.weight"}, cfg)
    x = torch.randn(3, 16)
    assert torch.allclose(model.c(x), x @ dequantize(quantize(latent.t(), cfg)).t() + model.c.bias, atol=1e-6)


@pytest.mark.parametrize("options", [dict(), dict(granularity="channel"), dict(granularity="group:8"),
                                     dict(scale_method="absmax"), dict(scale_method="median"), dict(scale_method="mse"),
                                     dict(granularity="group:5", keep_outliers="2%")])
def test_the_training_quantizer_is_the_converters_without_host_syncs(options):
    """roundtrip() (tensor ops only) gives exactly dequantize(quantize()), outliers and zero units included."""
    torch.manual_seed(1)
    w = torch.randn(24, 40)
    w[3] = 0.0  # a unit whose scale is 0
    cfg = QuantConfig.for_bits(1.58, options.pop("granularity", None), **options)
    idx = torch.tensor([7, 100, 555]) if cfg.keep_outliers else None
    assert torch.equal(roundtrip(w, cfg, idx), dequantize(quantize(w, cfg, outlier_idx=idx)))


@pytest.mark.parametrize("granularity", ["tensor", "channel", "group:5"])
@pytest.mark.parametrize("layout", ["linear", "conv1d"])
def test_learned_scales_start_at_absmean_train_and_are_stored_exactly_by_convert(granularity, layout):
    """--learn-scales: the first forward is the converter's absmean quantizer; the scales get gradients and move;
    detach writes latent weights whose quantize() gives back exactly the learned codes and (to rounding) scales."""
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = nn.Module()
    model.p = Conv1D(12, 16) if layout == "conv1d" else nn.Linear(16, 12)  # [out, in] = [12, 16] to the quantizer
    as_out_in = (lambda w: w.t()) if layout == "conv1d" else (lambda w: w)
    cfg = QuantConfig.for_bits(1.58, granularity)
    latent = as_out_in(model.p.weight.detach().clone())
    attached = qat.attach(model, {"p.weight"}, cfg, learn_scales=True)
    x = torch.randn(5, 16)
    assert torch.allclose(model.p(x), x @ dequantize(quantize(latent, cfg)).t() + model.p.bias, atol=1e-6)
    log_scale = model.p.bitconv_log_scale
    assert log_scale.shape == {"tensor": (1,), "channel": (12,), "group:5": (12, 4)}[granularity]
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    start = log_scale.detach().clone()
    for _ in range(5):
        opt.zero_grad()
        ((model.p(x) - 1.0) ** 2).mean().backward()
        assert log_scale.grad is not None and log_scale.grad.abs().sum() > 0
        opt.step()
    assert not torch.allclose(log_scale, start)
    scale = log_scale.detach().exp()
    w = as_out_in(model.p.weight.detach())
    codes = (w / expand(scale, tuple(w.shape), cfg.granularity, cfg.group_size)).round().clamp(-1, 1)
    trained_out = model.p(x).detach()
    qat.detach(model, attached)
    assert set(model.state_dict()) == {"p.weight", "p.bias"} and not hasattr(model.p, "bitconv_log_scale")
    q = quantize(as_out_in(model.p.weight.detach()), cfg)
    assert torch.equal(q.codes.float(), codes)
    # a unit whose codes are all zero stores scale 0 (its scale changes nothing); every other one the learned scale
    used = reduce_units(codes.abs(), cfg.granularity, cfg.group_size, "max").flatten() > 0
    assert torch.allclose(q.scale.flatten()[used], scale.flatten()[used], rtol=1e-5)
    assert (q.scale.flatten()[~used] == 0).all()
    assert torch.allclose(x @ dequantize(q).t() + model.p.bias, trained_out, atol=1e-5)


def test_the_learned_scale_gradient_is_lsq():
    """d out / d s: round(w/s) - w/s inside the rounding range, the clamped sign outside, times 1/sqrt(n)."""
    model = nn.Module()
    model.p = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        model.p.weight.copy_(torch.tensor([[0.2, -0.9, 2.0, 0.6]]))
    qat.attach(model, {"p.weight"}, QuantConfig.for_bits(1.58), learn_scales=True)
    with torch.no_grad():
        model.p.bitconv_log_scale.fill_(0.0)  # s = 1
    model.p(torch.ones(1, 4)).sum().backward()
    # w/s = 0.2 -> 0 - 0.2; -0.9 -> -1 + 0.9; 2.0 outside -> 1; 0.6 -> 1 - 0.6; d/dlog s = s * d/ds
    expected = (-0.2 + -0.1 + 1.0 + 0.4) / 2.0
    assert model.p.bitconv_log_scale.grad.item() == pytest.approx(expected, abs=1e-6)
