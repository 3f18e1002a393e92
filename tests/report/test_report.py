import json
import re
import shutil

import pytest

from bitconv.errors import BitconvError
from bitconv.evaluate.compare import compare
from bitconv.evaluate.results import failed_result, read_result, write_result
from bitconv.evaluate.run import EvalConfig
from bitconv.report.build import build_report, read_reference, write_report
from support.evalkit import with_tokenizer

TEXT = "".join(f"Enter {i}: now is the winter of our discontent {i * 5 % 17}.\n" for i in range(80))


@pytest.fixture(scope="module")
def runs(tiny_llama, tmp_path_factory):
    """Real results of a compare over three schemes on the tiny model."""
    base = tmp_path_factory.mktemp("report")
    model = with_tokenizer(tiny_llama, base / "llama")
    (base / "text.txt").write_text(TEXT)
    compare(str(model), base / "runs", "16,4,1.58",
            eval_config=EvalConfig("perplexity", str(base / "text.txt"), context=32, max_tokens=120, latency_repeats=1),
            isolate=False, keep_models=False, progress=False, log=lambda *a: None)
    return base / "runs"


@pytest.fixture()
def folder(runs, tmp_path):
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    return copy


def _scale_perplexity(path, factor):
    res = read_result(path)
    res["metrics"]["perplexity"] *= factor
    write_result(path, res)


def test_report_flags_collapsed_runs_plainly(folder, tmp_path):
    _scale_perplexity(folder / "bits-1.58-ternary.json", 1e4)  # as naive ternary does to a real model
    _scale_perplexity(folder / "bits-4-uint4.json", 1.5)
    rep = build_report(folder)
    verdicts = {r["name"]: r["verdict"] for r in rep.rows}
    assert verdicts == {"bits-16-fp16": "baseline", "bits-4-uint4": "degraded", "bits-1.58-ternary": "collapsed"}
    md_path, html_path = tmp_path / "r.md", tmp_path / "r.html"
    write_report(rep, markdown=md_path, html=html_path)
    md = md_path.read_text()
    assert re.search(r"> \*\*Collapsed \(perplexity more than 10x the baseline's\): 1\.58-bit ternary", md)
    assert re.search(r"COLLAPSED \((9,\d{3}|10,\d{3})x the baseline's perplexity\)", md)  # tiny-model ratio ~1 x 1e4
    assert re.search(r"degraded \(1\.[45]\dx\)", md)
    assert "Collapsed (perplexity more than 10x" in html_path.read_text()


