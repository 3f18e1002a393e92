"""What is trained: a task object owns its data, the model head it needs, the batch -> loss step, its teacher and
its evaluation (through bitconv.evaluate.metrics, the code `bitconv eval` runs, so recovery.json and
`bitconv eval` give the same number for the same model and data).

    ClassifyTask   labelled texts; a sequence-classification head (added where the source has none);
                   cross-entropy on the label; the teacher is a copy fine-tuned on the task
    ImageClassifyTask  the same over labelled images (an image folder or a saved `datasets` split), for
                   ...ForImageClassification models such as ViT
    LMTask         text packed into blocks; the causal LM head; next-token cross-entropy; the teacher is the
                   original model

The trainer (bitconv.train.trainer) and the pipeline (bitconv.train.pipeline) only call the methods below.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bitconv.data.files import TextSlice, read_examples, text_slice
from bitconv.errors import DataError
from bitconv.evaluate import metrics
from bitconv.evaluate.backends import module_backend
from bitconv.train.config import RecoverConfig
from bitconv.train.data import class_ids, label_names, read_labelled, read_training_text, token_blocks
from bitconv.train.losses import attention_loss, distillation_kl, hidden_state_loss
from bitconv.train.runtime import Runtime, autocast

EVAL_BATCH = {"classify": 128, "lm": 8}


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


def _distilled(cfg: RecoverConfig, task_loss: torch.Tensor, student_logits: torch.Tensor,
               teacher_logits: torch.Tensor, out=None, t_out=None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The task loss mixed with the KL to the teacher's logits, plus hidden-state and attention-map matching
    (when asked, from the teacher's outputs `t_out`)."""
    kd = distillation_kl(student_logits, teacher_logits, cfg.temperature)
    loss = cfg.distill_weight * kd + (1 - cfg.distill_weight) * task_loss
    if t_out is not None and cfg.hidden_weight > 0:
        loss = loss + cfg.hidden_weight * hidden_state_loss(out.hidden_states, t_out.hidden_states, mask)
    if t_out is not None and cfg.attention_weight > 0:
        loss = loss + cfg.attention_weight * attention_loss(out.attentions, t_out.attentions, mask)
    return loss


def _pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


# ---------------------------------------------------------------------------------------------------------
# classification


def tokenizer_for(source: str):
    from bitconv.quantize.source import load_tokenizer

    tok = load_tokenizer(source)
    if tok.pad_token is None:  # batches of texts are padded; GPT-2 style tokenizers have no pad token
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def _label_names_of(source: str) -> list[str] | None:
    """The label names of a fine-tuned classifier (config.json id2label, by class id); None for a base model."""
    from bitconv.quantize.source import open_source

    config = open_source(source).config
    if not any(a.endswith(("ForSequenceClassification", "ForImageClassification"))
               for a in getattr(config, "architectures", None) or []):
        return None
    id2label = getattr(config, "id2label", None) or {}
    return [str(id2label[k]) for k in sorted(id2label, key=int)]


