"""What is trained: a task object owns its data, the model head it needs, the batch -> loss module, its teacher
and its evaluation (through bitconv.evaluate.metrics, the code `bitconv eval` runs, so recovery.json and
`bitconv eval` give the same number for the same model and data).

    ClassifyTask   labelled texts; a sequence-classification head (added where the source has none);
                   cross-entropy on the label; the teacher is a copy fine-tuned on the task, its logits (or a
                   second, larger teacher's) precomputed once as soft targets
    ImageClassifyTask  the same over labelled images (an image folder or a saved `datasets` split), for
                   ...ForImageClassification models such as ViT
    LMTask         text from any sources (bitconv.data), packed into blocks; the causal LM head; next-token
                   cross-entropy and KL to the teacher, computed chunk by chunk from the final hidden states;
                   the teacher is the original model, which can also write the training text (teacher:N)

The trainer (bitconv.train.trainer) and the pipeline (bitconv.train.pipeline) only call the methods below.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bitconv.data.files import TextSlice, read_examples, text_slice
from bitconv.data.sources import Documents, SourceSpec, documents, joined_text, parse_source
from bitconv.data.tokens import TokenBlocks, TokenCache, mix, token_stream
from bitconv.errors import DataError, OptionError
from bitconv.evaluate import metrics
from bitconv.evaluate.backends import module_backend
from bitconv.train.config import RecoverConfig
from bitconv.train.data import class_ids, label_names, read_labelled
from bitconv.train.losses import attention_loss, distillation_kl, hidden_state_loss, lm_head_loss, logits_loss
from bitconv.train.runtime import Runtime, autocast

EVAL_BATCH = {"classify": 128, "lm": 8}
DEFAULT_TEACHER_TOKENS = "30M"  # also `bitconv synth`'s default, so that it fills the cache entry recover then reads
# `recover MODEL --task lm` without --train: text the model writes itself
DEFAULT_TRAIN = f"teacher:{DEFAULT_TEACHER_TOKENS}"
# ... read this many times unless --epochs or --steps says otherwise: the run that met issue 11's target (SmolLM2-135M
# on one H200, docs/recovery.md "General English": 242 M trained tokens over 29.8 M generated, 8.1 passes, 2.96x the
# original's perplexity on held-out English in 24 minutes; 139 M over 22.4 M gave 3.4x). Passes are the cheaper way
# to more tokens: the loop trains 270k tokens/s, generation writes 62k.
DEFAULT_TRAIN_EPOCHS = 8.0
HEAD_CHUNK = 8192  # tokens per chunk of the LM head's loss


@dataclass
class Context:
    """What preparing data needs besides the options: the source model, processes, the token cache, output."""

    source: str
    rt: Runtime
    cache: TokenCache | None = None
    progress: bool = True
    say: Callable[[str], None] = print


@contextmanager
def _quiet_transformers():
    """transformers warns that a new classifier head is newly initialised: here that is the point."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def _pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device without making the host wait (pinned memory, asynchronous copy)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _single_source(paths: list, what: str, task: str) -> Path | None:
    if len(paths) > 1:
        raise OptionError(f"--task {task} takes one {what}, not {len(paths)}")
    return Path(paths[0]) if paths else None


def tokenizer_for(source: str):
    from bitconv.quantize.source import load_tokenizer

    tok = load_tokenizer(source)
    if tok.pad_token is None:  # batches of texts are padded; GPT-2 style tokenizers have no pad token
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


# ---------------------------------------------------------------------------------------------------------
# classification


def _label_names_of(source: str) -> list[str] | None:
    """The label names of a fine-tuned classifier (config.json id2label, by class id); None for a base model."""
    from bitconv.quantize.source import open_source

    config = open_source(source).config
    if not any(a.endswith(("ForSequenceClassification", "ForImageClassification"))
               for a in getattr(config, "architectures", None) or []):
        return None
    id2label = getattr(config, "id2label", None) or {}
    return [str(id2label[k]) for k in sorted(id2label, key=int)]


