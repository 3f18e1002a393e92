"""GGUF export: TQ2_0/TQ1_0 blocks byte-identical to gguf-py's reference, and the exported files run in a real
llama.cpp (llama-cpp-python) with logits matching bitconv.load()."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bitconv
from bitconv.errors import BitconvError
from bitconv.export.gguf import export_gguf
from bitconv.quantize.config import QuantConfig
from support.tiny_models import make_gpt2, make_llama

TEXT = "ROMEO: But soft, what light through yonder window breaks? It is the east, and Juliet is the sun."


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    src = make_llama(tmp_path_factory.mktemp("src") / "llama")
    return bitconv.convert(src, tmp_path_factory.mktemp("conv") / "llama-1.58", progress=False).out


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    src = make_gpt2(tmp_path_factory.mktemp("src") / "gpt2")
    return bitconv.convert(src, tmp_path_factory.mktemp("conv") / "gpt2-1.58", progress=False).out


def llama_cpp_run(path, ids=None, text=None):
    """(logits [n, vocab], token ids) from llama.cpp with an F32 KV cache."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=128, n_batch=128, n_threads=2, verbose=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    try:
        if ids is None:
            ids = llm.tokenize(text.encode(), add_bos=False, special=False)
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32), list(ids)
    finally:
        llm.close()


def bitconv_logits(folder, ids):
    from transformers import AutoModelForCausalLM

    # a config converted from GGUF names no architecture; the causal-LM head is what llama.cpp computes
    model = bitconv.load(folder, model_class=AutoModelForCausalLM)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def assert_logits_close(got, ref, max_err=0.25, min_corr=0.999):
    """llama.cpp quantizes activations to 8 bits for TQ/Q8_0 matmuls and rounds our scales to fp16, so the
    match is close, not exact. A wrong q/k row order (RoPE layout) gives a max error of ~2.7 std, corr ~0.86."""
    err = np.abs(got - ref).max() / ref.std()
    corr = np.corrcoef(got.ravel(), ref.ravel())[0, 1]
    assert err < max_err and corr > min_corr, f"max |diff| = {err:.3f} std, correlation {corr:.6f}"
    return err, corr