class ClassifyTask:
    """Labelled texts. With --distill the targets are precomputed once: the logits of the teacher (or of
    --logits-teacher) for every training text and for the --augment variants, which take the teacher's class
    as their label."""

    name = "classify"
    unit = "samples"
    model_class = "AutoModelForSequenceClassification"

    def __init__(self, cfg: RecoverConfig, processor, train, eval_examples):
        self.cfg, self.processor = cfg, processor
        self.labels = label_names(train)
        self.train = train
        self.train_y = torch.tensor(class_ids(train, self.labels))
        self.encode_train()
        self.soft_logits: torch.Tensor | None = None  # [n_items, labels], set by `teacher` when distilling
        self.eval_examples = eval_examples
        self.data = {"train": train.file_sha256, "eval": eval_examples.file_sha256}
        self.described = {"train": train.path, "eval": eval_examples.path}
        self.extra_metrics: dict = {}  # measured while preparing (the --logits-teacher's accuracy)

    # --- what differs between texts and images

    @staticmethod
    def processor_for(source: str):
        return tokenizer_for(source)

    @classmethod
    def read(cls, cfg: RecoverConfig, path: Path, training: bool):
        """Training texts stripped of surrounding white space; held-out texts as `bitconv eval` scores them."""
        return read_labelled(path, cfg.text_column, cfg.label_column) if training else \
            read_examples(path, cfg.text_column, cfg.label_column)

    def encode_train(self, extra: list[str] = ()) -> None:
        self.train_texts = list(self.train.texts) + list(extra)
        self.train_ids = self.processor(self.train_texts, truncation=True, max_length=self.cfg.max_length)["input_ids"]

    def item_length(self, i: int) -> int:
        return len(self.train_ids[i])

    def inputs(self, idx: list[int], device: torch.device) -> tuple[dict, torch.Tensor | None]:
        ids, mask = _pad([self.train_ids[i] for i in idx], self.processor.pad_token_id)
        ids, mask = ids.to(device), mask.to(device)
        return {"input_ids": ids, "attention_mask": mask}, mask

    def _backend(self, model: nn.Module, source: str):
        return module_backend(model, self.processor, source)

    def _score(self, backend) -> dict:
        return metrics.classify(backend, self.eval_examples, batch_size=EVAL_BATCH["classify"], progress=False)

    # --- shared by texts and images

    @classmethod
    def prepare(cls, cfg: RecoverConfig, processor, train: Path, eval_path: Path | None) -> "ClassifyTask":
        if eval_path is None:
            raise DataError(f"--task {cfg.task} needs --eval (held-out labelled data) to measure accuracy")
        data = cls.read(cfg, train, training=True)
        held_out = cls.read(cfg, eval_path, training=False)
        class_ids(held_out, label_names(data))  # a held-out label the training data never saw fails now
        return cls(cfg, processor, data, held_out)

    @property
    def n_items(self) -> int:
        return len(self.train_ids)

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

    def _fine_tuned(self, source: str, folder: Path, rt: Runtime, fingerprint: dict, fine_tune) -> nn.Module:
        """`source` as a classifier of this task's labels: a fine-tuned one as it is (its labels checked), a base
        model fine-tuned here (kept in `folder` for the next run with the same fingerprint)."""
        import json

        from bitconv.format.atomic import write_json_atomic

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
        if rt.main:  # with its tokenizer (or image processor): a model folder that `bitconv eval` and --teacher read
            teacher.save_pretrained(folder, safe_serialization=True)
            self.processor.save_pretrained(folder)
            write_json_atomic(marker, {"fingerprint": fingerprint, "steps": steps})
        rt.barrier()
        return teacher

    def teacher(self, source: str, rt: Runtime, ckpt_dir: Path, fingerprint: dict,
                fine_tune: Callable[..., None]) -> nn.Module:
        """The fp teacher: --teacher (a fine-tuned classifier, or a base model fine-tuned here), else a copy of the
        source fine-tuned here (kept in CKPT/teacher). With --distill, also the precomputed targets."""
        teacher = self._fine_tuned(self.cfg.teacher or source, ckpt_dir / "teacher", rt, fingerprint, fine_tune)
        if self.cfg.distill:
            teacher.eval()
            self._targets(teacher, rt, ckpt_dir, fingerprint, fine_tune)
        return teacher

    def _targets(self, teacher: nn.Module, rt: Runtime, ckpt_dir: Path, fingerprint: dict, fine_tune) -> None:
        from bitconv.data.augment import augment_texts

        scorer, view = teacher, self
        if self.cfg.logits_teacher:
            view = type(self)(self.cfg, self.processor_for(self.cfg.logits_teacher), self.train, self.eval_examples)
            scorer = view._fine_tuned(self.cfg.logits_teacher, ckpt_dir / "logits-teacher", rt, fingerprint, fine_tune)
            scorer.eval()
            self.extra_metrics["logits_teacher"] = view.evaluate(scorer, self.cfg.logits_teacher)
        if self.cfg.augment:
            extra = augment_texts(list(self.train.texts), self.cfg.augment, self.cfg.seed)
            self.encode_train(extra)
            if view is not self:
                view.encode_train(extra)
        logits = view.logits_of(scorer, rt.device)
        n_data = len(self.train.labels)
        self.train_y = torch.cat([self.train_y[:n_data], logits[n_data:].argmax(-1)])
        self.soft_logits = logits

    @torch.no_grad()
    def logits_of(self, model: nn.Module, device: torch.device, batch_size: int = 256) -> torch.Tensor:
        """`model`'s logits for every training item, in order (batched by length to pad little)."""
        model.eval()
        order = sorted(range(self.n_items), key=self.item_length)
        out = torch.empty(len(order), len(self.labels))
        for lo in range(0, len(order), batch_size):
            chunk = order[lo:lo + batch_size]
            inputs, _ = self.inputs(chunk, device)
            with autocast(self.cfg.precision, device):
                out[chunk] = model(**inputs).logits.float().cpu()
        return out

    def start_student(self, student: nn.Module, teacher: nn.Module) -> None:
        if self.cfg.init == "teacher":
            student.load_state_dict(teacher.state_dict())

    def loss(self, model: nn.Module, teacher: nn.Module | None, idx: torch.Tensor,
             device: torch.device) -> tuple[torch.Tensor, int]:
        cfg = self.cfg
        inputs, mask = self.inputs(idx.tolist(), device)
        y = self.train_y[idx].to(device)
        hidden = teacher is not None and cfg.hidden_weight > 0
        attentions = teacher is not None and cfg.attention_weight > 0
        with autocast(cfg.precision, device):
            out = model(**inputs, output_hidden_states=hidden, output_attentions=attentions)
            loss = F.cross_entropy(out.logits.float(), y)
            if teacher is not None:
                t_out = None
                if hidden or attentions:
                    with torch.no_grad():
                        t_out = teacher(**inputs, output_hidden_states=hidden, output_attentions=attentions)
                loss = _distilled(cfg, loss, out.logits, self.soft_logits[idx].to(device), out, t_out, mask)
        return loss, len(idx)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, source: str) -> dict:
        model.eval()
        return self._score(self._backend(model, source))

    def calibration_batches(self, device: torch.device, n_batches: int = 8, batch_size: int = 16) -> list[dict]:
        """The first training examples, in file order (deterministic), as model inputs."""
        return [self.inputs(list(range(lo, min(lo + batch_size, self.n_items))), device)[0]
                for lo in range(0, min(self.n_items, n_batches * batch_size), batch_size)]


