"""What is trained: a task object owns its data, the model head it needs, the batch -> loss step, its teacher and
its evaluation (through bitconv.evaluate.metrics, the code `bitconv eval` runs, so recovery.json and
`bitconv eval` give the same number for the same model and data).

    ClassifyTask   labelled texts; a sequence-classification head (added where the source has none);
                   cross-entropy on the label; the teacher is a copy fine-tuned on the task
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

from bitconv.data.files import Examples, TextSlice, read_examples, text_slice
from bitconv.evaluate import metrics
from bitconv.evaluate.backends import module_backend
from bitconv.train.config import RecoverConfig
from bitconv.train.data import class_ids, label_names, read_labelled, read_training_text, token_blocks
from bitconv.train.losses import distillation_kl, hidden_state_loss
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


def _distilled(out, t_out, task_loss: torch.Tensor, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               cfg: RecoverConfig, mask: torch.Tensor | None) -> torch.Tensor:
    """The task loss mixed with the KL to the teacher (and hidden-state matching, when asked)."""
    kd = distillation_kl(student_logits, teacher_logits, cfg.temperature)
    loss = cfg.distill_weight * kd + (1 - cfg.distill_weight) * task_loss
    if cfg.hidden_weight > 0:
        loss = loss + cfg.hidden_weight * hidden_state_loss(out.hidden_states, t_out.hidden_states, mask)
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


class ClassifyTask:
    name = "classify"
    unit = "samples"

    def __init__(self, cfg: RecoverConfig, tokenizer, train: Examples, eval_examples: Examples):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.labels = label_names(train)
        self.train_ids = tokenizer(train.texts, truncation=True, max_length=cfg.max_length)["input_ids"]
        self.train_y = torch.tensor(class_ids(train, self.labels))
        self.eval_examples = eval_examples
        self.data = {"train": train.file_sha256, "eval": eval_examples.file_sha256}
        self.described = {"train": train.path, "eval": eval_examples.path}

    @classmethod
    def prepare(cls, cfg: RecoverConfig, tokenizer, train: Path, eval_path: Path | None) -> "ClassifyTask":
        from bitconv.errors import DataError

        data = read_labelled(train, cfg.text_column, cfg.label_column)
        if eval_path is None:
            raise DataError("--task classify needs --eval FILE (held-out text<TAB>label rows) to measure accuracy")
        # scored as `bitconv eval` scores it (texts as written); checked against the training labels now
        held_out = read_examples(eval_path, cfg.text_column, cfg.label_column)
        class_ids(read_labelled(eval_path, cfg.text_column, cfg.label_column), label_names(data))
        return cls(cfg, tokenizer, data, held_out)

    @property
    def n_items(self) -> int:
        return len(self.train_ids)

    def load_model(self, source: str) -> nn.Module:
        from transformers import AutoModelForSequenceClassification

        from bitconv.quantize.source import load_original

        with _quiet_transformers():
            model = load_original(source, model_class=AutoModelForSequenceClassification, num_labels=len(self.labels),
                                  id2label=dict(enumerate(self.labels)),
                                  label2id={name: i for i, name in enumerate(self.labels)})
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id or 0
        return model

    def teacher(self, source: str, rt: Runtime, ckpt_dir: Path, fingerprint: dict,
                fine_tune: Callable[[nn.Module, int, float, str], None]) -> nn.Module:
        """A given fp fine-tuned folder, the one fine-tuned by an earlier run with the same fingerprint, or a copy
        of the source fine-tuned here now (and kept in CKPT/teacher for the next run)."""
        import json

        from bitconv.format.atomic import write_json_atomic

        if self.cfg.teacher:
            return self.load_model(self.cfg.teacher).to(rt.device)
        folder = ckpt_dir / "teacher"
        marker = folder / "teacher.json"
        if marker.exists() and json.loads(marker.read_text()).get("fingerprint") == fingerprint:
            return self.load_model(str(folder)).to(rt.device)
        teacher = self.load_model(source).to(rt.device)
        steps = steps_for(self.cfg, self.n_items, rt.world, epochs=self.cfg.teacher_epochs)
        fine_tune(teacher, steps, self.cfg.teacher_lr, "teacher (fp)")
        if rt.main:
            teacher.save_pretrained(folder, safe_serialization=True)
            write_json_atomic(marker, {"fingerprint": fingerprint, "steps": steps})
        rt.barrier()
        return teacher

    def start_student(self, student: nn.Module, teacher: nn.Module) -> None:
        if self.cfg.init == "teacher":
            student.load_state_dict(teacher.state_dict())

    def loss(self, model: nn.Module, teacher: nn.Module | None, idx: torch.Tensor,
             device: torch.device) -> tuple[torch.Tensor, int]:
        ids, mask = _pad([self.train_ids[i] for i in idx.tolist()], self.tokenizer.pad_token_id)
        ids, mask, y = ids.to(device), mask.to(device), self.train_y[idx].to(device)
        hidden = teacher is not None and self.cfg.hidden_weight > 0
        with autocast(self.cfg.precision, device):
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=hidden)
            loss = F.cross_entropy(out.logits.float(), y)
            if teacher is not None:
                with torch.no_grad():
                    t_out = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=hidden)
                loss = _distilled(out, t_out, loss, out.logits, t_out.logits, self.cfg, mask)
        return loss, ids.shape[0]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, source: str) -> dict:
        model.eval()
        backend = module_backend(model, self.tokenizer, source)
        return metrics.classify(backend, self.eval_examples, batch_size=EVAL_BATCH["classify"], progress=False)

    def calibration_batches(self, device: torch.device, n_batches: int = 8, batch_size: int = 16) -> list[dict]:
        """The first training examples, in file order (deterministic), as model inputs."""
        batches = []
        for lo in range(0, min(self.n_items, n_batches * batch_size), batch_size):
            ids, mask = _pad(self.train_ids[lo : lo + batch_size], self.tokenizer.pad_token_id)
            batches.append({"input_ids": ids.to(device), "attention_mask": mask.to(device)})
        return batches


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

    def __init__(self, cfg: RecoverConfig, tokenizer, train_blocks: torch.Tensor, eval_slice: TextSlice,
                 data: dict, described: dict):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.train_blocks = train_blocks
        self.eval_slice = eval_slice
        self.data, self.described = data, described

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
                loss = _distilled(out, t_out, loss, out.logits.reshape(-1, vocab), t_out.logits.reshape(-1, vocab),
                                  self.cfg, None)
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


TASK_TYPES = {"classify": ClassifyTask, "lm": LMTask}


def steps_for(cfg: RecoverConfig, n_items: int, world: int, epochs: float | None = None) -> int:
    """--steps, or the steps that make --epochs (or `epochs`) passes over n_items at the global batch size."""
    if cfg.steps is not None and epochs is None:
        return cfg.steps
    per_epoch = max(1, n_items // (cfg.batch_size * world))
    return max(1, int(round(per_epoch * (cfg.epochs if epochs is None else epochs))))
