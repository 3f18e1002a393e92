"""What a model costs: bytes on disk, bytes of weights in memory by category, latency, peak memory, and
how far each quantized matrix is from its source weights.

Categories are the converter's (bitconv.format.vocab.category_of): "linear" (projections inside the repeated
blocks, the ones bitconv quantizes), "embedding" (token/position embeddings and lm_head) and "other" (norms,
biases, heads).
"""

from __future__ import annotations

import os
import re
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from bitconv.evaluate.backends import Backend
from bitconv.format.vocab import category_of, category_totals
from bitconv.quantize.kinds import module_kind


def disk_bytes(backend: Backend) -> dict:
    """Bytes of the weight files (safetensors, GGUF, ONNX and its external data) as stored."""
    files = [p for p in backend.weight_files if p.is_file()]
    return {"weight_files": [p.name for p in files], "n_bytes": sum(p.stat().st_size for p in files)}


def weight_memory(model: torch.nn.Module) -> dict:
    """Bytes and logical weight counts of the model's tensors in memory, by category.

    A packed layer's buffers (codes, scales, zero points, outliers) count as its weight's bytes, and the
    weight's [out, in] elements as its parameters; tensors shared by two modules (tied lm_head) count once.
    """
    from bitconv.quantize.modeling import PackedLinear

    rows = []
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        kind = module_kind(module)
        prefix = f"{mod_name}." if mod_name else ""
        tensors = list(module.named_parameters(recurse=False))
        if isinstance(module, PackedLinear):
            tensors += [(n, b) for n, b in module.named_buffers(recurse=False) if b is not None]
        for t_name, tensor in tensors:
            if tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
            if t_name == "bias" or tensor.dim() != 2 and not isinstance(module, PackedLinear):
                category = "other"
            else:
                category = category_of(prefix + "weight", kind, 2)
            n_params = tensor.numel()
            if isinstance(module, PackedLinear):
                n_params = module.spec.shape[0] * module.spec.shape[1] if t_name == "qcodes" else 0
            rows.append((category, n_params, tensor.numel() * tensor.element_size()))
    return category_totals(rows, all_categories=True, with_total=True)


def file_weight_bytes(folder: Path) -> dict:
    """For a bitconv folder: bytes and weights stored per category (from the packed files' own tables)."""
    from bitconv.format.summary import summarize

    return category_totals(((r.category, r.n_params, r.n_bytes) for r in summarize(folder).tensors),
                           all_categories=True, with_total=True)


def latency(backend: Backend, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
            repeats: int = 5, warmup: int = 1) -> dict:
    """Median wall time of `backend.logits` on one fixed input, after `warmup` untimed calls.

    `input_ids` are pixel values for an image classifier; a GPU is waited for, so each time is the whole call.
    """
    from bitconv.device import synchronize

    for _ in range(warmup):
        backend.logits(input_ids, attention_mask)
    times = []
    for _ in range(repeats):
        synchronize(backend.device)
        start = time.perf_counter()
        backend.logits(input_ids, attention_mask)
        synchronize(backend.device)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    images = input_ids.dim() == 4  # pixel values [batch, channels, height, width]
    per_item = 1000 * median / (input_ids.shape[0] if images else input_ids.numel())
    return {"repeats": repeats, "warmup": warmup, "input_shape": list(input_ids.shape), "median_s": median,
            "min_s": min(times), "max_s": max(times), "median_ms_per_token": None if images else per_item,
            "median_ms_per_image": per_item if images else None,
            "threads": torch.get_num_threads(), "device": str(backend.device),
            # other processes slow a shared machine down; the 1-minute load average says how busy it was
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def peak_rss_bytes() -> int:
    """The process's peak resident memory so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def natural_key(name: str) -> list:
    """Sort key that puts layers.2 before layers.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def quantization_errors(source, folder: Path) -> list[dict]:
    """Relative Frobenius error ||W - W_q|| / ||W|| of every block projection of a bitconv folder.

    `source` is a bitconv.quantize.source.Source of the original checkpoint; W_q is decoded from the packed file (a
    weight stored as float16, as with --bits 16, is compared as stored).
    """
    from bitconv.format.reader import PackedReader
    from bitconv.quantize.schemes import decode, dequantize

    reader = PackedReader(folder)
    names = set(source.names())
    rows = []
    plain = [n for n in reader.plain_names() if category_of(n, None, len(reader.locations[n][1]["shape"])) == "linear"]
    for name in sorted(set(reader.specs) | set(plain), key=natural_key):
        if name not in names:
            continue
        w = source.get(name).detach().to(torch.float32)
        if name in reader.specs:
            spec = reader.specs[name]
            wq = dequantize(decode(spec, reader.quantized_arrays(name)))
            if spec.layout == "conv1d":
                wq = wq.t()
            scheme = spec.scheme
        else:
            wq = torch.from_numpy(reader.raw(name).astype("float32"))
            scheme = reader.locations[name][1]["dtype"].lower()
        norm = torch.linalg.norm(w).item()
        err = torch.linalg.norm(w - wq).item()
        rows.append({"name": name, "shape": list(w.shape), "scheme": scheme,
                     "rel_frobenius_error": err / norm if norm else (0.0 if err == 0 else None)})
    return rows