class ImageClassifyTask(ClassifyTask):
    """Labelled images (bitconv.data.images): an image folder or a saved `datasets` split; the source's image
    processor turns them into pixel values once, before training."""

    name = "image-classify"
    model_class = "AutoModelForImageClassification"

    @staticmethod
    def processor_for(source: str):
        from bitconv.quantize.source import load_image_processor

        return load_image_processor(source)

    @classmethod
    def read(cls, cfg: RecoverConfig, path: Path, training: bool):
        from bitconv.data.images import read_images

        return read_images(path)

    @property
    def n_items(self) -> int:
        return len(self.pixels)

    def encode_train(self, extra: list[str] = ()) -> None:
        images = self.train
        chunks = [self.processor(images=[images.image(i) for i in range(lo, min(lo + 256, len(images)))],
                                 return_tensors="pt")["pixel_values"] for lo in range(0, len(images), 256)]
        self.pixels = torch.cat(chunks)

    def item_length(self, i: int) -> int:
        return 0  # every image has the processor's size

    def inputs(self, idx: list[int], device: torch.device) -> tuple[dict, torch.Tensor | None]:
        return {"pixel_values": self.pixels[idx].to(device)}, None

    def _backend(self, model: nn.Module, source: str):
        return module_backend(model, None, source, image_processor=self.processor)

    def _score(self, backend) -> dict:
        return metrics.classify_images(backend, self.eval_examples, batch_size=EVAL_BATCH["classify"], progress=False)


# ---------------------------------------------------------------------------------------------------------
# language modelling


def _tokenize_long(tokenizer, text: str) -> list[int]:
    ids: list[int] = []
    lines = text.splitlines(keepends=True)
    for i in range(0, len(lines), 2000):  # chunks keep the tokenizer's max-length warning quiet and memory flat
        ids.extend(tokenizer("".join(lines[i : i + 2000]), add_special_tokens=False, verbose=False)["input_ids"])
    return ids


