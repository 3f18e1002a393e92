"""CLI commands `eval`, `compare` and `report`: option parsing and printing over bitconv.evaluate,
bitconv.compare and bitconv.report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()

EVAL_EPILOG = """Examples:

  bitconv eval ./smol-1.58 --task perplexity --data ../shared/data/text/shakespeare.txt --context 512 --start-fraction 0.9 --max-tokens 20000 --json out.json

  bitconv eval ./minilm-sst2-1.58 --task classify --data ../shared/data/sst2/validation.tsv

  bitconv eval ./minilm-sst2-1.58 --task classify --data ../shared/data/sst2/test.tsv --device cuda --batch-size 256

  bitconv eval ./vit-digits-1.58 --task image-classify --data digits/test

  bitconv eval ./spam-1.58 --task classify --data ../shared/data/sms-spam/SMSSpamCollection.tsv --text-column 1 --label-column 0

  bitconv eval ./SmolLM2-135M-Instruct.Q4_1.gguf --task classify --data ../shared/data/sst2/validation.tsv --labels negative,positive --template "Review: {text}\\nSentiment:" --max-examples 200
"""

COMPARE_EPILOG = """Example:

  bitconv compare ./SmolLM2-135M-Instruct.Q4_1.gguf --bits 16,8,4,2,1.58,1 --task perplexity --data ../shared/data/text/shakespeare.txt --start-fraction 0.9 --max-tokens 20000 --out runs/smol

  bitconv report runs/smol --html report.html --markdown report.md
"""

REPORT_EPILOG = """Examples:

  bitconv report runs/smol --html report.html --markdown report.md --json report.json

  bitconv report runs/smol --markdown report.md --reference docs/benchmarks/bitnet_b158_reference.csv
