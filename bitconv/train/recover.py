"""`bitconv recover`: quantization-aware training that brings a ternary model's accuracy back.

The pipeline, one way:
    source model (fp) --> [fp fine-tuned teacher, classification only] --> latent fp student
    --> fake-quantized training (straight-through estimator; optional distillation from the teacher,
        warm-up blend, progressive bit schedule, int8 activations, fp16 super weights)
    --> latent weights saved as an ordinary Hugging Face checkpoint --> bitconv.convert --> output folder.
Training sees `schemes.fake_quantize` with the same QuantConfig and the same tensor plan as `convert`,
so the converted folder computes what the last training step computed; `recovery.json` in the output
records the recipe and the metrics before training, after training and after conversion.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bitconv.data.files import Examples
from bitconv.errors import BitconvError
from bitconv.format.atomic import write_json_atomic
from bitconv.format.vocab import BITS_TO_SCHEME
from bitconv.quantize.config import QuantConfig, parse_bits, parse_granularity
from bitconv.train import qat
from bitconv.train.data import class_ids, label_names, read_labelled, read_training_text, token_blocks

TASKS = ("classify", "lm")
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class RecoverConfig:
    """Every option that changes the trained weights (a checkpoint is only resumed under the same one)."""

    task: str = "classify"
    bits: float = 1.58
    granularity: str = "tensor"
    scale_method: str = "absmean"
    activations: str = "none"
    keep_outliers: float = 0.0
    super_weights: int = 0  # how many super weights to find and keep in fp16 (0: none)
    # distillation from the full-precision teacher
    distill: bool = False
    teacher: str | None = None  # fp fine-tuned classifier folder; None: fine-tune one first (classify)
    temperature: float = 2.0
    distill_weight: float = 0.5  # share of the KL term; the rest is the task loss
    hidden_weight: float = 0.0  # weight of the hidden-state matching loss
    # quantization schedule
    quant_warmup_steps: int = 0  # blend w = (1 - lam) w + lam q(w), lam 0 -> 1 over these steps
    progressive: tuple[float, ...] = ()  # bits trained before the target, e.g. (8, 4, 2)
    phase_steps: int = 0  # steps per progressive phase
    # optimisation
    steps: int | None = None
    epochs: float = 1.0
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    lr_warmup: float = 0.05  # fraction of steps
    init: str = "teacher"  # classify + distill: start the student from the teacher ("teacher") or the source
    teacher_epochs: float = 1.0
    teacher_lr: float = 5e-5
    max_length: int = 128  # classify: tokens per text
    seq_len: int = 256  # lm: tokens per block
    eval_fraction: float = 0.05  # lm without --eval: the held-out tail of the training text
    eval_tokens: int = 200_000  # lm: at most this many held-out tokens are scored
    precision: str = "fp32"  # fp32 | bf16 (autocast, CUDA)
    seed: int = 0
    text_column: str | None = None
    label_column: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise BitconvError(f"unknown --task {self.task!r}: use classify or lm")
        bits = parse_bits(self.bits)
        if bits not in qat.TRAINABLE_BITS:
            raise BitconvError(f"--bits {self.bits}: recover trains 1.58, 1, 2, 4 or 8 bits, not {BITS_TO_SCHEME[bits]}")
        object.__setattr__(self, "bits", bits)
        prog = tuple(parse_bits(b) for b in self.progressive)
        for b in prog:
            if b not in qat.TRAINABLE_BITS:
                raise BitconvError(f"--progressive: {b} bits cannot be trained; use steps from 8, 4, 2")
        object.__setattr__(self, "progressive", prog)
        if prog and self.phase_steps < 1:
            raise BitconvError("--progressive needs --phase-steps N (training steps spent at each width)")
        parse_granularity(self.granularity)
        if self.precision not in ("fp32", "bf16"):
            raise BitconvError(f"unknown --precision {self.precision!r}: use fp32 or bf16")
        if self.init not in ("teacher", "source"):
            raise BitconvError(f"unknown --init {self.init!r}: use teacher or source")
        if not 0 <= self.distill_weight <= 1:
            raise BitconvError(f"--distill-weight {self.distill_weight}: must be between 0 and 1")
        if self.temperature <= 0:
            raise BitconvError(f"--temperature {self.temperature}: must be positive")
        if self.batch_size < 1 or (self.steps is not None and self.steps < 1) or self.epochs <= 0:
            raise BitconvError("--batch-size, --steps and --epochs must be positive")

    def quant_config(self, bits: float | None = None) -> QuantConfig:
        """The convert options for the target width, or the scheme defaults of an intermediate width."""
        if bits is None or bits == self.bits:
            return QuantConfig.for_bits(self.bits, self.granularity, scale_method=self.scale_method,
                                        keep_outliers=self.keep_outliers, activations=self.activations)
        return QuantConfig.for_bits(bits, activations=self.activations)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["progressive"] = list(self.progressive)
        return d


@dataclass
class RecoverResult:
    out: Path
    metrics: dict = field(default_factory=dict)  # also in out/recovery.json
    timings: dict = field(default_factory=dict)  # wall clock and throughput per phase (not in the folder)


# ---------------------------------------------------------------------------------------------------------
# devices, processes, seeds


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    owns_process_group: bool = False  # started here, so torn down here

    @property
    def main(self) -> bool:
        return self.rank == 0


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BitconvError(f"--device {name}: no CUDA GPU is visible to torch here; use --device cpu")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise BitconvError(f"unknown --device {name!r}: use auto, cpu or cuda")


def start_runtime(device: str) -> Runtime:
    """One process, or one of several started by torchrun (data parallel: gloo on CPU, NCCL on CUDA)."""
    dev = pick_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Runtime(dev)
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Runtime(dev, rank, world, owns)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _all_reduce_mean(value: torch.Tensor, rt: Runtime) -> torch.Tensor:
    if rt.world == 1:
        return value
    import torch.distributed as dist

    value = value.detach().clone()
    dist.all_reduce(value)
    return value / rt.world


# ---------------------------------------------------------------------------------------------------------
# models


def _resolve_source(source: str) -> tuple[str, str | None]:
    """-> (folder with config/tokenizer, gguf file name or None)."""
    path = Path(source)
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), path.name
    if path.is_dir():
        from bitconv.format.reader import is_bitconv_folder

        if is_bitconv_folder(path):
            origin = json.loads((path / "config.json").read_text()).get("quantization_config", {}).get("source")
            raise BitconvError(f"{path} is already a bitconv folder; recover trains from the full-precision model "
                               f"it was converted from ({origin}): pass that instead")
        return str(path), None
    from bitconv.quantize.source import open_source

    src = open_source(source)
    gguf = getattr(src, "gguf_file", None)
    return str(src.folder), (Path(gguf).name if gguf else None)


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    folder, gguf = _resolve_source(source)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf) if gguf else AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def load_model(source: str, task: str, labels: list[str] | None = None) -> nn.Module:
    """The source in full precision with the head the task needs (a new classifier where it has none)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    folder, gguf = _resolve_source(source)
    kwargs: dict = {"dtype": torch.float32}
    if gguf:
        kwargs["gguf_file"] = gguf
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # our own bar is the one that matters  # "newly initialized classifier" is expected here, not a warning
    try:
        if task == "classify":
            model = AutoModelForSequenceClassification.from_pretrained(
                folder, num_labels=len(labels), id2label=dict(enumerate(labels)),
                label2id={name: i for i, name in enumerate(labels)}, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as exc:
        raise BitconvError(f"{source}: cannot load it as a {task} model ({str(exc).splitlines()[0]})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if gguf:
        _forget_gguf_quantization(model)
    if task == "classify" and model.config.pad_token_id is None:
        model.config.pad_token_id = 0
    return model


def _forget_gguf_quantization(model: nn.Module) -> None:
    """transformers dequantizes a GGUF into float weights but keeps it marked as quantized, which stops
    save_pretrained; the trained latent weights are ordinary floats, so drop the marks."""
    for attr, value in (("hf_quantizer", None), ("is_quantized", False), ("quantization_method", None)):
        if attr in vars(model):
            setattr(model, attr, value)
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")


def quantized_weight_names(model: nn.Module, cfg: QuantConfig) -> set[str]:
    """The weights `convert` quantizes, by its own plan, so training and conversion agree."""
    from bitconv.quantize.plan import make_plan
    from bitconv.quantize.source import module_kinds

    config = model.config
    # convert reads the saved checkpoint, whose config names this model's own class
    config.architectures = [type(model).__name__]
    kinds, prefix = module_kinds(config)
    rows = [(name, tuple(t.shape), str(t.dtype).replace("torch.", "")) for name, t in model.state_dict().items()]
    return {row.name for row in make_plan(rows, cfg, kinds, prefix).quantized}


# ---------------------------------------------------------------------------------------------------------
# data


@dataclass
class ClassifyData:
    labels: list[str]
    train_ids: list[list[int]]
    train_y: torch.Tensor
    eval_ids: list[list[int]]
    eval_y: torch.Tensor
    positive: str | None  # the label whose F1 is reported (the minority of a two-label task)
    train_sha256: str
    eval_sha256: str


def prepare_classify(train: Path, eval_path: Path | None, tok, cfg: RecoverConfig) -> ClassifyData:
    tr = read_labelled(train, cfg.text_column, cfg.label_column)
    labels = label_names(tr)
    if eval_path is None:
        raise BitconvError("--task classify needs --eval FILE (held-out text<TAB>label rows) to measure accuracy")
    ev = read_labelled(eval_path, cfg.text_column, cfg.label_column)
    train_y, eval_y = class_ids(tr, labels), class_ids(ev, labels)

    def encode(data: Examples) -> list[list[int]]:
        return tok(data.texts, truncation=True, max_length=cfg.max_length)["input_ids"]

    positive = None
    if len(labels) == 2:
        counts = [train_y.count(0), train_y.count(1)]
        positive = labels[1] if counts[1] <= counts[0] else labels[0]
    return ClassifyData(labels, encode(tr), torch.tensor(train_y), encode(ev), torch.tensor(eval_y), positive,
                        tr.file_sha256, ev.file_sha256)


def _pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


@dataclass
class LMData:
    train_blocks: torch.Tensor
    eval_blocks: torch.Tensor
    n_train_tokens: int
    n_eval_tokens: int
    train_sha256: str
    eval_sha256: str | None  # None: held out from the training text


def _tokenize_long(tok, text: str) -> list[int]:
    ids: list[int] = []
    lines = text.splitlines(keepends=True)
    for i in range(0, len(lines), 2000):  # chunks keep the tokenizer's max-length warning quiet and memory flat
        ids.extend(tok("".join(lines[i : i + 2000]), add_special_tokens=False, verbose=False)["input_ids"])
    return ids


def prepare_lm(train: Path, eval_path: Path | None, tok, cfg: RecoverConfig) -> LMData:
    text, train_sha = read_training_text(train)
    ids = _tokenize_long(tok, text)
    eval_sha = None
    if eval_path is not None:
        eval_text, eval_sha = read_training_text(eval_path)
        train_ids, eval_ids = ids, _tokenize_long(tok, eval_text)
        eval_src = Path(eval_path)
    else:
        if not 0 < cfg.eval_fraction < 1:
            raise BitconvError(f"--eval-fraction {cfg.eval_fraction}: must be between 0 and 1")
        cut = int(len(ids) * (1 - cfg.eval_fraction))
        train_ids, eval_ids = ids[:cut], ids[cut:]
        eval_src = Path(train)
    train_blocks = token_blocks(train_ids, cfg.seq_len, Path(train))
    eval_blocks = token_blocks(eval_ids, cfg.seq_len, eval_src)
    eval_blocks = eval_blocks[: max(1, cfg.eval_tokens // cfg.seq_len)]
    return LMData(train_blocks, eval_blocks, len(train_ids), eval_blocks.numel(), train_sha, eval_sha)


# ---------------------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate_classifier(model: nn.Module, data: ClassifyData, pad_id: int, device: torch.device,
                        batch_size: int = 128) -> dict:
    model.eval()
    # batches of similar length waste little on padding; predictions go back to file order
    order = sorted(range(len(data.eval_ids)), key=lambda i: len(data.eval_ids[i]))
    pred = torch.empty(len(order), dtype=torch.long)
    for i in range(0, len(order), batch_size):
        chunk = order[i : i + batch_size]
        ids, mask = _pad([data.eval_ids[j] for j in chunk], pad_id)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        pred[chunk] = logits.argmax(-1).cpu()
    y = data.eval_y
    metrics = {"accuracy": float((pred == y).float().mean()), "n_eval": int(y.numel())}
    f1 = {}
    for k, name in enumerate(data.labels):
        tp = int(((pred == k) & (y == k)).sum())
        fp = int(((pred == k) & (y != k)).sum())
        fn = int(((pred != k) & (y == k)).sum())
        f1[name] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    metrics["f1"] = f1
    if data.positive is not None:
        metrics["positive_label"] = data.positive
        metrics["positive_f1"] = f1[data.positive]
    return metrics


@torch.no_grad()
def evaluate_lm(model: nn.Module, data: LMData, device: torch.device, batch_size: int = 8) -> dict:
    model.eval()
    nll, count = 0.0, 0
    for i in range(0, data.eval_blocks.shape[0], batch_size):
        ids = data.eval_blocks[i : i + batch_size].to(device)
        logits = model(input_ids=ids).logits.float()
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
        nll += float(loss)
        count += ids[:, 1:].numel()
    mean = nll / count
    return {"perplexity": math.exp(mean) if mean < 700 else math.inf, "nll": mean, "n_eval_tokens": count}


def headline(metrics: dict) -> str:
    if "perplexity" in metrics:
        return f"perplexity {metrics['perplexity']:.2f}"
    text = f"accuracy {100 * metrics['accuracy']:.2f}%"
    if "positive_f1" in metrics:
        text += f", {metrics['positive_label']} F1 {metrics['positive_f1']:.4f}"
    return text


# ---------------------------------------------------------------------------------------------------------
# losses


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened distributions, times T^2 (Hinton et al. 2015)."""
    t = temperature
    s_log = F.log_softmax(student_logits.float() / t, dim=-1)
    t_log = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = (t_log.exp() * (t_log - s_log)).sum(-1).mean()
    return kl * t * t


def hidden_state_loss(student_hidden, teacher_hidden, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over layers of MSE between hidden states, each normalised by the teacher's mean square."""
    losses = []
    for s, t in zip(student_hidden, teacher_hidden):
        s, t = s.float(), t.float()
        if mask is not None:
            m = mask.unsqueeze(-1).to(s.dtype)
            err = (((s - t) ** 2) * m).sum() / (m.sum() * s.shape[-1])
            norm = ((t**2) * m).sum() / (m.sum() * s.shape[-1])
        else:
            err, norm = ((s - t) ** 2).mean(), (t**2).mean()
        losses.append(err / norm.clamp(min=1e-6))
    return torch.stack(losses).mean()


# ---------------------------------------------------------------------------------------------------------
# schedules


def quant_phase(cfg: RecoverConfig, step: int) -> tuple[float, float]:
    """(bits, blend) at a step: progressive phases first, then the target; blend ramps over the warm-up."""
    bits = cfg.bits
    if cfg.progressive and step < len(cfg.progressive) * cfg.phase_steps:
        bits = cfg.progressive[step // cfg.phase_steps]
    blend = 1.0 if cfg.quant_warmup_steps <= 0 else min(1.0, step / cfg.quant_warmup_steps)
    return bits, blend


def lr_factor(step: int, total: int, warmup_fraction: float) -> float:
    warm = max(1, int(total * warmup_fraction))
    if step < warm:
        return (step + 1) / warm
    return max(0.0, (total - step) / max(1, total - warm))


# ---------------------------------------------------------------------------------------------------------
# checkpoints


def fingerprint(cfg: RecoverConfig, source: str, data: ClassifyData | LMData, world: int) -> dict:
    """What a checkpoint is resumed under: the options, the source, the data files' SHA-256 and the world size."""
    return {"config": cfg.to_dict(), "source": str(source), "train": data.train_sha256, "eval": data.eval_sha256,
            "world_size": world, "checkpoint_version": CHECKPOINT_VERSION}


def _differences(a: dict, b: dict) -> list[str]:
    diff = []
    for key in sorted(set(a) | set(b)):
        if key == "config":
            diff += [k for k in sorted(set(a[key]) | set(b.get(key, {}))) if a[key].get(k) != b.get(key, {}).get(k)]
        elif a.get(key) != b.get(key):
            diff.append(key)
    return diff


def save_checkpoint(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".partial")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, expected: dict) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file: say which and what to do
        raise BitconvError(f"{path}: cannot read the checkpoint ({type(exc).__name__}); delete it to start afresh") from None
    found = state.get("fingerprint", {})
    if found != expected:
        diff = ", ".join(_differences(expected, found)) or "format"
        raise BitconvError(
            f"{path}: checkpoint from a different configuration (differs in: {diff}); "
            "rerun with the same options or use a new --checkpoint-dir"
        )
    return state


# ---------------------------------------------------------------------------------------------------------
# training


class Batches:
    """Deterministic shuffled batches: the order depends on (seed, epoch) only, so a resumed run continues it."""

    def __init__(self, n: int, batch_size: int, seed: int, rt: Runtime):
        self.n, self.batch_size, self.seed, self.rt = n, batch_size, seed, rt
        self.global_batch = batch_size * rt.world
        self.per_epoch = max(1, n // self.global_batch)

    def indices(self, step: int) -> torch.Tensor:
        epoch, pos = divmod(step, self.per_epoch)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.n, generator=g)
        if self.n < self.global_batch:  # tiny data: repeat it
            perm = perm.repeat(-(-self.global_batch // self.n))
        start = pos * self.global_batch + self.rt.rank * self.batch_size
        return perm[start : start + self.batch_size]


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0  # samples (classify) or tokens (lm) seen
    seconds: float = 0.0  # wall clock of this process's steps (not of resumed ones)
    rate: float = 0.0


def _make_progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:,.0f} {task.fields[unit]}/s"),
        TimeRemainingColumn(), disable=not enabled,
    )


def _autocast(cfg: RecoverConfig, device: torch.device):
    if cfg.precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_model(
    model: nn.Module,
    *,
    cfg: RecoverConfig,
    rt: Runtime,
    task: str,
    data,
    pad_id: int,
    total_steps: int,
    lr: float,
    teacher: nn.Module | None = None,
    attached: list[qat.QuantizedModule] | None = None,
    checkpoint: Path | None = None,
    fp: dict | None = None,
    resume_state: dict | None = None,
    save_every: int = 500,
    progress: bool = True,
    label: str = "recover",
    log: list | None = None,
) -> TrainState:
    """Train `model` in place (fake-quantized if `attached`); checkpoints to `checkpoint` every `save_every`."""
    device = rt.device
    wrapped = model
    if rt.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total_steps, cfg.lr_warmup))
    state = TrainState()
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        opt.load_state_dict(resume_state["optimizer"])
        sched.load_state_dict(resume_state["scheduler"])
        state = TrainState(resume_state["step"], resume_state["tokens"])
        torch.set_rng_state(resume_state["rng_cpu"])
        if device.type == "cuda" and resume_state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(resume_state["rng_cuda"], device)
    n_items = len(data.train_ids) if task == "classify" else data.train_blocks.shape[0]
    batches = Batches(n_items, cfg.batch_size, cfg.seed, rt)
    use_hidden = teacher is not None and cfg.hidden_weight > 0
    unit = "samples" if task == "classify" else "tokens"

    def save(step_done: int) -> None:
        if checkpoint is None or not rt.main:
            return
        save_checkpoint(checkpoint, {
            "fingerprint": fp, "step": step_done, "tokens": state.tokens, "model": model.state_dict(),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        })

    last_saved = state.step if resume_state is not None else None
    model.train()
    with _make_progress(progress and rt.main) as bar:
        task_id = bar.add_task(label, total=total_steps, completed=state.step, loss=float("nan"), rate=0.0, unit=unit)
        t0, items0, ema = time.perf_counter(), 0, None
        for step in range(state.step, total_steps):
            if attached:
                bits, blend = quant_phase(cfg, step)
                qat.set_quantization(attached, cfg.quant_config(bits), blend)
            idx = batches.indices(step)
            try:
                loss, n_items_step = _step_loss(wrapped, teacher, task, data, idx, pad_id, cfg, device, use_hidden)
            except BitconvError as exc:  # the quantizer refuses non-finite weights: training diverged
                raise _diverged(step, checkpoint, last_saved, str(exc)) from None
            shown = float(_all_reduce_mean(loss.detach(), rt))
            if not math.isfinite(shown):
                raise _diverged(step, checkpoint, last_saved, f"loss {shown}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            state.step, state.tokens = step + 1, state.tokens + n_items_step * rt.world
            items0 += n_items_step * rt.world
            ema = shown if ema is None else 0.98 * ema + 0.02 * shown
            rate = items0 / max(1e-9, time.perf_counter() - t0)
            bar.update(task_id, completed=state.step, loss=ema, rate=rate)
            if log is not None and (state.step % 50 == 0 or state.step == total_steps):
                # no timings here: the log goes into recovery.json, which must not change from run to run
                log.append({"phase": label, "step": state.step, "loss": round(ema, 6), "lr": sched.get_last_lr()[0]})
            if save_every and state.step % save_every == 0 and state.step < total_steps:
                save(state.step)
                last_saved = state.step
    state.seconds = time.perf_counter() - t0
    state.rate = items0 / max(1e-9, state.seconds)
    save(state.step)
    model.eval()
    return state


def _diverged(step: int, checkpoint: Path | None, last_saved: int | None, detail: str) -> BitconvError:
    kept = (f"the last good checkpoint ({checkpoint}, step {last_saved}) is kept"
            if checkpoint is not None and last_saved is not None else "no checkpoint had been written yet")
    return BitconvError(f"training diverged at step {step + 1} ({detail}); {kept}; lower --lr and rerun with --force")


def _step_loss(model, teacher, task, data, idx, pad_id, cfg: RecoverConfig, device, use_hidden):
    if task == "classify":
        ids, mask = _pad([data.train_ids[i] for i in idx.tolist()], pad_id)
        ids, mask, y = ids.to(device), mask.to(device), data.train_y[idx].to(device)
        inputs = {"input_ids": ids, "attention_mask": mask}
        n_items = ids.shape[0]
    else:
        ids = data.train_blocks[idx].to(device)
        inputs, mask = {"input_ids": ids}, None
        n_items = ids.numel()
    with _autocast(cfg, device):
        out = model(**inputs, output_hidden_states=use_hidden)
        logits = out.logits
        if task == "classify":
            task_loss = F.cross_entropy(logits.float(), y)
        else:
            task_loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        if teacher is None:
            return task_loss, n_items
        with torch.no_grad():
            t_out = teacher(**inputs, output_hidden_states=use_hidden)
        t_logits = t_out.logits
        if task == "lm":
            kd = distillation_kl(logits.reshape(-1, logits.shape[-1]), t_logits.reshape(-1, t_logits.shape[-1]),
                                 cfg.temperature)
        else:
            kd = distillation_kl(logits, t_logits, cfg.temperature)
        loss = cfg.distill_weight * kd + (1 - cfg.distill_weight) * task_loss
        if use_hidden:
            loss = loss + cfg.hidden_weight * hidden_state_loss(out.hidden_states, t_out.hidden_states, mask)
    return loss, n_items


def calibration_batches(task: str, data, pad_id: int, device: torch.device, n_batches: int = 8,
                        batch_size: int = 16) -> list[dict]:
    """The first training examples, in file order (deterministic), as model inputs."""
    batches = []
    for b in range(n_batches):
        lo = b * batch_size
        if task == "classify":
            seqs = data.train_ids[lo : lo + batch_size]
            if not seqs:
                break
            ids, mask = _pad(seqs, pad_id)
            batches.append({"input_ids": ids.to(device), "attention_mask": mask.to(device)})
        else:
            blocks = data.train_blocks[lo : lo + batch_size]
            if not blocks.numel():
                break
            batches.append({"input_ids": blocks.to(device)})
    return batches


def steps_for(cfg: RecoverConfig, n_items: int, world: int, epochs: float | None = None) -> int:
    if cfg.steps is not None and epochs is None:
        return cfg.steps
    per_epoch = max(1, n_items // (cfg.batch_size * world))
    return max(1, int(round(per_epoch * (cfg.epochs if epochs is None else epochs))))


# ---------------------------------------------------------------------------------------------------------
# the pipeline


def recover(
    source: str,
    out: str | Path,
    *,
    train: str | Path,
    eval: str | Path | None = None,
    config: RecoverConfig | None = None,
    device: str = "auto",
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    save_every: int = 500,
    progress: bool = True,
) -> RecoverResult:
    """Train a quantized model back to accuracy and write it as a bitconv folder at `out`.

    Under torchrun (WORLD_SIZE > 1) every process calls this; rank 0 writes the folder and gets the
    metrics, the others return an empty result.
    """
    rt = start_runtime(device)
    try:
        return _recover(source, Path(out), Path(train), Path(eval) if eval is not None else None,
                        config or RecoverConfig(), rt, checkpoint_dir, resume, force, save_every, progress)
    finally:
        if rt.owns_process_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _recover(source: str, out: Path, train_path: Path, eval_path: Path | None, cfg: RecoverConfig, rt: Runtime,
             checkpoint_dir, resume: bool, force: bool, save_every: int, progress: bool) -> RecoverResult:
    if out.exists() and not force:
        raise BitconvError(f"{out} already exists; pass --force to replace it or choose another --out")
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else out.with_name(out.name + ".ckpt")
    ckpt = ckpt_dir / "state.pt"
    if ckpt.exists() and not resume and not force:
        raise BitconvError(f"{ckpt} exists from an earlier run; pass --resume to continue it or --force to start afresh")
    seed_everything(cfg.seed)
    if rt.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    tok = load_tokenizer(source)
    pad_id = tok.pad_token_id
    if cfg.task == "classify":
        data = prepare_classify(train_path, eval_path, tok, cfg)
        labels, n_items = data.labels, len(data.train_ids)
        evaluate = lambda m: evaluate_classifier(m, data, pad_id, rt.device)  # noqa: E731
    else:
        data = prepare_lm(train_path, eval_path, tok, cfg)
        labels, n_items = None, data.train_blocks.shape[0]
        evaluate = lambda m: evaluate_lm(m, data, rt.device)  # noqa: E731
    fp = fingerprint(cfg, source, data, rt.world)
    resume_state = load_checkpoint(ckpt, fp) if resume and ckpt.exists() else None
    if rt.main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    log: list[dict] = []
    timings: dict = {}
    unit = "samples" if cfg.task == "classify" else "tokens"
    metrics: dict = {"task": cfg.task, "source": str(source), "train": str(train_path),
                     "eval": str(eval_path) if eval_path else f"last {cfg.eval_fraction:.0%} of {train_path}"}

    model = load_model(source, cfg.task, labels).to(rt.device)
    teacher = None
    if cfg.distill or (cfg.task == "classify" and cfg.teacher):
        teacher = _prepare_teacher(source, cfg, rt, data, pad_id, labels, ckpt_dir, fp, n_items, progress, log, timings)
        metrics["teacher"] = evaluate(teacher)
        if cfg.task == "classify" and cfg.init == "teacher":
            model.load_state_dict(teacher.state_dict())
        if not cfg.distill:
            teacher = None  # a teacher given only to start from
    if cfg.task == "lm":
        metrics["original"] = metrics.get("teacher") or evaluate(model)
    qcfg = cfg.quant_config()
    names = quantized_weight_names(model, qcfg)
    outliers = {}
    if cfg.super_weights:
        from bitconv.train import super_weights as sw

        found = sw.find_super_weights(model, calibration_batches(cfg.task, data, pad_id, rt.device),
                                      cfg.super_weights, candidates=names)
        outliers = sw.as_outlier_indices(found, sw.linear_shapes(model, {f.tensor for f in found}))
        metrics["super_weights"] = [f.to_dict() for f in found]
        with sw.zeroed(model, found):  # what they carry: the fp model with them set to zero
            metrics["fp_without_super_weights"] = evaluate(model)
    attached = qat.attach(model, names, qcfg, outliers)
    metrics["n_quantized_tensors"] = len(names)
    metrics["before"] = evaluate(model)
    total = steps_for(cfg, n_items, rt.world)
    state = train_model(model, cfg=cfg, rt=rt, task=cfg.task, data=data, pad_id=pad_id, total_steps=total, lr=cfg.lr,
                  teacher=teacher, attached=attached, checkpoint=ckpt, fp=fp, resume_state=resume_state,
                  save_every=save_every, progress=progress, label="recover", log=log)
    timings["recover"] = {"seconds": round(state.seconds, 1), unit + "_per_s": round(state.rate, 1),
                          "device": str(rt.device), "world_size": rt.world}
    qat.set_quantization(attached, qcfg, 1.0)
    metrics["after"] = evaluate(model)
    metrics["steps"] = state.step
    metrics["batch_size"] = cfg.batch_size * rt.world
    metrics["train_" + ("samples" if cfg.task == "classify" else "tokens")] = state.tokens
    if rt.world > 1:
        import torch.distributed as dist

        dist.barrier()
    if rt.main:
        qat.detach(model, attached)
        write_output(model, tok, source, out, cfg, outliers, metrics, log, force)
        from bitconv import load

        converted = load(out, dtype=torch.float32).to(rt.device)  # as trained, not the stored float16
        metrics["converted"] = evaluate(converted)
        _write_record(out, cfg, metrics, log)
    return RecoverResult(out, metrics if rt.main else {}, timings)


def _prepare_teacher(source, cfg: RecoverConfig, rt: Runtime, data, pad_id, labels, ckpt_dir: Path, fp: dict,
                     n_items: int, progress: bool, log: list, timings: dict) -> nn.Module:
    """The full-precision teacher: the source itself (lm), a given fine-tuned folder, or one fine-tuned here."""
    if cfg.task == "lm":
        teacher = load_model(source, "lm").to(rt.device)
    elif cfg.teacher:
        teacher = load_model(cfg.teacher, "classify", labels).to(rt.device)
    else:
        folder = ckpt_dir / "teacher"
        marker = folder / "teacher.json"
        if marker.exists() and json.loads(marker.read_text()).get("fingerprint") == fp:
            teacher = load_model(str(folder), "classify", labels).to(rt.device)
        else:
            teacher = load_model(source, "classify", labels).to(rt.device)
            steps = steps_for(cfg, n_items, rt.world, epochs=cfg.teacher_epochs)
            st = train_model(teacher, cfg=cfg, rt=rt, task="classify", data=data, pad_id=pad_id, total_steps=steps,
                             lr=cfg.teacher_lr, progress=progress, label="teacher (fp)", log=log)
            timings["teacher"] = {"seconds": round(st.seconds, 1), "samples_per_s": round(st.rate, 1)}
            if rt.main:
                teacher.save_pretrained(folder, safe_serialization=True)
                marker.write_text(json.dumps({"fingerprint": fp, "steps": steps}, indent=2, sort_keys=True))
            if rt.world > 1:
                import torch.distributed as dist

                dist.barrier()
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def write_output(model: nn.Module, tok, source: str, out: Path, cfg: RecoverConfig, outliers: dict,
                 metrics: dict, log: list, force: bool) -> None:
    """Latent weights -> temporary HF checkpoint -> bitconv.convert -> `out` (replaced atomically)."""
    from bitconv.quantize.convert import convert

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".bitconv-recover-", dir=out.parent) as tmp:
        # named after the source: convert records the checkpoint folder's name as the source
        latent = Path(tmp) / source_name(source)
        model.save_pretrained(latent, safe_serialization=True)
        tok.save_pretrained(latent)
        staged = Path(tmp) / "out"
        convert(str(latent), staged, cfg.quant_config(), progress=False,
                outliers={name: idx.cpu().tolist() for name, idx in outliers.items()} or None)
        card = staged / "README.md"
        card.write_text(card.read_text() + recovery_card(source, cfg, metrics))
        if out.exists():
            if not force:
                raise BitconvError(f"{out} appeared during training; pass --force to replace it")
            shutil.rmtree(out)
        os.replace(staged, out)


def source_name(source: str) -> str:
    path = Path(str(source))
    return path.stem if path.suffix == ".gguf" else path.name


def recovery_card(source: str, cfg: RecoverConfig, metrics: dict) -> str:
    lines = ["", "## Recovered by `bitconv recover`", "",
             f"Trained from `{source_name(source)}` with straight-through quantization-aware training"
             + (" and distillation from the full-precision teacher" if cfg.distill else "") + ".", "",
             "| model | result |", "|---|---|"]
    for key, label in (("original", "original (fp)"), ("teacher", "fp teacher"), ("before", "quantized, before training"),
                       ("after", "quantized, after training")):
        if key in metrics:
            lines.append(f"| {label} | {headline(metrics[key])} |")
    lines += ["", "Recipe and full metrics: `recovery.json`.", ""]
    return "\n".join(lines)


def _write_record(out: Path, cfg: RecoverConfig, metrics: dict, log: list) -> None:
    write_json_atomic(out / "recovery.json", {"recipe": cfg.to_dict(), "metrics": metrics, "log": log})
