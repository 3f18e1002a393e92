"""`bitconv export` (ONNX) and `bitconv generate` (greedy decoding through ONNX Runtime).

`export` is one command with one output option per format; more formats (e.g. --gguf, --hf-bitnet) are added as
further options dispatching to their own library function in `_export_paths`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from bitconv.commands.hub import (
    EXPORT_EPILOG as OTHER_FORMATS_EPILOG, BitnetClassOption, ForceOption, GgufOption, GgufTypeOption, HfBitnetOption,
    export_gguf_path, export_hf_bitnet_path,
)
from bitconv.errors import BitconvError

console = Console()

EXPORT_EPILOG = (
    "Examples:\n\n  bitconv export ./gpt2-1.58 --onnx gpt2-1.58.onnx\n\n"
    "  bitconv export ./gpt2-1.58 --onnx gpt2-1.58-stock.onnx --target matmulnbits\n\n"
    "  bitconv export ./gpt2-1.58 --onnx gpt2-1.58-float.onnx --target float\n\n") + OTHER_FORMATS_EPILOG.removeprefix("Examples:\n\n")
GENERATE_EPILOG = "Examples:\n\n  bitconv generate gpt2-1.58.onnx --prompt \"Hello\" --max-new-tokens 32"


def export(
    folder: Annotated[Path, typer.Argument(help="A bitconv output folder (from `bitconv convert`).")],
    onnx: Annotated[Optional[Path], typer.Option("--onnx", help="Write an ONNX model to this .onnx path.")] = None,
    target: Annotated[str, typer.Option(help="op (bitconv.TernaryMatMul), matmulnbits (stock ONNX Runtime) or float.")] = "op",
    opset: Annotated[int, typer.Option(help="ONNX opset of the default domain.")] = 17,
    gguf: GgufOption = None,
    gguf_type: GgufTypeOption = "tq2_0",
    hf_bitnet: HfBitnetOption = None,
    bitnet_class: BitnetClassOption = "bitlinear",
    force: ForceOption = False,
) -> None:
    """Export a bitconv folder: ONNX (bitconv op, stock MatMulNBits or float), GGUF for llama.cpp, or the
    BitNet layout plain transformers reads. Several outputs may be given at once."""
    if onnx is None and gguf is None and hf_bitnet is None:
        raise BitconvError("nothing to export: give an output, e.g. --onnx model.onnx, --gguf model.gguf or --hf-bitnet DIR")
    if onnx is not None:
        from bitconv.onnx_export import export as export_onnx

        result = export_onnx(folder, onnx, target=target, opset=opset)
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
    from bitconv.onnx_generate import generate as generate_text

    console.print(generate_text(model, prompt, max_new_tokens=max_new_tokens, tokenizer=tokenizer, threads=threads),
                  markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("export", epilog=EXPORT_EPILOG)(export)
    app.command("generate", epilog=GENERATE_EPILOG)(generate)
