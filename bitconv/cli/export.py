"""`bitconv export` (ONNX, GGUF, transformers BitNet: every export option is here) and `bitconv generate`
(greedy decoding through ONNX Runtime). One command, one output option per format, each dispatching to its
library function in bitconv.export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from bitconv.errors import OptionError

console = Console(soft_wrap=True)  # long paths and messages stay on one line (greppable, copyable)

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

OTHER_FORMATS_EPILOG = (
    "Examples:\n\n"
    "  bitconv export ./smol-1.58 --gguf smol-tq2_0.gguf\n\n"
    "  bitconv export ./smol-1.58 --gguf smol-tq1_0.gguf --type tq1_0\n\n"
    "  bitconv export ./smol-1.58 --hf-bitnet smol-hf/"
)


def export_gguf_path(folder: Path, gguf: Path, gguf_type: str = "tq2_0", force: bool = False) -> None:
    """`export --gguf`: write the file and say which tensors are not in the TQ type, and why."""
    from rich.table import Table

    from bitconv.export.gguf import export_gguf

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
        for t in result.tensors:
            if t.fallback_reason:
                table.add_row(t.name, t.ggml_type, t.fallback_reason)
        console.print(table)


def export_hf_bitnet_path(folder: Path, out: Path, linear_class: str = "bitlinear", force: bool = False) -> None:
    """`export --hf-bitnet`: write the folder and say which linear layers stay full precision, and why."""
    from bitconv.export.hf_bitnet import export_hf_bitnet

    result = export_hf_bitnet(folder, out, linear_class=linear_class, force=force)
    console.print(f"wrote {result.path}: {len(result.converted)} layers as {linear_class}, "
                  f"{len(result.not_converted)} left as nn.Linear ({', '.join(result.not_converted)})", highlight=False)
    for module, why in result.fallbacks.items():
        console.print(f"  {module}: stored dequantized ({why})", highlight=False)
    if result.activation_note:
        console.print(f"note: {result.activation_note}", highlight=False)



EXPORT_EPILOG = (
    "Examples:\n\n  bitconv export ./gpt2-1.58 --onnx gpt2-1.58.onnx\n\n"
    "  bitconv export ./gpt2-1.58 --onnx gpt2-1.58-stock.onnx --target matmulnbits\n\n"
    "  bitconv export ./gpt2-1.58 --onnx gpt2-1.58-exact.onnx --target matmulnbits --accuracy-level 0\n\n"
    "  bitconv export ./gpt2-1.58 --onnx gpt2-1.58-float.onnx --target float\n\n") + OTHER_FORMATS_EPILOG.removeprefix("Examples:\n\n")
GENERATE_EPILOG = "Examples:\n\n  bitconv generate gpt2-1.58.onnx --prompt \"Hello\" --max-new-tokens 32"


def export(
    folder: Annotated[Path, typer.Argument(help="A bitconv output folder (from `bitconv convert`).")],
    onnx: Annotated[Optional[Path], typer.Option("--onnx", help="Write an ONNX model to this .onnx path.")] = None,
    target: Annotated[str, typer.Option(help="op (bitconv.TernaryMatMul), matmulnbits (stock ONNX Runtime) or float.")] = "op",
    opset: Annotated[int, typer.Option(help="ONNX opset of the default domain.")] = 17,
    accuracy_level: Annotated[int, typer.Option(
        help="MatMulNBits accuracy_level (--target matmulnbits): 4 (default) quantizes activations to int8 and runs "
             "ONNX Runtime's integer kernels; 0 keeps float activations and is several times slower on CPUs.")] = 4,
    gguf: GgufOption = None,
    gguf_type: GgufTypeOption = "tq2_0",
    hf_bitnet: HfBitnetOption = None,
    bitnet_class: BitnetClassOption = "bitlinear",
    force: ForceOption = False,
) -> None:
    """Export a bitconv folder: ONNX (bitconv op, stock MatMulNBits or float), GGUF for llama.cpp, or the
    BitNet layout plain transformers reads. Several outputs may be given at once."""
    if onnx is None and gguf is None and hf_bitnet is None:
        raise OptionError("nothing to export: give an output, e.g. --onnx model.onnx, --gguf model.gguf or --hf-bitnet DIR")
    if onnx is not None:
        from bitconv.export.onnx import export_onnx

        result = export_onnx(folder, onnx, force=force, target=target, opset=opset, accuracy_level=accuracy_level)
        console.print(f"wrote {result.path} ({result.kind}, target {result.target}, {result.n_replaced} packed "
                      f"projections, {result.n_bytes / 1e6:.1f} MB)")
    if gguf is not None:
        export_gguf_path(folder, gguf, gguf_type, force)
    if hf_bitnet is not None:
        export_hf_bitnet_path(folder, hf_bitnet, bitnet_class, force)


def generate(
    model: Annotated[Path, typer.Argument(help="A decoder .onnx written by `bitconv export`.")],
    prompt: Annotated[str, typer.Option(help="Text to continue.")],
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 32,
    tokenizer: Annotated[Optional[Path], typer.Option(help="Folder with the tokenizer (default: next to the .onnx).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="ONNX Runtime intra-op threads (default: ORT's choice).")] = None,
) -> None:
    """Greedy decoding with the key/value cache through ONNX Runtime."""
    from bitconv.ort.generate import generate as generate_text

    console.print(generate_text(model, prompt, max_new_tokens=max_new_tokens, tokenizer=tokenizer, threads=threads),
                  markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("export", epilog=EXPORT_EPILOG)(export)
    app.command("generate", epilog=GENERATE_EPILOG)(generate)
