"""Tiny models with a real (character-level) tokenizer, for the evaluation, compare and report tests.

The shared fixtures (conftest.py) build models without tokenizers; evaluation needs one, so these helpers
copy a tiny model and save a tokenizer beside it that maps each ASCII character to its code (vocab 128).
"""

from __future__ import annotations

import shutil
from pathlib import Path


def char_tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {chr(i): i for i in range(128)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="\x00"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="\x00", pad_token="\x00", model_max_length=64)


def with_tokenizer(model_folder: Path, dest: Path) -> Path:
    """A copy of `model_folder` with the character tokenizer saved in it."""
    if not dest.exists():
        shutil.copytree(model_folder, dest)
        char_tokenizer().save_pretrained(str(dest))
    return dest
