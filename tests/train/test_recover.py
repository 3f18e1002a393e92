"""bitconv.train.pipeline.recover: QAT end to end on tiny models (CPU, a few steps), checkpoints, resume, bad input."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
import torch

import bitconv
from bitconv.errors import BitconvError, OptionError
from bitconv.format.reader import PackedReader
from bitconv.quantize.config import QuantConfig
from bitconv.train import checkpoints, losses, tasks
from bitconv.train.config import RecoverConfig
from bitconv.train.pipeline import recover
from support.interrupt import interrupted_at_call
from support.torchrun import torchrun_two_cpu_processes

WORDS = ["the", "movie", "was", "is", "not", "good", "great", "fun", "bad", "awful", "boring", "plot", "actors"]
POSITIVE, NEGATIVE = ["good", "great", "fun"], ["bad", "awful", "boring"]


def _tokenizer(folder: Path):
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(str(folder / "vocab.txt"))
    tok.save_pretrained(str(folder))
    return tok


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    """A sentence-transformers-like BertModel (no classifier head) with a word-level tokenizer."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("recover") / "bert"
    tok = _tokenizer(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32)
    BertModel(config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("recover") / "llama"
    tok = _tokenizer(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         tie_word_embeddings=True, pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    return folder


def _sentiment_rows(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        word = rng.choice(POSITIVE if label else NEGATIVE)
        rows.append((f"the {rng.choice(['movie', 'plot', 'actors'])} was {word}", str(label)))
    return rows


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("data")
    paths = []
    for name, n, seed in (("train.tsv", 160, 1), ("val.tsv", 40, 2)):
        path = folder / name
        path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in _sentiment_rows(n, seed)))
        paths.append(path)
    return paths[0], paths[1]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    rng = random.Random(3)
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(120)) + "\n")
    return path


# the plain recipe (the classify defaults distil with every ingredient): what most tests here are about, and fast
PLAIN = dict(distill=False, hidden_weight=0.0, attention_weight=0.0, augment=0)


def _classify(bert_dir, sentiment, out, **kwargs):
    options = dict(task="classify", steps=12, batch_size=16, lr=3e-3, **PLAIN)
    options.update(kwargs.pop("options", {}))
    cfg = RecoverConfig(**options)
    kwargs.setdefault("device", "cpu")
    return recover(str(bert_dir), out, train=sentiment[0], eval=sentiment[1], config=cfg, progress=False, **kwargs)


def _saved_step(ckpt_dir: Path) -> int:
    return json.loads((ckpt_dir / checkpoints.STATE_FOLDER / checkpoints.STATE_JSON).read_text())["step"]


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_classify_adds_a_head_learns_and_converts_exactly(bert_dir, sentiment, tmp_path):
    result = _classify(bert_dir, sentiment, tmp_path / "out", options={"steps": 40})
    m = result.metrics
    assert m["after"]["accuracy"] >= 0.9 > m["before"]["accuracy"]  # the toy task is learnt in ternary
    # the folder computes what the last training step computed (fp16 embeddings are the only difference)
    assert m["converted"]["accuracy"] == m["after"]["accuracy"]
    model = bitconv.load(tmp_path / "out")
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.id2label == {0: "0", 1: "1"}
    packed = {n for n, mod in model.named_modules() if type(mod).__name__ == "PackedLinear"}
    assert len(packed) == m["n_quantized_tensors"] == 12  # 6 projections x 2 blocks; pooler and head stay fp16
    qc = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert qc["source"] == "bert" and qc["bits"] == 1.58  # the source folder's name, as convert records it
    record = json.loads((tmp_path / "out" / "recovery.json").read_text())
    assert record["recipe"]["task"] == "classify" and record["metrics"]["steps"] == 40


