"""Throughput of the recovery loop (bitconv.train.trainer.train_model, the loop `bitconv recover` runs) on one
device: plain bf16 fine-tuning, QAT (ternary fake quantization), and QAT + distillation from the original.

    PYTHONPATH=. python docs/benchmarks/bench_recover.py --model SmolLM2-135M-Instruct.Q4_1.gguf \
        [--batch-size 64 --seq-len 1024 --steps 20 --warmup 5 --compile] [--json results.json]

Batches are random token ids (the loop's speed does not depend on their values). Each configuration runs
`--warmup` steps first (compilation, allocator), then `--steps` timed steps. Printed per configuration:
tokens/s, step time, peak GPU memory, and model FLOPs utilisation against the datasheet's dense bf16 rate
(989 TFLOP/s for an H100/H200 SXM) and against a bf16 matrix product measured here. Model FLOPs per token:
6 N (student forward + backward) + 2 N (teacher forward, with distillation) + attention 12 L H T (train) or
4 L H T (teacher), N = parameters of the matrix products (projections and the LM head), L layers, H hidden
size, T sequence length.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from torch import nn

from bitconv.train import qat
from bitconv.train.config import RecoverConfig
from bitconv.train.runtime import Runtime, seed_everything
from bitconv.train.tasks import LMLoss, fused_head_supported, to_device
from bitconv.train.trainer import LoopOptions, compile_blocks, train_model

DATASHEET_BF16 = 989e12


class RandomTokens:
    """A stand-in LMTask: the real loss module, random blocks."""

    name, unit = "lm", "tokens"

    def __init__(self, cfg: RecoverConfig, vocab: int, n_items: int = 1 << 16):
        self.cfg, self.vocab, self.n_items = cfg, vocab, n_items

    def loss_module(self, model, teacher, sharded=False, compile=False):
        return LMLoss(model, teacher, self.cfg, fused_head_supported(model), compile)

    def batch(self, idx, device):
        g = torch.Generator().manual_seed(int(idx[0]))
        ids = torch.randint(0, self.vocab, (len(idx), self.cfg.seq_len), generator=g)
        return {"input_ids": to_device(ids, device)}

    def batch_items(self, batch):
        return batch["input_ids"].numel()


def matmul_params(model: nn.Module) -> int:
    seen, n = set(), 0
    for m in model.modules():
        if isinstance(m, nn.Linear) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            n += m.weight.numel()
    return n


def measured_bf16_rate(device: torch.device) -> float:
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - t)


def run(name: str, args, qat_on: bool, distill: bool, rt: Runtime, load) -> dict:
    cfg = RecoverConfig(task="lm", seq_len=args.seq_len, batch_size=args.batch_size, lr=1e-4, precision="bf16",
                        distill=distill, distill_weight=1.0, temperature=1.0)
    seed_everything(0)
    model = load().to(rt.device)
    teacher = load().to(rt.device).to(torch.bfloat16).eval().requires_grad_(False) if distill else None
    attached = None
    if qat_on:
        attached = qat.attach(model, qat.quantized_weight_names(model, cfg.quant_config()), cfg.quant_config())
    if args.compile:
        compile_blocks(model)
        if teacher is not None:
            compile_blocks(teacher)
    task = RandomTokens(cfg, model.config.vocab_size)
    loop = LoopOptions(log_every=args.log_every, compile=args.compile, progress=False)
    train_model(model, task, cfg=cfg, rt=rt, total_steps=args.warmup, lr=cfg.lr, teacher=teacher, attached=attached,
                loop=loop)
    cuda = rt.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(rt.device)
    state = train_model(model, task, cfg=cfg, rt=rt, total_steps=args.steps, lr=cfg.lr, teacher=teacher,
                        attached=attached, loop=loop)
    n = matmul_params(model)
    c = model.config
    attn = 12 * c.num_hidden_layers * c.hidden_size * args.seq_len
    flops_per_token = 6 * n + attn + ((2 * n + attn // 3) if distill else 0)
    rate = state.rate
    result = {"config": name, "tokens_per_s": round(rate), "step_s": round(state.seconds / args.steps, 4),
              "peak_gpu_gib": round(torch.cuda.max_memory_allocated(rt.device) / 2**30, 2) if cuda else None,
              "model_tflops": round(rate * flops_per_token / 1e12, 1),
              "mfu_datasheet": round(rate * flops_per_token / DATASHEET_BF16, 3),
              "mfu_measured": round(rate * flops_per_token / args.ceiling, 3), "flops_per_token": flops_per_token,
              "matmul_params": n}
    print(json.dumps(result), flush=True)
    del model, teacher
    if cuda:
        torch.cuda.empty_cache()
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--only", default="plain,qat,qat_distill")
    ap.add_argument("--json")
    ap.add_argument("--device", default="cuda", help="cpu only checks the script (no memory or MFU numbers)")
    args = ap.parse_args()
    rt = Runtime(torch.device(args.device))
    torch.backends.cuda.matmul.allow_tf32 = True
    args.ceiling = measured_bf16_rate(rt.device) if rt.device.type == "cuda" else DATASHEET_BF16
    from transformers import AutoModelForCausalLM

    from bitconv.quantize.source import load_original

    def load():
        return load_original(args.model, model_class=AutoModelForCausalLM)

    configs = {"plain": (False, False), "qat": (True, False), "qat_distill": (True, True)}
    results = [run(name, args, *configs[name], rt, load) for name in args.only.split(",")]
    plain = next((r for r in results if r["config"] == "plain"), None)
    gpu = torch.cuda.get_device_name(0) if rt.device.type == "cuda" else "cpu"
    print(f"\n{gpu}, torch {torch.__version__}, batch {args.batch_size} x {args.seq_len} "
          f"tokens, compile {args.compile}; bf16 matmul measured {args.ceiling / 1e12:.0f} TFLOP/s")
    print(f"{'config':<12} {'tokens/s':>10} {'step s':>8} {'x plain':>8} {'peak GiB':>9} {'TFLOP/s':>8} "
          f"{'MFU(989)':>9} {'MFU(meas)':>9}")
    for r in results:
        ratio = r["step_s"] / plain["step_s"] if plain else float("nan")
        print(f"{r['config']:<12} {r['tokens_per_s']:>10,} {r['step_s']:>8.3f} {ratio:>8.2f} {r['peak_gpu_gib'] or 0:>9.1f} "
              f"{r['model_tflops']:>8.1f} {r['mfu_datasheet']:>9.3f} {r['mfu_measured']:>9.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": {"gpu": gpu, "torch": torch.__version__,
                                   "python": platform.python_version()}, "args": {k: v for k, v in vars(args).items()},
                       "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
