"""`report`: a folder of result files -> tables and charts, written as Markdown, one self-contained HTML page,
and JSON.

The report is built once as a list of blocks (headings, paragraphs, tables, charts); the Markdown and HTML
writers render the same blocks, so the two never disagree. A run is "collapsed" when its perplexity is more
than `collapse_factor` times the baseline's (or not finite), or, for classification, when its accuracy is no
better than always answering the most frequent class. The baseline is the 16-bit run if there is one, else
the original checkpoint, else the run with the most bits.
"""

from __future__ import annotations

import csv
import html
import io
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from bitconv.display import human_bytes
from bitconv.errors import DataError
from bitconv.evaluate.results import json_safe, read_results
from bitconv.format.atomic import write_json_atomic, write_text_atomic
from bitconv.report import charts

REPORT_SCHEMA = "bitconv.report"
REPORT_SCHEMA_VERSION = 1
DEGRADED_PERPLEXITY_RATIO = 1.10  # more than 10% above the baseline
DEGRADED_ACCURACY_DROP = 0.02  # two points of accuracy below the baseline
REFERENCE_REQUIRED = ("metric", "value", "source")


@dataclass
class Report:
    title: str
    task: str
    metric: str
    baseline: str | None
    collapse_factor: float
    rows: list[dict]
    reference: list[dict] | None
    blocks: list[tuple[str, object]] = field(default_factory=list)
    charts: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        keep = ("name", "label", "status", "error", "bits", "scheme", "metric", "metric_vs_baseline", "verdict",
                "secondary", "file_bytes", "size_by_category", "size_source", "bits_per_weight_linear",
                "bits_per_weight_overall", "latency_ms_per_token", "latency_ms_per_image", "latency_input_shape",
                "peak_rss_bytes", "seconds", "convert_seconds", "quantization_error_summary", "quantization_error", "metrics")
        return {"schema": REPORT_SCHEMA, "schema_version": REPORT_SCHEMA_VERSION, "title": self.title,
                "task": self.task, "metric": self.metric, "baseline": self.baseline,
                "collapse_factor": self.collapse_factor, "runs": [{k: r.get(k) for k in keep} for r in self.rows],
                "reference_not_measured_here": self.reference}

    def markdown_tables(self) -> str:
        return render_markdown([b for b in self.blocks if b[0] != "chart"], {})


# ---------------------------------------------------------------------------------------------------------
# rows


def _label(bits, scheme, result: dict) -> str:
    if bits is not None:
        width = f"{bits:g}-bit {scheme}" if scheme else f"{bits:g}-bit"
        # a `compare` run is named by its width; any other (`eval --json --name`, e.g. a recovered model) by
        # its name too, so two models of one width stay apart
        return width if result.get("run") else f"{result['name']} ({width})"
    origin = (result.get("model") or {}).get("origin")
    return result["name"] if origin in (None, "bitconv") else f"{result['name']} ({origin})"


def _size(cost: dict) -> tuple[dict | None, str | None, float | None, float | None]:
    """(bytes by category, where they come from, bits/weight of linear layers, bits/weight overall)."""
    for key, source in (("weights_in_file", "file"), ("weights_in_memory", "memory")):
        totals = cost.get(key)
        if totals:
            by_cat = {c: totals[c]["n_bytes"] for c in ("linear", "embedding", "other") if c in totals}
            linear = totals.get("linear", {}).get("bits_per_weight")
            overall = totals.get("total", {}).get("bits_per_weight")
            return by_cat, source, linear, overall
    return None, None, None, None