class ClassifyLoss(nn.Module):
    """Cross-entropy on the label; when distilling, mixed with the KL to the teacher's precomputed logits
    (`soft_logits`, in the batch), plus hidden-state and attention-map matching to the teacher when asked."""

    def __init__(self, model: nn.Module, teacher: nn.Module | None, cfg: RecoverConfig):
        super().__init__()
        self.model, self.cfg = model, cfg
        self.__dict__["teacher"] = teacher  # not a submodule: never trained, wrapped or sharded

    def forward(self, labels: torch.Tensor, soft_logits: torch.Tensor | None = None, **inputs) -> torch.Tensor:
        cfg, teacher = self.cfg, self.teacher
        hidden = teacher is not None and cfg.hidden_weight > 0
        attentions = teacher is not None and cfg.attention_weight > 0
        mask = inputs.get("attention_mask")  # texts; images have none
        with autocast(cfg.precision, labels.device):
            out = self.model(**inputs, output_hidden_states=hidden, output_attentions=attentions)
            loss = F.cross_entropy(out.logits.float(), labels)
            if soft_logits is None:
                return loss
            kd = distillation_kl(out.logits, soft_logits, cfg.temperature)
            loss = cfg.distill_weight * kd + (1 - cfg.distill_weight) * loss
            if hidden or attentions:
                with torch.no_grad():
                    t_out = teacher(**inputs, output_hidden_states=hidden, output_attentions=attentions)
                if hidden:
                    loss = loss + cfg.hidden_weight * hidden_state_loss(out.hidden_states, t_out.hidden_states, mask)
                if attentions:
                    loss = loss + cfg.attention_weight * attention_loss(out.attentions, t_out.attentions, mask)
        return loss


