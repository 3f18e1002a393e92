"""What kind of module holds a weight, decided in one place: GPT-2's `Conv1D` (weight stored [in, out]), a
linear projection (`nn.Linear` or bitconv's `PackedLinear`), an embedding, or anything else."""

from __future__ import annotations

import torch
from torch import nn

LINEAR, CONV1D, EMBEDDING, OTHER = "linear", "conv1d", "embedding", "other"


def module_kind(module: nn.Module) -> str:
    from transformers.pytorch_utils import Conv1D

    from bitconv.quantize.modeling import PackedLinear

    if isinstance(module, Conv1D):
        return CONV1D
    if isinstance(module, (nn.Linear, PackedLinear)):
        return LINEAR
    if isinstance(module, nn.Embedding):
        return EMBEDDING
    return OTHER


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The module's weight in the linear layout [out, in] (a view; Conv1D's [in, out] transposed)."""
    w = module.weight.detach()
    return w.t() if module_kind(module) == CONV1D else w