def _row(result: dict) -> dict:
    model, run = result.get("model") or {}, result.get("run") or {}
    bits = run.get("bits", model.get("bits"))
    scheme = run.get("scheme") or model.get("scheme")
    row = {"name": result["name"], "status": result["status"], "error": result.get("error"), "bits": bits,
           "scheme": scheme, "label": _label(bits, scheme, result), "origin": model.get("origin"),
           "metric": None, "secondary": None, "metrics": result.get("metrics"), "verdict": None,
           "metric_vs_baseline": None, "seconds": result.get("seconds"), "convert_seconds": run.get("convert_seconds"),
           "quantization_error": result.get("quantization_error") or [], "task": result.get("task") or {},
           "environment": result.get("environment") or {}}
    m = result.get("metrics") or {}
    if result["status"] == "ok":
        if row["task"].get("name") == "perplexity":
            row["metric"], row["secondary"] = m.get("perplexity"), m.get("bits_per_byte")
        else:
            row["metric"], row["secondary"] = m.get("accuracy"), m.get("macro_f1")
    cost = result.get("cost") or {}
    row["size_by_category"], row["size_source"], row["bits_per_weight_linear"], row["bits_per_weight_overall"] = _size(cost)
    row["file_bytes"] = (cost.get("disk") or {}).get("n_bytes")
    lat = cost.get("latency") or {}
    row["latency_ms_per_token"] = lat.get("median_ms_per_token")
    row["latency_ms_per_image"] = lat.get("median_ms_per_image")
    row["latency_input_shape"] = lat.get("input_shape")
    row["load_average_1min"] = lat.get("load_average_1min")
    row["peak_rss_bytes"] = cost.get("peak_rss_bytes")
    errors = [e["rel_frobenius_error"] for e in row["quantization_error"] if e.get("rel_frobenius_error") is not None]
    if errors:
        worst = max(row["quantization_error"], key=lambda e: e.get("rel_frobenius_error") or 0)
        row["quantization_error_summary"] = {"n_matrices": len(errors), "mean": statistics.fmean(errors),
                                             "median": statistics.median(errors), "max": max(errors),
                                             "worst": worst["name"]}
    else:
        row["quantization_error_summary"] = None
    return row


def _order(row: dict) -> tuple:
    # originals first, then by bits, most first; failed runs keep their place so the table reads as a scale
    return (row["bits"] is not None, -(row["bits"] or 0), row["name"])


def _pick_baseline(rows: list[dict]) -> dict | None:
    ok = [r for r in rows if r["status"] == "ok" and r["metric"] is not None]
    for r in ok:
        if r["bits"] == 16:
            return r
    for r in ok:
        if r["origin"] == "original":
            return r
    with_bits = [r for r in ok if r["bits"] is not None]
    return max(with_bits, key=lambda r: r["bits"]) if with_bits else (ok[0] if ok else None)


def _judge(rows: list[dict], baseline: dict | None, task: str, collapse_factor: float) -> None:
    base = baseline["metric"] if baseline else None
    for r in rows:
        if r["status"] != "ok":
            r["verdict"] = "failed"
            continue
        if task == "perplexity":
            if r["metric"] is None:
                r["verdict"] = "collapsed"
                continue
            if base:
                r["metric_vs_baseline"] = r["metric"] / base
            if r is baseline:
                r["verdict"] = "baseline"
            elif base and r["metric"] > collapse_factor * base:
                r["verdict"] = "collapsed"
            elif base and r["metric"] > DEGRADED_PERPLEXITY_RATIO * base:
                r["verdict"] = "degraded"
            else:
                r["verdict"] = "close to baseline" if base else "measured"
        else:
            majority = (r["metrics"] or {}).get("majority_class_rate", 0.0)
            if base is not None:
                r["metric_vs_baseline"] = r["metric"] - base
            if r is baseline:
                r["verdict"] = "baseline"
            elif r["metric"] <= majority + 1e-9:
                r["verdict"] = "collapsed"
            elif base is not None and r["metric"] < base - DEGRADED_ACCURACY_DROP:
                r["verdict"] = "degraded"
            else:
                r["verdict"] = "close to baseline" if base is not None else "measured"


# ---------------------------------------------------------------------------------------------------------
# reference numbers (published elsewhere, not measured here)


