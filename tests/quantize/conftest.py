"""Fixtures of the quantize tests."""

from __future__ import annotations

import pytest

import bitconv
from bitconv.quantize.config import QuantConfig
from support.tiny_models import make_llama


@pytest.fixture(scope="session")
def llama_folder(tmp_path_factory):
    """A converted tiny Llama with a tokenizer (pipelines need one)."""
    base = tmp_path_factory.mktemp("llama")
    source = make_llama(base / "source", layers=2, tokenizer="gpt2")
    return bitconv.convert(source, base / "ternary", QuantConfig(), progress=False).out
