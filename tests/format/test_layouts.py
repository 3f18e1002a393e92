"""The other targets' byte layouts (bitconv.format.layouts), bit for bit against each peer's own code:
gguf-py's TQ2_0 / TQ1_0 quantizer, transformers' BitNet packer, ONNX Runtime's MatMulNBits kernel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitconv.format.layouts import (
    encode_tq1_0,
    encode_tq2_0,
    matmulnbits_block_size,
    matmulnbits_weights,
    pack_output_dim,
)
from bitconv.format.packing import pack_ternary_2bit
from bitconv.format.spec import TensorSpec


@pytest.mark.parametrize("encoder,qtype", [(encode_tq2_0, "TQ2_0"), (encode_tq1_0, "TQ1_0")])
def test_blocks_match_gguf_reference(encoder, qtype):
    import gguf

    rng = np.random.default_rng(0)
    trits = rng.integers(-1, 2, size=(5, 768)).astype(np.int8)
    trits[:, ::256] = 1  # gguf's quantizer takes max|x| as the scale: give every block a nonzero
    scales = rng.uniform(0.01, 2, size=(5, 3)).astype(np.float16).astype(np.float32)  # fp16-exact scales
    data = encoder(trits, scales)
    values = (trits * np.repeat(scales, 256, axis=1)).astype(np.float32)
    assert np.array_equal(data, gguf.quants.quantize(values, gguf.GGMLQuantizationType[qtype]))
    assert np.array_equal(gguf.quants.dequantize(data, gguf.GGMLQuantizationType[qtype]), values)


def test_packing_matches_transformers_unpacking():
    from transformers.integrations.bitnet import pack_weights

    trits = torch.randint(-1, 2, (12, 7), generator=torch.Generator().manual_seed(0)).to(torch.int8)
    ours = pack_output_dim(trits.numpy())
    theirs = pack_weights(trits.clone().to(torch.float32)).numpy()
    assert ours.shape == (3, 7) and np.array_equal(ours, theirs)


@pytest.mark.parametrize("n_in,granularity,group_size", [(96, "tensor", None), (100, "channel", None),
                                                       (128, "group", 32)])
def test_matmulnbits_layout_runs_in_stock_onnxruntime(n_in, granularity, group_size):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(1)
    n_out = 24
    trits = rng.integers(-1, 2, size=(n_out, n_in)).astype(np.int8)
    spec = TensorSpec("ternary", (n_out, n_in), granularity=granularity, group_size=group_size)
    scale = rng.uniform(0.1, 1.0, size=spec.scale_shape()).astype(np.float32)
    block = matmulnbits_block_size(spec)
    b, scales, block = matmulnbits_weights(spec, pack_ternary_2bit(trits), scale, block)
    node = helper.make_node("MatMulNBits", ["a", "b", "scales"], ["y"], domain="com.microsoft", K=n_in, N=n_out,
                            bits=2, block_size=block)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [3, n_in])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, n_out])],
                              [onnx.numpy_helper.from_array(b, "b"), onnx.numpy_helper.from_array(scales, "scales")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    a = rng.standard_normal((3, n_in)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]
    if granularity == "group":
        per_col = np.repeat(scale, group_size, axis=1)[:, :n_in]
    else:
        per_col = np.broadcast_to(scale.reshape(-1, 1), (n_out, n_in))
    np.testing.assert_allclose(y, a @ (trits * per_col).T, rtol=1e-4, atol=1e-4)