def read_reference(path: str | Path) -> list[dict]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: reference file not found")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        rows = data.get("rows") if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataError(f"{path}: a reference file is a JSON list of objects (or {{\"rows\": [...]}})")
    elif path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
    else:
        raise DataError(f"{path}: reference numbers come as .json or .csv")
    if not rows:
        raise DataError(f"{path}: holds no reference rows")
    for i, r in enumerate(rows, start=1):
        missing = [k for k in REFERENCE_REQUIRED if not str(r.get(k) or "").strip()]
        if missing:
            raise DataError(f"{path}: row {i} has no {', '.join(missing)}; every row needs {', '.join(REFERENCE_REQUIRED)}")
        try:
            r["value"] = float(r["value"])
        except (TypeError, ValueError):
            raise DataError(f"{path}: row {i} value {r['value']!r} is not a number") from None
    return rows


# ---------------------------------------------------------------------------------------------------------
# building the blocks


def _num(v, spec: str = ".4g") -> str:
    return "n/a" if v is None else format(v, spec)


def _verdict_text(r: dict, task: str, collapse_factor: float) -> str:
    v = r["verdict"]
    if v == "failed":
        return f"FAILED: {r['error']}"
    if v == "collapsed":
        if task == "perplexity":
            if r["metric"] is None:
                return "COLLAPSED (perplexity not finite)"
            return f"COLLAPSED ({r['metric_vs_baseline']:,.0f}x the baseline's perplexity)"
        return "COLLAPSED (no better than always predicting the most frequent class)"
    if v == "degraded" and task == "perplexity":
        return f"degraded ({r['metric_vs_baseline']:.2f}x)"
    if v == "degraded":
        return f"degraded ({100 * r['metric_vs_baseline']:+.1f} points)"
    return v


def _data_sentence(rows: list[dict]) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return "No run completed."
    t, m = ok[0]["task"], ok[0]["metrics"] or {}
    if t.get("name") == "perplexity":
        chars = m.get("evaluated_chars") or t.get("slice_chars")
        return (f"Perplexity of `{t.get('data')}` (sha256 {str(t.get('data_sha256'))[:12]}...), characters "
                f"{chars[0]:,}..{chars[1]:,} of {t.get('file_chars', 0):,} (from --start-fraction "
                f"{t.get('start_fraction')} to --end-fraction {t.get('end_fraction')}, at most --max-tokens "
                f"{t.get('max_tokens')}): {m.get('n_tokens', 0):,} tokens, {m.get('n_scored_tokens', 0):,} scored "
                f"({m.get('n_scored_bytes', 0):,} UTF-8 bytes), windows of {m.get('context')} tokens starting every "
                f"{m.get('effective_stride', m.get('stride'))} tokens (the Hugging Face sliding-window method; only new tokens of each window are "
                "scored; bits per byte = total NLL in bits / UTF-8 bytes of the scored text).")
    n = m.get("n_examples")
    mode = m.get("mode", "classification")
    if t.get("name") == "image-classify":
        return (f"Image classification of `{t.get('data')}` (sha256 {str(t.get('data_sha256'))[:12]}...): "
                f"{n:,} images, one class per sub-folder.")
    extra = f" Zero-shot template {m.get('template')!r}, labels {m.get('labels')}." if mode == "zero-shot" else ""
    return (f"Classification ({mode}) of `{t.get('data')}` (sha256 {str(t.get('data_sha256'))[:12]}...): "
            f"{n:,} examples, text column {t.get('text_column')!r}, label column {t.get('label_column')!r}.{extra}")


def _blocks(rep: Report) -> list[tuple[str, object]]:
    task, rows = rep.task, rep.rows
    metric_name = "perplexity" if task == "perplexity" else "accuracy"
    second_name = "bits/byte" if task == "perplexity" else "macro F1"
    vs_name = "x baseline" if task == "perplexity" else "vs baseline"
    baseline = next((r for r in rows if r["name"] == rep.baseline), None)
    blocks: list[tuple[str, object]] = [("h1", rep.title), ("p", _data_sentence(rows))]
    if baseline:
        blocks.append(("p", f"Baseline: {baseline['label']} ({metric_name} {_num(baseline['metric'])})."))
    collapsed = [r for r in rows if r["verdict"] == "collapsed"]
    failed = [r for r in rows if r["verdict"] == "failed"]
    if collapsed:
        rule = (f"perplexity more than {rep.collapse_factor:g}x the baseline's" if task == "perplexity"
                else "accuracy no better than always predicting the most frequent class")
        blocks.append(("alert", f"Collapsed ({rule}): " + ", ".join(
            f"{r['label']} ({metric_name} {_num(r['metric'])})" for r in collapsed) +
            ". These models are not usable as converted; see `bitconv recover`."))
    if failed:
        blocks.append(("alert", "Failed runs: " + "; ".join(f"{r['label']}: {r['error']}" for r in failed)))
    per = "image" if task == "image-classify" else "token"
    summary = [["run", metric_name, vs_name, second_name, "bits/weight (linear)", "bits/weight (all)", "weights on disk",
                f"latency ms/{per}", "peak RSS", "verdict"]]
    for r in rows:
        vs = r["metric_vs_baseline"]
        if vs is None:
            vs_text = "n/a"
        elif task == "perplexity":
            vs_text = f"{vs:,.0f}x" if vs >= 100 else f"{vs:.2f}x"
        else:
            vs_text = f"{100 * vs:+.1f} pts"
        summary.append([r["label"], _num(r["metric"]), vs_text, _num(r["secondary"]),
                        _num(r["bits_per_weight_linear"], ".3g"), _num(r["bits_per_weight_overall"], ".3g"),
                        human_bytes(r["file_bytes"]), _num(r[f"latency_ms_per_{per}"], ".3g"),
                        "n/a" if r["peak_rss_bytes"] is None else f"{r['peak_rss_bytes'] / 2**20:.0f} MiB",
                        _verdict_text(r, task, rep.collapse_factor)])
    blocks += [("h2", "Results"), ("table", summary)]
    if task != "perplexity":
        blocks.append(("h2", "Per-class F1"))
        labels = []
        for r in rows:
            for label in ((r["metrics"] or {}).get("per_class") or {}):
                if label not in labels:
                    labels.append(label)
        table = [["run"] + [f"F1 {x}" for x in labels] + [f"precision {x}" for x in labels] + [f"recall {x}" for x in labels]]
        for r in rows:
            pc = (r["metrics"] or {}).get("per_class") or {}
            table.append([r["label"]] + [_num(pc.get(x, {}).get(k)) for k in ("f1", "precision", "recall") for x in labels])
        blocks.append(("table", table))
        blocks.append(("h2", "Confusion matrices (rows: true class, columns: predicted)"))
        for r in rows:
            cm = (r["metrics"] or {}).get("confusion_matrix")
            if cm:
                blocks.append(("p", f"{r['label']}:"))
                blocks.append(("table", [["true \\ predicted"] + cm["labels"]] +
                               [[lab] + [str(v) for v in row] for lab, row in zip(cm["labels"], cm["rows_true_columns_predicted"])]))
    blocks.append(("h2", "Where the bytes are"))
    size = [["run", "linear (block projections)", "embeddings + lm_head", "other", "total", "counted from"]]
    for r in rows:
        s = r["size_by_category"]
        if s:
            size.append([r["label"], human_bytes(s.get("linear")), human_bytes(s.get("embedding")), human_bytes(s.get("other")),
                         human_bytes(sum(s.values())), "packed file" if r["size_source"] == "file" else "tensors in memory"])
    blocks.append(("table", size))
    if "size" in rep.charts:
        blocks.append(("chart", "size"))
    blocks.append(("h2", "Quality against size"))
    for name in ("metric_vs_bits", "metric_vs_size"):
        if name in rep.charts:
            blocks.append(("chart", name))
    with_err = [r for r in rows if r["quantization_error_summary"]]
    if with_err:
        blocks.append(("h2", "Per-layer quantization error"))
        blocks.append(("p", "Relative Frobenius error ||W - W_q|| / ||W|| of each block projection, W from the source "
                            "checkpoint and W_q decoded from the packed file."))
        err = [["run", "matrices", "mean", "median", "max", "worst matrix"]]
        for r in with_err:
            s = r["quantization_error_summary"]
            err.append([r["label"], str(s["n_matrices"]), _num(s["mean"]), _num(s["median"]), _num(s["max"]), s["worst"]])
        blocks.append(("table", err))
        if "layer_errors" in rep.charts:
            blocks.append(("chart", "layer_errors"))
    if rep.reference:
        blocks.append(("h2", "Published reference numbers (not measured here)"))
        blocks.append(("p", "NOT MEASURED HERE: these numbers are copied from the sources named in each row, for "
                            "orientation only. They come from other models, data and set-ups and are not comparable "
                            "one-to-one with the measurements above."))
        cols = ["model", "scheme", "bits", "dataset", "metric", "value", "source"]
        extra = sorted({k for r in rep.reference for k in r} - set(cols))
        table = [cols + extra]
        for r in rep.reference:
            table.append([str(r.get(c, "")) if c != "value" else _num(r["value"]) for c in cols] +
                         [str(r.get(c, "")) for c in extra])
        blocks.append(("table", table))
    blocks.append(("h2", "How this was measured"))
    env = next((r["environment"] for r in rows if r["environment"]), {})
    lat = next((r for r in rows if r["latency_input_shape"]), None)
    load = [r["load_average_1min"] for r in rows if r.get("load_average_1min") is not None]
    # latency on a shared machine depends on what else runs: say how busy it was
    loads = f" (1-minute load average while timing: {min(load):.1f} to {max(load):.1f})" if load else ""
    blocks.append(("p", f"CPU: {env.get('cpu', 'n/a')}, torch threads: {env.get('torch_threads', 'n/a')}, torch "
                        f"{env.get('torch', 'n/a')}, transformers {env.get('transformers', 'n/a')}, bitconv "
                        f"{env.get('bitconv', 'n/a')}. Latency: median of repeated forward passes on one input of shape "
                        f"{lat['latency_input_shape'] if lat else 'n/a'} after a warm-up, divided by its tokens{loads}. Peak RSS: "
                        "the evaluating process's maximum resident memory. Bits/weight: stored bytes x 8 / weights, "
                        "for the block projections (linear) and for all weights."))
    blocks.append(("table", [["run", "result file", "conversion (s)", "evaluation (s)"]] +
                   [[r["label"], r["name"] + ".json", _num(r["convert_seconds"], ".1f"), _num(r["seconds"], ".1f")]
                    for r in rows]))
    return blocks


def build_report(folder: str | Path, reference: str | Path | None = None, collapse_factor: float = 10.0,
                 title: str | None = None) -> Report:
    if collapse_factor <= 1:
        raise DataError(f"--collapse-factor {collapse_factor}: must be more than 1")
    results = read_results(folder)
    tasks = sorted({(r.get("task") or {}).get("name") for r in results})
    if len(tasks) != 1:
        raise DataError(f"{folder}: the results mix tasks ({', '.join(map(str, tasks))}); report each in its own folder")
    task = tasks[0]
    rows = sorted((_row(r) for r in results), key=_order)
    baseline = _pick_baseline(rows)
    _judge(rows, baseline, task, collapse_factor)
    refs = read_reference(reference) if reference else None
    if title is None:
        sources = sorted({str((r.get("run") or {}).get("source") or (r.get("model") or {}).get("source")) for r in results})
        title = f"bitconv report: {task}, " + (Path(sources[0]).name if len(sources) == 1 else f"{len(sources)} models")
    rep = Report(title, task, "perplexity" if task == "perplexity" else "accuracy",
                 baseline["name"] if baseline else None, collapse_factor, rows, refs)
    threshold = collapse_factor * baseline["metric"] if (baseline and task == "perplexity") else None
    if any(r["metric"] is not None and r["bits_per_weight_linear"] is not None for r in rows):
        rep.charts["metric_vs_bits"] = charts.metric_vs(rows, "bits_per_weight_linear",
                                                         "bits per weight of the block projections", rep.metric,
                                                         baseline, threshold)
    if any(r["metric"] is not None and r["file_bytes"] for r in rows):
        for r in rows:
            r["file_mb"] = r["file_bytes"] / 1e6 if r["file_bytes"] else None
        rep.charts["metric_vs_size"] = charts.metric_vs(rows, "file_mb", "weights on disk (MB)", rep.metric,
                                                         baseline, threshold)
    if any(r["size_by_category"] for r in rows):
        rep.charts["size"] = charts.size_breakdown(rows)
    if any(r["quantization_error_summary"] for r in rows):
        rep.charts["layer_errors"] = charts.layer_errors(rows)
    rep.blocks = _blocks(rep)
    return rep


# ---------------------------------------------------------------------------------------------------------
# rendering

CHART_CAPTIONS = {
    "metric_vs_bits": "Quality against bits per weight of the block projections",
    "metric_vs_size": "Quality against size of the weight files",
    "size": "Weight bytes by category",
    "layer_errors": "Per-layer relative quantization error",
}


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks, chart_paths: dict[str, str]) -> str:
    out = []
    for kind, payload in blocks:
        if kind == "h1":
            out.append(f"# {payload}\n")
        elif kind == "h2":
            out.append(f"## {payload}\n")
        elif kind == "p":
            out.append(f"{payload}\n")
        elif kind == "alert":
            out.append(f"> **{payload}**\n")
        elif kind == "table":
            head, *body = payload
            out.append("| " + " | ".join(map(_md_cell, head)) + " |")
            out.append("|" + "---|" * len(head))
            out += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in body]
            out.append("")
        elif kind == "chart" and payload in chart_paths:
            out.append(f"![{CHART_CAPTIONS[payload]}]({chart_paths[payload]})\n")
    return "\n".join(out).rstrip() + "\n"


