import json
import math
import sys

import pytest
import torch

import bitconv
from bitconv.data.files import read_examples, text_slice
from bitconv.errors import BitconvError
from bitconv.evaluate.backends import CAUSAL_LM, Backend, open_backend
from bitconv.evaluate.metrics import (
    classification_metrics,
    classify,
    perplexity,
    sliding_windows,
    tokenize_text,
    zero_shot,
)
from bitconv.evaluate.results import SCHEMA, read_result, write_result
from bitconv.evaluate.run import EvalConfig, evaluate_model
from bitconv.quantize.config import QuantConfig
from support.evalkit import char_tokenizer, with_tokenizer

TEXT = "".join(f"Line {i}: to be, or not to be, that is the question {i * 7 % 13}.\n" for i in range(120))


@pytest.fixture(scope="module")
def llama(tiny_llama, tmp_path_factory):
    return with_tokenizer(tiny_llama, tmp_path_factory.mktemp("eval") / "llama")


@pytest.fixture(scope="module")
def bert(tiny_bert, tmp_path_factory):
    return with_tokenizer(tiny_bert, tmp_path_factory.mktemp("eval") / "bert")


@pytest.fixture()
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    return path


def _tsv(path, rows, header="sentence\tlabel"):
    path.write_text((header + "\n" if header else "") + "".join(f"{a}\t{b}\n" for a, b in rows))
    return path


# ---------------------------------------------------------------------------------------------------------
# perplexity


@pytest.mark.parametrize("n,context,stride", [(2, 8, 8), (100, 16, 16), (100, 16, 5), (17, 16, 1), (64, 64, 32)])
def test_sliding_windows_score_every_token_after_the_first_exactly_once(n, context, stride):
    windows = sliding_windows(n, context, stride)
    scored = []
    for begin, end, first in windows:
        assert end - begin <= context and begin < first <= end
        scored += range(first, end)
    assert scored == list(range(1, n))


def _hf_loop_perplexity(model, ids, windows):
    """The plain transformers loop (labels=, -100 for context tokens) over the given windows, counted exactly."""
    nll, count = 0.0, 0
    for begin, end, first in windows:
        input_ids = ids[begin:end].unsqueeze(0)
        labels = input_ids.clone()
        labels[:, : first - begin] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=labels).loss
        n = int((labels[:, 1:] != -100).sum())
        nll += loss.item() * n
        count += n
    return math.exp(nll / count), count


def test_perplexity_equals_the_plain_transformers_loop(llama, text_file):
    backend = open_backend(llama)
    got = perplexity(backend, text_slice(text_file), context=32, stride=12, max_tokens=400, progress=False)
    ids = torch.tensor(tokenize_text(backend.tokenizer, TEXT, 400).ids)
    want, count = _hf_loop_perplexity(backend.module, ids, sliding_windows(len(ids), 32, 12))
    assert got["n_tokens"] == 400 and got["n_scored_tokens"] == count == 399
    assert got["perplexity"] == pytest.approx(want, rel=1e-5)


def test_one_window_is_the_whole_sequence_cross_entropy(llama, text_file):
    backend = open_backend(llama)
    got = perplexity(backend, text_slice(text_file), context=64, max_tokens=50, progress=False)
    ids = torch.tensor([tokenize_text(backend.tokenizer, TEXT, 50).ids])
    with torch.no_grad():
        loss = backend.module(ids, labels=ids).loss.item()
    assert got["n_windows"] == 1
    assert got["mean_nll_nats"] == pytest.approx(loss, rel=1e-5)


def test_scoring_a_causal_lm_builds_no_key_value_cache(llama, text_file):
    # a cache costs memory, and recompiles the blocks `recover --compile` compiled once per layer's cache state
    backend = open_backend(llama)
    outputs = []
    hook = backend.module.register_forward_hook(lambda module, args, output: outputs.append(output))
    try:
        perplexity(backend, text_slice(text_file), context=32, max_tokens=100, progress=False)
    finally:
        hook.remove()
    assert outputs and all(out.past_key_values is None for out in outputs)


