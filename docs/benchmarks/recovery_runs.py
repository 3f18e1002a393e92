"""The recovery experiments behind docs/recovery.md, run one after another inside a time budget.

    PYTHONPATH=. python docs/benchmarks/recovery_runs.py --suite sst2 --model MINILM_DIR \
        --data ../shared/data --work /tmp/runs --results sst2.json --budget-s 540 [--only kd,ste]

Each run is one `bitconv.train.pipeline.recover()` call (the same as one `bitconv recover` command; the options
are printed as that command). Results (metrics, recipe, timings) are written to --results after every
run, so a run cut off by the budget keeps what finished. A run whose predicted time does not fit in the
remaining budget is skipped and listed as skipped.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from bitconv.errors import BitconvError
from bitconv.evaluate.results import headline
from bitconv.quantize.config import QuantConfig
from bitconv.train.config import RecoverConfig
from bitconv.train.pipeline import recover

QUANT_KEYS = ("bits", "granularity", "scale_method", "keep_outliers", "activations")

# the classify defaults of these runs (before issue 15 made encoder distillation the default): a run names what it adds
PLAIN = dict(distill=False, hidden_weight=0.0, attention_weight=0.0, augment=0)
SST2 = dict(task="classify", batch_size=64, epochs=3, lr=2e-4, teacher_epochs=2, teacher_lr=1e-4, **PLAIN)
SPAM = dict(task="classify", batch_size=32, epochs=8, lr=2e-4, teacher_epochs=4, teacher_lr=1e-4, **PLAIN)
SMOL = dict(task="lm", batch_size=16, seq_len=256, lr=2e-4, precision="bf16", eval_tokens=100_000)

# name -> options; "@run" in teacher means the fp teacher that run fine-tuned (run it first)
SUITES: dict[str, dict[str, dict]] = {
    "sst2": {
        "kd": {**SST2, "distill": True},
        "ste": {**SST2},
        "kd_warmup": {**SST2, "distill": True, "teacher": "@kd", "quant_warmup_steps": 900},
        "kd_a8": {**SST2, "distill": True, "teacher": "@kd", "activations": "int8"},
    },
    # what each ingredient buys, at one epoch each (the teacher is fine-tuned once, by the first run)
    "sst2_ablation": {
        "kd": {**SST2, "epochs": 1, "distill": True},
        "ste": {**SST2, "epochs": 1},
        "kd_a8": {**SST2, "epochs": 1, "distill": True, "teacher": "@kd", "activations": "int8"},
        "kd_warmup": {**SST2, "epochs": 1, "distill": True, "teacher": "@kd", "quant_warmup_steps": 300},
        "kd_sw": {**SST2, "epochs": 1, "distill": True, "teacher": "@kd", "super_weights": 4},
        "ft_ste": {**SST2, "epochs": 1, "teacher": "@kd"},
        "kd_prog": {**SST2, "epochs": 1, "distill": True, "teacher": "@kd", "progressive": (8, 4, 2), "phase_steps": 100},
        "kd_hidden": {**SST2, "epochs": 1, "distill": True, "teacher": "@kd", "hidden_weight": 1.0},
        "kd_group64": {**SST2, "epochs": 1, "distill": True, "teacher": "@kd", "granularity": "group:64"},
    },
    "spam": {
        "kd": {**SPAM, "distill": True},
        "ste": {**SPAM},
        "kd_a8": {**SPAM, "distill": True, "teacher": "@kd", "activations": "int8"},
    },
    # "steps": "fit" = as many steps as the remaining budget allows at the speed measured by the runs before
    "smol": {
        "ste_probe": {**SMOL, "steps": 30},
        "kd_warmup": {**SMOL, "distill": True, "quant_warmup_steps": 200, "steps": "fit"},
        "ste": {**SMOL, "steps": 300},
        "kd": {**SMOL, "distill": True, "steps": 300},
    },
}
DATA = {
    "sst2": ("sst2/train.tsv", "sst2/validation.tsv"),
    "sst2_ablation": ("sst2/train.tsv", "sst2/validation.tsv"),
    "spam": ("sms-spam/train.tsv", "sms-spam/validation.tsv"),
    "smol": ("text/shakespeare.txt", None),
}


def recover_config(options: dict) -> RecoverConfig:
    """A run's options as a RecoverConfig: the quantization ones (as `convert` takes them) go into its QuantConfig."""
    quant = {k: options[k] for k in QUANT_KEYS if k in options}
    rest = {k: v for k, v in options.items() if k not in QUANT_KEYS}
    return RecoverConfig(quant=QuantConfig.for_bits(quant.pop("bits", 1.58), quant.pop("granularity", None), **quant),
                         **rest)