class ClassifyTask:
    """Labelled texts. With --distill the targets are precomputed once: the logits of the teacher (or of
    --logits-teacher) for every training text and for the --augment variants, which take the teacher's class
    as their label."""

    name = "classify"
    unit = "samples"
    model_class = "AutoModelForSequenceClassification"
    train_hint = "--train FILE (text<TAB>label rows)"
    default_epochs = 1.0  # without --epochs and --steps

    def __init__(self, cfg: RecoverConfig, processor, train, eval_examples, ctx: Context):
        self.cfg, self.processor, self.ctx = cfg, processor, ctx
        self.labels = label_names(train)
        self.train = train
        self.train_y = torch.tensor(class_ids(train, self.labels))
        self.encode_train()
        self.soft_logits: torch.Tensor | None = None  # [n_items, labels], set by `teacher` when distilling
        self.eval_examples = eval_examples
        self.data = {"train": train.file_sha256, "eval": eval_examples.file_sha256}
        self.described = {"train": train.path, "eval": eval_examples.path}
        self.extra_metrics: dict = {}  # measured while preparing (the --logits-teacher's accuracy)

    # -- what differs between texts and images

    @staticmethod
    def processor_for(source: str):
        return tokenizer_for(source)

    @classmethod
    def read(cls, cfg: RecoverConfig, path: Path, training: bool):
        """Training texts stripped of surrounding white space; held-out texts as `bitconv eval` scores them."""
        if training:
            return read_labelled(path, cfg.text_column, cfg.label_column)
        return read_examples(path, cfg.text_column, cfg.label_column)

    def encode_train(self, extra: list[str] = ()) -> None:
        """Tokenize the training texts (and `extra` texts after them, the --augment variants)."""
        self.train_texts = list(self.train.texts) + list(extra)
        self.train_ids = self.processor(self.train_texts, truncation=True, max_length=self.cfg.max_length)["input_ids"]

    @property
    def n_items(self) -> int:
        return len(self.train_ids)

    def item_length(self, i: int) -> int:
        return len(self.train_ids[i])

    def inputs(self, idx: list[int]) -> dict:
        """Model inputs of training items `idx`, on the CPU."""
        ids, mask = _pad([self.train_ids[i] for i in idx], self.processor.pad_token_id)
        return {"input_ids": ids, "attention_mask": mask}

    def _backend(self, model: nn.Module):
        return module_backend(model, self.processor, self.ctx.source)

    def _score(self, backend) -> dict:
        return metrics.classify(backend, self.eval_examples, batch_size=EVAL_BATCH["classify"], progress=False)

    # -- shared by texts and images

    @classmethod
    def before_prepare(cls, cfg: RecoverConfig, processor, train: list, eval_sources: list, ctx: Context) -> None:
        """Work every process does before the first one prepares the data alone: none for classification."""

    @classmethod
    def prepare(cls, cfg: RecoverConfig, processor, train: list, eval_sources: list, ctx: Context) -> "ClassifyTask":
        train_path = _single_source(train, "--train", cfg.task)
        eval_path = _single_source(eval_sources, "--eval", cfg.task)
        if train_path is None:
            raise DataError(f"--task {cfg.task} needs {cls.train_hint}")
        data = cls.read(cfg, train_path, training=True)
        if eval_path is None:
            raise DataError(f"--task {cfg.task} needs --eval (held-out labelled data, as --train) to measure accuracy")
        held_out = cls.read(cfg, eval_path, training=False)
        class_ids(held_out, label_names(data))  # a held-out label the training data never saw fails now
        return cls(cfg, processor, data, held_out, ctx)

    def load_model(self, source: str) -> nn.Module:
        import transformers

        from bitconv.quantize.source import load_original

        kwargs = {"attn_implementation": "eager"} if self.cfg.attention_weight > 0 else {}  # sdpa gives no maps
        with _quiet_transformers():
            model = load_original(source, model_class=getattr(transformers, self.model_class),
                                  num_labels=len(self.labels), id2label=dict(enumerate(self.labels)),
                                  label2id={name: i for i, name in enumerate(self.labels)}, **kwargs)
        if getattr(self.processor, "pad_token_id", None) is not None and model.config.pad_token_id is None:
            model.config.pad_token_id = self.processor.pad_token_id
        return model

    def _fine_tuned(self, source: str, folder: Path, fingerprint: dict, fine_tune: Callable[..., None]) -> nn.Module:
        """`source` as a classifier of this task's labels: a fine-tuned one as it is (its labels checked), a base
        model fine-tuned here (kept in `folder`, with its tokenizer or image processor, for the next run with the
        same fingerprint)."""
        import json

        from bitconv.format.atomic import write_json_atomic

        rt = self.ctx.rt
        names = _label_names_of(source)
        if names is not None:
            if names != self.labels:
                raise DataError(f"{source}: a classifier of labels {names}, but the training data has labels "
                                f"{self.labels}; pass a teacher fine-tuned on these labels, or its base model")
            return self.load_model(source).to(rt.device)
        marker = folder / "teacher.json"
        if marker.exists() and json.loads(marker.read_text()).get("fingerprint") == fingerprint:
            return self.load_model(str(folder)).to(rt.device)
        teacher = self.load_model(source).to(rt.device)
        steps = steps_for(self.cfg, self.n_items, rt.world, epochs=self.cfg.teacher_epochs)
        fine_tune(teacher, steps, self.cfg.teacher_lr, f"teacher {Path(source).name} (fp)", self)
        if rt.main:  # a model folder that `bitconv eval` and --teacher read
            teacher.save_pretrained(folder, safe_serialization=True)
            self.processor.save_pretrained(folder)
            write_json_atomic(marker, {"fingerprint": fingerprint, "steps": steps})
        rt.barrier()
        return teacher

    def teacher(self, ckpt_dir: Path, fingerprint: dict, fine_tune: Callable[..., None]) -> nn.Module:
        """The fp teacher: --teacher (a fine-tuned classifier, or a base model fine-tuned here), else a copy of the
        source fine-tuned here (kept in CKPT/teacher). With --distill, also the precomputed targets."""
        teacher = self._fine_tuned(self.cfg.teacher or self.ctx.source, ckpt_dir / "teacher", fingerprint, fine_tune)
        if self.cfg.distill:
            teacher.eval()
            self._targets(teacher, ckpt_dir, fingerprint, fine_tune)
        return teacher

    def _targets(self, teacher: nn.Module, ckpt_dir: Path, fingerprint: dict, fine_tune: Callable[..., None]) -> None:
        """The soft targets: the logits teacher's (or the teacher's) logits of every training item, the --augment
        variants appended and labelled by them."""
        from bitconv.data.augment import augment_texts

        scorer, view = teacher, self
        if self.cfg.logits_teacher:  # the same data through the logits teacher's own tokenizer
            source = self.cfg.logits_teacher
            view = type(self)(self.cfg, self.processor_for(source), self.train, self.eval_examples,
                              replace(self.ctx, source=source))
            scorer = view._fine_tuned(source, ckpt_dir / "logits-teacher", fingerprint, fine_tune)
            scorer.eval()
            self.extra_metrics["logits_teacher"] = view.evaluate(scorer)
        if self.cfg.augment:
            extra = augment_texts(list(self.train.texts), self.cfg.augment, self.cfg.seed)
            self.encode_train(extra)
            if view is not self:
                view.encode_train(extra)
        logits = view.logits_of(scorer)
        n_data = len(self.train.labels)
        self.train_y = torch.cat([self.train_y[:n_data], logits[n_data:].argmax(-1)])
        self.soft_logits = logits

    @torch.no_grad()
    def logits_of(self, model: nn.Module, batch_size: int = 256) -> torch.Tensor:
        """`model`'s logits for every training item, in order (batched by length to pad little), on the CPU."""
        device = self.ctx.rt.device
        model.eval()
        order = sorted(range(self.n_items), key=self.item_length)
        out = torch.empty(len(order), len(self.labels))
        for lo in range(0, len(order), batch_size):
            chunk = order[lo:lo + batch_size]
            inputs = {k: v.to(device) for k, v in self.inputs(chunk).items()}
            with autocast(self.cfg.precision, device):
                out[chunk] = model(**inputs).logits.float().cpu()
        return out

    def start_student(self, student: nn.Module, teacher: nn.Module) -> None:
        if self.cfg.init == "teacher":
            student.load_state_dict(teacher.state_dict())

    def loss_module(self, model: nn.Module, teacher: nn.Module | None, sharded: bool = False,
                    compile: bool = False) -> nn.Module:
        return ClassifyLoss(model, teacher, self.cfg)

    def batch(self, idx: torch.Tensor, device: torch.device) -> dict:
        """Inputs and labels of training items `idx`, and their soft targets when distilling."""
        batch = {k: to_device(v, device) for k, v in self.inputs(idx.tolist()).items()}
        batch["labels"] = to_device(self.train_y[idx], device)
        if self.soft_logits is not None:
            batch["soft_logits"] = to_device(self.soft_logits[idx], device)
        return batch

    def batch_items(self, batch: dict) -> int:
        return batch["labels"].shape[0]

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict:
        model.eval()
        return self._score(self._backend(model))

    def calibration_batches(self, device: torch.device, n_batches: int = 8, batch_size: int = 16) -> list[dict]:
        """The first training examples, in file order (deterministic), as model inputs."""
        return [{k: v.to(device) for k, v in self.inputs(list(range(lo, min(lo + batch_size, self.n_items)))).items()}
                for lo in range(0, min(self.n_items, n_batches * batch_size), batch_size)]