class LMTask:
    name = "lm"
    unit = "tokens"
    processor_for = staticmethod(tokenizer_for)

    def __init__(self, cfg: RecoverConfig, tokenizer, train_blocks: torch.Tensor, eval_slice: TextSlice,
                 data: dict, described: dict):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.train_blocks = train_blocks
        self.eval_slice = eval_slice
        self.data, self.described = data, described
        self.extra_metrics: dict = {}

    @classmethod
    def prepare(cls, cfg: RecoverConfig, tokenizer, train: Path, eval_path: Path | None) -> "LMTask":
        """Training text in blocks of --seq-len tokens; held out: --eval, or the tail of the training file
        (--eval-fraction, cut at a line start as `bitconv eval --start-fraction` cuts it)."""
        if eval_path is not None:
            text, train_sha = read_training_text(train)
            held_out = text_slice(eval_path)
            described = {"train": str(train), "eval": str(eval_path)}
            eval_sha = held_out.file_sha256
        else:
            cut = 1 - cfg.eval_fraction
            head = text_slice(train, 0.0, cut)
            text, train_sha = head.text.replace("\r\n", "\n").replace("\r", "\n"), head.file_sha256
            held_out = text_slice(train, cut, 1.0)
            described = {"train": f"{train} (first {cut:.0%})", "eval": f"{train} (last {cfg.eval_fraction:.0%})"}
            eval_sha = None
        blocks = token_blocks(_tokenize_long(tokenizer, text), cfg.seq_len, train)
        return cls(cfg, tokenizer, blocks, held_out, {"train": train_sha, "eval": eval_sha}, described)

    @property
    def n_items(self) -> int:
        return self.train_blocks.shape[0]

    def load_model(self, source: str) -> nn.Module:
        from transformers import AutoModelForCausalLM

        from bitconv.quantize.source import load_original

        with _quiet_transformers():
            return load_original(source, model_class=AutoModelForCausalLM)

    def teacher(self, source: str, rt: Runtime, ckpt_dir: Path, fingerprint: dict,
                fine_tune: Callable[[nn.Module, int, float, str], None]) -> nn.Module:
        return self.load_model(source).to(rt.device)

    def start_student(self, student: nn.Module, teacher: nn.Module) -> None:
        """The student is the original model already."""

    def loss(self, model: nn.Module, teacher: nn.Module | None, idx: torch.Tensor,
             device: torch.device) -> tuple[torch.Tensor, int]:
        ids = self.train_blocks[idx].to(device)
        hidden = teacher is not None and self.cfg.hidden_weight > 0
        with autocast(self.cfg.precision, device):
            out = model(input_ids=ids, output_hidden_states=hidden)
            vocab = out.logits.shape[-1]
            loss = F.cross_entropy(out.logits[:, :-1].float().reshape(-1, vocab), ids[:, 1:].reshape(-1))
            if teacher is not None:
                with torch.no_grad():
                    t_out = teacher(input_ids=ids, output_hidden_states=hidden)
                loss = _distilled(self.cfg, loss, out.logits.reshape(-1, vocab), t_out.logits.reshape(-1, vocab), out,
                                  t_out)
        return loss, ids.numel()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, source: str) -> dict:
        model.eval()
        backend = module_backend(model, self.tokenizer, source)
        return metrics.perplexity(backend, self.eval_slice, context=self.cfg.seq_len, max_tokens=self.cfg.eval_tokens,
                                  batch_size=EVAL_BATCH["lm"], progress=False)

    def calibration_batches(self, device: torch.device, n_batches: int = 8, batch_size: int = 16) -> list[dict]:
        return [{"input_ids": self.train_blocks[lo : lo + batch_size].to(device)}
                for lo in range(0, min(self.n_items, n_batches * batch_size), batch_size)]


TASK_TYPES = {"classify": ClassifyTask, "image-classify": ImageClassifyTask, "lm": LMTask}


def steps_for(cfg: RecoverConfig, n_items: int, world: int, epochs: float | None = None) -> int:
    """--steps, or the steps that make --epochs (or `epochs`) passes over n_items at the global batch size."""
    if cfg.steps is not None and epochs is None:
        return cfg.steps
    per_epoch = max(1, n_items // (cfg.batch_size * world))
    return max(1, int(round(per_epoch * (cfg.epochs if epochs is None else epochs))))
