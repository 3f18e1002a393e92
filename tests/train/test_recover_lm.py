"""Language-model recovery on a tiny Llama (CPU): text the model writes itself (the default), data from several
sources mixed and reported per --eval set, the chunked head loss, FSDP2 over two gloo processes, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import bitconv
from bitconv.data.sources import parse_source
from bitconv.data.synth import SynthOptions, generate_stream
from bitconv.data.tokens import TokenCache
from bitconv.errors import BitconvError, OptionError
from bitconv.quantize.config import QuantConfig
from bitconv.train import tasks
from bitconv.train.config import RecoverConfig
from bitconv.train.pipeline import recover
from bitconv.train.runtime import Runtime
from support.interrupt import interrupted_at_call
from support.paths import FIXTURE_TEXT
from support.torchrun import torchrun_two_cpu_processes

SMALL_TEACHER = "teacher:3k?length=32&batch=16"


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    from support.tiny_models import make_llama

    return make_llama(tmp_path_factory.mktemp("lm") / "llama", hidden=64, intermediate=128, layers=2)


def _cfg(**kw) -> RecoverConfig:
    options = dict(task="lm", steps=4, batch_size=4, seq_len=32, lr=3e-3, eval_tokens=600)
    options.update(kw)
    return RecoverConfig(**options)


def test_without_train_the_model_writes_its_own_text_and_says_so(llama, tmp_path, monkeypatch):
    monkeypatch.setattr(tasks, "DEFAULT_TRAIN", SMALL_TEACHER)
    said = []
    r = recover(str(llama), tmp_path / "out", config=_cfg(), device="cpu", progress=False,
                cache_dir=tmp_path / "cache", say=said.append)
    assert said[0].startswith(f"no --train given: recovering on text the original model writes itself (--train "
                              f"{SMALL_TEACHER})")  # --steps given: no default epochs to announce
    held_out = f"{SMALL_TEACHER} (held-out last 160 tokens)"
    assert r.metrics["train"] == [SMALL_TEACHER] and list(r.metrics["after"]["sets"]) == [held_out]
    assert set(r.timings) == {"prepare", "recover"} and r.timings["prepare"]["seconds"] >= 0
    assert r.metrics["converted"]["perplexity"] == pytest.approx(r.metrics["after"]["perplexity"], rel=1e-3)
    record = json.loads((tmp_path / "out" / "recovery.json").read_text())
    assert record["recipe"]["distill"] is True and record["recipe"]["precision"] == "bf16"  # the lm defaults
    assert record["recipe"]["epochs"] == 1.0  # --steps decided; the resolved value, as checkpoints record it


def test_default_teacher_data_is_read_eight_times_unless_epochs_or_steps_say_otherwise(llama, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setattr(tasks, "DEFAULT_TRAIN", SMALL_TEACHER)
    tok = AutoTokenizer.from_pretrained(llama)
    said = []
    ctx = tasks.Context(str(llama), Runtime(torch.device("cpu")), TokenCache(tmp_path / "cache"), False, said.append)

    def steps(cfg, train):
        task = tasks.LMTask.prepare(cfg, tok, train, [], ctx)
        return tasks.steps_for(tasks.with_epochs_resolved(cfg, task), task.n_items, 1), task.n_items

    got, n_items = steps(_cfg(steps=None), [])
    assert tasks.DEFAULT_TRAIN_EPOCHS == 8 and got == round(n_items // 4 * 8)
    assert said[-2].startswith(f"no --train given: recovering on text the original model writes itself (--train "
                               f"{SMALL_TEACHER}, 8 epochs)")
    assert said[-1].startswith(f"note: {SMALL_TEACHER} is sized for a GPU")
    assert "on the CPU it takes far longer" in said[-1]
    assert steps(_cfg(steps=None, epochs=2.0), [])[0] == round(n_items // 4 * 2)
    assert steps(_cfg(steps=3), [])[0] == 3
    assert steps(_cfg(steps=None), [SMALL_TEACHER])[0] == n_items // 4  # data the user names: one pass
    # what ran is what the checkpoint's fingerprint and recovery.json record: never None
    task = tasks.LMTask.prepare(_cfg(steps=None), tok, [], [], ctx)
    assert tasks.with_epochs_resolved(_cfg(steps=None), task).epochs == 8.0
    assert tasks.with_epochs_resolved(_cfg(steps=3), task).epochs == 1.0


def test_generation_is_deterministic_cached_and_resumes_after_an_interruption(llama, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama)
    model = tasks.LMTask(_cfg(), tok, None).load_model(str(llama))
    opts = SynthOptions.from_spec(parse_source("teacher:200?length=16&batch=4"), seq_len=16, seed=3)
    assert opts.n_batches == 4
    cpu = torch.device("cpu")
    full = np.asarray(generate_stream(model, tok, "k", opts, TokenCache(tmp_path / "a"), cpu, progress=False,
                                      say=lambda _: None))
    assert full.size == 13 * 16 and (full.reshape(13, 16)[:, 0] == tok.bos_token_id).all()
    # two batches of 15 sampled tokens, then part of the third
    with interrupted_at_call(monkeypatch, torch, "multinomial", 2 * 15 + 4):
        generate_stream(model, tok, "k", opts, TokenCache(tmp_path / "b"), cpu, progress=False, say=lambda _: None)
    said = []
    resumed = generate_stream(model, tok, "k", opts, TokenCache(tmp_path / "b"), cpu, progress=False, say=said.append)
    assert said == ["teacher:200: resuming generation after batch 2 of 4"]
    assert np.array_equal(np.asarray(resumed), full)
    cached = generate_stream(model, tok, "k", opts, TokenCache(tmp_path / "b"), cpu, progress=False, say=said.append)
    assert "from the cache" in said[-1] and np.array_equal(np.asarray(cached), full)


def test_sources_mix_and_every_eval_set_is_reported(llama, tmp_path):
    text = FIXTURE_TEXT.read_text()[:20000]
    (tmp_path / "a.txt").write_text(text[:10000])
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"body": p}) + "\n" for p in text[10000:].split("\n\n")))
    (tmp_path / "held.txt").write_text(text[-3000:])
    r = recover(str(llama), tmp_path / "out", train=[f"{tmp_path / 'a.txt'}?weight=1",
                                                     f"{tmp_path / 'b.jsonl'}?column=body&weight=3"],
                eval=[str(tmp_path / "held.txt"), SMALL_TEACHER], config=_cfg(distill=False), device="cpu",
                progress=False, cache_dir=tmp_path / "cache", say=lambda _: None)
    sets = r.metrics["after"]["sets"]
    assert list(sets) == [str(tmp_path / "held.txt"), SMALL_TEACHER]
    assert r.metrics["after"]["perplexity"] == sets[str(tmp_path / "held.txt")]["perplexity"]
    from bitconv.evaluate.run import EvalConfig, evaluate_model

    # the held-out text file is scored exactly as `bitconv eval` scores it
    config = EvalConfig("perplexity", str(tmp_path / "held.txt"), context=32, max_tokens=600, batch_size=8,
                        latency_repeats=0)
    again = evaluate_model(str(tmp_path / "out"), config, progress=False)
    assert again["metrics"]["perplexity"] == pytest.approx(r.metrics["converted"]["sets"][str(tmp_path / "held.txt")]
                                                           ["perplexity"], rel=1e-6)


def test_learned_scales_train_and_the_folder_computes_what_training_computed(llama, tmp_path):
    """--learn-scales: the converted folder (the learned scales and codes baked into absmean-reproducible latent
    weights) scores what the fake-quantized model scored after training, and its scales are not the absmeans."""
    from safetensors.numpy import load_file

    (tmp_path / "t.txt").write_text(FIXTURE_TEXT.read_text()[:20000])
    runs = {}
    for learn in (False, True):
        runs[learn] = recover(str(llama), tmp_path / f"out-{learn}", train=str(tmp_path / "t.txt"),
                              config=_cfg(learn_scales=learn, lr=1e-2), device="cpu", progress=False,
                              cache_dir=tmp_path / "cache", say=lambda _: None)
    r = runs[True]
    assert r.metrics["converted"]["perplexity"] == pytest.approx(r.metrics["after"]["perplexity"], rel=1e-4)
    assert json.loads((tmp_path / "out-True" / "recovery.json").read_text())["recipe"]["learn_scales"] is True
    scales = {}
    for learn in (False, True):
        tensors = load_file(tmp_path / f"out-{learn}" / "model.safetensors")
        scales[learn] = {k: v for k, v in tensors.items() if k.endswith("scale")}
    assert scales[True].keys() == scales[False].keys() and any(
        not np.allclose(scales[True][k], scales[False][k], rtol=1e-4) for k in scales[True])


def test_learned_scales_resume_to_the_same_bytes(llama, tmp_path, monkeypatch):
    """The scales are parameters like the weights: checkpointed with the optimizer's moments and resumed exactly."""
    (tmp_path / "t.txt").write_text(FIXTURE_TEXT.read_text()[:20000])
    cfg = _cfg(learn_scales=True, steps=6)

    def run(out: str, **kw) -> None:
        recover(str(llama), tmp_path / out, train=str(tmp_path / "t.txt"), config=cfg, device="cpu", progress=False,
                cache_dir=tmp_path / "cache", save_every=3, say=lambda _: None, **kw)

    run("full")
    with interrupted_at_call(monkeypatch, tasks.LMLoss, "forward", 5):
        run("resumed")
    run("resumed", resume=True)
    assert (tmp_path / "resumed" / "model.safetensors").read_bytes() == \
        (tmp_path / "full" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("options", [dict(quant=QuantConfig.for_bits(4)), dict(quant=QuantConfig.for_bits(1.58, scale_method="mse")),
                                     dict(super_weights=2), dict(progressive=(8,), phase_steps=1)])
def test_learned_scales_refuse_what_they_cannot_train(options):
    with pytest.raises(OptionError, match=r"^--learn-scales trains ternary absmean scales"):
        _cfg(learn_scales=True, **options)


@pytest.mark.parametrize("train,pattern", [
    ("teacher:0", r"teacher:0: the generation budget must be a positive number of tokens"),
    ("teacher:10", r"teacher:10: 10 tokens is below one training block of --seq-len 32"),
    ("teacher:1k?weight=-1", r"weight '-1' must be a number >= 0"),
])
def test_bad_lm_input_is_one_line_and_writes_nothing(llama, tmp_path, train, pattern):
    with pytest.raises(BitconvError, match=pattern) as err:
        recover(str(llama), tmp_path / "out", train=train, config=_cfg(), device="cpu", progress=False,
                cache_dir=tmp_path / "cache", say=lambda _: None)
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists() and not (tmp_path / "out.ckpt").exists()


def test_the_cli_prints_one_line_and_exits_non_zero(llama, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(bitconv.__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-m", "bitconv", "recover", str(llama), "--task", "lm", "--train",
                           "teacher:0", "--device", "cpu", "--cache-dir", str(tmp_path / "c"), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1 and not (tmp_path / "out").exists()
    assert proc.stderr.strip().count("\n") == 0 and "generation budget must be a positive" in proc.stderr


def test_fsdp_refuses_a_model_it_cannot_wrap_and_a_single_process():
    from torch import nn

    from bitconv.train.runtime import shard

    with pytest.raises(BitconvError, match=r"--fsdp cannot wrap a Sequential: it names no transformer block class"):
        shard(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(BitconvError, match=r"--fsdp shards the model over several processes: start them with torchrun"):
        recover("unused", "unused-out", config=_cfg(), device="cpu", fsdp=True)


@pytest.mark.slow
def test_fsdp2_on_two_cpu_processes_over_gloo_on_text_both_generated(llama, tmp_path):
    """FSDP2 over two gloo processes, trained on teacher:N, which both processes generated: each samples its
    share of the batches (13 here, the last one short) and the first joins them, so the cached stream is byte for
    byte the single-process one, with no partial files left."""
    from transformers import AutoTokenizer

    from bitconv.data.synth import model_key

    spec = "teacher:800?length=16&batch=4"
    script = tmp_path / "fsdp.py"
    script.write_text(
        "import os\nfrom bitconv.data import synth\n"
        "from bitconv.train.config import RecoverConfig\nfrom bitconv.train.pipeline import recover\n"
        "calls, sample = [], synth.sample_batch\n"
        "synth.sample_batch = lambda *a, **k: calls.append(1) or sample(*a, **k)\n"
        "cfg = RecoverConfig(task='lm', steps=4, batch_size=2, seq_len=32, lr=3e-3, eval_tokens=600)\n"
        f"r = recover({str(llama)!r}, {str(tmp_path / 'out')!r}, train=[{spec!r}], config=cfg, "
        f"device='cpu', progress=False, fsdp=True, save_every=2, cache_dir={str(tmp_path / 'cache')!r})\n"
        "print('RESULT', r.metrics['converted']['perplexity'] if r.metrics else 'worker')\n"
        "print('BATCHES', os.environ['RANK'], len(calls))\n")
    proc = torchrun_two_cpu_processes(script)
    assert proc.stdout.count("RESULT worker") == 1 and proc.stdout.count("RESULT ") == 2
    record = json.loads((tmp_path / "out" / "recovery.json").read_text())
    assert record["metrics"]["batch_size"] == 4 and record["metrics"]["steps"] == 4
    state = json.loads((tmp_path / "out.ckpt" / "state" / "state.json").read_text())
    assert state["step"] == 4 and state["fingerprint"]["world_size"] == 2
    assert bitconv.load(tmp_path / "out") is not None
    assert sorted(line for line in proc.stdout.splitlines() if line.startswith("BATCHES")) == \
        ["BATCHES 0 7", "BATCHES 1 6"]
    streams = list((tmp_path / "cache").glob("*.u32"))
    assert len(streams) == 1, streams  # the joined stream; the two processes' partial files are gone
    tok = AutoTokenizer.from_pretrained(llama)
    opts = SynthOptions.from_spec(parse_source(spec), seq_len=32, seed=RecoverConfig().seed)
    assert opts.n_batches == 13
    alone = generate_stream(tasks.LMTask(_cfg(), tok, None).load_model(str(llama)), tok, model_key(str(llama)), opts,
                            TokenCache(tmp_path / "alone"), torch.device("cpu"), progress=False, say=lambda _: None)
    assert np.array_equal(np.fromfile(streams[0], dtype=np.uint32), np.asarray(alone))


def test_cli_recover_prints_every_eval_set_and_the_folder(llama, tmp_path, run_cli):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(
        "recover", llama, "--task", "lm", "--train", f"{FIXTURE_TEXT}?weight=1", "--eval", FIXTURE_TEXT,
        "--eval", SMALL_TEACHER, "--steps", "2", "--batch-size", "2", "--seq-len", "32", "--eval-tokens", "200",
        "--device", "cpu", "--no-progress", "--cache-dir", tmp_path / "cache", "--out", out)
    assert code == 0, stderr
    assert f"wrote {out} (recipe and metrics in {out / 'recovery.json'})" in stdout
    assert stdout.count("converted:") == 2 and f"({SMALL_TEACHER})" in stdout


@pytest.mark.parametrize("fused", [True, False])
def test_compiled_blocks_compile_once_for_every_layer(llama, fused):
    """The training forward passes carry no key/value cache: with one, dynamo guarded on each layer's cache state
    and recompiled the shared block code layer after layer until its recompile limit left the rest eager."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    from transformers import AutoModelForCausalLM

    from bitconv.train.runtime import transformer_blocks

    torch._dynamo.reset()
    counters.clear()
    student, teacher = (AutoModelForCausalLM.from_pretrained(llama) for _ in range(2))
    for model in (student, teacher):
        for block in transformer_blocks(model):
            block.compile(backend="eager")  # what compile_blocks does, without inductor's compile time
    loss = tasks.LMLoss(student, teacher.eval().requires_grad_(False), _cfg(precision="fp32"), fused)
    ids = torch.randint(0, student.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    loss(ids).backward()
    loss(ids).backward()
    assert counters["stats"]["unique_graphs"] == 2  # the student's block with grad, the teacher's without


def test_recover_leaves_no_latent_checkpoint_and_removes_a_killed_runs(llama, tmp_path):
    import socket

    from support.isolation import dead_pid

    stale = tmp_path / f".out.latent.partial-{socket.gethostname()}-{dead_pid()}-ab12cd"  # a SIGKILLed recover's
    (stale / "llama").mkdir(parents=True)
    recover(str(llama), tmp_path / "out", train=[f"{FIXTURE_TEXT}"], config=_cfg(steps=1), device="cpu",
            progress=False, cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "out", "out.ckpt"]