def test_distillation_trains_a_teacher_first_and_starts_from_it(bert_dir, sentiment, tmp_path):
    result = _classify(bert_dir, sentiment, tmp_path / "out",
                       options={"distill": True, "teacher_epochs": 3, "teacher_lr": 3e-3, "hidden_weight": 0.5,
                                "quant_warmup_steps": 4})
    assert result.metrics["teacher"]["accuracy"] > 0.8
    assert (tmp_path / "out.ckpt" / "teacher" / "config.json").exists()
    assert (tmp_path / "out.ckpt" / "teacher" / "tokenizer_config.json").exists()  # a whole model folder
    # the student starts from the fine-tuned teacher, so even before QAT it is better than chance
    assert result.metrics["before"]["n_examples"] == 40


def test_encoder_distillation_attention_logits_teacher_and_augmentation(bert_dir, sentiment, tmp_path):
    """The classification recipe: attention maps and hidden states from the fp teacher, logits from a second
    teacher (a base model fine-tuned here first), and teacher-labelled edited copies of the training texts."""
    teacher = _classify(bert_dir, sentiment, tmp_path / "teacher-run",
                        options={"distill": True, "teacher_epochs": 3, "teacher_lr": 3e-3, "steps": 2})
    fp_teacher = tmp_path / "teacher-run.ckpt" / "teacher"
    result = _classify(bert_dir, sentiment, tmp_path / "out",
                       options={"distill": True, "teacher": str(fp_teacher), "logits_teacher": str(bert_dir),
                                "teacher_epochs": 3, "teacher_lr": 3e-3, "attention_weight": 1.0,
                                "hidden_weight": 0.5, "augment": 2, "steps": 30})
    m = result.metrics
    assert m["teacher"]["accuracy"] == teacher.metrics["teacher"]["accuracy"]  # --teacher is used as it is
    assert m["logits_teacher"]["accuracy"] > 0.8  # the base model was fine-tuned into a teacher first
    assert (tmp_path / "out.ckpt" / "logits-teacher" / "config.json").exists()
    assert m["after"]["accuracy"] >= 0.9 and m["converted"]["accuracy"] == m["after"]["accuracy"]
    # 160 texts and 2 variants each: an epoch is 480 items, so the 30 steps of 16 stay inside the first
    assert m["train_samples"] == 30 * 16
    record = json.loads((tmp_path / "out" / "recovery.json").read_text())["recipe"]
    assert record["augment"] == 2 and record["attention_weight"] == 1.0


def test_attention_loss_is_zero_for_equal_maps_and_ignores_padding_queries():
    t = torch.softmax(torch.randn(2, 3, 5, 5), -1)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert losses.attention_loss([t], [t], mask).item() == pytest.approx(0.0, abs=1e-6)
    s = t.clone()
    s[0, :, 3:] = torch.softmax(torch.randn(3, 2, 5), -1)  # only padding queries differ
    assert losses.attention_loss([s], [t], mask).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.attention_loss([torch.softmax(torch.randn(2, 3, 5, 5), -1)], [t], mask).item() > 0


def test_augmented_texts_are_deterministic_edits_of_their_text():
    from bitconv.data.augment import augment_texts

    texts = ["the plot was good and the actors were great", "bad", ""]
    out = augment_texts(texts, 3, seed=1)
    assert out == augment_texts(texts, 3, seed=1) and out != augment_texts(texts, 3, seed=2)
    assert len(out) == 9 and out[6:] == ["", "", ""]
    words = set(" ".join(texts).split())
    for variant in out[:3]:
        assert variant != texts[0] and set(variant.split()) <= words and len(variant.split()) >= 4


def test_a_teacher_of_other_labels_is_refused(bert_dir, sentiment, tmp_path):
    from transformers import BertForSequenceClassification

    other = tmp_path / "three-labels"
    BertForSequenceClassification.from_pretrained(str(bert_dir), num_labels=3,
                                                  id2label={0: "neg", 1: "neu", 2: "pos"}).save_pretrained(other)
    for option in ("teacher", "logits_teacher"):
        with pytest.raises(BitconvError, match=r"three-labels: a classifier of labels \['neg', 'neu', 'pos'\], but "
                                               r"the training data has labels \['0', '1'\]"):
            _classify(bert_dir, sentiment, tmp_path / f"o-{option}",
                      options={"distill": True, option: str(other), "teacher_epochs": 0.1})
    with pytest.raises(BitconvError, match="add --distill"):
        RecoverConfig(distill=False, augment=2)


