"""Packed models on a CUDA GPU (skipped without one; CI has none, run on a GPU machine): device_map places the
codes on the GPU, a forward keeps the decoded bf16 weight by default, and the outputs are the CPU model's."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import bitconv
from bitconv.errors import OptionError
from bitconv.quantize.modeling import PackedLinear, set_weight_cache

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
IDS = torch.tensor([[5, 17, 100, 250, 3, 77, 200, 9]])


def test_device_map_cuda_runs_packed_on_the_gpu(llama_folder):
    model = AutoModelForCausalLM.from_pretrained(llama_folder, device_map="cuda", dtype=torch.bfloat16)
    layer = model.model.layers[0].mlp.down_proj
    assert isinstance(layer, PackedLinear) and layer.qcodes.is_cuda and layer.qcodes.dtype == torch.uint8
    cpu = bitconv.load(llama_folder, dtype=torch.float32)
    with torch.no_grad():
        want = cpu(IDS).logits
        cached = model(IDS.cuda()).logits.float().cpu()
        assert layer._decoded is not None and layer._decoded.dtype == torch.bfloat16  # speed by default on a GPU
        set_weight_cache(model, False)
        decoded = model(IDS.cuda()).logits.float().cpu()
        assert layer._decoded is None
    assert torch.equal(cached, decoded)
    assert (cached - want).abs().max() <= 3e-2 * want.abs().max()  # bf16 against float32


def test_generate_on_the_gpu_matches_the_dequantized_model(llama_folder):
    packed = bitconv.load(llama_folder, device_map="cuda", dtype=torch.bfloat16)
    dense = bitconv.load(llama_folder, device_map="cuda", dtype=torch.bfloat16, dequantize=True)
    kwargs = dict(max_new_tokens=8, do_sample=False)
    assert torch.equal(packed.generate(IDS.cuda(), **kwargs), dense.generate(IDS.cuda(), **kwargs))


def test_device_map_naming_a_gpu_beyond_the_last(llama_folder):
    with pytest.raises(OptionError, match="but this machine has"):
        bitconv.load(llama_folder, device_map=f"cuda:{torch.cuda.device_count()}")
