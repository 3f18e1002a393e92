"""SmolLM2-135M ternary recovered on text it writes itself, chosen and measured on general English it never saw.

    PYTHONPATH=. python docs/benchmarks/recovery_general.py --model SmolLM2-135M-Instruct.Q4_1.gguf \
        --select lee-select.txt --test lee-test.txt --extra ../shared/data/text/shakespeare.txt \
        --work /tmp/runs --results recovery_general.json [--teacher-tokens 24M --ablation-steps 120 --main-steps 700]

1. Ablation: short `recover()` runs (the same as `bitconv recover` commands, printed) on `teacher:N` data, each
   scored on --select (general English held out from every run) and on held-out generated text.
2. The recipe with the lowest --select perplexity is run longer; that run is scored on --test (never used to
   choose anything), --select, --extra and held-out generated text.
The generated data is made once (the first run) and read from the token cache by the others. Results, with
each run's command, wall time and tokens, are written to --results after every run.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from bitconv.train.config import RecoverConfig
from bitconv.train.pipeline import recover

# what the ablation tries (docs/recovery.md): the loss (KL only vs KL + next-token CE), temperature, learning rate,
# and per-output-channel scales instead of one per tensor
CANDIDATES = {
    "kd_mixed_T2": dict(distill_weight=0.5, temperature=2.0, lr=1e-3),
    "kd_only_T1": dict(distill_weight=1.0, temperature=1.0, lr=1e-3),
    "kd_only_T1_channel": dict(distill_weight=1.0, temperature=1.0, lr=1e-3, granularity="channel"),
    "kd_only_T1_lr3e-4": dict(distill_weight=1.0, temperature=1.0, lr=3e-4),
}


def as_command(model: str, train: str, evals: list[str], out: str, opts: dict, steps: int) -> str:
    parts = ["bitconv recover", model, "--task lm", f"--train {train}", *[f"--eval {e}" for e in evals],
             f"--steps {steps}"]
    parts += [f"--{k.replace('_', '-')} {v}" for k, v in sorted(opts.items())]
    return " ".join(parts + [f"--out {out}"])


def config(opts: dict, steps: int, args) -> RecoverConfig:
    from bitconv.quantize.config import QuantConfig

    opts = dict(opts)
    quant = QuantConfig.for_bits(1.58, opts.pop("granularity", None))
    return RecoverConfig(task="lm", quant=quant, steps=steps, batch_size=args.batch_size, seq_len=args.seq_len,
                         eval_tokens=args.eval_tokens, distill=True, precision="bf16", **opts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--select", required=True)
    ap.add_argument("--test", required=True, nargs="+")
    ap.add_argument("--extra", nargs="*", default=[])
    ap.add_argument("--work", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--teacher-tokens", default="24M")
    ap.add_argument("--eval-teacher", default="teacher:100k")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--eval-tokens", type=int, default=100_000)
    ap.add_argument("--ablation-steps", type=int, default=120)
    ap.add_argument("--main-steps", type=int, default=700, help="at most this many steps in the long run")
    ap.add_argument("--deadline-s", type=float, default=0,
                    help="fit the long run into this many seconds from the start (0: no limit)")
    ap.add_argument("--main-overhead-s", type=float, default=100,
                    help="deadline: seconds the long run spends outside training (loading, evaluation, conversion)")
    ap.add_argument("--step-s", type=float, default=0,
                    help="deadline with --main (no ablation run to time a step): seconds per training step, e.g. "
                         "bench_recover.py's compiled QAT + distillation step")
    ap.add_argument("--gen-s", type=float, default=0,
                    help="deadline with --main: seconds the long run spends generating its teacher:N data first")
    ap.add_argument("--only", default="", help="comma-separated candidates (default: all)")
    ap.add_argument("--main", default="", help="skip the ablation: run this candidate long")
    ap.add_argument("--compile", type=int, default=1, help="torch.compile the long run's blocks")
    ap.add_argument("--ablation-compile", type=int, default=0,
                    help="torch.compile the short runs too (off: compiling costs more than it saves in ~100 steps)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    start = time.perf_counter()
    work, results_path = Path(args.work), Path(args.results)
    train = f"teacher:{args.teacher_tokens}"
    results = {"machine": {"python": platform.python_version()}, "runs": {}}
    try:
        import torch

        results["machine"].update(torch=torch.__version__,
                                  gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
    except ImportError:
        pass

    def one(name: str, opts: dict, steps: int, evals: list[str], compile: bool) -> dict:
        cfg = config(opts, steps, args)
        command = as_command(args.model, train, evals, name, opts, steps)
        print(f"RUN {name}: {command}", flush=True)
        t0 = time.perf_counter()
        r = recover(args.model, work / name, train=train, eval=evals, config=cfg, device=args.device, force=True,
                    progress=False, save_every=0, compile=compile, cache_dir=work / "cache")
        wall = time.perf_counter() - t0
        entry = {"command": command, "recipe": cfg.to_dict(), "wall_s": round(wall, 1), "timings": r.timings,
                 "train_tokens": r.metrics.get("train_tokens"),
                 "perplexity": {k: {name: m["perplexity"] for name, m in r.metrics[k]["sets"].items()}
                                for k in ("original", "before", "after", "converted") if k in r.metrics}}
        results["runs"][name] = entry
        results_path.write_text(json.dumps(results, indent=1, sort_keys=True))
        print(f"DONE {name} ({wall:.0f}s): {json.dumps(entry['perplexity']['converted'])}", flush=True)
        return entry

    choose_on = [args.select, args.eval_teacher]
    names = [n for n in args.only.split(",") if n] or list(CANDIDATES)
    best = args.main
    if not best:
        scores = {}
        for name in names:
            entry = one(name, CANDIDATES[name], args.ablation_steps, choose_on, bool(args.ablation_compile))
            scores[name] = entry["perplexity"]["after"][args.select]
        best = min(scores, key=scores.get)
        results["chosen"] = {"by": f"lowest 'after' perplexity on {args.select}", "scores": scores, "best": best}
        print(f"CHOSEN {best}: {scores}", flush=True)
    steps = args.main_steps
    last = results["runs"].get(best)
    # as many steps as fit: at the speed the ablation run measured, else at --step-s after generating (--gen-s)
    per_step = last["timings"]["recover"]["seconds"] / last["recipe"]["steps"] if last else args.step_s
    if args.deadline_s and per_step:
        left = args.deadline_s - (time.perf_counter() - start) - args.main_overhead_s - (0 if last else args.gen_s)
        steps = max(args.ablation_steps, min(steps, int(left / per_step)))
        print(f"FIT main: {steps} steps ({per_step:.3f} s/step, {left:.0f} s left)", flush=True)
    one(f"main_{best}", CANDIDATES[best], steps, [*args.test, args.select, *args.extra, args.eval_teacher],
        bool(args.compile))
    print(json.dumps(results["runs"][f"main_{best}"]["perplexity"], indent=1), flush=True)


if __name__ == "__main__":
    main()
