"""The report's charts, drawn with matplotlib (Agg) as SVG text that is the same bytes for the same data.

Each function takes the report's rows (dicts, see bitconv.report) and returns an SVG document as a string.
"""

from __future__ import annotations

import io

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
CATEGORY_COLOURS = {"linear": "#1f77b4", "embedding": "#ff7f0e", "other": "#7f7f7f"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # fixed ids and no date: the same data give byte-identical SVG
    matplotlib.rcParams.update({"svg.hashsalt": "bitconv", "svg.fonttype": "none", "font.size": 9,
                                "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": "bitconv"})
    _pyplot().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype so the SVG can be inlined in HTML


def _metric_axis(ax, metric: str) -> None:
    if metric == "perplexity":
        ax.set_yscale("log")
        ax.set_ylabel("perplexity (log scale, lower is better)")
    else:
        ax.set_ylabel(f"{metric.replace('_', ' ')} (higher is better)")


def metric_vs(rows: list[dict], x_key: str, x_label: str, metric: str, baseline: dict | None,
              collapse_threshold: float | None, log_x: bool = False) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    points = [r for r in rows if r.get(x_key) is not None and r.get("metric") is not None]
    for i, r in enumerate(points):
        colour = "#d62728" if r["verdict"] == "collapsed" else PALETTE[i % len(PALETTE)]
        ax.scatter([r[x_key]], [r["metric"]], color=colour, s=36, zorder=3)
        ax.annotate(r["label"], (r[x_key], r["metric"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if len(points) > 1:
        line = sorted(points, key=lambda r: r[x_key])
        ax.plot([r[x_key] for r in line], [r["metric"] for r in line], color="#bbbbbb", lw=1, zorder=1)
    if baseline is not None and baseline.get("metric") is not None:
        ax.axhline(baseline["metric"], color="#2ca02c", ls="--", lw=1, label=f"baseline ({baseline['label']})")
    if collapse_threshold is not None:
        ax.axhline(collapse_threshold, color="#d62728", ls=":", lw=1, label="collapse threshold")
    _metric_axis(ax, metric)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(x_label)
    if baseline is not None or collapse_threshold is not None:
        ax.legend(loc="best", fontsize=8, frameon=False)
    ax.grid(True, which="major", alpha=0.3)
    return _svg(fig)


def size_breakdown(rows: list[dict]) -> str:
    plt = _pyplot()
    shown = [r for r in rows if r.get("size_by_category")]
    fig, ax = plt.subplots(figsize=(6.0, 0.5 + 0.45 * max(len(shown), 1)))
    labels = [r["label"] for r in shown]
    left = [0.0] * len(shown)
    for category, colour in CATEGORY_COLOURS.items():
        widths = [r["size_by_category"].get(category, 0) / 1e6 for r in shown]
        ax.barh(labels, widths, left=left, color=colour, label=category)
        left = [a + b for a, b in zip(left, widths)]
    for y, total in enumerate(left):
        ax.text(total, y, f" {total:.1f} MB", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("weight bytes (MB = 10^6 bytes)")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.set_xlim(0, max(left + [1e-6]) * 1.2)
    return _svg(fig)


def layer_errors(rows: list[dict]) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 3.8))
    for i, r in enumerate(rows):
        errors = [e["rel_frobenius_error"] for e in r.get("quantization_error") or []]
        if errors:
            ax.plot(range(len(errors)), [max(e, 1e-8) if e is not None else None for e in errors],
                    color=PALETTE[i % len(PALETTE)], lw=1, marker=".", ms=3, label=r["label"])
    ax.set_yscale("log")
    ax.set_xlabel("quantized matrix (in model order)")
    ax.set_ylabel("relative Frobenius error (log scale)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.grid(True, which="major", alpha=0.3)
    return _svg(fig)