def test_bits_per_byte_divides_by_utf8_bytes_of_the_scored_text(llama, tmp_path):
    path = tmp_path / "utf8.txt"
    path.write_text("naïve café\n" * 10, encoding="utf-8")  # two-byte characters: bytes != characters
    r = perplexity(open_backend(llama), text_slice(path), context=32, progress=False)
    scored = ("naïve café\n" * 10)[1:]  # one token per character here; the first is context only
    assert r["n_scored_bytes"] == len(scored.encode("utf-8")) > len(scored)
    assert r["bits_per_byte"] == pytest.approx(r["total_nll_nats"] / math.log(2) / len(scored.encode("utf-8")))


def test_batched_windows_give_the_same_perplexity(llama, text_file):
    backend = open_backend(llama)
    one = perplexity(backend, text_slice(text_file), context=32, max_tokens=300, progress=False)
    four = perplexity(backend, text_slice(text_file), context=32, max_tokens=300, batch_size=4, progress=False)
    assert four["perplexity"] == pytest.approx(one["perplexity"], rel=1e-5)


def test_max_tokens_keeps_a_stable_prefix():
    tok = char_tokenizer()
    full = tokenize_text(tok, TEXT)
    cut = tokenize_text(tok, TEXT, max_tokens=100)
    assert cut.ids == full.ids[:100] and cut.text == TEXT[:100]


def test_same_numbers_however_the_model_is_loaded(llama, text_file, tmp_path):
    folder = bitconv.convert(llama, tmp_path / "int8", QuantConfig.for_bits(8), progress=False).out
    packed = open_backend(folder)
    assert packed.origin == "bitconv" and packed.quantization_config["bits"] == 8.0
    model = bitconv.load(folder, dequantize=True)
    decoded = Backend(str(folder), "torch", "bitconv", CAUSAL_LM, model.config, packed.tokenizer,
                      lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits, model)
    kw = dict(context=32, max_tokens=200, progress=False)
    a = perplexity(packed, text_slice(text_file), **kw)
    b = perplexity(decoded, text_slice(text_file), **kw)
    assert a["perplexity"] == pytest.approx(b["perplexity"], rel=1e-5)
    original = perplexity(open_backend(llama), text_slice(text_file), **kw)
    assert a["perplexity"] == pytest.approx(original["perplexity"], rel=0.02)  # int8 is close, not equal


def test_onnx_backend_gives_the_torch_numbers(llama, text_file, tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    torch.manual_seed(1)
    emb = torch.randn(128, 16)
    head = torch.randn(16, 128) * 0.3
    graph = helper.make_graph(
        [helper.make_node("Gather", ["emb", "input_ids"], ["h"]), helper.make_node("MatMul", ["h", "head"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "t"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "t", 128])],
        [numpy_helper.from_array(emb.numpy(), "emb"), numpy_helper.from_array(head.numpy(), "head")])
    folder = tmp_path / "onnx"
    folder.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "model.onnx"))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((llama / name).read_bytes())
    backend = open_backend(folder / "model.onnx")
    assert backend.runtime == "onnxruntime" and backend.kind == CAUSAL_LM
    twin = Backend("twin", "torch", "original", CAUSAL_LM, backend.config, backend.tokenizer,
                   lambda ids, mask: emb[ids] @ head)
    kw = dict(context=32, max_tokens=200, progress=False)
    got = perplexity(backend, text_slice(text_file), **kw)
    want = perplexity(twin, text_slice(text_file), **kw)
    assert got["perplexity"] == pytest.approx(want["perplexity"], rel=1e-4)