class ImageClassifyTask(ClassifyTask):
    """Labelled images (bitconv.data.images): an image folder or a saved `datasets` split; the source's image
    processor turns them into pixel values once, before training."""

    name = "image-classify"
    model_class = "AutoModelForImageClassification"
    train_hint = "--train FOLDER (one sub-folder of images per class) or a saved `datasets` split"

    @staticmethod
    def processor_for(source: str):
        from bitconv.quantize.source import load_image_processor

        return load_image_processor(source)

    @classmethod
    def read(cls, cfg: RecoverConfig, path: Path, training: bool):
        from bitconv.data.images import read_images

        return read_images(path)

    def encode_train(self, extra: list[str] = ()) -> None:
        """Pixel values of every training image (--augment edits texts only: the config refuses it here)."""
        images = self.train
        chunks = [self.processor(images=[images.image(i) for i in range(lo, min(lo + 256, len(images)))],
                                 return_tensors="pt")["pixel_values"] for lo in range(0, len(images), 256)]
        self.pixels = torch.cat(chunks)

    @property
    def n_items(self) -> int:
        return len(self.pixels)

    def item_length(self, i: int) -> int:
        return 0  # every image has the processor's size

    def inputs(self, idx: list[int]) -> dict:
        return {"pixel_values": self.pixels[idx]}

    def _backend(self, model: nn.Module):
        return module_backend(model, None, self.ctx.source, image_processor=self.processor)

    def _score(self, backend) -> dict:
        return metrics.classify_images(backend, self.eval_examples, batch_size=EVAL_BATCH["classify"], progress=False)


