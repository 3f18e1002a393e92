"""The encoder-distillation experiments behind docs/recovery.md ("Classification on unseen sentences").

    # here: weights made small enough to travel to the GPU machine (64 MiB a call)
    PYTHONPATH=. python docs/benchmarks/classify_runs.py pack MINILM_DIR runs/carry/minilm --fp16
    PYTHONPATH=. python docs/benchmarks/classify_runs.py pack MPNET_DIR runs/carry/mpnet --int8 --parts 2
    # there: the folders back, then every run in one go
    PYTHONPATH=. python docs/benchmarks/classify_runs.py unpack runs/carry/minilm /tmp/minilm
    PYTHONPATH=. python docs/benchmarks/classify_runs.py run --minilm /tmp/minilm --mpnet /tmp/mpnet \
        --sst2 runs/sst2-heldout --test ../shared/data/sst2/test.tsv --spam data/sms-spam --work /tmp/w \
        --results results.json --deadline-s 420

`pack --fp16` stores every float tensor as float16; `pack --int8` stores each 2-D float tensor as int8 rows
with one float16 absmax scale per row (1-D tensors as float16). Both are only how the pretrained weights
travel: `unpack` writes them back as an ordinary float32 checkpoint, which every run then fine-tunes in full
precision.

`run` starts each experiment as its own `python -m bitconv recover` process as soon as the teachers it needs
exist (teachers are fine-tuned once, by a `recover --steps 1` run whose OUT.ckpt/teacher is then passed as
`--teacher` / `--logits-teacher`), several at a time on the one GPU, then scores every folder on the test
sentences with `bitconv eval`. Commands, metrics and timings go to --results after each step; runs still
going at --deadline-s are stopped and listed as such.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SIDE = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")

SST2 = ["--batch-size", "64", "--lr", "2e-4", "--precision", "bf16", "--distill"]
SPAM = ["--batch-size", "32", "--lr", "2e-4", "--precision", "bf16", "--distill", "--epochs", "8"]
HA = ["--hidden-weight", "1.0", "--attention-weight", "1.0"]

# name -> (task data, needs: teachers by role, extra options); "@x" is the teacher folder fine-tuned by run x
TEACHERS = {
    "t-minilm-sst2": ("sst2", "minilm", ["--teacher-epochs", "2", "--teacher-lr", "1e-4", "--batch-size", "64"]),
    "t-mpnet-sst2": ("sst2", "mpnet", ["--teacher-epochs", "2", "--teacher-lr", "3e-5", "--batch-size", "64"]),
    "t-minilm-spam": ("spam", "minilm", ["--teacher-epochs", "4", "--teacher-lr", "1e-4", "--batch-size", "32"]),
    "t-mpnet-spam": ("spam", "mpnet", ["--teacher-epochs", "4", "--teacher-lr", "3e-5", "--batch-size", "32"]),
}
RUNS = {
    "sst2-kd": ("sst2", ["--teacher", "@t-minilm-sst2", *SST2, "--epochs", "2"]),
    "sst2-kd-ha": ("sst2", ["--teacher", "@t-minilm-sst2", *SST2, *HA, "--epochs", "2"]),
    "sst2-kd-mpnet": ("sst2", ["--teacher", "@t-minilm-sst2", "--logits-teacher", "@t-mpnet-sst2", *SST2, "--epochs", "2"]),
    "sst2-kd-mpnet-ha": ("sst2", ["--teacher", "@t-minilm-sst2", "--logits-teacher", "@t-mpnet-sst2", *SST2, *HA,
                                  "--epochs", "2"]),
    # 2 variants a text: three times the items, so 2/3 of an epoch is the same 1,538 steps as 2 epochs above
    "sst2-kd-mpnet-ha-aug": ("sst2", ["--teacher", "@t-minilm-sst2", "--logits-teacher", "@t-mpnet-sst2", *SST2, *HA,
                                      "--augment", "2", "--epochs", "0.6667"]),
    "sst2-kd-mpnet-ha-a8": ("sst2", ["--teacher", "@t-minilm-sst2", "--logits-teacher", "@t-mpnet-sst2", *SST2, *HA,
                                     "--activations", "int8", "--epochs", "2"]),
    "spam-kd-mpnet-ha": ("spam", ["--teacher", "@t-minilm-spam", "--logits-teacher", "@t-mpnet-spam", *SPAM, *HA]),
    "spam-kd-mpnet-ha-a8": ("spam", ["--teacher", "@t-minilm-spam", "--logits-teacher", "@t-mpnet-spam", *SPAM, *HA,
                                     "--activations", "int8"]),
}


def pack(src: Path, out: Path, int8: bool, parts: int) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(src / "model.safetensors"))
    packed: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if int8 and t.dim() == 2 and t.is_floating_point():
            scale = t.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
            packed[name + ".int8"] = (t.float() / scale).round().clamp(-127, 127).to(torch.int8)
            packed[name + ".scale"] = scale.half()
        else:
            packed[name] = t.half() if t.is_floating_point() else t
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(packed, key=lambda n: n.removesuffix(".int8").removesuffix(".scale"))
    total = sum(packed[n].numel() * packed[n].element_size() for n in names)
    part, size, chunk = 0, 0, {}
    for n in names:
        chunk[n] = packed[n]
        size += packed[n].numel() * packed[n].element_size()
        if size >= total / parts * (part + 1) and part < parts - 1 and not n.endswith(".int8"):
            save_file(chunk, str(out / f"part{part}.safetensors"))
            part, chunk = part + 1, {}
    save_file(chunk, str(out / f"part{part}.safetensors"))
    for name in SIDE:
        if (src / name).exists():
            shutil.copyfile(src / name, out / name)


def unpack(folders: list[Path], out: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    packed: dict[str, torch.Tensor] = {}
    for folder in folders:
        for part in sorted(folder.glob("part*.safetensors")):
            packed.update(load_file(str(part)))
        for name in SIDE:
            if (folder / name).exists():
                out.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / name, out / name)
    tensors = {}
    for name, t in packed.items():
        if name.endswith(".scale"):
            continue
        if name.endswith(".int8"):
            base = name.removesuffix(".int8")
            tensors[base] = t.float() * packed[base + ".scale"].float()
        else:
            tensors[name] = t.float() if t.is_floating_point() else t
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})


class Runner:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.results = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                        "runs": {}}
        self.start = time.monotonic()

    def data(self, kind: str) -> tuple[str, str]:
        a = self.args
        if kind == "sst2":
            return f"{a.sst2}/train.tsv", f"{a.sst2}/dev.tsv"
        return f"{a.spam}/train.tsv", f"{a.spam}/validation.tsv"

    def command(self, name: str, source: str, kind: str, options: list[str]) -> list[str]:
        train, dev = self.data(kind)
        resolved = [str(self.work / (o[1:] + ".ckpt") / "teacher") if o.startswith("@") else o for o in options]
        return [sys.executable, "-m", "bitconv", "recover", source, "--task", "classify", "--train", train, "--eval",
                dev, *resolved, "--device", self.args.device, "--no-progress", "--force", "--out", str(self.work / name)]

    def save(self) -> None:
        self.results["elapsed_s"] = round(time.monotonic() - self.start, 1)
        Path(self.args.results).write_text(json.dumps(self.results, indent=1))

    def launch(self, name: str, cmd: list[str]) -> subprocess.Popen:
        self.results["runs"][name] = {"command": " ".join(cmd[2:]), "status": "running",
                                      "started_s": round(time.monotonic() - self.start, 1)}
        log = open(self.work / f"{name}.log", "w")
        env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    def finish(self, name: str, proc: subprocess.Popen) -> None:
        row = self.results["runs"][name]
        row["seconds"] = round(time.monotonic() - self.start - row["started_s"], 1)
        row["status"] = "ok" if proc.returncode == 0 else f"failed ({proc.returncode})"
        record = self.work / name / "recovery.json"
        if record.exists():
            row["metrics"] = json.loads(record.read_text())["metrics"]
        else:
            row["log_tail"] = (self.work / f"{name}.log").read_text()[-1500:]
        self.save()
        print(f"[{row['seconds']:6.1f}s] {name}: {row['status']}", flush=True)

    def run(self) -> None:
        a = self.args
        sources = {"minilm": a.minilm, "mpnet": a.mpnet}
        pending = {n: self.command(n, sources[src], kind, ["--distill", "--steps", "1", *opts])
                   for n, (kind, src, opts) in TEACHERS.items()}
        pending.update({n: self.command(n, a.minilm, kind, opts) for n, (kind, opts) in RUNS.items()})
        needs = {n: [o[1:] for o in opts if o.startswith("@")] for n, (_, opts) in RUNS.items()}
        running: dict[str, subprocess.Popen] = {}
        done: set[str] = set()
        deadline = self.start + a.deadline_s
        while (pending or running) and time.monotonic() < deadline:
            for name in list(pending):
                if len(running) < a.parallel and all(t in done for t in needs.get(name, [])):
                    running[name] = self.launch(name, pending.pop(name))
            for name, proc in list(running.items()):
                if proc.poll() is not None:
                    self.finish(name, running.pop(name))
                    done.add(name)
            time.sleep(1)
        for name, proc in running.items():
            proc.kill()
            self.results["runs"][name]["status"] = "stopped at the deadline"
        for name in pending:
            self.results["runs"][name] = {"command": " ".join(pending[name][2:]), "status": "not started"}
        self.save()
        self.evaluate_on_test(done)

    def evaluate_on_test(self, done: set[str]) -> None:
        """Every written folder and fp teacher on the test sentences, through `bitconv eval` (several at once)."""
        jobs = {}
        for name in sorted(done):
            kind = TEACHERS[name][0] if name in TEACHERS else RUNS[name][0]
            test = self.args.test if kind == "sst2" else f"{self.args.spam}/validation.tsv"
            folders = {name: self.work / name}
            if name in TEACHERS:  # the fp teacher, not its 1-step ternary copy
                folders = {name + "-fp": self.work / (name + ".ckpt") / "teacher"}
            for label, folder in folders.items():
                if (folder / "config.json").exists():
                    cmd = [sys.executable, "-m", "bitconv", "eval", str(folder), "--task", "classify", "--data", test,
                           "--device", self.args.device, "--batch-size", "256", "--latency-repeats", "0", "--no-progress",
                           "--json", str(self.work / f"test-{label}.json")]
                    jobs[label] = (cmd, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        tests = self.results.setdefault("test", {})
        for label, (cmd, proc) in jobs.items():
            _, err = proc.communicate()
            path = self.work / f"test-{label}.json"
            if path.exists():
                m = json.loads(path.read_text())["metrics"]
                tests[label] = {"command": " ".join(cmd[2:]), "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                                "per_class_f1": {k: v["f1"] for k, v in m["per_class"].items()},
                                "n_examples": m["n_examples"]}
            else:
                tests[label] = {"command": " ".join(cmd[2:]), "error": err.decode()[-800:]}
        self.save()


def machine() -> dict:
    import platform

    import torch
    import transformers

    return {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--int8", action="store_true")
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--parts", type=int, default=1)
    u = sub.add_parser("unpack")
    u.add_argument("folders", type=Path, nargs="+")
    u.add_argument("out", type=Path)
    r = sub.add_parser("run")
    for opt in ("--minilm", "--mpnet", "--sst2", "--test", "--spam", "--work", "--results"):
        r.add_argument(opt, required=True)
    r.add_argument("--deadline-s", type=float, default=420)
    r.add_argument("--parallel", type=int, default=8)
    r.add_argument("--device", default="cuda")
    args = ap.parse_args()
    if args.cmd == "pack":
        pack(args.src, args.out, args.int8, args.parts)
    elif args.cmd == "unpack":
        unpack(args.folders, args.out)
    else:
        Runner(args).run()


if __name__ == "__main__":
    main()
