import numpy as np
import pytest
import torch

from bitconv.errors import BitconvError
from bitconv.quantize.config import QuantConfig, parse_bits, parse_fraction
from bitconv.quantize.schemes import decode, dequantize, encode, fake_quantize, quantize, quantize_activations_int8


def _w(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_ternary_absmean_is_bitnet_formula():
    w = _w(16, 24)
    q = quantize(w, QuantConfig())
    s = w.abs().mean()
    assert torch.allclose(q.scale, s.reshape(1))
    assert torch.equal(q.codes.float(), torch.clamp(torch.round(w / s), -1, 1))
    assert torch.allclose(dequantize(q), torch.clamp(torch.round(w / s), -1, 1) * s)


@pytest.mark.parametrize("bits,gran,max_rel_err", [
    (1.58, "tensor", 0.6), (1.58, "channel", 0.6), (1.58, "group:8", 0.5), (1, "tensor", 0.7),
    (8, "channel", 0.01), (4, "group:16", 0.12), (2, "group:16", 0.5),
])
@pytest.mark.parametrize("scale", ["absmean", "absmax", "median", "mse"])
def test_round_trip_through_stored_arrays(bits, gran, max_rel_err, scale):
    w = _w(12, 37, seed=int(bits * 10))
    cfg = QuantConfig.for_bits(bits, gran, scale_method=scale)
    q = quantize(w, cfg)
    arrays = encode(q)
    for suffix, (dtype, shape) in q.spec.stored().items():
        assert arrays[suffix].shape == tuple(shape)
    assert torch.equal(dequantize(decode(q.spec, arrays)), dequantize(q))
    if scale in ("absmean", "mse") or bits >= 2:
        rel = ((dequantize(q) - w).norm() / w.norm()).item()
        assert rel < max_rel_err


def test_mse_scale_is_no_worse_than_absmean():
    w = _w(32, 64, seed=3)
    err = {m: (dequantize(quantize(w, QuantConfig(scale_method=m))) - w).norm().item() for m in ("absmean", "mse")}
    assert err["mse"] <= err["absmean"] + 1e-6


def test_all_zero_weight_converts_without_dividing_by_zero():
    for bits in (1.58, 1, 8, 4, 2):
        q = quantize(torch.zeros(4, 8), QuantConfig.for_bits(bits))
        assert torch.equal(dequantize(q), torch.zeros(4, 8))


def test_outliers_are_kept_exactly_and_ternary_code_is_zero_there():
    w = _w(8, 16)
    w[3, 5] = 40.0
    q = quantize(w, QuantConfig(keep_outliers=0.01))
    assert q.spec.n_outliers == 1 and q.outlier_idx.tolist() == [3 * 16 + 5]
    assert q.codes[3, 5] == 0
    assert dequantize(q)[3, 5] == torch.tensor(40.0, dtype=torch.float16).float()
    # the scale ignores the outlier
    mask = torch.ones_like(w, dtype=torch.bool)
    mask[3, 5] = False
    assert torch.allclose(q.scale, w.abs()[mask].mean().reshape(1))


def test_nan_is_refused():
    w = _w(4, 4)
    w[1, 1] = float("nan")
    with pytest.raises(BitconvError, match="NaN"):
        quantize(w, QuantConfig())


def test_bad_options():
    with pytest.raises(BitconvError, match="unknown --bits"):
        parse_bits("3")
    with pytest.raises(BitconvError, match="granularity"):
        QuantConfig.for_bits(1.58, "rows")
    with pytest.raises(BitconvError, match="per group"):
        QuantConfig.for_bits(4, "tensor")
    with pytest.raises(BitconvError, match="base3"):
        QuantConfig.for_bits(2, packing="base3")
    assert parse_fraction("0.1%") == pytest.approx(0.001)


def test_config_json_round_trip():
    cfg = QuantConfig.for_bits(1.58, "group:32", keep=("lm_head",), keep_outliers=0.001)
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg


def test_straight_through_gradient_is_identity():
    w = _w(4, 8).requires_grad_()
    (fake_quantize(w, QuantConfig()) * torch.arange(8.0)).sum().backward()
    assert torch.equal(w.grad, torch.arange(8.0).expand(4, 8))


def test_activation_int8_matches_bitnet():
    x = _w(3, 16)
    s = 127.0 / x.abs().amax(dim=-1, keepdim=True)
    expected = torch.clamp(torch.round(x * s), -128, 127) / s
    assert torch.allclose(quantize_activations_int8(x), expected)
    assert np.unique(np.round((quantize_activations_int8(x) * s).numpy(), 4)).size <= 255
