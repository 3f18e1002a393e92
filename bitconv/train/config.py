"""`RecoverConfig`: every option that changes the trained weights, frozen, versioned and serialisable to JSON.

The quantization options are a `QuantConfig` (the one `convert` takes), so `--bits`, `--granularity`,
`--keep-outliers 0.1%` and the rest read the same in `recover` as in `convert`. A checkpoint is resumed
only under an equal config (bitconv.train.checkpoints compares their dicts).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from bitconv.errors import OptionError
from bitconv.format.vocab import BITS_TO_SCHEME
from bitconv.quantize.config import QuantConfig, check_config_version, parse_bits

CONFIG_VERSION = 1
TASKS = ("classify", "image-classify", "lm")
CLASSIFY_TASKS = ("classify", "image-classify")
PRECISIONS = ("fp32", "bf16")
# widths the trainer can train towards, and the intermediate steps of a progressive schedule
TRAINABLE_BITS = (1.58, 1.0, 2.0, 4.0, 8.0)
# options left at None take their task's default: the recipes measured best (docs/recovery.md). classify: the
# SST-2 winner of issue 15 (held-out dev split, 2026-12-01, H200), distillation with hidden-state and attention-map
# matching and 2 teacher-labelled edited copies of each text, at lr 2e-4 and batch 64; image-classify keeps the plain recipe
# (nothing was measured on images)
TASK_DEFAULTS = {
    "classify": {"distill": True, "distill_weight": 0.5, "temperature": 2.0, "hidden_weight": 1.0,
                 "attention_weight": 1.0, "augment": 2, "batch_size": 64, "lr": 2e-4, "precision": "fp32"},
    "image-classify": {"distill": False, "distill_weight": 0.5, "temperature": 2.0, "hidden_weight": 0.0,
                       "attention_weight": 0.0, "augment": 0, "batch_size": 32, "lr": 1e-4, "precision": "fp32"},
    "lm": {"distill": True, "distill_weight": 1.0, "temperature": 1.0, "hidden_weight": 0.0, "attention_weight": 0.0,
           "augment": 0, "batch_size": 64, "lr": 1e-3, "precision": "bf16"},
}
# what only a distilling run uses: left at None under --no-distill it is off, so --no-distill alone is valid
TEACHER_OPTIONS = ("hidden_weight", "attention_weight", "augment")


@dataclass(frozen=True)
class RecoverConfig:
    """The recipe of one `recover` run (data sources, devices and output paths are arguments, not options here)."""

    task: str = "classify"
    quant: QuantConfig = field(default_factory=QuantConfig)  # what the folder stores, as `convert` takes it
    super_weights: int = 0  # how many super weights to find and keep in fp16 (0: none)
    # distillation from the full-precision teacher
    distill: bool | None = None
    teacher: str | None = None  # fp fine-tuned classifier folder; None: fine-tune one first (classify)
    temperature: float | None = None
    distill_weight: float | None = None  # share of the KL term; the rest is the task loss
    hidden_weight: float | None = None  # weight of the hidden-state matching loss
    attention_weight: float | None = None  # weight of the attention-map KL (classification; same-architecture teacher)
    logits_teacher: str | None = None  # classification: another (larger) teacher for the logits and the augmented texts
    augment: int | None = None  # classify + distill: teacher-labelled edited variants per training text
    # quantization schedule
    quant_warmup_steps: int = 0  # blend w = (1 - lam) w + lam q(w), lam 0 -> 1 over these steps
    learn_scales: bool = False  # ternary: train each unit's scale (LSQ) instead of recomputing its absmean
    progressive: tuple[float, ...] = ()  # bits trained before the target, e.g. (8, 4, 2)
    phase_steps: int = 0  # steps per progressive phase
    # optimisation
    steps: int | None = None
    epochs: float | None = None  # None: 1, or DEFAULT_TRAIN_EPOCHS on lm's default teacher data (tasks.py)
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float = 0.0
    lr_warmup: float = 0.05  # fraction of steps
    init: str = "teacher"  # classify + distill: start the student from the teacher ("teacher") or the source
    teacher_epochs: float = 1.0
    teacher_lr: float = 5e-5
    max_length: int = 128  # classify: tokens per text
    seq_len: int = 1024  # lm: tokens per block
    eval_fraction: float = 0.05  # lm without --eval: the held-out tail of the training text
    eval_tokens: int = 200_000  # lm: at most this many held-out tokens are scored
    precision: str | None = None  # fp32 | bf16 (autocast, CUDA only: CPU runs stay fp32)
    seed: int = 0
    text_column: str | None = None
    label_column: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise OptionError(f"unknown --task {self.task!r}: use {', '.join(TASKS)}")
        defaults = TASK_DEFAULTS[self.task]
        if self.distill is None:
            object.__setattr__(self, "distill", defaults["distill"])
        for name, value in defaults.items():
            if getattr(self, name) is None:
                off = name in TEACHER_OPTIONS and not self.distill
                object.__setattr__(self, name, type(value)(0) if off else value)
        if not isinstance(self.quant, QuantConfig):
            raise OptionError(f"quant must be a QuantConfig, not {type(self.quant).__name__}")
        if self.quant.bits not in TRAINABLE_BITS:
            raise OptionError(f"--bits {self.quant.bits:g}: recover trains 1.58, 1, 2, 4 or 8 bits, not "
                              f"{BITS_TO_SCHEME[self.quant.bits]}")
        prog = tuple(parse_bits(b) for b in self.progressive)
        for b in prog:
            if b not in TRAINABLE_BITS:
                raise OptionError(f"--progressive: {b:g} bits cannot be trained; use steps from 8, 4, 2")
        object.__setattr__(self, "progressive", prog)
        if prog and self.phase_steps < 1:
            raise OptionError("--progressive needs --phase-steps N (training steps spent at each width)")
        if self.precision not in PRECISIONS:
            raise OptionError(f"unknown --precision {self.precision!r}: use fp32 or bf16")
        if self.init not in ("teacher", "source"):
            raise OptionError(f"unknown --init {self.init!r}: use teacher or source")
        if not 0 <= self.distill_weight <= 1:
            raise OptionError(f"--distill-weight {self.distill_weight}: must be between 0 and 1")
        if self.hidden_weight < 0 or self.attention_weight < 0 or self.augment < 0:
            raise OptionError("--hidden-weight, --attention-weight and --augment must be 0 (off) or more")
        if (self.augment or self.logits_teacher or self.attention_weight) and not self.distill:
            raise OptionError("--augment, --logits-teacher and --attention-weight distil from a teacher: add --distill")
        if (self.augment or self.logits_teacher or self.attention_weight) and self.task not in CLASSIFY_TASKS:
            raise OptionError("--augment, --logits-teacher and --attention-weight apply to classification tasks")
        if self.augment and self.task != "classify":
            raise OptionError("--augment edits texts: it applies to --task classify")
        if self.temperature <= 0:
            raise OptionError(f"--temperature {self.temperature}: must be positive")
        if (self.batch_size < 1 or (self.steps is not None and self.steps < 1)
                or (self.epochs is not None and self.epochs <= 0)):
            raise OptionError("--batch-size, --steps and --epochs must be positive")
        if not 0 < self.eval_fraction < 1:
            raise OptionError(f"--eval-fraction {self.eval_fraction}: must be between 0 and 1")
        if self.learn_scales and (self.quant.scheme != "ternary" or self.quant.scale_method != "absmean"
                                  or self.quant.keep_outliers > 0 or self.super_weights or prog):
            raise OptionError("--learn-scales trains ternary absmean scales: use it with --bits 1.58 and --scale "
                              "absmean, without --keep-outliers, --super-weights or --progressive")
        if self.seq_len < 2 or self.max_length < 2:
            raise OptionError("--seq-len and --max-length must be at least 2 tokens")

    def quant_config(self, bits: float | None = None) -> QuantConfig:
        """The target's convert options, or the scheme defaults of an intermediate (progressive) width."""
        if bits is None or bits == self.quant.bits:
            return self.quant
        return QuantConfig.for_bits(bits, activations=self.quant.activations)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["quant"] = self.quant.to_dict()
        d["progressive"] = list(self.progressive)
        d["config_version"] = CONFIG_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RecoverConfig":
        """The config a `to_dict` wrote (recovery.json's recipe); a newer config_version is an error."""
        check_config_version(d, CONFIG_VERSION, "recovery options")
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        values["quant"] = QuantConfig.from_dict(d.get("quant", {}))
        values["progressive"] = tuple(values.get("progressive", ()))
        return cls(**values)

    def with_(self, **changes) -> "RecoverConfig":
        return replace(self, **changes)
