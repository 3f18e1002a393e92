"""`bitconv convert` and `bitconv inspect`: option parsing and tables over bitconv.quantize.convert and
bitconv.format.summary (no logic here)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from bitconv.display import fit_name, human_bytes

console = Console()


def _name_cell(name: str) -> str:
    """A tensor name as wide as the terminal allows beside the other columns, shortened in the middle so the
    distinguishing end (layer, projection) stays visible."""
    return fit_name(name, max(30, console.width - 52))


def _plan_table(plan) -> Table:
    table = Table(title="conversion plan", show_lines=False)
    for col in ("tensor", "shape", "category", "action", "bytes", "why"):
        table.add_column(col, justify="right" if col == "bytes" else "left", no_wrap=col == "tensor")
    for r in plan.rows:
        table.add_row(_name_cell(r.name), "x".join(map(str, r.shape)), r.category, r.action, f"{r.n_bytes:,}", r.reason)
    return table


def _totals_table(totals: dict, title: str) -> Table:
    table = Table(title=title)
    for col in ("category", "parameters", "bytes", "bits/weight"):
        table.add_column(col, justify="left" if col == "category" else "right")
    for category, t in sorted(totals.items()):
        bpw = 8 * t["n_bytes"] / t["n_params"] if t["n_params"] else 0.0
        table.add_row(category, f"{t['n_params']:,}", human_bytes(t["n_bytes"]), f"{bpw:.3f}")
    return table


CONVERT_EPILOG = ("Examples:\n\n  bitconv convert gpt2 --bits 1.58 --out gpt2-1.58\n\n"
                  "  bitconv convert ./my-model --bits 1.58 --granularity group:64 --keep-outliers 0.1% --out my-1.58\n\n"
                  "  bitconv convert ./SmolLM2-135M-Instruct.Q4_1.gguf --bits 1.58 --out smol-1.58 --dry-run")


def convert(
    source: Annotated[str, typer.Argument(help="Hub id (e.g. gpt2), local model folder, or .gguf file.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (default: <name>-<bits>).")] = None,
    bits: Annotated[str, typer.Option(help="16, 8, 4, 2, 1.58 (ternary) or 1.")] = "1.58",
    granularity: Annotated[Optional[str], typer.Option(help="tensor | channel | group:N (default by scheme).")] = None,
    scale: Annotated[str, typer.Option(help="Scale estimator: absmean | absmax | median | mse.")] = "absmean",
    packing: Annotated[str, typer.Option(help="Ternary packing: 2bit (MatMulNBits-compatible) or base3 (1.6 bits).")] = "2bit",
    keep_outliers: Annotated[str, typer.Option(help="Fraction of largest weights kept in fp16, e.g. 0.1%.")] = "0",
    embeddings: Annotated[str, typer.Option(help="Embeddings and lm_head: fp16 or int8.")] = "fp16",
    activations: Annotated[str, typer.Option(help="none, or int8 per-token activations at inference (W1.58A8).")] = "none",
    keep: Annotated[Optional[list[str]], typer.Option(help="Regex of tensors to keep in fp16 (repeatable).")] = None,
    only: Annotated[Optional[list[str]], typer.Option(help="Regex: quantize only matching 2-D weights (repeatable).")] = None,
    revision: Annotated[Optional[str], typer.Option(help="Hub revision (branch, tag or commit).")] = None,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the plan and write nothing.")] = False,
    allow_pickle: Annotated[bool, typer.Option(help="Read pickle .bin weights (with weights_only=True).")] = False,
    max_shard_size: Annotated[str, typer.Option(help="Largest output shard, e.g. 2GB.")] = "2GB",
) -> None:
    """Convert a checkpoint into a packed bitconv folder (safetensors + config + tokenizer + card)."""
    from bitconv.quantize.config import QuantConfig
    from bitconv.quantize.convert import convert as run_convert

    if out is None:
        out = Path(Path(source.rstrip("/")).name.removesuffix(".gguf") + f"-{bits}")
    config = QuantConfig.for_bits(bits, granularity, scale_method=scale, packing=packing, keep_outliers=keep_outliers,
                                  embeddings=embeddings, activations=activations, keep=tuple(keep or ()),
                                  only=tuple(only or ()))
    result = run_convert(source, out, config, revision=revision, force=force, dry_run=dry_run,
                         allow_pickle=allow_pickle, max_shard_size=max_shard_size, progress=not dry_run)
    if dry_run:
        console.print(_plan_table(result.plan))
        console.print(_totals_table(result.plan.totals(), "planned bytes by category"))
        console.print(f"dry run: nothing written (would write {human_bytes(result.output_bytes)} to {out})")
        return
    console.print(_totals_table(result.plan.totals(), f"{out}"))
    ratio = result.source_bytes / result.output_bytes if result.output_bytes else 0
    console.print(f"wrote {out} ({human_bytes(result.output_bytes)}, {ratio:.2f}x smaller than the source's "
                  f"{human_bytes(result.source_bytes)}) in {result.seconds:.1f} s")


INSPECT_EPILOG = "Example:\n\n  bitconv inspect gpt2-1.58 --json summary.json"


def inspect(
    folder: Annotated[Path, typer.Argument(help="A bitconv output folder.")],
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the table as JSON here.")] = None,
    all_tensors: Annotated[bool, typer.Option("--all", help="List every tensor, not only quantized ones.")] = False,
) -> None:
    """Per-tensor table of a converted folder: scheme, shape, bytes, bits/weight; totals by category."""
    from bitconv.format.atomic import check_output, write_json_atomic
    from bitconv.format.summary import summarize

    if json_out:
        check_output(json_out, force=True, inputs=[folder], option="--json", kind="file")
    summary = summarize(folder)
    table = Table(title=str(folder))
    for col in ("tensor", "category", "scheme", "shape", "bytes", "bits/weight"):
        table.add_column(col, justify="right" if col in ("bytes", "bits/weight") else "left", no_wrap=col == "tensor")
    for r in summary.tensors:
        if all_tensors or r.scheme in ("ternary", "binary", "int8", "uint4", "uint2"):
            table.add_row(_name_cell(r.name), r.category, r.scheme, "x".join(map(str, r.shape)), f"{r.n_bytes:,}",
                          f"{r.bits_per_weight:.3f}")
    console.print(table)
    console.print(_totals_table(summary.totals(), "totals by category"))
    qc = summary.quantization_config
    console.print(f"format {qc.get('format')} v{qc.get('format_version')}, bits {qc.get('bits')}, "
                  f"{qc.get('granularity')}, files {human_bytes(summary.file_bytes)}")
    if json_out:
        write_json_atomic(json_out, summary.to_json())


def register(app: typer.Typer) -> None:
    app.command("convert", epilog=CONVERT_EPILOG)(convert)
    app.command("inspect", epilog=INSPECT_EPILOG)(inspect)