def as_command(source: str, train: str, eval_path: str | None, out: str, options: dict) -> str:
    """The `bitconv recover` command line equivalent to a run."""
    defaults = {**RecoverConfig(task=options["task"]).to_dict(), "bits": 1.58, "activations": "none"}
    parts = ["bitconv recover", source, f"--task {options['task']}", f"--train {train}"]
    if eval_path:
        parts.append(f"--eval {eval_path}")
    for key, value in sorted(options.items()):
        if key == "task" or defaults.get(key) == (list(value) if isinstance(value, tuple) else value):
            continue
        if key in ("teacher_epochs", "teacher_lr") and (options.get("teacher") or not options.get("distill")):
            continue  # only used when a teacher is fine-tuned here
        flag = "--" + key.replace("_", "-").replace("scale-method", "scale")
        if value is True:
            parts.append(flag)
        elif value is False:
            parts.append(flag.replace("--", "--no-", 1))
        elif isinstance(value, tuple):
            parts.append(f"{flag} {','.join(f'{v:g}' for v in value)}")
        else:
            parts.append(f"{flag} {value}")
    parts.append(f"--out {out}")
    return " ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", choices=sorted(SUITES), required=True)
    ap.add_argument("--model", required=True, help="model folder or .gguf")
    ap.add_argument("--data", required=True, help="folder holding sst2/, sms-spam/, text/")
    ap.add_argument("--work", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--budget-s", type=float, default=540)
    ap.add_argument("--only", default="", help="comma-separated run names (default: all, in order)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--reserve-s", type=float, default=120, help="fit: seconds kept for loading, evaluation, conversion")
    ap.add_argument("--distill-cost", type=float, default=1.5, help="fit: step time with a teacher / without")
    ap.add_argument("--max-fit-steps", type=int, default=4000)
    ap.add_argument("--smoke", action="store_true", help="3 steps per run (checks the plumbing, measures nothing)")
    args = ap.parse_args()

    start = time.perf_counter()
    work, data = Path(args.work), Path(args.data)
    runs = SUITES[args.suite]
    names = [n for n in args.only.split(",") if n] or list(runs)
    train_rel, eval_rel = DATA[args.suite]
    results_path = Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.setdefault("machine", {"python": platform.python_version(), "node": platform.node()})
    try:
        import torch

        if torch.cuda.is_available():
            results["machine"]["gpu"] = torch.cuda.get_device_name(0)
        results["machine"]["torch"] = torch.__version__
    except ImportError:
        pass
    results.setdefault("runs", {})
    seconds_per_step: list[float] = []
    walls: list[float] = []
    for name in names:
        options = dict(runs[name])
        if isinstance(options.get("teacher"), str) and options["teacher"].startswith("@"):
            options["teacher"] = str(work / f"{args.suite}-{options['teacher'][1:]}.ckpt" / "teacher")
        if options.get("steps") == "fit":
            if not seconds_per_step:
                raise SystemExit(f"{name}: 'fit' steps need an earlier run to measure the speed")
            left = args.budget_s - (time.perf_counter() - start) - args.reserve_s
            per_step = max(seconds_per_step) * (args.distill_cost if options.get("distill") else 1.0)
            options["steps"] = max(50, min(args.max_fit_steps, int(left / per_step)))
            print(f"FIT {name}: {options['steps']} steps ({per_step:.3f}s/step predicted, {left:.0f}s left)", flush=True)
        if args.smoke:
            options.update(steps=3, teacher_epochs=0.002, eval_tokens=2048, phase_steps=1)
        cfg = recover_config(options)
        elapsed = time.perf_counter() - start
        out = work / f"{args.suite}-{name}"
        train_path = data / train_rel
        eval_path = data / eval_rel if eval_rel else None
        command = as_command(args.model, f"../shared/data/{train_rel}", f"../shared/data/{eval_rel}" if eval_rel else None,
                             f"{args.suite}-{name}", options)
        predicted = None
        if seconds_per_step and cfg.steps:
            predicted = cfg.steps * max(seconds_per_step) * (1.6 if cfg.distill else 1.0) + 30
        elif walls:
            predicted = max(walls)
        if predicted is not None:
            if elapsed + predicted > args.budget_s:
                print(f"SKIP {name}: predicted {predicted:.0f}s, {args.budget_s - elapsed:.0f}s left", flush=True)
                results["runs"][name] = {"skipped": f"did not fit the time budget ({predicted:.0f}s predicted)",
                                         "command": command}
                continue
        t0 = time.perf_counter()
        try:
            r = recover(args.model, out, train=train_path, eval=eval_path, config=cfg, device=args.device,
                          force=True, progress=False, save_every=0)
        except BitconvError as exc:
            print(f"FAIL {name}: {exc}", flush=True)
            results["runs"][name] = {"error": str(exc), "command": command}
            continue
        wall = time.perf_counter() - t0
        walls.append(wall)
        if r.metrics.get("steps"):
            seconds_per_step.append(r.timings["recover"]["seconds"] / r.metrics["steps"])
        results["runs"][name] = {"command": command, "recipe": cfg.to_dict(), "metrics": r.metrics,
                                 "timings": {**r.timings, "wall_s": round(wall, 1)}}
        results_path.write_text(json.dumps(results, indent=1, sort_keys=True))
        m = r.metrics
        line = "  ".join(f"{k}: {headline(m[k])}" for k in ("original", "teacher", "before", "after", "converted") if k in m)
        print(f"DONE {name} ({wall:.0f}s, {m['steps']} steps): {line}", flush=True)
    results_path.write_text(json.dumps(results, indent=1, sort_keys=True))
    print(f"total {time.perf_counter() - start:.0f}s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