@pytest.mark.parametrize("bits,target", [(1.58, "op"), (1.58, "matmulnbits"), (8, "float")])
def test_exported_onnx_decoder_gives_the_torch_numbers(llama, text_file, tmp_path, bits, target):
    """`bitconv export` output (a decoder with a key/value cache) evaluates like the folder it came from."""
    from bitconv.export.onnx import export_onnx

    folder = bitconv.convert(llama, tmp_path / "q", QuantConfig.for_bits(bits), progress=False).out
    # accuracy_level 0: MatMulNBits with float activations, like the folder (level 4 rounds them to int8)
    onnx_path = export_onnx(folder, tmp_path / "onnx" / "model.onnx", target=target, accuracy_level=0).path
    kw = dict(context=32, stride=20, max_tokens=160, progress=False)
    got = perplexity(open_backend(onnx_path), text_slice(text_file), **kw)
    want = perplexity(open_backend(folder), text_slice(text_file), **kw)
    assert got["n_scored_tokens"] == want["n_scored_tokens"] == 159
    assert got["perplexity"] == pytest.approx(want["perplexity"], rel=1e-4)


@pytest.mark.parametrize("missing", ["module", "library"])
def test_onnx_file_with_custom_op_and_no_op_library_is_one_clear_error(tmp_path, monkeypatch, missing):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    import bitconv as package

    node = helper.make_node("TernaryMatMul", ["input_ids"], ["logits"], domain="bitconv")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 128])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("bitconv", 1)])
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    if missing == "module":  # a bitconv without the ONNX op at all
        monkeypatch.setitem(sys.modules, "bitconv.ort", None)
        monkeypatch.delattr(package, "ort", raising=False)
        pattern = r"model\.onnx: uses custom ops of domain bitconv, but this bitconv has no op library"
    else:  # the module is there but its compiled library is not (a source checkout never built)
        from bitconv import ort

        def no_library():
            raise BitconvError("the ONNX Runtime custom op library _ternary_ops.so is missing from /x: build it")

        monkeypatch.setattr(ort, "library_path", no_library)
        pattern = r"model\.onnx: uses custom ops of domain bitconv; the ONNX Runtime custom op library _ternary_ops\.so"
    with pytest.raises(BitconvError, match=pattern) as info:
        open_backend(path)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------------
# classification


def test_classification_metrics_by_hand():
    # 6 examples, classes 0/1/2; class 2 never predicted, class 1 predicted once wrongly
    m = classification_metrics([0, 0, 0, 1, 2, 2], [0, 0, 1, 0, 0, 0], {0: "a", 1: "b", 2: "c"})
    assert m["accuracy"] == pytest.approx(2 / 6)
    assert m["per_class"]["a"] == pytest.approx({"precision": 2 / 5, "recall": 2 / 3, "f1": 0.5, "support": 3})
    assert m["per_class"]["b"]["precision"] == 0.0 and m["per_class"]["c"]["recall"] == 0.0
    assert m["macro_f1"] == pytest.approx(0.5 / 3)
    assert m["confusion_matrix"]["rows_true_columns_predicted"] == [[2, 1, 0], [1, 0, 0], [2, 0, 0]]
    assert m["majority_class_rate"] == 0.5


def test_classify_matches_the_models_own_predictions(bert, tmp_path):
    rows = [("good fun", 1), ("bad day", 0), ("so so", 1), ("terrible", 0), ("great", 1), ("meh", 0), ("ok", 1)]
    data = _tsv(tmp_path / "d.tsv", rows)
    backend = open_backend(bert)
    got = classify(backend, read_examples(data), batch_size=3, progress=False)
    enc = backend.tokenizer([t for t, _ in rows], padding=True, return_tensors="pt")
    with torch.no_grad():
        pred = backend.module(**enc).logits.argmax(-1).tolist()
    want = classification_metrics([y for _, y in rows], pred, {0: "LABEL_0", 1: "LABEL_1"})
    assert got["accuracy"] == want["accuracy"] and got["confusion_matrix"] == want["confusion_matrix"]
    assert sum(map(sum, got["confusion_matrix"]["rows_true_columns_predicted"])) == len(rows)


