"""Sources: the Hub path through huggingface_hub's cache (offline), GGUF errors, name resolution."""

import pytest

import bitconv
from bitconv.errors import BitconvError
from bitconv.quantize.source import open_source, resolve_name
from support.hub_cache import COMMIT, fake_hub_cache, use_hub_cache


def test_hub_id_is_read_from_the_cache_offline(tiny_gpt2, tmp_path, monkeypatch):
    use_hub_cache(monkeypatch, fake_hub_cache(tmp_path, tiny_gpt2, "someone/tiny-gpt2"))
    src = open_source("someone/tiny-gpt2")
    assert src.kind == "hub" and src.revision == COMMIT
    bitconv.convert("someone/tiny-gpt2", tmp_path / "out", progress=False)
    import json

    qc = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert qc["source"] == "someone/tiny-gpt2" and qc["source_revision"] == COMMIT
    with pytest.raises(BitconvError, match="not in the cache"):
        open_source("someone/other-model")


def test_non_gguf_file_and_corrupt_gguf(tmp_path):
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(BitconvError, match="not .gguf"):
        open_source(tmp_path / "weights.txt")
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + b"\0" * 10)
    with pytest.raises(BitconvError, match="broken.gguf: transformers cannot load"):
        open_source(tmp_path / "broken.gguf")


def test_resolve_name_handles_base_model_prefix():
    known = {"transformer.h.0.attn.c_attn.weight", "lm_head.weight"}
    assert resolve_name("h.0.attn.c_attn.weight", known, "transformer") == "transformer.h.0.attn.c_attn.weight"
    assert resolve_name("lm_head.weight", known, "transformer") == "lm_head.weight"
    assert resolve_name("nothing", known, "transformer") is None