# ---------------------------------------------------------------------------------------------------------
# language modelling


def fused_head_supported(model: nn.Module) -> bool:
    """True when the model's logits are exactly head(final hidden state): a linear output embedding and no
    logit soft-capping or scaling (Gemma, Cohere, Granite do more, and keep the plain path)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    config = model.config
    extra = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
    return isinstance(head, nn.Linear) and all(getattr(config, k, None) in (None, 1, 1.0) for k in extra)


class LMLoss(nn.Module):
    """(1 - w) * next-token CE + w * T^2 * KL(teacher || student) over the block's positions (+ hidden states).

    Where the head allows it, the loss is computed from the final hidden states chunk by chunk (no full-vocabulary
    logits kept for the backward pass); under FSDP, and for heads that do more than a linear map, it is computed
    from the model's logits."""

    def __init__(self, model: nn.Module, teacher: nn.Module | None, cfg: RecoverConfig, fused: bool,
                 compile: bool = False):
        super().__init__()
        self.model, self.cfg, self.fused, self.compile = model, cfg, fused, compile
        self.__dict__["teacher"] = teacher  # not a submodule: never trained, wrapped or sharded

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        cfg, teacher = self.cfg, self.teacher
        hidden = teacher is not None and cfg.hidden_weight > 0
        target = input_ids[:, 1:].reshape(-1)
        w = cfg.distill_weight if teacher is not None else 0.0
        with autocast(cfg.precision, input_ids.device):
            t_out = None
            if self.fused:
                out = self.model.base_model(input_ids=input_ids, output_hidden_states=hidden, use_cache=False)
                h = out.last_hidden_state[:, :-1].reshape(-1, out.last_hidden_state.shape[-1])
                t_h = None
                if teacher is not None:
                    with torch.no_grad():
                        t_out = teacher.base_model(input_ids=input_ids, output_hidden_states=hidden, use_cache=False)
                        t_h = t_out.last_hidden_state[:, :-1].reshape(-1, t_out.last_hidden_state.shape[-1])
                on_gpu_bf16 = cfg.precision == "bf16" and input_ids.device.type == "cuda"
                loss = lm_head_loss(h, self.model.get_output_embeddings(), target, t_h,
                                    teacher.get_output_embeddings() if teacher is not None else None,
                                    cfg.temperature, w, HEAD_CHUNK, torch.bfloat16 if on_gpu_bf16 else torch.float32,
                                    self.compile)
            else:
                out = self.model(input_ids=input_ids, output_hidden_states=hidden, use_cache=False)
                vocab = out.logits.shape[-1]
                t_logits = None
                if teacher is not None:
                    with torch.no_grad():
                        t_out = teacher(input_ids=input_ids, output_hidden_states=hidden, use_cache=False)
                    t_logits = t_out.logits[:, :-1].reshape(-1, vocab)
                loss = logits_loss(out.logits[:, :-1].reshape(-1, vocab), target, t_logits, cfg.temperature, w)
            if hidden:
                loss = loss + cfg.hidden_weight * hidden_state_loss(out.hidden_states, t_out.hidden_states, None)
        return loss