@pytest.mark.parametrize("qtype", ["tq2_0", "tq1_0"])
def test_llama_in_llama_cpp(llama_folder, tmp_path, qtype):
    result = export_gguf(llama_folder, tmp_path / "llama.gguf", ggml_type=qtype, progress=False)
    types = {t.name: t.ggml_type for t in result.tensors}
    assert types["blk.0.attn_q.weight"] == types["blk.1.ffn_up.weight"] == qtype.upper()
    assert types["token_embd.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32"
    # intermediate 336: down_proj's rows are neither TQ (256) nor Q8_0 (32) friendly -> F16, reported
    assert result.fallbacks == {
        f"blk.{i}.ffn_down.weight": "input width 336 is not a multiple of 256" for i in range(2)}
    assert types["blk.0.ffn_down.weight"] == "F16"
    got, ids = llama_cpp_run(result.path, text=TEXT)
    assert len(ids) > 20
    assert_logits_close(got, bitconv_logits(llama_folder, ids))


def test_gpt2_in_llama_cpp(gpt2_folder, tmp_path):
    result = export_gguf(gpt2_folder, tmp_path / "gpt2.gguf", progress=False)
    types = {t.name: t.ggml_type for t in result.tensors}
    assert types["blk.0.attn_qkv.weight"] == types["blk.0.ffn_up.weight"] == "TQ2_0"
    assert types["blk.0.ffn_down.weight"] == "Q8_0"  # n_inner 288: multiple of 32, not of 256
    assert list(result.fallbacks) == ["blk.0.ffn_down.weight", "blk.1.ffn_down.weight"]
    got, ids = llama_cpp_run(result.path, text=TEXT)
    assert_logits_close(got, bitconv_logits(gpt2_folder, ids))


def test_tokenizer_metadata_tokenizes_like_transformers(llama_folder, gpt2_folder, tmp_path):
    import llama_cpp
    from transformers import AutoTokenizer

    for folder in (llama_folder, gpt2_folder):
        path = export_gguf(folder, tmp_path / f"{folder.name}.gguf", progress=False).path
        llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        try:
            text = TEXT + " 12345 <|endoftext|>"
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == \
                AutoTokenizer.from_pretrained(folder)(text)["input_ids"], folder.name
        finally:
            llm.close()


def test_other_granularities_and_outliers(tmp_path):
    src = make_llama(tmp_path / "llama", tokenizer="gpt2")
    for options, tq, reason in (
        ({"granularity": "channel"}, True, ""),
        ({"granularity": "group:256"}, True, ""),
        ({"granularity": "group:64"}, False, "group size 64 cuts the 256-weight blocks"),
        ({"keep_outliers": "0.1%"}, False, "fp16 outliers have no place in TQ2_0"),
    ):
        folder = bitconv.convert(src, tmp_path / "conv", QuantConfig.for_bits(**options), progress=False, force=True).out
        result = export_gguf(folder, tmp_path / "out.gguf", progress=False, force=True)
        q = next(t for t in result.tensors if t.name == "blk.0.attn_q.weight")
        assert (q.ggml_type == "TQ2_0") == tq and reason in q.fallback_reason, options
        got, ids = llama_cpp_run(result.path, text=TEXT)
        assert_logits_close(got, bitconv_logits(folder, ids))


def test_deterministic_and_atomic(llama_folder, tmp_path):
    a = export_gguf(llama_folder, tmp_path / "a.gguf", progress=False).path.read_bytes()
    b = export_gguf(llama_folder, tmp_path / "b.gguf", progress=False).path.read_bytes()
    assert a == b
    assert not list(tmp_path.glob("*.partial"))


def test_bad_input(llama_folder, tmp_path, tiny_bert):
    with pytest.raises(BitconvError, match="already exists"):
        (tmp_path / "x.gguf").write_bytes(b"")
        export_gguf(llama_folder, tmp_path / "x.gguf")
    with pytest.raises(BitconvError, match="unknown --type 'q4_0'"):
        export_gguf(llama_folder, tmp_path / "y.gguf", ggml_type="q4_0")
    with pytest.raises(BitconvError, match="no config.json"):
        export_gguf(tmp_path, tmp_path / "y.gguf")
    bert = bitconv.convert(tiny_bert, tmp_path / "bert-1.58", progress=False).out
    with pytest.raises(BitconvError, match="model type 'bert' has no GGUF export; supported: llama, gpt2"):
        export_gguf(bert, tmp_path / "y.gguf")
    src = make_llama(tmp_path / "no-tok", tokenizer=None)
    int8 = bitconv.convert(src, tmp_path / "int8", QuantConfig.for_bits(8), progress=False).out
    with pytest.raises(BitconvError, match="no ternary or binary weights"):
        export_gguf(int8, tmp_path / "y.gguf")
    notok = bitconv.convert(src, tmp_path / "notok", progress=False).out
    with pytest.raises(BitconvError, match="no tokenizer.json"):
        export_gguf(notok, tmp_path / "y.gguf")
    assert not (tmp_path / "y.gguf").exists() and not list(tmp_path.glob("*.partial"))


@pytest.mark.slow
def test_smollm2_real_model(smollm2_gguf, tmp_path):
    """SmolLM2-135M (576-wide: only down_proj is TQ-able) converted to ternary, exported, run by llama.cpp."""
    folder = bitconv.convert(smollm2_gguf, tmp_path / "smol-1.58", progress=False).out
    result = export_gguf(folder, tmp_path / "smol-tq2_0.gguf", progress=False)
    by_type: dict[str, int] = {}
    for t in result.tensors:
        by_type[t.ggml_type] = by_type.get(t.ggml_type, 0) + 1
    assert by_type["TQ2_0"] == 30 and by_type["Q8_0"] == 30 * 6  # down_proj; q,k,v,o,gate,up fall back
    assert all("576 is not a multiple of 256" in why for why in result.fallbacks.values())
    got, ids = llama_cpp_run(result.path, text=TEXT)
    ref = bitconv_logits(folder, ids)
    # 30 layers of a ternarized (untrained, so badly scaled) model amplify llama.cpp's 8-bit activation
    # rounding: measured here max |diff| 0.52 std, correlation 0.9978 (the same export with every matrix in
    # F16, so without activation quantization, gives 0.012 std, 0.999998: docs/export.md)
    err, corr = assert_logits_close(got, ref, max_err=1.0, min_corr=0.995)
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.8
    print(f"SmolLM2-135M ternary, llama.cpp vs bitconv.load: max |diff| {err:.4f} std, corr {corr:.6f}, "
          f"{len(ids)} tokens, {result.n_bytes} bytes")


def test_export_command(llama_folder, tmp_path, run_cli):
    code, out, err = run_cli("export", llama_folder, "--gguf", tmp_path / "m.gguf", "--type", "tq1_0",
                             "--hf-bitnet", tmp_path / "hf")
    assert code == 0, out + err
    assert "12 TQ1_0" in out and "not stored as TQ1_0" in out and "input width 336" in out
    assert "14 layers as bitlinear" in out and "always quantize activations" in out
    assert (tmp_path / "m.gguf").exists() and (tmp_path / "hf" / "config.json").exists()
    code, out, err = run_cli("export", llama_folder)
    assert code == 1 and "nothing to export" in err