HTML_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.9em}th,td{border:1px solid #ccc;padding:0.3em 0.6em;text-align:left}
th{background:#f3f3f3}.alert{background:#fdecea;border-left:4px solid #d62728;padding:0.6em 1em;font-weight:bold}
figure{margin:1em 0}figcaption{font-size:0.9em;color:#555}svg{max-width:100%;height:auto}"""


def render_html(title: str, blocks, chart_svgs: dict[str, str]) -> str:
    esc = html.escape
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">", f"<title>{esc(title)}</title>",
           f"<style>{HTML_STYLE}</style></head><body>"]
    for kind, payload in blocks:
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{esc(payload)}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{esc(payload)}</p>")
        elif kind == "alert":
            out.append(f"<p class=\"alert\">{esc(payload)}</p>")
        elif kind == "table":
            head, *body = payload
            rows = ["<tr>" + "".join(f"<th>{esc(str(c))}</th>" for c in head) + "</tr>"]
            rows += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in body]
            out.append("<table>" + "".join(rows) + "</table>")
        elif kind == "chart" and payload in chart_svgs:
            out.append(f"<figure>{chart_svgs[payload]}<figcaption>{esc(CHART_CAPTIONS[payload])}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(rep: Report, html: str | Path | None = None, markdown: str | Path | None = None,
                 json_path: str | Path | None = None) -> list[Path]:
    """Writes the requested files (each under a temporary name, then renamed); returns their paths.

    Markdown cannot hold images, so its charts go to `<name>_charts/*.svg` beside it.
    """
    written = []
    if markdown:
        md = Path(markdown).expanduser()
        chart_dir = md.with_name(md.stem + "_charts")
        paths = {}
        for name, svg in rep.charts.items():
            write_text_atomic(chart_dir / f"{name}.svg", svg)
            paths[name] = f"{chart_dir.name}/{name}.svg"
            written.append(chart_dir / f"{name}.svg")
        write_text_atomic(md, render_markdown(rep.blocks, paths))
        written.append(md)
    if html:
        page = Path(html).expanduser()
        write_text_atomic(page, render_html(rep.title, rep.blocks, rep.charts))
        written.append(page)
    if json_path:
        path = Path(json_path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, json_safe(rep.to_json()))
        written.append(path)
    return written