def test_classify_pads_gpt2_style_models_that_have_no_pad_token(tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=128, n_positions=64, num_labels=2,
                        id2label={0: "ham", 1: "spam"}, label2id={"ham": 0, "spam": 1})
    model = GPT2ForSequenceClassification(config).eval()
    folder = tmp_path / "gpt2-spam"
    model.save_pretrained(str(folder))
    tok = char_tokenizer()
    tok.pad_token = None
    tok.eos_token = "\x01"
    tok.save_pretrained(str(folder))
    rows = [("hi there", "ham"), ("WIN a prize now", "spam"), ("ok", "ham")]
    data = tmp_path / "sms.tsv"
    data.write_text("".join(f"{y}\t{x}\n" for x, y in rows))
    got = classify(open_backend(folder), read_examples(data, "1", "0"), batch_size=3, progress=False)
    with torch.no_grad():  # each text alone: no padding involved
        want = [model(torch.tensor([[ord(c) for c in x]])).logits.argmax(-1).item() for x, _ in rows]
    expected = classification_metrics([0 if y == "ham" else 1 for _, y in rows], want, {0: "ham", 1: "spam"})
    assert got["confusion_matrix"] == expected["confusion_matrix"]


def test_zero_shot_picks_the_most_likely_label_word(llama, tmp_path):
    rows = [("abc", "x"), ("xyz", "y"), ("hello", "x")]
    data = _tsv(tmp_path / "z.tsv", rows)
    backend = open_backend(llama)
    got = zero_shot(backend, read_examples(data), ["x", "y"], "T: {text} ->", progress=False)
    want = []
    for text, _ in rows:
        scores = []
        for label in ("x", "y"):
            ids = torch.tensor([[ord(c) for c in f"T: {text} -> {label}"]])  # " x": two characters scored
            with torch.no_grad():
                logp = torch.log_softmax(backend.module(ids).logits, -1)
            scores.append(sum(logp[0, p - 1, ids[0, p]].item() for p in range(ids.shape[1] - 2, ids.shape[1])))
        want.append(int(scores[1] > scores[0]))
    expected = classification_metrics([0 if y == "x" else 1 for _, y in rows], want, {0: "x", 1: "y"})
    assert got["confusion_matrix"] == expected["confusion_matrix"]
    assert got["mode"] == "zero-shot" and got["n_examples"] == 3


# ---------------------------------------------------------------------------------------------------------
# the whole run, results and bad input


def test_evaluate_model_writes_a_versioned_result_with_costs(llama, text_file, tmp_path):
    folder = bitconv.convert(llama, tmp_path / "t", QuantConfig.for_bits(1.58), progress=False).out
    result = evaluate_model(str(folder), EvalConfig("perplexity", str(text_file), context=32, max_tokens=100, latency_repeats=2), progress=False)
    path = write_result(tmp_path / "r.json", result)
    back = read_result(path)
    assert back["schema"] == SCHEMA and back["status"] == "ok" and back["model"]["scheme"] == "ternary"
    cost = back["cost"]
    mem, file = cost["weights_in_memory"], cost["weights_in_file"]
    # packed codes stay packed in memory: same bytes as in the file for the quantized layers
    assert mem["linear"]["n_bytes"] == file["linear"]["n_bytes"]
    assert mem["linear"]["n_params"] == file["linear"]["n_params"] > 0
    assert 2.0 <= file["linear"]["bits_per_weight"] < 2.1  # 2-bit codes plus one scale per tensor
    assert cost["latency"]["repeats"] == 2 and cost["latency"]["median_s"] > 0 and cost["peak_rss_bytes"] > 0
    assert cost["disk"]["n_bytes"] == (folder / "model.safetensors").stat().st_size


def test_results_are_deterministic_apart_from_timings(llama, text_file):
    runs = [evaluate_model(str(llama), EvalConfig("perplexity", str(text_file), context=32, max_tokens=120, latency_repeats=0), progress=False) for _ in range(2)]
    assert json.dumps(runs[0]["metrics"], sort_keys=True) == json.dumps(runs[1]["metrics"], sort_keys=True)


