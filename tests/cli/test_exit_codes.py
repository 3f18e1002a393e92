"""Interruptions and usage errors (issue 12): Ctrl-C exits 130 and SIGTERM 143 with one line, after removing what
was being written; a SIGKILLed run's temporaries are removed by the next run; usage errors exit 2 without a traceback.

A child is stopped (SIGSTOP) as soon as its temporary output appears, signalled, then continued, so the signal
always lands in the middle of the write.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from support.isolation import bitconv_process, one_line_error, snapshot


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A Llama big enough (15 MB) that converting it takes a moment."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(num_hidden_layers=4, hidden_size=256, intermediate_size=512, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=4096, max_position_embeddings=64)
    folder = tmp_path_factory.mktemp("models") / "llama"
    LlamaForCausalLM(config).save_pretrained(str(folder))
    return folder


def stop_when(child, appeared, timeout: float = 120) -> Path:
    """Poll until `appeared()` names a path, then SIGSTOP the child; returns the path."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = appeared()
        if found:
            os.kill(child.pid, signal.SIGSTOP)
            return found
        assert child.poll() is None, child.communicate()
        time.sleep(0.005)
    child.kill()
    raise AssertionError("the temporary output never appeared")


def partial_of(out: Path):
    return lambda: next(iter(out.parent.glob(f".{out.name}.partial-*")), None)


@pytest.mark.parametrize("signum, code, line", [(signal.SIGINT, 130, "interrupted"),
                                                (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_a_signal_during_convert_removes_the_half_written_output(source, tmp_path, signum, code, line):
    out = tmp_path / "out"
    before = snapshot(source)
    child = bitconv_process("convert", source, "--out", out, start_only=True)
    partial = stop_when(child, partial_of(out))
    os.kill(child.pid, signum)
    os.kill(child.pid, signal.SIGCONT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == code and one_line_error(err).startswith(line), err
    assert not partial.exists() and not out.exists() and snapshot(source) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_signal_during_an_onnx_export_removes_its_scratch_folder(tiny_bert, tmp_path):
    import bitconv

    # an encoder: its float graph is traced in a scratch folder (decoders are built node by node, with no tracing)
    folder = bitconv.convert(tiny_bert, tmp_path / "packed", progress=False).out
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    before = snapshot(folder)
    child = bitconv_process("export", folder, "--onnx", tmp_path / "m.onnx", "--target", "float", start_only=True,
                            env={"TMPDIR": str(scratch)})
    stop_when(child, lambda: next(iter(scratch.glob("bitconv-onnx-*")), None))
    os.kill(child.pid, signal.SIGTERM)
    os.kill(child.pid, signal.SIGCONT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 143 and one_line_error(err).startswith("terminated"), err
    assert list(scratch.iterdir()) == [] and not (tmp_path / "m.onnx").exists() and snapshot(folder) == before


def test_what_a_killed_convert_left_is_removed_by_the_next_run(run_cli, source, tmp_path):
    out = tmp_path / "out"
    child = bitconv_process("convert", source, "--out", out, start_only=True)
    partial = stop_when(child, partial_of(out))
    child.kill()  # SIGKILL: no cleanup can run
    child.communicate(timeout=60)
    assert partial.exists()
    code, _, err = run_cli("convert", source, "--out", out)
    assert code == 0, err
    assert not partial.exists() and (out / "model.safetensors").is_file()


@pytest.mark.parametrize("args", [("convert",), ("convert", "x", "--bogus"), ("no-such-command",), ("export",),
                                  ("convert", "x", "--bits"), ("synth", "x", "--out", "y.jsonl", "--compile")])
def test_usage_errors_exit_2_without_a_traceback(run_cli, args):
    code, _, err = run_cli(*args)
    assert code == 2 and "Traceback" not in err and "Error" in err, err