def test_lm_distillation_with_super_weights_and_int8_activations(llama_dir, text_file, tmp_path):
    cfg = RecoverConfig(task="lm", quant=QuantConfig.for_bits(1.58, activations="int8"), steps=10, batch_size=4,
                        seq_len=16, lr=3e-3, distill=True, super_weights=2, progressive=(8, 4), phase_steps=2)
    result = recover(str(llama_dir), tmp_path / "out", train=text_file, config=cfg, device="cpu", progress=False)
    m = result.metrics
    assert m["after"]["perplexity"] < m["before"]["perplexity"]
    assert m["converted"]["mean_nll_nats"] == pytest.approx(m["after"]["mean_nll_nats"], rel=1e-4)
    # the one perplexity: `bitconv eval` on the written folder and the held-out tail gives recovery.json's number
    from bitconv.evaluate.run import EvalConfig, evaluate_model

    again = evaluate_model(str(tmp_path / "out"), EvalConfig("perplexity", str(text_file), context=16,
                                                             start_fraction=0.95, max_tokens=cfg.eval_tokens,
                                                             batch_size=8, latency_repeats=0), progress=False)
    assert again["metrics"]["perplexity"] == pytest.approx(m["converted"]["perplexity"], rel=1e-6)
    assert again["metrics"]["n_scored_tokens"] == m["converted"]["n_scored_tokens"]
    assert len(m["super_weights"]) == 2 and all("down_proj" in sw["tensor"] for sw in m["super_weights"])
    reader = PackedReader(tmp_path / "out")
    kept = {sw["tensor"] for sw in m["super_weights"]}
    for name in kept:
        spec = reader.specs[name]
        idx = reader.raw(name + ".outlier_idx")
        wanted = sorted(sw["row"] * spec.shape[1] + sw["col"] for sw in m["super_weights"] if sw["tensor"] == name)
        assert idx.tolist() == wanted
    model = bitconv.load(tmp_path / "out")
    assert any(getattr(mod, "activations", None) == "int8" for mod in model.modules())


def test_same_seed_same_bytes_on_cpu(bert_dir, sentiment, tmp_path):
    for name in ("a", "b"):
        _classify(bert_dir, sentiment, tmp_path / name)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


def test_resume_continues_to_the_same_result(bert_dir, sentiment, tmp_path, monkeypatch):
    _classify(bert_dir, sentiment, tmp_path / "full")
    with interrupted_at_call(monkeypatch, tasks.ClassifyLoss, "forward", 8):
        _classify(bert_dir, sentiment, tmp_path / "resumed", save_every=5)
    assert _saved_step(tmp_path / "resumed.ckpt") == 5
    with pytest.raises(BitconvError, match="pass --resume"):
        _classify(bert_dir, sentiment, tmp_path / "resumed", save_every=5)
    with pytest.raises(BitconvError, match=r"different configuration \(differs in: lr\)"):
        _classify(bert_dir, sentiment, tmp_path / "resumed", save_every=5, resume=True, options={"lr": 1e-3})
    _classify(bert_dir, sentiment, tmp_path / "resumed", save_every=5, resume=True)
    assert (tmp_path / "resumed" / "model.safetensors").read_bytes() == (tmp_path / "full" / "model.safetensors").read_bytes()


