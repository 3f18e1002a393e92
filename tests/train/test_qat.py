import pytest
import torch
from torch import nn

from bitconv.quantize.config import QuantConfig
from bitconv.quantize.schemes import dequantize, quantize, roundtrip
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
