import json

import pytest

import bitconv.quantize.convert
from bitconv.errors import BitconvError
from bitconv.evaluate.compare import compare, parse_bits_list, run_name
from bitconv.evaluate.results import read_result
from bitconv.evaluate.run import EvalConfig
from support.evalkit import with_tokenizer

TEXT = "".join(f"Act {i}, scene {i % 5}: what light through yonder window breaks {i * 3 % 11}.\n" for i in range(80))
EVAL = dict(context=32, max_tokens=150, latency_repeats=1)


@pytest.fixture(scope="module")
def llama(tiny_llama, tmp_path_factory):
    return with_tokenizer(tiny_llama, tmp_path_factory.mktemp("cmp") / "llama")


@pytest.fixture()
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    return path


def test_bits_lists_and_run_names():
    assert parse_bits_list("16, 8,4,2,1.58,1") == [16.0, 8.0, 4.0, 2.0, 1.58, 1.0]
    assert [run_name(b) for b in (16.0, 1.58, 1.0)] == ["bits-16-fp16", "bits-1.58-ternary", "bits-1-binary"]
    with pytest.raises(BitconvError, match="listed twice"):
        parse_bits_list("8,8")
    with pytest.raises(BitconvError, match="unknown --bits '3'"):
        parse_bits_list("3")


def test_compare_writes_one_result_per_scheme_with_layer_errors(llama, text_file, tmp_path):
    rows = compare(str(llama), tmp_path / "runs", "16,8,1.58",
            eval_config=EvalConfig("perplexity", str(text_file), **EVAL),
            isolate=False, progress=False, log=lambda *a: None)
    assert [r["status"] for r in rows] == ["ok"] * 3
    results = {r["name"]: read_result(r["path"]) for r in rows}
    errors = {}
    for name, res in results.items():
        assert res["run"]["source"] == str(llama) and res["metrics"]["n_scored_tokens"] == 149
        errors[name] = [e["rel_frobenius_error"] for e in res["quantization_error"]]
        assert len(errors[name]) == 14  # 2 blocks x (q, k, v, o, gate, up, down)
    # fp16 rounding << int8 rounding << ternary
    assert max(errors["bits-16-fp16"]) < 1e-3 < min(errors["bits-8-int8"])
    assert max(errors["bits-8-int8"]) < 0.02 < 0.3 < min(errors["bits-1.58-ternary"])
    assert (tmp_path / "runs" / "models" / "bits-1.58-ternary" / "model.safetensors").exists()


def test_a_failed_conversion_is_recorded_and_the_others_complete(llama, text_file, tmp_path, monkeypatch):
    real = bitconv.quantize.convert.convert

    def flaky(source, out, config, **kw):
        if config.bits == 8.0:
            raise BitconvError("simulated: disk full")
        return real(source, out, config, **kw)

    monkeypatch.setattr(bitconv.quantize.convert, "convert", flaky)
    rows = compare(str(llama), tmp_path / "runs", "16,8,1",
            eval_config=EvalConfig("perplexity", str(text_file), **EVAL),
            isolate=False, progress=False, log=lambda *a: None)
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    failed = read_result(tmp_path / "runs" / "bits-8-int8.json")
    assert failed["status"] == "failed" and failed["error"] == "conversion failed: simulated: disk full"
    assert failed["metrics"] is None and failed["run"]["bits"] == 8.0


def test_an_evaluation_failing_in_its_own_process_is_recorded(llama, text_file, tmp_path):
    # the tiny model has 64 positions: the child process raises, the parent records it and goes on
    rows = compare(str(llama), tmp_path / "runs", "16,1.58",
            eval_config=EvalConfig("perplexity", str(text_file), **dict(EVAL, context=128)),
            isolate=True, progress=False, log=lambda *a: None)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    res = read_result(rows[1]["path"])
    assert "--context 128 is longer than the model's maximum of 64" in res["error"]
    assert res["quantization_error"]  # the conversion itself worked and was measured


def test_compare_checks_the_data_before_converting(llama, tmp_path):
    with pytest.raises(BitconvError, match="missing.txt: data file not found"):
        compare(str(llama), tmp_path / "runs", "16",
            eval_config=EvalConfig("perplexity", str(tmp_path / "missing.txt"), **EVAL),
            isolate=False, progress=False, log=lambda *a: None)
    assert not (tmp_path / "runs" / "models").exists() or not any((tmp_path / "runs" / "models").iterdir())


def test_compare_is_deterministic_apart_from_timings(llama, text_file, tmp_path):
    metrics = []
    for name in ("a", "b"):
        rows = compare(str(llama), tmp_path / name, "2",
            eval_config=EvalConfig("perplexity", str(text_file), **EVAL),
            isolate=False, progress=False, log=lambda *a: None)
        res = read_result(rows[0]["path"])
        metrics.append(json.dumps([res["metrics"], res["quantization_error"]], sort_keys=True))
    assert metrics[0] == metrics[1]
    a = (tmp_path / "a" / "models" / "bits-2-uint2" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "models" / "bits-2-uint2" / "model.safetensors").read_bytes()


def test_cli_compare_then_report(run_cli, llama, text_file, tmp_path):
    runs = tmp_path / "runs"
    code, out, err = run_cli("compare", llama, "--bits", "16,1", "--task", "perplexity", "--data", text_file,
                             "--context", "32", "--max-tokens", "100", "--latency-repeats", "1", "--out", runs,
                             "--json", tmp_path / "summary.json", "--no-progress", "--delete-models")
    assert code == 0, err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["status"] for r in summary["runs"]] == ["ok", "ok"]
    assert not (runs / "models").exists()
    code, out, err = run_cli("report", runs, "--markdown", tmp_path / "r.md", "--html", tmp_path / "r.html")
    assert code == 0, err
    assert "1-bit binary" in (tmp_path / "r.md").read_text()
