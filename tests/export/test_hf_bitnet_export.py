"""--hf-bitnet export: loaded by plain transformers in a subprocess that never imports bitconv, outputs compared
with bitconv.load()."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import bitconv
from bitconv.errors import BitconvError
from bitconv.export.hf_bitnet import export_hf_bitnet
from bitconv.quantize.config import QuantConfig
from support.tiny_models import make_llama

IDS = [5, 17, 100, 250, 3, 77, 200, 9, 42, 300, 11, 64]

# runs in a fresh interpreter with only transformers: the folder must stand on its own
LOAD_WITH_TRANSFORMERS = """
import json, sys
import numpy as np, torch
from transformers import AutoModelForCausalLM
folder, ids, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
model = AutoModelForCausalLM.from_pretrained(folder).eval()
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0].float().numpy()
np.save(out, logits)
assert not any(m == "bitconv" or m.startswith("bitconv.") for m in sys.modules), "bitconv was imported"
print(json.dumps({name: type(m).__name__ for name, m in model.named_modules() if name.endswith(("q_proj", "down_proj", "lm_head"))}))
"""


def transformers_logits(folder, tmp_path, compile_: bool = False):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # bitconv is not installed: without the repo on the path it cannot be imported
    if not compile_:
        # transformers' BitLinear wraps its kernels in torch.compile; compiling with inductor on CPU takes about a
        # minute on 2 cores, so the fast tests run them eagerly (the slow test keeps torch.compile)
        env["TORCHDYNAMO_DISABLE"] = "1"
    out = tmp_path / "logits.npy"
    res = subprocess.run([sys.executable, "-c", LOAD_WITH_TRANSFORMERS, str(folder), json.dumps(IDS), str(out)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return np.load(out), json.loads(res.stdout.strip().splitlines()[-1])


def bitconv_logits(folder):
    with torch.no_grad():
        return bitconv.load(folder, dtype=torch.float32)(torch.tensor([IDS])).logits[0].numpy()


@pytest.fixture(scope="module")
def llama_src(tmp_path_factory):
    return make_llama(tmp_path_factory.mktemp("src") / "llama", intermediate=512, tokenizer="gpt2")


@pytest.mark.parametrize("linear_class", ["bitlinear", "autobitlinear"])
def test_w158a8_model_matches_bitconv(llama_src, tmp_path, linear_class):
    """With int8 activations (as transformers' BitNet layers compute) the outputs agree to float rounding."""
    folder = bitconv.convert(llama_src, tmp_path / "llama-1.58", QuantConfig.for_bits(activations="int8"), progress=False).out
    result = export_hf_bitnet(folder, tmp_path / "hf", linear_class=linear_class, progress=False)
    assert len(result.converted) == 14 and result.fallbacks == {} and result.not_converted == ["lm_head"]
    assert result.activation_note == ""
    got, classes = transformers_logits(result.path, tmp_path)
    assert classes["model.layers.0.self_attn.q_proj"] == ("BitLinear" if linear_class == "bitlinear" else "AutoBitLinear")
    assert classes["lm_head"] == "Linear"
    ref = bitconv_logits(folder)
    assert np.abs(got - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
    config = json.loads((result.path / "config.json").read_text())["quantization_config"]
    assert config == {"quant_method": "bitnet", "linear_class": linear_class, "quantization_mode": "offline",
                      "modules_to_not_convert": ["lm_head"], "use_rms_norm": False, "rms_norm_eps": 1e-6}
    assert (result.path / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()


def test_float_activations_and_a_layer_kept_in_fp16(llama_src, tmp_path):
    folder = bitconv.convert(llama_src, tmp_path / "llama-1.58", QuantConfig.for_bits(keep=(r"layers\.1\.mlp\.down_proj",)), progress=False).out
    result = export_hf_bitnet(folder, tmp_path / "hf", progress=False)
    assert "model.layers.1.mlp.down_proj" in result.not_converted and len(result.converted) == 13
    assert "always quantize activations to int8" in result.activation_note
    got, classes = transformers_logits(result.path, tmp_path)
    assert classes["model.layers.1.mlp.down_proj"] == "Linear"
    ref = bitconv_logits(folder)
    # transformers quantizes activations, bitconv (activations none) does not: close, not equal
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.995


def test_channel_scales_fall_back_and_are_reported(llama_src, tmp_path):
    folder = bitconv.convert(llama_src, tmp_path / "ch", QuantConfig.for_bits(granularity="channel"), progress=False).out
    with pytest.raises(BitconvError, match="no weight fits transformers' BitNet layers .channel scales"):
        export_hf_bitnet(folder, tmp_path / "hf")
    mixed = bitconv.convert(llama_src, tmp_path / "mixed", QuantConfig.for_bits(keep_outliers="0.1%", activations="int8"), progress=False).out
    with pytest.raises(BitconvError, match="no weight fits"):
        export_hf_bitnet(mixed, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_bad_input(llama_src, tmp_path, tiny_gpt2):
    folder = bitconv.convert(llama_src, tmp_path / "llama-1.58", progress=False).out
    (tmp_path / "exists").mkdir()
    with pytest.raises(BitconvError, match="already exists"):
        export_hf_bitnet(folder, tmp_path / "exists")
    with pytest.raises(BitconvError, match="unknown linear class"):
        export_hf_bitnet(folder, tmp_path / "x", linear_class="bitnet")
    with pytest.raises(BitconvError, match="no config.json"):
        export_hf_bitnet(tmp_path, tmp_path / "x")
    gpt2 = bitconv.convert(tiny_gpt2, tmp_path / "gpt2-1.58", progress=False).out
    with pytest.raises(BitconvError, match="outside nn.Linear .*Llama family"):
        export_hf_bitnet(gpt2, tmp_path / "x")
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.partial-*"))


@pytest.mark.slow
def test_with_torch_compile(llama_src, tmp_path):
    """transformers' BitLinear as shipped: its torch.compile'd kernels compiled by inductor on the CPU."""
    folder = bitconv.convert(llama_src, tmp_path / "llama-1.58", QuantConfig.for_bits(activations="int8"), progress=False).out
    result = export_hf_bitnet(folder, tmp_path / "hf", progress=False)
    got, _ = transformers_logits(result.path, tmp_path, compile_=True)
    ref = bitconv_logits(folder)
    assert np.abs(got - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