class _Planted:
    """Unpickling this runs open(marker, "w"): what a crafted checkpoint could do with any code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_malicious_pickle_checkpoint_runs_nothing_and_fails_in_one_line(bert_dir, sentiment, tmp_path):
    import pickle

    marker = tmp_path / "pwned"
    ckpt = tmp_path / "out.ckpt"
    ckpt.mkdir()
    (ckpt / "state.pt").write_bytes(pickle.dumps({"step": _Planted(marker)}))
    with pytest.raises(BitconvError, match=r"state.pt: a pickle checkpoint, which bitconv never loads") as err:
        _classify(bert_dir, sentiment, tmp_path / "out", resume=True)
    assert "\n" not in str(err.value) and not marker.exists()
    # the same bytes renamed into the new layout are refused by the safetensors parser, still without running
    state = ckpt / checkpoints.STATE_FOLDER
    state.mkdir()
    (ckpt / "state.pt").rename(state / checkpoints.TENSORS)
    fp = {"planted": True}
    (state / checkpoints.STATE_JSON).write_text(json.dumps({"checkpoint_version": checkpoints.CHECKPOINT_VERSION,
                                                            "fingerprint": fp}))
    with pytest.raises(BitconvError, match=r"tensors.safetensors: cannot read the checkpoint") as err:
        checkpoints.load_checkpoint(ckpt, fp)
    assert "\n" not in str(err.value) and not marker.exists()
    pickle.loads((state / checkpoints.TENSORS).read_bytes())  # the file was armed: unpickling it runs the code
    assert marker.exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(bert_dir, sentiment, tmp_path, monkeypatch):
    real = tasks.ClassifyLoss.forward
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 7 else loss

    monkeypatch.setattr(tasks.ClassifyLoss, "forward", poisoned)
    with pytest.raises(BitconvError, match=r"training diverged at step 7 \(loss nan\).*step 4\) is kept") as err:
        _classify(bert_dir, sentiment, tmp_path / "out", save_every=4)
    assert "\n" not in str(err.value)
    assert _saved_step(tmp_path / "out.ckpt") == 4
    assert not (tmp_path / "out").exists()


def test_bad_inputs_fail_in_one_line(bert_dir, sentiment, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tscore\tlabel\nthe movie\t3\n")
    with pytest.raises(BitconvError, match=r"bad.tsv: line 2 has 2 column\(s\)"):
        _classify(bert_dir, (bad, sentiment[1]), tmp_path / "o1")
    other = tmp_path / "other.tsv"
    other.write_text("sentence\tlabel\nthe movie was good\tpositive\n")
    with pytest.raises(BitconvError, match=r"other.tsv: label 'positive' \(example 1\) is not in the training file's labels \(0, 1\)"):
        _classify(bert_dir, (sentiment[0], other), tmp_path / "o2")
    with pytest.raises(BitconvError, match="recover trains 1.58, 1, 2, 4 or 8 bits"):
        RecoverConfig(quant=QuantConfig(bits=16))
    with pytest.raises(BitconvError, match="unknown --bits"):
        RecoverConfig(quant=QuantConfig.for_bits(3))
    if not torch.cuda.is_available():
        with pytest.raises(BitconvError, match="no CUDA GPU is visible"):
            _classify(bert_dir, sentiment, tmp_path / "o3", device="cuda")
    with pytest.raises(BitconvError, match="needs --eval"):
        recover(str(bert_dir), tmp_path / "o4", train=sentiment[0], config=RecoverConfig(), device="cpu")
    bitconv.convert(bert_dir, tmp_path / "packed", progress=False)
    with pytest.raises(BitconvError, match=r"packed is already a bitconv folder.*\(bert\): pass that instead"):
        _classify(tmp_path / "packed", sentiment, tmp_path / "o5")
    (tmp_path / "exists").mkdir()
    with pytest.raises(BitconvError, match="already exists; choose another --out or pass --force"):
        _classify(bert_dir, sentiment, tmp_path / "exists")


def test_config_round_trips_with_convert_vocabulary_and_refuses_newer_versions():
    cfg = RecoverConfig(task="lm", quant=QuantConfig.for_bits(1.58, "group:64", keep_outliers="0.1%"), progressive=(8, 4),
                        phase_steps=3)
    assert cfg.quant.keep_outliers == pytest.approx(0.001)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert RecoverConfig.from_dict(d) == cfg
    with pytest.raises(BitconvError, match="config_version 99: this bitconv reads version 1"):
        RecoverConfig.from_dict({**d, "config_version": 99})


def test_classify_defaults_are_the_recipe_measured_best_and_each_part_switches_off():
    cfg = RecoverConfig()  # the held-out SST-2 winner of issue 15, less the larger logits teacher only a user can name
    assert (cfg.task, cfg.distill, cfg.hidden_weight, cfg.attention_weight, cfg.augment, cfg.lr) == \
        ("classify", True, 1.0, 1.0, 2, 2e-4)
    assert RecoverConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    plain = RecoverConfig(distill=False)  # --no-distill alone turns off what distils from the teacher
    assert (plain.hidden_weight, plain.attention_weight, plain.augment, plain.lr) == (0, 0, 0, 2e-4)
    assert RecoverConfig.from_dict(json.loads(json.dumps(plain.to_dict()))) == plain
    for name in ("hidden_weight", "attention_weight", "augment"):
        one_off = RecoverConfig(**{name: 0})
        assert getattr(one_off, name) == 0 and one_off == cfg.with_(**{name: 0})  # the rest stay on
    lm, image = RecoverConfig(task="lm"), RecoverConfig(task="image-classify")
    assert (lm.distill, lm.hidden_weight, lm.attention_weight, lm.augment) == (True, 0, 0, 0)
    assert (image.distill, image.hidden_weight, image.attention_weight, image.augment, image.lr) == (False, 0, 0, 0, 1e-4)
    for option in ("attention_weight", "augment"):
        with pytest.raises(OptionError, match="apply to classification tasks") as err:
            RecoverConfig(task="lm", **{option: 1})
        assert "\n" not in str(err.value)


def test_quant_schedule_phases():
    cfg = RecoverConfig(progressive=(8, 4, 2), phase_steps=10, quant_warmup_steps=20)
    assert [losses.quant_phase(cfg, s)[0] for s in (0, 9, 10, 25, 30, 100)] == [8.0, 8.0, 4.0, 2.0, 1.58, 1.58]
    assert [losses.quant_phase(cfg, s)[1] for s in (0, 10, 20, 50)] == [0.0, 0.5, 1.0, 1.0]
    with pytest.raises(BitconvError, match="--phase-steps"):
        RecoverConfig(progressive=(8,))


def test_distillation_kl_is_zero_for_equal_logits_and_positive_otherwise():
    a = torch.randn(4, 7)
    assert losses.distillation_kl(a, a, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.distillation_kl(a, torch.randn(4, 7), 2.0).item() > 0


@pytest.mark.slow
def test_data_parallel_torchrun_two_cpu_processes(bert_dir, sentiment, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(
        "from bitconv.evaluate.results import headline\nfrom bitconv.train.config import RecoverConfig\n"
        "from bitconv.train.pipeline import recover\n"
        "cfg = RecoverConfig(task='classify', steps=6, batch_size=8, lr=3e-3, distill=False)\n"
        f"r = recover({str(bert_dir)!r}, {str(tmp_path / 'out')!r}, train={str(sentiment[0])!r}, "
        f"eval={str(sentiment[1])!r}, config=cfg, device='cpu', progress=False)\n"
        "print('RESULT', headline(r.metrics['converted']) if r.metrics else 'worker')\n"
    )
    proc = torchrun_two_cpu_processes(script, timeout=300)
    assert proc.stdout.count("RESULT accuracy") == 1 and proc.stdout.count("RESULT worker") == 1
    record = json.loads((tmp_path / "out" / "recovery.json").read_text())
    assert record["metrics"]["batch_size"] == 16  # 8 per process x 2 processes
