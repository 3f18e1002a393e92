"""The encoder-distillation experiments behind docs/recovery.md ("Classification on unseen sentences").

    # here: weights made small enough to travel to the GPU machine (64 MiB a call), the held-out split
    PYTHONPATH=. python docs/benchmarks/sst2_heldout.py ../shared/data/sst2/train.tsv \\
        ../shared/data/sst2/validation.tsv --n 1500 --seed 0 --out .carry/sst2-heldout
    cp ../shared/data/sst2/test.tsv .carry/sst2-heldout/test.tsv
    PYTHONPATH=. python docs/benchmarks/classify_runs.py pack MINILM_DIR .carry/minilm --bits 16 \\
        --vocab-of .carry/sst2-heldout/*.tsv
    PYTHONPATH=. python docs/benchmarks/classify_runs.py pack MPNET_DIR .carry/mpnet --bits 8 \\
        --vocab-of .carry/sst2-heldout/*.tsv --part-mib 48
    # there (docs/benchmarks/classify_h200.sh does this): the folders back, then the runs
    python3 docs/benchmarks/classify_runs.py unpack .carry/minilm /tmp/minilm
    python3 docs/benchmarks/classify_runs.py unpack .carry/mpnet* /tmp/mpnet
    python3 docs/benchmarks/classify_runs.py run --minilm /tmp/minilm --mpnet /tmp/mpnet \\
        --sst2 .carry/sst2-heldout --test .carry/sst2-heldout/test.tsv --work /tmp/w --results results.json \\
        --deadline-s 900

`pack --bits 16` stores every float tensor as float16; `--bits 8` each large 2-D float tensor as int8 rows with
one float16 absmax scale per row; `--bits 4` the large 2-D tensors outside the embeddings as 4-bit codes with a
float16 absmax scale per 64 weights (the embeddings as int8 rows). `--vocab-of FILES` keeps only the rows of
the token embedding that the texts of FILES (first column of each TSV) use, with the special tokens: the rows
no text of these files reads come back as zeros, which changes nothing these texts compute (and, with no
weight decay, training leaves them at zero). `--part-mib N` cuts the result into folders PART0, PART1, ... of
at most N MiB each, to be carried in separate calls. None of this is quantization of the models studied:
`unpack` writes an ordinary float32 checkpoint, which every run then fine-tunes in full precision.

`run` starts each experiment as its own `python -m bitconv recover` process as soon as the teachers it needs
exist (teachers are fine-tuned once, by a `recover --steps 1` run whose OUT.ckpt/teacher is then passed as
`--teacher` / `--logits-teacher`), up to --parallel at a time on the one GPU. When a run ends its folder (a
teacher run: the fp teacher) is scored on --test with `bitconv eval`, and WORK/results/NAME.json is written
at once (commands, recovery.json's metrics on the held-out dev split, the test metrics); --results collects
them and, per width, the student with the best dev accuracy (the choice), its test accuracy and its distance
to the fp MiniLM. No run starts once less than --min-left-s remain before --deadline-s; runs still going at
the deadline are stopped and listed as such. --only NAME,... runs those (and the teachers they need).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

SIDE = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
GROUP = 64  # weights per float16 scale at 4 bits
SMALL = 65_536  # tensors with fewer elements stay float16

# logits-only distillation, what every run starts from: since issue 15 the classify defaults add HA and AUG, so they
# are switched off here and a run that names them later turns them on (the last of a repeated option wins)
KD = ["--distill", "--hidden-weight", "0", "--attention-weight", "0", "--augment", "0"]
SST2 = ["--batch-size", "64", "--lr", "2e-4", "--precision", "bf16", *KD]
SPAM = ["--batch-size", "32", "--lr", "2e-4", "--precision", "bf16", *KD, "--epochs", "8"]
HA = ["--hidden-weight", "1.0", "--attention-weight", "1.0"]
MINI_T = ["--teacher", "@t-minilm-sst2"]
MPNET_T = [*MINI_T, "--logits-teacher", "@t-mpnet-sst2"]
A8 = ["--activations", "int8"]
TWO = ["--epochs", "2"]
AUG = ["--augment", "2", "--epochs", "0.6667"]  # three times the items: the same 1,538 steps as 2 epochs

# name -> (task data, source, extra options); teachers are fine-tuned by a 1-step `recover --distill`
TEACHERS = {
    "t-minilm-sst2": ("sst2", "minilm", ["--teacher-epochs", "2", "--teacher-lr", "1e-4", "--batch-size", "64"]),
    "t-mpnet-sst2": ("sst2", "mpnet", ["--teacher-epochs", "2", "--teacher-lr", "3e-5", "--batch-size", "64"]),
    "t-minilm-spam": ("spam", "minilm", ["--teacher-epochs", "4", "--teacher-lr", "1e-4", "--batch-size", "32"]),
    "t-mpnet-spam": ("spam", "mpnet", ["--teacher-epochs", "4", "--teacher-lr", "3e-5", "--batch-size", "32"]),
}
# name -> (task data, options); "@x" is the teacher folder fine-tuned by run x; the students are MiniLM
RUNS = {
    "sst2-kd": ("sst2", [*MINI_T, *SST2, *TWO]),
    "sst2-kd-ha": ("sst2", [*MINI_T, *SST2, *HA, *TWO]),
    "sst2-kd-ha-a8": ("sst2", [*MINI_T, *SST2, *HA, *TWO, *A8]),
    "sst2-kd-ha-aug": ("sst2", [*MINI_T, *SST2, *HA, *AUG]),
    "sst2-kd-ha-aug-a8": ("sst2", [*MINI_T, *SST2, *HA, *AUG, *A8]),
    "sst2-kd-mpnet": ("sst2", [*MPNET_T, *SST2, *TWO]),
    "sst2-kd-mpnet-ha": ("sst2", [*MPNET_T, *SST2, *HA, *TWO]),
    "sst2-kd-mpnet-ha-a8": ("sst2", [*MPNET_T, *SST2, *HA, *TWO, *A8]),
    "sst2-kd-mpnet-ha-aug": ("sst2", [*MPNET_T, *SST2, *HA, *AUG]),
    "sst2-kd-mpnet-ha-aug-a8": ("sst2", [*MPNET_T, *SST2, *HA, *AUG, *A8]),
    "spam-kd-mpnet-ha": ("spam", ["--teacher", "@t-minilm-spam", "--logits-teacher", "@t-mpnet-spam", *SPAM, *HA]),
    "spam-kd-mpnet-ha-a8": ("spam", ["--teacher", "@t-minilm-spam", "--logits-teacher", "@t-mpnet-spam", *SPAM, *HA,
                                     *A8]),
}
# what `run` does by default, most needed first: the fp baseline, then per width the candidates of the choice.
# The spam runs finished on 2026-12-01 (docs/recovery-results/classify-gpu-2026-12-01.json).
DEFAULT_WITH_MPNET = ("t-minilm-sst2", "t-mpnet-sst2", "sst2-kd-mpnet-ha", "sst2-kd-mpnet-ha-a8",
                      "sst2-kd-mpnet-ha-aug", "sst2-kd-mpnet-ha-aug-a8", "sst2-kd-ha")
DEFAULT_WITHOUT_MPNET = ("t-minilm-sst2", "sst2-kd-ha-aug", "sst2-kd-ha-aug-a8", "sst2-kd-ha", "sst2-kd-ha-a8")


# ---------------------------------------------------------------------------------------------------------
# weights that travel


def _texts_of(files: list[Path]) -> list[str]:
    texts = []
    for path in files:
        lines = path.read_text(encoding="utf-8").splitlines()[1:]  # a header row first
        texts += [line.rsplit("\t", 1)[0] for line in lines]
    return texts


def _used_rows(src: Path, files: list[Path]):
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src))
    used = set(tok.all_special_ids)
    texts = _texts_of(files)
    for lo in range(0, len(texts), 2000):
        for ids in tok(texts[lo:lo + 2000])["input_ids"]:
            used.update(ids)
    return torch.tensor(sorted(used), dtype=torch.int64)


def _packed_tensor(name: str, t, bits: int) -> dict:
    import torch

    if not t.is_floating_point():
        return {name: t}
    if bits == 16 or t.dim() != 2 or t.numel() < SMALL:
        return {name: t.half()}
    t = t.float()
    if bits == 4 and "embeddings" not in name and t.shape[1] % GROUP == 0:
        g = t.reshape(t.shape[0], -1, GROUP)
        scale = g.abs().amax(dim=2, keepdim=True).clamp(min=1e-12) / 7
        q = ((g / scale).round().clamp(-7, 7) + 8).to(torch.uint8).reshape(t.shape[0], -1)
        return {name + ".int4": q[:, 0::2] | (q[:, 1::2] << 4), name + ".scale4": scale.squeeze(2).half()}
    scale = t.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
    return {name + ".int8": (t / scale).round().clamp(-127, 127).to(torch.int8), name + ".scale": scale.half()}


def pack(src: Path, out: Path, bits: int, vocab_of: list[Path], part_mib: float | None) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(src / "model.safetensors"))
    packed: dict[str, torch.Tensor] = {}
    rows = _used_rows(src, vocab_of) if vocab_of else None
    for name, t in tensors.items():
        if rows is not None and name.endswith("word_embeddings.weight"):
            packed[name + ".rows"] = rows
            packed[name + ".shape"] = torch.tensor(list(t.shape), dtype=torch.int64)
            t = t[rows]
        packed.update(_packed_tensor(name, t, bits))
    # parts hold whole tensors of one name together (codes with their scales)
    names = sorted(packed, key=lambda n: (n.split(".weight")[0], n))
    limit = part_mib * 2**20 if part_mib else float("inf")
    parts, size = [{}], 0
    for n in names:
        nbytes = packed[n].numel() * packed[n].element_size()
        base = n.split(".weight")[0]
        if size + nbytes > limit and parts[-1] and not any(k.split(".weight")[0] == base for k in parts[-1]):
            parts.append({})
            size = 0
        parts[-1][n] = packed[n]
        size += nbytes
    folders = [out] if len(parts) == 1 else [out.with_name(f"{out.name}{i}") for i in range(len(parts))]
    for folder, part in zip(folders, parts):
        folder.mkdir(parents=True, exist_ok=True)
        save_file(part, str(folder / "part.safetensors"))
    for name in SIDE:  # the small files travel with the first part
        if (src / name).exists():
            shutil.copyfile(src / name, folders[0] / name)
    for folder in folders:
        mib = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
        print(f"{folder}: {mib:.1f} MiB")


def unpack(folders: list[Path], out: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    packed: dict[str, torch.Tensor] = {}
    out.mkdir(parents=True, exist_ok=True)
    for folder in folders:
        for part in sorted(folder.glob("part*.safetensors")):
            packed.update(load_file(str(part)))
        for name in SIDE:
            if (folder / name).exists():
                shutil.copyfile(folder / name, out / name)
    tensors = {}
    for name, t in packed.items():
        if name.endswith(".int8"):
            base = name.removesuffix(".int8")
            tensors[base] = t.float() * packed[base + ".scale"].float()
        elif name.endswith(".int4"):
            base = name.removesuffix(".int4")
            q = torch.stack([t & 15, t >> 4], dim=2).reshape(t.shape[0], -1).float() - 8
            scale = packed[base + ".scale4"].float()
            tensors[base] = (q.reshape(t.shape[0], -1, GROUP) * scale[:, :, None]).reshape(t.shape[0], -1)
        elif not name.endswith((".scale", ".scale4", ".rows", ".shape")):
            tensors[name] = t.float() if t.is_floating_point() else t
    for name in list(tensors):
        if name + ".rows" in packed:
            full = torch.zeros(packed[name + ".shape"].tolist(), dtype=torch.float32)
            full[packed[name + ".rows"]] = tensors[name]
            tensors[name] = full
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})


# ---------------------------------------------------------------------------------------------------------
# the runs


def _wanted(only: list[str] | None, with_mpnet: bool) -> list[str]:
    names = list(only or (DEFAULT_WITH_MPNET if with_mpnet else DEFAULT_WITHOUT_MPNET))
    unknown = [n for n in names if n not in TEACHERS and n not in RUNS]
    if unknown:
        raise SystemExit(f"--only: unknown runs {unknown}; known: {sorted(TEACHERS) + sorted(RUNS)}")
    for name in list(names):  # the teachers a run needs come first
        for teacher in _needs(name):
            if teacher not in names:
                names.insert(0, teacher)
    if not with_mpnet and any("mpnet" in n for n in names):
        raise SystemExit(f"{[n for n in names if 'mpnet' in n]} need --mpnet")
    return names


def _needs(name: str) -> list[str]:
    return [o[1:] for o in RUNS[name][1] if o.startswith("@")] if name in RUNS else []


class Runner:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.work)
        (self.work / "results").mkdir(parents=True, exist_ok=True)
        self.results = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                        "runs": {}}
        self.start = time.monotonic()
        self.lock = threading.Lock()
        self.procs: dict[str, subprocess.Popen] = {}
        self.stopping = False

    def elapsed(self) -> float:
        return round(time.monotonic() - self.start, 1)

    def data(self, kind: str) -> tuple[str, str, str]:
        """(train, dev: options are chosen on it, test: only scored)."""
        a = self.args
        if kind == "sst2":
            return f"{a.sst2}/train.tsv", f"{a.sst2}/dev.tsv", a.test
        return f"{a.spam}/train.tsv", f"{a.spam}/validation.tsv", f"{a.spam}/validation.tsv"

    def command(self, name: str) -> list[str]:
        a = self.args
        if name in TEACHERS:
            kind, src, opts = TEACHERS[name]
            source, opts = {"minilm": a.minilm, "mpnet": a.mpnet}[src], [*KD, "--steps", "1", *opts]
        else:
            (kind, opts), source = RUNS[name], a.minilm
        train, dev, _ = self.data(kind)
        opts = [str(self.work / (o[1:] + ".ckpt") / "teacher") if o.startswith("@") else o for o in opts]
        if a.steps and name in RUNS:  # a smoke test of the runner: a few steps instead of the epochs
            opts = [*opts, "--steps", str(a.steps)]
        if a.teacher_epochs and name in TEACHERS:
            opts = [*opts, "--teacher-epochs", str(a.teacher_epochs)]
        return [sys.executable, "-m", "bitconv", "recover", source, "--task", "classify", "--train", train, "--eval",
                dev, *opts, "--device", a.device, "--no-compile", "--no-progress", "--force", "--out",
                str(self.work / name)]

    def save(self) -> None:
        with self.lock:
            self.results["elapsed_s"] = self.elapsed()
            self.results["summary"] = summary(self.results["runs"])
            text = json.dumps(self.results, indent=1)
        tmp = Path(self.args.results + ".partial")
        tmp.write_text(text)
        os.replace(tmp, self.args.results)

    def call(self, name: str, cmd: list[str], log: Path) -> int | None:
        """Run one command to its end (None: stopped at the deadline)."""
        env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
        with open(log, "a") as out:
            with self.lock:
                if self.stopping:
                    return None
                proc = self.procs[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
            code = proc.wait()
        with self.lock:
            self.procs.pop(name, None)
            return None if self.stopping and code != 0 else code

    def job(self, name: str) -> None:
        """Train, score on the test file, write WORK/results/NAME.json."""
        row = {"started_s": self.results["runs"][name]["started_s"]}
        log = self.work / f"{name}.log"
        code = self.call(name, self.command(name), log)
        row["train_s"] = round(self.elapsed() - row["started_s"], 1)
        record = self.work / name / "recovery.json"
        if record.exists():
            row["dev"] = json.loads(record.read_text())["metrics"]
        if code == 0:
            kind = TEACHERS[name][0] if name in TEACHERS else RUNS[name][0]
            # a teacher run is there for its fp teacher, not its 1-step ternary copy
            folder = self.work / (name + ".ckpt") / "teacher" if name in TEACHERS else self.work / name
            result = self.work / "results" / f"{name}.test-eval.json"
            cmd = [sys.executable, "-m", "bitconv", "eval", str(folder), "--task", "classify", "--data",
                   self.data(kind)[2], "--device", self.args.device, "--batch-size", "256", "--latency-repeats", "0",
                   "--no-progress", "--json", str(result)]
            row["test_command"] = " ".join(cmd[2:])
            if self.call(name, cmd, log) == 0:
                m = json.loads(result.read_text())["metrics"]
                row["test"] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n_examples": m["n_examples"],
                               "per_class_f1": {k: v["f1"] for k, v in m["per_class"].items()}}
        row["status"] = "ok" if code == 0 and "test" in row else \
            "stopped at the deadline" if code is None else f"failed ({code})"
        row["seconds"] = round(self.elapsed() - row["started_s"], 1)
        if row["status"] != "ok":
            row["log_tail"] = log.read_text(errors="replace")[-1500:]
        with self.lock:
            self.results["runs"][name].update(row)
            text = json.dumps({"name": name, **self.results["runs"][name]}, indent=1)
        tmp = self.work / "results" / f"{name}.json.partial"
        tmp.write_text(text)
        os.replace(tmp, self.work / "results" / f"{name}.json")
        self.save()
        print(f"[{self.elapsed():6.1f}s] {name}: {row['status']}", flush=True)

    def run(self) -> None:
        a = self.args
        pending = _wanted(a.only.split(",") if a.only else None, bool(a.mpnet))
        for name in pending:
            self.results["runs"][name] = {"command": " ".join(self.command(name)[2:]), "status": "not started"}
        self.save()
        threads: dict[str, threading.Thread] = {}
        while time.monotonic() - self.start < a.deadline_s:
            with self.lock:
                status = {n: r["status"] for n, r in self.results["runs"].items()}
            finished = {n for n, s in status.items() if s == "ok"}
            failed = {n for n, s in status.items() if s.startswith(("failed", "stopped"))}
            running = [n for n, t in threads.items() if t.is_alive()]
            time_left = a.deadline_s - (time.monotonic() - self.start)
            for name in list(pending):
                if any(t in failed for t in _needs(name)):
                    pending.remove(name)
                    with self.lock:
                        self.results["runs"][name]["status"] = "not started: a teacher it needs failed"
                elif len(running) < a.parallel and time_left >= a.min_left_s and all(t in finished
                                                                                    for t in _needs(name)):
                    pending.remove(name)
                    with self.lock:
                        self.results["runs"][name].update(status="running", started_s=self.elapsed())
                    threads[name] = threading.Thread(target=self.job, args=(name,))
                    threads[name].start()
                    running.append(name)
            if not running and (not pending or time_left < a.min_left_s):
                break
            time.sleep(1)
        with self.lock:
            self.stopping = True
            for proc in self.procs.values():
                proc.kill()
        for thread in threads.values():
            thread.join()
        for name in pending:
            self.results["runs"][name]["status"] = "not started: too little time left"
        self.save()


def summary(runs: dict) -> dict:
    """The fp baseline and, per width, the student chosen on the dev split and its test accuracy."""
    out: dict = {}
    base = runs.get("t-minilm-sst2", {})
    if "test" in base:
        out["fp_minilm"] = {"dev": base["dev"]["teacher"]["accuracy"], "test": base["test"]["accuracy"]}
    for width, is_a8 in (("W1.58A16", False), ("W1.58A8", True)):
        done = {n: r for n, r in runs.items() if n.startswith("sst2-") and n.endswith("-a8") == is_a8
                and r.get("status") == "ok"}
        if not done:
            continue
        chosen = max(sorted(done), key=lambda n: done[n]["dev"]["converted"]["accuracy"])
        row = {"chosen_on_dev": chosen, "candidates_dev": {n: r["dev"]["converted"]["accuracy"] for n, r in done.items()},
               "dev": done[chosen]["dev"]["converted"]["accuracy"], "test": done[chosen]["test"]["accuracy"]}
        if "fp_minilm" in out:
            row["test_minus_fp_points"] = round(100 * (row["test"] - out["fp_minilm"]["test"]), 2)
        out[width] = row
    return out


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
    p.add_argument("--bits", type=int, choices=(16, 8, 4), default=16)
    p.add_argument("--vocab-of", type=Path, nargs="*", default=[])
    p.add_argument("--part-mib", type=float)
    u = sub.add_parser("unpack")
    u.add_argument("folders", type=Path, nargs="+")
    u.add_argument("out", type=Path)
    r = sub.add_parser("run")
    for opt in ("--minilm", "--sst2", "--test", "--work", "--results"):
        r.add_argument(opt, required=True)
    r.add_argument("--mpnet", help="all-mpnet-base-v2 (unpacked); without it, the runs that need no mpnet")
    r.add_argument("--spam", help="the SMS spam split (train.tsv, validation.tsv), for the spam runs")
    r.add_argument("--only", help="comma-separated runs (their teachers are added)")
    r.add_argument("--deadline-s", type=float, default=900, help="stop runs still going after this many seconds")
    r.add_argument("--min-left-s", type=float, default=300, help="start no run with less time than this left")
    r.add_argument("--parallel", type=int, default=5)
    r.add_argument("--device", default="cuda")
    r.add_argument("--steps", type=int, help="students train this many steps (a smoke test of the runner)")
    r.add_argument("--teacher-epochs", type=float, help="override the teachers' epochs (a smoke test)")
    args = ap.parse_args()
    if args.cmd == "pack":
        pack(args.src, args.out, args.bits, args.vocab_of, args.part_mib)
    elif args.cmd == "unpack":
        unpack(args.folders, args.out)
    else:
        Runner(args).run()


if __name__ == "__main__":
    main()
