"""`bitconv synth` (bitconv.train.synthesize) on a tiny Llama (CPU): the generated text as JSON lines, the very
stream `recover --train teacher:N` trains on (and then finds in the cache), byte-identical for a seed, bad input
in one line with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bitconv.errors import BitconvError
from bitconv.train.config import RecoverConfig
from bitconv.train.pipeline import recover
from bitconv.train.synthesize import synthesize, write_documents

SMALL = dict(tokens="3k", length=32, batch=16, device="cpu", progress=False)


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    from support.tiny_models import make_llama

    return make_llama(tmp_path_factory.mktemp("synth") / "llama", hidden=64, intermediate=128, layers=2)


def test_synth_writes_the_stream_recover_trains_on(llama, tmp_path):
    from transformers import AutoTokenizer

    said = []
    r = synthesize(str(llama), tmp_path / "text.jsonl", cache_dir=tmp_path / "cache", say=said.append, **SMALL)
    assert r.n_tokens == 94 * 32 and r.stream is not None and r.stream.parent == tmp_path / "cache"
    lines = (tmp_path / "text.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == r.n_documents > 0 and all(json.loads(line)["text"].strip() for line in lines)
    # the lines are the stream's text: start tokens dropped, cut at end-of-sequence
    tok = AutoTokenizer.from_pretrained(llama)
    stream = np.fromfile(r.stream, dtype=np.uint32).reshape(-1, 32)
    rows = [row[1:][row[1:] != tok.eos_token_id] for row in stream]
    assert "".join(json.loads(line)["text"] for line in lines).replace(" ", "") == \
        "".join(tok.decode(row.tolist(), skip_special_tokens=True) for row in rows).replace(" ", "")
    # recover with the same options, seed and cache reads that stream instead of generating it again
    recover(str(llama), tmp_path / "out", train="teacher:3k?length=32&batch=16",
            config=RecoverConfig(task="lm", steps=1, batch_size=2, seq_len=32, eval_tokens=64), device="cpu",
            progress=False, cache_dir=tmp_path / "cache", say=said.append)
    assert any(text.startswith("teacher:3000: 3,008 generated tokens from the cache") for text in said)


def test_the_same_seed_writes_the_same_bytes_and_another_seed_other_text(llama, tmp_path):
    first = synthesize(str(llama), tmp_path / "a.jsonl", cache_dir=tmp_path / "c1", **SMALL)
    again = synthesize(str(llama), tmp_path / "b.jsonl", cache_dir=tmp_path / "c2", **SMALL)
    other = synthesize(str(llama), tmp_path / "c.jsonl", cache_dir=tmp_path / "c2", seed=1, **SMALL)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "c.jsonl").read_bytes() != (tmp_path / "a.jsonl").read_bytes()
    assert first.n_documents == again.n_documents and other.stream != again.stream


@pytest.mark.parametrize("options, pattern", [
    (dict(tokens="0"), r"generation budget must be a positive number of tokens"),
    (dict(top_p=0.0), r"need length >= 2, batch >= 1, top_k >= 0"),
    (dict(tokens="lots"), r"write a count such as 20M"),
])
def test_bad_options_are_one_line_and_write_nothing(llama, tmp_path, options, pattern):
    with pytest.raises(BitconvError, match=pattern) as err:
        synthesize(str(llama), tmp_path / "text.jsonl", cache_dir=tmp_path / "cache", **{**SMALL, **options})
    assert "\n" not in str(err.value) and not (tmp_path / "text.jsonl").exists()


def test_a_model_that_writes_only_special_tokens_writes_no_file(tmp_path):
    class Tok:
        eos_token_id = 0

        def batch_decode(self, pieces, skip_special_tokens):
            return [" " for _ in pieces]

    with pytest.raises(BitconvError, match=r"the model wrote no text"):
        write_documents(np.array([[0, 5, 0, 6]]), Tok(), tmp_path / "t.jsonl")
    assert not (tmp_path / "t.jsonl").exists()


def test_cli_synth_writes_the_file_and_refuses_to_replace_it_without_force(llama, tmp_path, run_cli):
    out = tmp_path / "text.jsonl"
    args = ["synth", llama, "--tokens", "1k", "--length", "32", "--batch", "16", "--device", "cpu", "--no-progress",
            "--cache-dir", tmp_path / "cache", "--out", out]
    code, stdout, stderr = run_cli(*args)
    assert code == 0, stderr
    assert stdout.startswith(f"wrote {out}: ") and "from 1,024 sampled tokens" in stdout
    before = out.read_bytes()
    code, stdout, stderr = run_cli(*args)
    assert code != 0 and "--force" in stderr and len(stderr.strip().splitlines()) == 1
    assert out.read_bytes() == before
    code, _, stderr = run_cli(*args, "--force")
    assert code == 0, stderr


def test_synth_without_tokens_writes_recovers_default_amount_and_says_it_is_sized_for_a_gpu(llama, tmp_path,
                                                                                              monkeypatch):
    from bitconv.train import tasks

    monkeypatch.setattr(tasks, "DEFAULT_TEACHER_TOKENS", "96")
    said = []
    options = {k: v for k, v in SMALL.items() if k != "tokens"}
    r = synthesize(str(llama), tmp_path / "text.jsonl", cache_dir=tmp_path / "cache", say=said.append, **options)
    assert r.n_tokens == 3 * SMALL["length"]  # 96 tokens: three whole sequences
    assert said[0].startswith("note: --tokens 96 (what recover generates by default) is sized for a GPU; on the CPU")
