"""What SmolLM2-135M's super weights carry, before any recovery training (docs/recovery.md).

    PYTHONPATH=. python docs/benchmarks/super_weights_smollm.py --model SmolLM2-135M-Instruct.Q4_1.gguf \
        --text ../shared/data/text/shakespeare.txt --n 8 --eval-tokens 4096 --out super_weights_smollm.json

Finds the n largest max|x| * |W| contributions in the MLP down projections on the first 16 training
blocks (the same search as `bitconv recover --super-weights n`), then measures held-out perplexity (the
same held-out tail as `recover`) of: the original model, the original with those weights set to zero,
naive per-tensor ternary, and naive ternary with those weights kept in fp16.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bitconv.data.tokens import TokenCache
from bitconv.train import qat
from bitconv.train import super_weights as sw
from bitconv.train.config import RecoverConfig
from bitconv.train.runtime import start_runtime
from bitconv.train.tasks import Context, LMTask, tokenizer_for


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seq-len", type=int, default=RecoverConfig.seq_len, help="tokens per block and window")
    ap.add_argument("--cache-dir", help="token cache (default: ~/.cache/bitconv/tokens)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    torch.manual_seed(0)
    cfg = RecoverConfig(task="lm", eval_tokens=args.eval_tokens, seq_len=args.seq_len)
    rt = start_runtime("cpu")
    device = rt.device
    ctx = Context(args.model, rt, TokenCache(args.cache_dir), progress=False)
    task = LMTask.prepare(cfg, tokenizer_for(args.model), [args.text], [], ctx)
    model = task.load_model(args.model).eval()
    names = qat.quantized_weight_names(model, cfg.quant)
    found = sw.find_super_weights(model, task.calibration_batches(device, n_batches=2, batch_size=8), args.n,
                                  candidates=names)
    result = {"model": Path(args.model).name, "n_eval_tokens": None, "super_weights": [f.to_dict() for f in found]}
    result["fp"] = task.evaluate(model)
    with sw.zeroed(model, found):
        result["fp_without_super_weights"] = task.evaluate(model)
    attached = qat.attach(model, names, cfg.quant)
    result["ternary"] = task.evaluate(model)
    qat.detach(model, attached)
    outliers = sw.as_outlier_indices(found, sw.linear_shapes(model, {f.tensor for f in found}))
    qat.attach(model, names, cfg.quant, outliers)
    result["ternary_keeping_super_weights"] = task.evaluate(model)
    result["n_eval_tokens"] = result["fp"]["n_scored_tokens"]
    result["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    for key in ("fp", "fp_without_super_weights", "ternary", "ternary_keeping_super_weights"):
        print(f"{key:>30}: perplexity {result[key]['perplexity']:.2f}")


if __name__ == "__main__":
    main()
