"""`bitconv push`, and the GGUF / plain-transformers export paths of `bitconv export`.

`register(app)` adds `push`. The `export` command is shared with the ONNX export: its options for these two
paths are the `*Option` types below and the work is `export_gguf_path()` / `export_hf_bitnet_path()`, wired into
the one `export` command in bitconv/commands/onnx.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

console = Console(soft_wrap=True)  # long paths and messages stay on one line (greppable, copyable)

PUSH_EPILOG = (
    "Examples:\n\n"
    "  bitconv push ./gpt2-1.58 my-user/gpt2-1.58\n\n"
    "  bitconv push ./gpt2-1.58 my-user/gpt2-1.58 --private --report runs/report.json\n\n"
    "  bitconv push ./gpt2-1.58 my-user/gpt2-1.58 --revision experiments --dry-run\n\n"
    "The token comes from HF_TOKEN or the saved login (`hf auth login`); the endpoint from --endpoint or HF_ENDPOINT."
)


def push(
    folder: Annotated[Path, typer.Argument(help="A bitconv output folder (from `bitconv convert` or `bitconv recover`).")],
    repo_id: Annotated[str, typer.Argument(help="Target repo, NAMESPACE/NAME, e.g. my-user/gpt2-1.58.")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo private (ignored if it exists).")] = False,
    revision: Annotated[str, typer.Option(help="Branch to commit to; created from main if missing.")] = "main",
    report: Annotated[Optional[Path], typer.Option(help="A `bitconv report` JSON whose table goes into the model card "
                                                        "(default: a report*.json in the folder).")] = None,
    endpoint: Annotated[Optional[str], typer.Option(help="Hub URL (default: HF_ENDPOINT or https://huggingface.co).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the files, sizes and model card; upload nothing.")] = False,
) -> None:
    """Publish a converted folder to the Hugging Face Hub in one commit, with a generated model card."""
    from bitconv.hub import format_plan, push as run_push

    result = run_push(folder, repo_id, private=private, revision=revision, dry_run=dry_run, endpoint=endpoint,
                      report=report)
    if dry_run:
        console.print(format_plan(result.plan), markup=False, highlight=False)
        console.print("dry run: nothing was uploaded")
        return
    unchanged = f" ({len(result.skipped_unchanged)} unchanged files not sent again)" if result.skipped_unchanged else ""
    console.print(f"pushed {len(result.plan.files)} files ({result.plan.n_bytes:,} bytes) to {result.repo_url}{unchanged}",
                  highlight=False)
    console.print(f"commit {result.commit_oid}: {result.commit_url}", highlight=False)


# ---------------------------------------------------------------------------------------------------------
# export --gguf / --hf-bitnet

GgufOption = Annotated[Optional[Path], typer.Option(
    "--gguf", help="Write a GGUF file for llama.cpp (Llama, GPT-2); ternary weights as TQ2_0/TQ1_0.")]
GgufTypeOption = Annotated[str, typer.Option(
    "--type", help="GGUF type of the ternary weights: tq2_0 (2.06 bits/weight) or tq1_0 (1.69).")]
HfBitnetOption = Annotated[Optional[Path], typer.Option(
    "--hf-bitnet", help="Write a folder that plain transformers loads (quant_method bitnet; Llama family).")]
BitnetClassOption = Annotated[str, typer.Option(
    "--bitnet-class", help="transformers layer for --hf-bitnet: bitlinear (packed, inference) or autobitlinear.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Replace the output if it exists.")]

EXPORT_EPILOG = (
    "Examples:\n\n"
    "  bitconv export ./smol-1.58 --gguf smol-tq2_0.gguf\n\n"
    "  bitconv export ./smol-1.58 --gguf smol-tq1_0.gguf --type tq1_0\n\n"
    "  bitconv export ./smol-1.58 --hf-bitnet smol-hf/"
)


def export_gguf_path(folder: Path, gguf: Path, gguf_type: str = "tq2_0", force: bool = False) -> None:
    """`export --gguf`: write the file and say which tensors are not in the TQ type, and why."""
    from rich.table import Table

    from bitconv.gguf_export import export_gguf

    result = export_gguf(folder, gguf, ggml_type=gguf_type, force=force)
    counts: dict[str, int] = {}
    for t in result.tensors:
        counts[t.ggml_type] = counts.get(t.ggml_type, 0) + 1
    console.print(f"wrote {result.path} ({result.n_bytes:,} bytes, {result.architecture}): "
                  + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())), highlight=False)
    if result.fallbacks:
        table = Table(title=f"{len(result.fallbacks)} quantized tensors not stored as {result.ggml_type}")
        for col in ("tensor", "written as", "why"):
            table.add_column(col)
        for t in result.fallbacks:
            table.add_row(t.name, t.ggml_type, t.fallback_reason)
        console.print(table)


def export_hf_bitnet_path(folder: Path, out: Path, linear_class: str = "bitlinear", force: bool = False) -> None:
    """`export --hf-bitnet`: write the folder and say which linear layers stay full precision, and why."""
    from bitconv.hf_bitnet_export import export_hf_bitnet

    result = export_hf_bitnet(folder, out, linear_class=linear_class, force=force)
    console.print(f"wrote {result.out}: {len(result.converted)} layers as {linear_class}, "
                  f"{len(result.not_converted)} left as nn.Linear ({', '.join(result.not_converted)})", highlight=False)
    for module, why in result.fallbacks.items():
        console.print(f"  {module}: stored dequantized ({why})", highlight=False)
    if result.activation_note:
        console.print(f"note: {result.activation_note}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("push", epilog=PUSH_EPILOG)(push)

