"""Issue 11's long SmolLM2 runs as one chart: the recovered ternary model's perplexity over the original's, on the
held-out Lee sets, against the tokens trained (docs/recovery.md, "General English"). Reads the runs' result files
as the device jobs wrote them; the same files give the same SVG bytes.

    PYTHONPATH=. python docs/benchmarks/recovery_trend.py docs/recovery-trend.svg
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from matplotlib.ticker import NullFormatter

from bitconv.report.charts import _pyplot, _svg

RESULTS = Path(__file__).parent / "recover-results"
RUNS = [  # (label, result file): the long run of each device job, in the order they ran
    ("first run", RESULTS / "recovery_general.json"),
    ("second run", RESULTS / "h200-2026-12-01-1115" / "recovery_general.json"),
    ("third run", RESULTS / "h200-2026-12-01-1233" / "recovery_general.json"),
]
SETS = {"lee-test.txt": "lee-test (reported)", "lee-select.txt": "lee-select (recipes chosen on it)"}
TARGET = 3.0


def ratios(path: Path) -> tuple[int, dict[str, float], float]:
    """Trained tokens, {set: converted / original perplexity}, and wall seconds of the file's long run."""
    run = json.loads(path.read_text())["runs"]["main_kd_only_T1"]
    ppl = run["perplexity"]
    by_set = {}
    for source, value in ppl["converted"].items():
        name = Path(source).name
        if name in SETS:
            by_set[name] = value / ppl["original"][source]
    return run["train_tokens"], by_set, run["wall_s"]


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: recovery_trend.py OUT.svg")
    points = [(label, *ratios(path)) for label, path in RUNS]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for (name, legend), marker in zip(SETS.items(), ("o", "s")):
        xs = [tokens / 1e6 for _, tokens, _, _ in points]
        ys = [by_set[name] for _, _, by_set, _ in points]
        ax.plot(xs, ys, marker=marker, lw=1, label=legend)
    for label, tokens, by_set, wall in points:
        ax.annotate(f"{label}: {by_set['lee-test.txt']:.2f}x", (tokens / 1e6,
                    by_set["lee-test.txt"]), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.axhline(TARGET, color="#d62728", ls=":", lw=1, label="target: 3x the original")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis, ticks in ((ax.xaxis, (20, 50, 100, 200)), (ax.yaxis, (3, 4, 6, 10, 14))):
        axis.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("tokens trained (millions; text SmolLM2 wrote itself)")
    ax.set_ylabel("perplexity / original's (log scale)")
    ax.set_title("SmolLM2-135M ternary, recovered on one H200: held-out English news", fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    out = Path(sys.argv[1])
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text(_svg(fig))
    tmp.replace(out)
    for label, tokens, by_set, wall in points:
        print(f"{label}: {tokens:,} tokens, lee-test {by_set['lee-test.txt']:.3f}x, "
              f"lee-select {by_set['lee-select.txt']:.3f}x, {wall:.0f} s")


if __name__ == "__main__":
    main()