def test_html_is_self_contained_with_inline_charts(folder, tmp_path):
    write_report(build_report(folder), html=tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert page.count("<svg") == 4  # quality vs bits, vs size, bytes by category, per-layer error
    assert "<script" not in page and "<link" not in page and "<img" not in page
    urls = set(re.findall(r"(?:src|href)=\"([^\"#]+)\"", page))
    assert not urls, urls


def test_markdown_json_and_chart_files(folder, tmp_path):
    rep = build_report(folder)
    written = write_report(rep, markdown=tmp_path / "r.md", json_path=tmp_path / "r.json")
    charts = sorted(p.name for p in (tmp_path / "r_charts").iterdir())
    assert charts == ["layer_errors.svg", "metric_vs_bits.svg", "metric_vs_size.svg", "size.svg"]
    md = (tmp_path / "r.md").read_text()
    for name in charts:
        assert f"(r_charts/{name})" in md
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["schema"] == "bitconv.report" and data["baseline"] == "bits-16-fp16"
    assert [r["name"] for r in data["runs"]] == ["bits-16-fp16", "bits-4-uint4", "bits-1.58-ternary"]
    ternary = data["runs"][2]
    assert 2.0 <= ternary["bits_per_weight_linear"] < 2.1
    assert set(ternary["size_by_category"]) == {"linear", "embedding", "other"}
    assert ternary["quantization_error_summary"]["n_matrices"] == 14
    assert len(written) == 6


def test_reports_are_byte_identical_for_the_same_results(folder, tmp_path):
    for name in ("a", "b"):
        write_report(build_report(folder), html=tmp_path / f"{name}.html", markdown=tmp_path / name / "r.md")
    assert (tmp_path / "a.html").read_bytes() == (tmp_path / "b.html").read_bytes()
    for chart in (tmp_path / "a" / "r_charts").iterdir():
        assert chart.read_bytes() == (tmp_path / "b" / "r_charts" / chart.name).read_bytes()


def test_failed_runs_are_shown_with_their_error(folder, tmp_path):
    res = failed_result("bits-2-uint2", {"source": "x"}, {"name": "perplexity", "data": "t.txt"}, "conversion failed: boom")
    res["run"] = {"bits": 2.0, "scheme": "uint2"}
    write_result(folder / "bits-2-uint2.json", res)
    write_report(build_report(folder), markdown=tmp_path / "r.md")
    md = (tmp_path / "r.md").read_text()
    assert "| 2-bit uint2 | n/a |" in md and "FAILED: conversion failed: boom" in md


def test_reference_numbers_are_labelled_not_measured_here(folder, tmp_path):
    ref = tmp_path / "ref.csv"
    ref.write_text("model,scheme,bits,dataset,metric,value,source\n"
                   "LLaMA 700M,fp16,16,paper,perplexity,12.33,Ma et al. 2024 Table 1\n"
                   "BitNet b1.58 700M,ternary,1.58,paper,perplexity,12.87,Ma et al. 2024 Table 1\n")
    write_report(build_report(folder, reference=ref), markdown=tmp_path / "r.md")
    md = (tmp_path / "r.md").read_text()
    assert "## Published reference numbers (not measured here)" in md
    assert "| BitNet b1.58 700M | ternary | 1.58 | paper | perplexity | 12.87 | Ma et al. 2024 Table 1 |" in md
    as_json = tmp_path / "ref.json"
    as_json.write_text(json.dumps([{"metric": "perplexity", "value": 9.91, "source": "paper", "model": "3B"}]))
    assert read_reference(as_json)[0]["value"] == 9.91


@pytest.mark.parametrize("content,pattern", [
    ("metric,value\nperplexity,3\n", "row 1 has no source"),
    ("metric,value,source\nperplexity,lots,paper\n", "value 'lots' is not a number"),
])
def test_bad_reference_files(tmp_path, content, pattern):
    path = tmp_path / "ref.csv"
    path.write_text(content)
    with pytest.raises(BitconvError, match=pattern):
        read_reference(path)


def test_bad_results_folders(folder, tmp_path):
    with pytest.raises(BitconvError, match="holds no bitconv result files"):
        build_report(tmp_path / "runs" / "models" if (tmp_path / "runs" / "models").exists() else tmp_path)
    res = read_result(folder / "bits-4-uint4.json")
    res["task"]["name"] = "classify"
    write_result(folder / "bits-4-uint4.json", res)
    with pytest.raises(BitconvError, match="mix tasks"):
        build_report(folder)
    (folder / "bits-4-uint4.json").write_text(json.dumps(dict(res, schema_version=99)))
    with pytest.raises(BitconvError, match="schema version 99"):
        build_report(folder)


def test_classification_report_has_per_class_scores_and_confusion(folder, tmp_path):
    cls = tmp_path / "cls"
    cls.mkdir()
    for name, bits, matrix in (("bits-16-fp16", 16.0, [[40, 10], [8, 42]]), ("bits-1.58-ternary", 1.58, [[50, 0], [50, 0]])):
        res = read_result(folder / f"{name}.json")
        res["task"] = {"name": "classify", "data": "sst2.tsv", "data_sha256": "0" * 64, "text_column": "sentence",
                       "label_column": "label"}
        from bitconv.evaluate.metrics import classification_metrics

        y_true = [t for t in (0, 1) for p in (0, 1) for _ in range(matrix[t][p])]
        y_pred = [p for t in (0, 1) for p in (0, 1) for _ in range(matrix[t][p])]
        res["metrics"] = {"mode": "sequence-classification",
                          **classification_metrics(y_true, y_pred, {0: "negative", 1: "positive"})}
        write_result(cls / f"{name}.json", res)
    rep = build_report(cls)
    assert {r["name"]: r["verdict"] for r in rep.rows} == {"bits-16-fp16": "baseline", "bits-1.58-ternary": "collapsed"}
    write_report(rep, markdown=tmp_path / "c.md")
    md = (tmp_path / "c.md").read_text()
    assert "no better than always predicting the most frequent class" in md
    assert "| negative | 40 | 10 |" in md and "F1 positive" in md