@dataclass
class EvalSet:
    """A held-out set: text (scored exactly as `bitconv eval` scores it) or a token stream."""

    name: str
    text: TextSlice | None = None
    ids: np.ndarray | None = None
    key: str = ""


@dataclass
class _Streams:
    streams: list[np.ndarray] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    weights: list[float | None] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)


def _plain_text_file(spec: SourceSpec) -> Path | None:
    """The file itself when a source is one plain-text file (held out and scored as `bitconv eval` does)."""
    path = Path(spec.target).expanduser()
    if spec.kind == "files" and path.is_file() and path.suffix.lower() not in (".jsonl", ".parquet", ".csv", ".tsv"):
        return path
    return None


class LMTask:
    name = "lm"
    unit = "tokens"
    processor_for = staticmethod(tokenizer_for)
    default_epochs = 1.0  # without --epochs and --steps; DEFAULT_TRAIN_EPOCHS on the default teacher data

    def __init__(self, cfg: RecoverConfig, tokenizer, ctx: Context):
        self.cfg, self.tokenizer, self.ctx = cfg, tokenizer, ctx
        self._original: nn.Module | None = None
        self.blocks: TokenBlocks | None = None
        self.eval_sets: list[EvalSet] = []
        self.data: dict = {}
        self.described: dict = {}
        self.extra_metrics: dict = {}

    # -- the original model: teacher, and writer of teacher:N data

    def load_model(self, source: str) -> nn.Module:
        from transformers import AutoModelForCausalLM

        from bitconv.quantize.source import load_original

        with _quiet_transformers():
            return load_original(source, model_class=AutoModelForCausalLM)

    def original(self) -> nn.Module:
        if self._original is None:
            self._original = self.load_model(self.ctx.source).to(self.ctx.rt.device)
        return self._original

    def teacher(self, ckpt_dir: Path, fingerprint: dict, fine_tune) -> nn.Module:
        return self.original()

    def start_student(self, student: nn.Module, teacher: nn.Module) -> None:
        """The student is the original model already."""

    # -- data

    def _generated(self, spec: SourceSpec, seed: int, together: bool = False) -> tuple[np.ndarray, str]:
        """`together`: every process is here (before_prepare) and generates its share; else this process alone."""
        from bitconv.data.synth import generate_stream, model_key, options_for

        rt, model = self.ctx.rt, self.original()
        opts = options_for(spec, self.cfg.seq_len, seed, model, rt.device)
        key = model_key(self.ctx.source)
        shared = dict(rank=rt.rank, world=rt.world, barrier=rt.barrier) if together else {}
        # under torchrun, before_prepare has said where the stream came from already
        say = self.ctx.say if together or rt.world == 1 else (lambda text: None)
        stream = generate_stream(model, self.tokenizer, key, opts, self.ctx.cache, rt.device,
                                 self.ctx.progress, say, **shared)
        return stream, hashlib.sha256(f"{key}\0{opts}".encode()).hexdigest()

    def _stream(self, spec: SourceSpec, docs: Documents | None = None) -> tuple[np.ndarray, str]:
        if spec.kind == "teacher":
            return self._generated(spec, self.cfg.seed)
        docs = docs or documents(spec, self.cfg.text_column)
        return token_stream(docs, self.tokenizer, self.ctx.cache, self.ctx.progress), docs.key

    @classmethod
    def before_prepare(cls, cfg: RecoverConfig, tokenizer, train: list, eval_sources: list, ctx: Context) -> None:
        """Under torchrun every process generates its share of each teacher:N source (bitconv.data.synth), so the
        first process, preparing the data alone afterwards, finds them in the cache."""
        if ctx.rt.world == 1:
            return
        task = cls(cfg, tokenizer, ctx)
        specs = [(spec, cfg.seed) for spec in _train_specs(train)[0]]
        specs += [(parse_source(str(s)), cfg.seed + 1) for s in eval_sources]  # as _eval_set samples them
        for spec, seed in specs:
            if spec.kind == "teacher":
                task._generated(spec, seed, together=True)

    @classmethod
    def prepare(cls, cfg: RecoverConfig, tokenizer, train: list, eval_sources: list, ctx: Context) -> "LMTask":
        task = cls(cfg, tokenizer, ctx)
        specs, defaulted = _train_specs(train)
        if defaulted:
            task.default_epochs = DEFAULT_TRAIN_EPOCHS
            passes = "" if cfg.steps is not None or cfg.epochs is not None else f", {DEFAULT_TRAIN_EPOCHS:g} epochs"
            ctx.say(f"no --train given: recovering on text the original model writes itself (--train {DEFAULT_TRAIN}"
                    f"{passes}); pass --train FILE, FOLDER or hf:NAME to use your own text")
            if ctx.rt.device.type != "cuda" and cfg.steps is None:
                # measured on one H200 (docs/recovery.md); a CPU generates and trains orders of magnitude slower
                ctx.say(f"note: {DEFAULT_TRAIN} is sized for a GPU (SmolLM2-135M: about 24 minutes on one H200); on "
                        f"the {ctx.rt.device.type.upper()} it takes far longer: name a smaller --train teacher:N and "
                        "--steps for a short run")
        weights = [spec.weight for spec in specs]  # checked before anything is read or generated
        eval_specs = [parse_source(str(s)) for s in eval_sources]
        held_text = _plain_text_file(specs[0]) if len(specs) == 1 and not eval_specs else None
        got = _Streams()
        for n, spec in enumerate(specs):
            if n == 0 and held_text is not None:
                stream, key = task._head_of_text_file(held_text)
            else:
                stream, key = task._stream(spec)
            got.streams.append(stream)
            got.names.append(spec.text)
            got.weights.append(weights[n])
            got.keys.append(key)
        if not eval_specs and held_text is None:
            task._hold_out_tail(got)
        for spec in eval_specs:
            task.eval_sets.append(task._eval_set(spec))
        task.blocks = mix(got.streams, got.names, got.weights, cfg.seq_len, cfg.seed)
        task.data = {"train": got.keys, "weights": got.weights, "eval": [e.key for e in task.eval_sets]}
        task.described = {"train": got.names, "eval": [e.name for e in task.eval_sets]}
        return task

    def _head_of_text_file(self, path: Path) -> tuple[np.ndarray, str]:
        """One text file and no --eval: train on its head, hold out its tail (--eval-fraction, cut at a line start
        as `bitconv eval --start-fraction` cuts it)."""
        cut = 1 - self.cfg.eval_fraction
        head = text_slice(path, 0.0, cut)
        text = head.text.replace("\r\n", "\n").replace("\r", "\n")
        key = hashlib.sha256(f"head\0{head.file_sha256}\0{head.end_char}".encode()).hexdigest()
        docs = Documents(f"{path} (first {cut:.0%})", key, lambda: iter([text]))
        tail = text_slice(path, cut, 1.0)
        self.eval_sets.append(EvalSet(f"{path} (last {self.cfg.eval_fraction:.0%})", text=tail, key=key))
        return token_stream(docs, self.tokenizer, self.ctx.cache, self.ctx.progress), key

    def _hold_out_tail(self, got: _Streams) -> None:
        """No --eval: the last blocks of the first source (--eval-fraction of it, at most --eval-tokens) are held
        out, never trained on."""
        seq = self.cfg.seq_len
        stream = got.streams[0]
        n = stream.size // seq
        hold = min(max(1, round(n * self.cfg.eval_fraction)), max(1, math.ceil(self.cfg.eval_tokens / seq)))
        if n - hold < 1:
            raise DataError(f"{got.names[0]}: {stream.size} tokens, too few for a training block and a held-out one "
                            f"of --seq-len {seq}; use more data or pass --eval")
        cut = (n - hold) * seq
        got.streams[0] = stream[:cut]
        self.eval_sets.append(EvalSet(f"{got.names[0]} (held-out last {hold * seq:,} tokens)",
                                      ids=np.asarray(stream[cut:cut + hold * seq]), key=f"{got.keys[0]}:tail{hold}"))

    def _eval_set(self, spec: SourceSpec) -> EvalSet:
        if spec.kind == "teacher":  # other samples than the training ones: the next seed
            stream, key = self._generated(spec, self.cfg.seed + 1)
            return EvalSet(spec.text, ids=np.asarray(stream[: self.cfg.eval_tokens]), key=key)
        path = _plain_text_file(spec)
        if path is not None:
            slice_ = text_slice(path)
            return EvalSet(spec.text, text=slice_, key=slice_.file_sha256)
        docs = documents(spec, self.cfg.text_column)
        text = joined_text(docs)
        return EvalSet(spec.text, text=TextSlice(spec.text, text, 0, len(text), len(text), docs.key), key=docs.key)

    @property
    def n_items(self) -> int:
        return len(self.blocks)

    # -- training and evaluation

    def loss_module(self, model: nn.Module, teacher: nn.Module | None, sharded: bool = False,
                    compile: bool = False) -> nn.Module:
        fused = not sharded and fused_head_supported(model) and (teacher is None or fused_head_supported(teacher))
        return LMLoss(model, teacher, self.cfg, fused, compile)

    def batch(self, idx: torch.Tensor, device: torch.device) -> dict:
        return {"input_ids": to_device(self.blocks.get(idx), device)}

    def batch_items(self, batch: dict) -> int:
        return batch["input_ids"].numel()

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict:
        """Perplexity on every held-out set, windows of --seq-len tokens; the first set's numbers at the top level."""
        model.eval()
        backend = module_backend(model, self.tokenizer, self.ctx.source)
        results = {}
        for e in self.eval_sets:
            if e.text is not None:
                results[e.name] = metrics.perplexity(backend, e.text, context=self.cfg.seq_len,
                                                     max_tokens=self.cfg.eval_tokens, batch_size=EVAL_BATCH["lm"],
                                                     progress=False)
            else:
                ids = torch.from_numpy(e.ids[: self.cfg.eval_tokens].astype(np.int64))
                results[e.name] = metrics.perplexity_of_ids(backend, ids, context=self.cfg.seq_len,
                                                            batch_size=EVAL_BATCH["lm"], progress=False)
        first = results[self.eval_sets[0].name]
        return {**first, "sets": results}

    def calibration_batches(self, device: torch.device, n_batches: int = 8, batch_size: int = 16) -> list[dict]:
        return [{"input_ids": self.blocks.get(list(range(lo, min(lo + batch_size, self.n_items)))).to(device)}
                for lo in range(0, min(self.n_items, n_batches * batch_size), batch_size)]