"""

# options shared by eval and compare, as (name, annotation) pairs are not expressible in typer; keep in step
Task = Annotated[str, typer.Option(help="perplexity (causal LMs), classify (text classifiers; causal LMs with --labels) or image-classify (...ForImageClassification models).")]
Data = Annotated[Path, typer.Option(help="Plain text file (perplexity), TSV/CSV file (classify), or image folder with one sub-folder per class / saved `datasets` split (image-classify).")]
Device = Annotated[str, typer.Option(help="auto (a CUDA GPU when torch sees one), cpu, cuda or cuda:N.")]
Context = Annotated[int, typer.Option(help="Perplexity: tokens per window.")]
Stride = Annotated[Optional[int], typer.Option(help="Perplexity: tokens between window starts (default: --context).")]
StartFraction = Annotated[float, typer.Option(help="Perplexity: evaluate from this fraction of the file (0.9 = last tenth).")]
EndFraction = Annotated[float, typer.Option(help="Perplexity: ... up to this fraction of the file.")]
MaxTokens = Annotated[Optional[int], typer.Option(help="Perplexity: evaluate at most this many tokens of the slice.")]
BatchSize = Annotated[Optional[int], typer.Option(help="Windows (perplexity, default 1) or examples (classify, image-classify: default 32) per forward.")]
TextColumn = Annotated[str, typer.Option(help="Classify: text column, a header name or a 0-based number.")]
LabelColumn = Annotated[str, typer.Option(help="Classify: label column, a header name or a 0-based number.")]
Header = Annotated[Optional[bool], typer.Option("--header/--no-header", help="Classify: whether the file has a header line (default: yes when a column is given by name).")]
Delimiter = Annotated[Optional[str], typer.Option(help="Classify: column separator (default: ',' for .csv, tab otherwise).")]
LabelMap = Annotated[Optional[str], typer.Option(help="Classify: data label -> class id, e.g. ham=0,spam=1 (default: config.json id2label).")]
Labels = Annotated[Optional[str], typer.Option(help="Zero-shot with a causal LM: label words, e.g. negative,positive.")]
Template = Annotated[Optional[str], typer.Option(help="Zero-shot prompt with {text}, e.g. \"Review: {text}\\nSentiment:\".")]
MaxExamples = Annotated[Optional[int], typer.Option(help="Classify: only the first N examples.")]
LatencyRepeats = Annotated[int, typer.Option(help="Timed forward passes for the latency median (0: skip).")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars on stderr.")]


def _eval_config(task, data, context, stride, start_fraction, end_fraction, max_tokens, batch_size, text_column,
                 label_column, header, delimiter, label_map, labels, template, max_examples, latency_repeats, device):
    from bitconv.evaluate.run import EvalConfig

    return EvalConfig(task=task, data=str(data), context=context, stride=stride, start_fraction=start_fraction,
                      end_fraction=end_fraction, max_tokens=max_tokens, batch_size=batch_size, text_column=text_column,
                      label_column=label_column, header=header, delimiter=delimiter, label_map=label_map,
                      labels=labels, template=template, max_examples=max_examples, latency_repeats=latency_repeats,
                      device=device)


def _fmt(value, spec: str = ".4g") -> str:
    return "n/a" if value is None else format(value, spec)


def _result_table(result: dict) -> Table:
    m, c = result["metrics"], result["cost"]
    table = Table(title=f"{result['name']} ({result['model']['origin']}, {result['model']['architecture']})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    if result["task"]["name"] == "perplexity":
        rows = [("perplexity", _fmt(m["perplexity"])), ("bits per byte", _fmt(m["bits_per_byte"])),
                ("scored tokens", f"{m['n_scored_tokens']:,}"), ("scored bytes", f"{m['n_scored_bytes']:,}"),
                ("windows (context/stride)", f"{m['n_windows']} ({m['context']}/{m['stride']})")]
    else:
        rows = [("accuracy", _fmt(m["accuracy"])), ("macro F1", _fmt(m["macro_f1"])),
                ("macro precision", _fmt(m["macro_precision"])), ("macro recall", _fmt(m["macro_recall"])),
                ("examples", f"{m['n_examples']:,}")]
        rows += [(f"F1 {label}", _fmt(v["f1"])) for label, v in m["per_class"].items()]
    rows.append(("weights on disk", f"{c['disk']['n_bytes']:,} B"))
    mem = c["weights_in_memory"]
    if mem:
        rows += [(f"in memory: {k}", f"{v['n_bytes']:,} B ({_fmt(v['bits_per_weight'], '.3f')} bits/weight)")
                 for k, v in mem.items() if v["n_params"]]
    if c["latency"]:
        lat = c["latency"]
        per = (f"{lat['median_ms_per_image']:.2f} ms/image" if lat.get("median_ms_per_image") is not None
               else f"{lat['median_ms_per_token']:.2f} ms/token")
        rows.append(("latency (median)", f"{1000 * lat['median_s']:.1f} ms for {lat['input_shape']} on "
                                         f"{lat.get('device', 'cpu')} ({per})"))
    rows.append(("peak RSS", f"{c['peak_rss_bytes'] / 2**20:.0f} MiB"))
    for r in rows:
        table.add_row(*r)
    return table


def register(app: typer.Typer) -> None:
    @app.command("eval", epilog=EVAL_EPILOG)
    def eval_(
        model: Annotated[str, typer.Argument(help="bitconv folder, Hub id, model folder, .gguf or .onnx file.")],
        task: Task = "perplexity",
        data: Data = ...,
        context: Context = 512,
        stride: Stride = None,
        start_fraction: StartFraction = 0.0,
        end_fraction: EndFraction = 1.0,
        max_tokens: MaxTokens = None,
        batch_size: BatchSize = None,
        text_column: TextColumn = "sentence",
        label_column: LabelColumn = "label",
        header: Header = None,
        delimiter: Delimiter = None,
        label_map: LabelMap = None,
        labels: Labels = None,
        template: Template = None,
        max_examples: MaxExamples = None,
        latency_repeats: LatencyRepeats = 5,
        device: Device = "auto",
        name: Annotated[Optional[str], typer.Option(help="Run name in the result (default: the model's name).")] = None,
        json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the result (versioned JSON) here.")] = None,
        progress: Progress = True,
    ) -> None:
        """Perplexity or classification metrics, plus size, memory and latency, of one model."""
        from bitconv.evaluate.results import write_result
        from bitconv.evaluate.run import evaluate_model

        config = _eval_config(task, data, context, stride, start_fraction, end_fraction, max_tokens, batch_size,
                              text_column, label_column, header, delimiter, label_map, labels, template, max_examples,
                              latency_repeats, device)
        result = evaluate_model(model, config, name=name, progress=progress)
        console.print(_result_table(result))
        if json_out:
            write_result(json_out, result)
            console.print(f"wrote {json_out}")

    @app.command(epilog=COMPARE_EPILOG)
    def compare(
        source: Annotated[str, typer.Argument(help="Original checkpoint: Hub id, model folder or .gguf file.")],
        bits: Annotated[str, typer.Option(help="Comma-separated schemes: 16, 8, 4, 2, 1.58, 1.")] = "16,8,4,2,1.58,1",
        out: Annotated[Path, typer.Option(help="Folder for the result files (and converted models under models/).")] = Path("runs/compare"),
        task: Task = "perplexity",
        data: Data = ...,
        context: Context = 512,
        stride: Stride = None,
        start_fraction: StartFraction = 0.0,
        end_fraction: EndFraction = 1.0,
        max_tokens: MaxTokens = None,
        batch_size: BatchSize = None,
        text_column: TextColumn = "sentence",
        label_column: LabelColumn = "label",
        header: Header = None,
        delimiter: Delimiter = None,
        label_map: LabelMap = None,
        labels: Labels = None,
        template: Template = None,
        max_examples: MaxExamples = None,
        latency_repeats: LatencyRepeats = 5,
        device: Device = "auto",
        granularity: Annotated[Optional[str], typer.Option(help="Conversion: tensor | channel | group:N (default by scheme).")] = None,
        scale: Annotated[str, typer.Option(help="Conversion: absmean | absmax | median | mse.")] = "absmean",
        keep_outliers: Annotated[str, typer.Option(help="Conversion: fraction of weights kept in fp16, e.g. 0.1%.")] = "0",
        embeddings: Annotated[str, typer.Option(help="Conversion: fp16 or int8 embeddings.")] = "fp16",
        activations: Annotated[str, typer.Option(help="Conversion: none or int8 (W1.58A8).")] = "none",
        keep_models: Annotated[bool, typer.Option("--keep-models/--delete-models", help="Keep the converted folders.")] = True,
        json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the list of runs and their status here.")] = None,
        progress: Progress = True,
    ) -> None:
        """Convert a checkpoint with each scheme and evaluate every result; failed runs are recorded, not fatal."""
        from bitconv.evaluate.compare import compare as run_compare
        from bitconv.format.atomic import write_json_atomic

        convert_options = dict(granularity=granularity, scale_method=scale, keep_outliers=keep_outliers,
                               embeddings=embeddings, activations=activations)
        config = _eval_config(task, data, context, stride, start_fraction, end_fraction, max_tokens, batch_size,
                              text_column, label_column, header, delimiter, label_map, labels, template, max_examples,
                              latency_repeats, device)
        rows = run_compare(source, out, bits, eval_config=config, convert_options=convert_options,
                           keep_models=keep_models, progress=progress,
                           log=lambda line: console.print(line, markup=False, highlight=False))
        table = Table(title=f"compare {source} -> {out}")
        for col in ("run", "status", "result / error"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["name"], r["status"], r["error"] or r["path"])
        console.print(table)
        if json_out:
            write_json_atomic(json_out, {"source": source, "out": str(out), "runs": rows})
        failed = sum(r["status"] != "ok" for r in rows)
        console.print(f"{len(rows) - failed} of {len(rows)} runs ok; `bitconv report {out}` to see them side by side")

    @app.command(epilog=REPORT_EPILOG)
    def report(
        results: Annotated[Path, typer.Argument(help="Folder of result files (from compare, or eval --json).")],
        html: Annotated[Optional[Path], typer.Option(help="Write a self-contained HTML page (charts inline).")] = None,
        markdown: Annotated[Optional[Path], typer.Option(help="Write Markdown (charts as SVG files beside it).")] = None,
        json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the report's tables as JSON.")] = None,
        reference: Annotated[Optional[Path], typer.Option(help="Published numbers to show beside ours (JSON or CSV), labelled 'not measured here'.")] = None,
        collapse_factor: Annotated[float, typer.Option(help="A run whose perplexity exceeds this multiple of the baseline's is 'collapsed'.")] = 10.0,
        title: Annotated[Optional[str], typer.Option(help="Report title (default: from the results).")] = None,
    ) -> None:
        """Tables and charts (quality vs bits and size, size by category, per-layer error) from result files."""
        from bitconv.report.build import build_report, write_report

        rep = build_report(results, reference=reference, collapse_factor=collapse_factor, title=title)
        if not (html or markdown or json_out):
            typer.echo(rep.markdown_tables())
            return
        for path in write_report(rep, html=html, markdown=markdown, json_path=json_out):
            console.print(f"wrote {path}")