@pytest.mark.parametrize("case,pattern", [
    ("missing", r"missing\.txt: data file not found"),
    ("empty", r"empty\.txt: the data file is empty"),
    ("context", r"--context 65 is longer than the model's maximum of 64"),
    ("no_column", r"no column named 'review'"),
    ("bad_label", r"label 'maybe' \(example 2\) is not in the model's label map"),
    ("not_causal", r"perplexity needs a causal language model"),
    ("no_template", r"--labels needs --template with a \{text\} placeholder"),
])
def test_bad_input_is_one_clear_error(case, pattern, llama, bert, text_file, tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    tsv = _tsv(tmp_path / "d.tsv", [("good", "1"), ("odd", "maybe")])
    calls = {
        "missing": lambda: evaluate_model(str(llama), EvalConfig("perplexity", str(tmp_path / "missing.txt"))),
        "empty": lambda: evaluate_model(str(llama), EvalConfig("perplexity", str(tmp_path / "empty.txt"))),
        "context": lambda: evaluate_model(str(llama), EvalConfig("perplexity", str(text_file), context=65), progress=False),
        "no_column": lambda: evaluate_model(str(bert), EvalConfig("classify", str(tsv), text_column="review")),
        "bad_label": lambda: evaluate_model(str(bert), EvalConfig("classify", str(tsv)), progress=False),
        "not_causal": lambda: evaluate_model(str(bert), EvalConfig("perplexity", str(text_file)), progress=False),
        "no_template": lambda: evaluate_model("not-loaded", EvalConfig("classify", str(tsv), labels="a,b", template="no slot")),
    }
    with pytest.raises(BitconvError, match=pattern) as info:
        calls[case]()
    assert "\n" not in str(info.value)


def test_cli_eval_writes_json_and_errors_are_one_line(run_cli, llama, text_file, tmp_path):
    out = tmp_path / "out.json"
    code, stdout, _ = run_cli("eval", llama, "--task", "perplexity", "--data", text_file, "--context", "32",
                              "--max-tokens", "80", "--latency-repeats", "1", "--json", out, "--no-progress")
    assert code == 0 and "perplexity" in stdout
    assert read_result(out)["metrics"]["n_scored_tokens"] == 79
    code, _, err = run_cli("eval", llama, "--data", tmp_path / "nope.txt")
    assert code == 1 and err.strip().count("\n") == 0 and "nope.txt: data file not found" in err


# ---------------------------------------------------------------------------------------------------------
# a real model


@pytest.mark.slow
def test_minilm_sentiment_classifier_keeps_its_accuracy_at_int8(minilm_dir, tmp_path):
    """all-MiniLM-L6-v2 with a logistic-regression head fitted on 400 SST-2 sentences, then converted."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    from support.paths import shared_data

    train = read_examples(shared_data("sst2", "train.tsv"), max_examples=400)
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(str(minilm_dir), num_labels=2,
                                                          id2label={0: "negative", 1: "positive"},
                                                          label2id={"negative": 0, "positive": 1}).eval()
    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    with torch.no_grad():
        enc = tok(train.texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        pooled = model.bert(**enc).pooler_output
    y = torch.tensor([int(v) for v in train.labels])
    head = torch.nn.Linear(pooled.shape[1], 2)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(pooled), y) + 1e-3 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    model.classifier.load_state_dict(head.state_dict())
    folder = tmp_path / "minilm-sst2"
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    data = shared_data("sst2", "validation.tsv")
    fp = evaluate_model(str(folder), EvalConfig("classify", str(data), max_examples=300, latency_repeats=2), progress=False)
    assert fp["metrics"]["accuracy"] > 0.65  # a linear probe on frozen MiniLM; chance is ~0.5
    q = bitconv.convert(folder, tmp_path / "minilm-sst2-int8", QuantConfig.for_bits(8), progress=False).out
    q8 = evaluate_model(str(q), EvalConfig("classify", str(data), max_examples=300, latency_repeats=0), progress=False)
    assert abs(q8["metrics"]["accuracy"] - fp["metrics"]["accuracy"]) < 0.03
    assert q8["cost"]["weights_in_file"]["linear"]["bits_per_weight"] < 8.2