TASK_TYPES = {"classify": ClassifyTask, "image-classify": ImageClassifyTask, "lm": LMTask}


def _train_specs(train: list) -> tuple[list[SourceSpec], bool]:
    """lm's --train sources, or DEFAULT_TRAIN when none is given (then True)."""
    specs = [parse_source(str(s)) for s in train]
    return (specs, False) if specs else ([parse_source(DEFAULT_TRAIN)], True)


def with_epochs_resolved(cfg: RecoverConfig, task) -> RecoverConfig:
    """`cfg` with --epochs made concrete once the data is known: as given, else 1 under --steps, else the task's
    default (DEFAULT_TRAIN_EPOCHS on lm's default teacher data). The checkpoint's fingerprint and recovery.json then
    say what ran, and a run without --train never resumes one with an explicit --train of the same text."""
    if cfg.epochs is not None:
        return cfg
    return replace(cfg, epochs=1.0 if cfg.steps is not None else task.default_epochs)


def steps_for(cfg: RecoverConfig, n_items: int, world: int, epochs: float | None = None) -> int:
    """--steps, or the steps that make --epochs (or `epochs`) passes over n_items at the global batch size."""
    if cfg.steps is not None and epochs is None:
        return cfg.steps
    per_epoch = max(1, n_items // (cfg.batch_size * world))
    return max(1, int(round(per_epoch * (cfg.epochs if epochs is None else epochs))))
