"""One evaluation run: data -> model -> task metric -> cost -> a result file (bitconv.evaluate.results).

`EvalConfig` holds every option of a run (what `bitconv eval` and each width of `bitconv compare` use); the
metrics themselves live in bitconv.evaluate.metrics, shared with `bitconv recover`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bitconv.device import check_device_name, pick_device
from bitconv.errors import OptionError
from bitconv.evaluate.backends import Backend
from bitconv.evaluate.metrics import (
    classify,
    classify_images,
    max_input_length,
    perplexity,
    pixel_values,
    tokenize_text,
    zero_shot,
)

TASKS = ("perplexity", "classify", "image-classify")


@dataclass(frozen=True)
class EvalConfig:
    """Every option of one evaluation: the task and its data, how the data are read, how the metric is computed."""

    task: str
    data: str
    context: int = 512  # perplexity: tokens per window
    stride: int | None = None  # perplexity: tokens between windows (default: context, no overlap)
    start_fraction: float = 0.0  # perplexity: the slice of the file scored
    end_fraction: float = 1.0
    max_tokens: int | None = None
    batch_size: int | None = None
    text_column: str = "sentence"  # classify: columns, header and delimiter of the file
    label_column: str = "label"
    header: bool | None = None
    delimiter: str | None = None
    label_map: str | None = None
    labels: str | None = None  # classify zero-shot: candidate labels and the prompt template
    template: str | None = None
    max_examples: int | None = None
    latency_repeats: int = 5
    latency_tokens: int = 128
    device: str = "auto"  # auto | cpu | cuda | cuda:N (bitconv.device)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", str(self.data))
        if self.task not in TASKS:
            raise OptionError(f"unknown --task {self.task!r}: choose {', '.join(TASKS)}")
        check_device_name(self.device)
        if self.task == "image-classify" and self.labels is not None:
            raise OptionError("--labels (zero-shot with a causal LM) does not apply to --task image-classify")
        if self.latency_repeats < 0:
            raise OptionError(f"--latency-repeats {self.latency_repeats}: must be 0 (off) or more")
        if self.labels is not None and (self.template is None or "{text}" not in self.template):
            raise OptionError("--labels needs --template with a {text} placeholder, "
                              "e.g. --template \"Review: {text}\\nSentiment:\"")

    def to_dict(self) -> dict:
        return asdict(self)


def _model_info(backend: Backend) -> dict:
    from bitconv.format.vocab import BITS_TO_SCHEME

    qc = backend.quantization_config or None
    bits = qc.get("bits") if qc else None
    return {"source": backend.source, "runtime": backend.runtime, "device": str(backend.device), "origin": backend.origin,
            "architecture": backend.architecture, "kind": backend.kind, "quantization_config": qc,
            "bits": bits, "scheme": BITS_TO_SCHEME.get(float(bits)) if bits is not None else None}


def _cost(backend: Backend, latency_ids: torch.Tensor | None, latency_mask: torch.Tensor | None, repeats: int) -> dict:
    from bitconv.evaluate import cost
    from bitconv.format.reader import is_bitconv_folder

    folder = Path(backend.source).expanduser()
    result = {"disk": cost.disk_bytes(backend),
              "weights_in_memory": cost.weight_memory(backend.module) if backend.module is not None else None,
              "weights_in_file": cost.file_weight_bytes(folder) if backend.origin == "bitconv" and
              is_bitconv_folder(folder) else None,
              "latency": None}
    if repeats > 0 and latency_ids is not None:
        result["latency"] = cost.latency(backend, latency_ids, latency_mask, repeats=repeats)
    result["peak_rss_bytes"] = cost.peak_rss_bytes()
    return result


def check_inputs(config: EvalConfig) -> None:
    """Fail fast, before any conversion or model load: the device exists and the data reads (its first rows)."""
    from bitconv.data.files import read_examples, text_slice
    from bitconv.data.images import read_images

    c = config
    pick_device(c.device)
    if c.task == "perplexity":
        text_slice(c.data, c.start_fraction, c.end_fraction)
    elif c.task == "image-classify":
        read_images(c.data, c.max_examples)
    else:
        read_examples(c.data, c.text_column, c.label_column, c.header, c.delimiter, 1)


def evaluate_model(model: str, config: EvalConfig, *, name: str | None = None, progress: bool = True,
                   backend: Backend | None = None) -> dict:
    """Evaluate `model` as `config` says; returns a result (bitconv.evaluate.results schema).

    The device and the data are checked before the model is loaded, so bad input fails fast. `backend` lets
    a caller that already opened the model (compare, benchmarks) reuse it.
    """
    from bitconv.data.files import parse_label_map, read_examples, text_slice
    from bitconv.data.images import read_images
    from bitconv.evaluate.backends import open_backend
    from bitconv.evaluate.results import new_result

    c = config
    start = time.perf_counter()
    pick_device(c.device)
    if c.task == "perplexity":
        data_slice = text_slice(c.data, c.start_fraction, c.end_fraction)
        task_info = {"name": c.task, "data": str(c.data), "data_sha256": data_slice.file_sha256,
                     "start_fraction": c.start_fraction, "end_fraction": c.end_fraction,
                     "slice_chars": [data_slice.start_char, data_slice.end_char], "file_chars": data_slice.file_chars,
                     "max_tokens": c.max_tokens, "context": c.context, "stride": c.stride or c.context,
                     "batch_size": c.batch_size or 1}
    elif c.task == "image-classify":
        images = read_images(c.data, c.max_examples)
        mapping = parse_label_map(c.label_map)
        task_info = {"name": c.task, "data": str(c.data), "data_sha256": images.file_sha256,
                     "n_examples": len(images), "max_examples": c.max_examples, "label_map": mapping}
    else:
        examples = read_examples(c.data, c.text_column, c.label_column, c.header, c.delimiter, c.max_examples)
        mapping = parse_label_map(c.label_map)
        task_info = {"name": c.task, "data": str(c.data), "data_sha256": examples.file_sha256,
                     "text_column": examples.text_column, "label_column": examples.label_column,
                     "header": examples.header, "n_examples": len(examples.texts), "max_examples": c.max_examples,
                     "label_map": mapping, "labels": c.labels, "template": c.template}
    backend = backend or open_backend(model, c.device)
    result = new_result(name or Path(str(model).rstrip("/")).name, _model_info(backend), task_info)
    lat_ids = lat_mask = None
    if c.task == "perplexity":
        result["metrics"] = perplexity(backend, data_slice, c.context, c.stride, c.max_tokens, c.batch_size or 1, progress)
        n = min(c.latency_tokens, c.context)
        lat_ids = torch.tensor([tokenize_text(backend.tokenizer, data_slice.text, n).ids])
    elif c.task == "image-classify":
        result["metrics"] = classify_images(backend, images, mapping, c.batch_size or 32, progress)
        lat_ids = pixel_values(backend, images, [0])
    else:
        if c.labels is not None:
            # the shell passes "\n" as two characters; templates mean a newline
            tmpl = c.template.replace("\\n", "\n").replace("\\t", "\t")
            result["metrics"] = zero_shot(backend, examples, c.labels.split(","), tmpl, mapping, progress)
        else:
            result["metrics"] = classify(backend, examples, mapping, c.batch_size or 32, progress)
        enc = backend.tokenizer([examples.texts[0]], truncation=True, max_length=max_input_length(backend),
                                return_tensors="pt")
        lat_ids, lat_mask = enc["input_ids"], enc["attention_mask"]
    result["cost"] = _cost(backend, lat_ids, lat_mask, c.latency_repeats)
    result["seconds"] = time.perf_counter() - start
    return result
