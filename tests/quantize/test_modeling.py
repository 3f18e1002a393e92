import numpy as np
import pytest
import torch

import bitconv
from bitconv.errors import BitconvError
from bitconv.format.reader import PackedReader
from bitconv.quantize.config import QuantConfig
from bitconv.quantize.modeling import PackedLinear, load_any, unpack_codes_torch
from bitconv.quantize.schemes import decode, decode_codes, dequantize, encode, quantize


@pytest.mark.parametrize("bits,gran,packing", [
    (1.58, "tensor", "2bit"), (1.58, "group:8", "base3"), (1, "channel", "2bit"), (8, "channel", "2bit"),
    (4, "group:8", "2bit"), (2, "group:8", "2bit"),
])
def test_torch_unpacking_equals_numpy_reference(bits, gran, packing):
    w = torch.randn(6, 21, generator=torch.Generator().manual_seed(0))
    q = quantize(w, QuantConfig.for_bits(bits, gran, packing=packing, keep_outliers=0.05))
    arrays = encode(q)
    ref = decode_codes(q.spec, arrays[".qcodes"])
    assert np.array_equal(unpack_codes_torch(q.spec, torch.from_numpy(arrays[".qcodes"])).numpy(), ref)
    layer = PackedLinear.from_arrays(q.spec, arrays)
    assert torch.equal(layer.weight_float(), dequantize(decode(q.spec, arrays)))


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama", "tiny_bert"])
def test_load_matches_dequantized_reference(fixture, request, tmp_path):
    src = request.getfixturevalue(fixture)
    bitconv.convert(src, tmp_path / "q", QuantConfig.for_bits(keep_outliers="0.2%"), progress=False)
    packed = bitconv.load(tmp_path / "q", dtype=torch.float32)
    dense = bitconv.load(tmp_path / "q", dequantize=True, dtype=torch.float32)
    assert any(isinstance(m, PackedLinear) for m in packed.modules())
    assert not any(isinstance(m, PackedLinear) for m in dense.modules())
    # the packed modules decode to exactly what the reference decoder gives for the file
    reader = PackedReader(tmp_path / "q")
    name, spec = sorted(reader.specs.items())[0]
    module = packed.get_submodule(name.removesuffix(".weight"))
    assert torch.equal(module.weight_float(), dequantize(decode(spec, reader.quantized_arrays(name))))
    ids = torch.arange(12).reshape(2, 6) % 100
    with torch.no_grad():
        a, b = packed(ids).logits, dense(ids).logits
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_activation_int8_mode_is_applied_in_both_load_paths(tiny_llama, tmp_path):
    bitconv.convert(tiny_llama, tmp_path / "a8", QuantConfig.for_bits(activations="int8"), progress=False)
    bitconv.convert(tiny_llama, tmp_path / "a16", progress=False)
    ids = torch.arange(8).reshape(1, 8)
    with torch.no_grad():
        a8 = bitconv.load(tmp_path / "a8")(ids).logits
        a8_dense = bitconv.load(tmp_path / "a8", dequantize=True)(ids).logits
        a16 = bitconv.load(tmp_path / "a16")(ids).logits
    assert torch.allclose(a8, a8_dense, atol=1e-5)
    assert not torch.allclose(a8, a16, atol=1e-6)


def test_fp16_copy_matches_original(tiny_llama, tmp_path):
    bitconv.convert(tiny_llama, tmp_path / "f16", QuantConfig.for_bits(16), progress=False)
    ids = torch.arange(8).reshape(1, 8)
    with torch.no_grad():
        ref = load_any(tiny_llama)(ids).logits
        got = load_any(tmp_path / "f16")(ids).logits
    assert torch.allclose(ref, got, atol=2e-2)


def test_load_refuses_non_bitconv_folder(tiny_llama):
    with pytest.raises(BitconvError, match="not a bitconv output folder"):
        bitconv.load(tiny_llama)
