"""Super weights (Yu et al. 2024, "The Super Weight in Large Language Models"): find them, keep them.

A handful of scalar weights in the MLP output projections (Llama's down_proj, GPT-2's mlp.c_proj,
BERT's output.dense) meet a massive input activation and produce the massive activations the rest of
the network depends on; zeroing one can wreck a model, and a ternary quantizer flattens them. We find
them from activation spikes on calibration text: for each candidate projection, the largest
max_t |x[t, j]| * |W[i, j]| contributions (input channel j spiking, weight W[i, j] carrying it to output
channel i), and keep the top ones in fp16 through the format's sparse outlier tensors.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Iterable

import torch
from torch import nn

from bitconv.errors import BitconvError
from bitconv.quantize.kinds import CONV1D, linear_weight, module_kind

# module names of MLP output projections, by architecture (BERT's attention output also ends in
# output.dense, hence the negative look-behind)
MLP_OUTPUT_PATTERNS = (
    r"mlp\.down_proj$", r"mlp\.c_proj$", r"(?<!attention\.)output\.dense$", r"\.fc2$", r"mlp\.dense_4h_to_h$",
    r"ffn\.lin2$", r"mlp\.fc_out$",
)


@dataclass
class SuperWeight:
    tensor: str  # weight tensor name, e.g. model.layers.2.mlp.down_proj.weight
    row: int  # output channel (linear layout [out, in])
    col: int  # input channel
    value: float
    input_max: float  # max |x[:, col]| over the calibration tokens
    score: float  # input_max * |value|

    def flat_index(self, n_in: int) -> int:
        return self.row * n_in + self.col

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def mlp_output_modules(model: nn.Module, candidates: Iterable[str] | None = None) -> dict[str, nn.Module]:
    """Weight name -> module for the MLP output projections (restricted to `candidates` weight names)."""
    allowed = set(candidates) if candidates is not None else None
    found = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            continue
        if not any(re.search(p, name) for p in MLP_OUTPUT_PATTERNS):
            continue
        if allowed is not None and f"{name}.weight" not in allowed:
            continue
        found[f"{name}.weight"] = module
    return found


@torch.no_grad()
def input_maxima(model: nn.Module, modules: dict[str, nn.Module], batches: Iterable[dict]) -> dict[str, torch.Tensor]:
    """Per input channel max |x| seen by each module over the calibration batches (padding excluded)."""
    maxima: dict[str, torch.Tensor] = {}
    handles = []
    current_mask: list[torch.Tensor | None] = [None]

    def hook_for(name: str):
        def hook(module, args):
            x = args[0].detach().float()
            mask = current_mask[0]
            if mask is not None and x.dim() == 3 and x.shape[:2] == mask.shape:
                x = x * mask.unsqueeze(-1).to(x.dtype)
            m = x.abs().reshape(-1, x.shape[-1]).amax(0)
            maxima[name] = m if name not in maxima else torch.maximum(maxima[name], m)

        return hook

    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(hook_for(name)))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            current_mask[0] = batch.get("attention_mask")
            model(**batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return maxima


def find_super_weights(model: nn.Module, batches: Iterable[dict], n: int,
                       candidates: Iterable[str] | None = None) -> list[SuperWeight]:
    """The `n` largest |input| x |weight| contributions over all MLP output projections."""
    modules = mlp_output_modules(model, candidates)
    if not modules:
        raise BitconvError("--super-weights: the model has no MLP output projection (down_proj, c_proj, "
                           "output.dense) among its quantized weights")
    maxima = input_maxima(model, modules, batches)
    scored: list[SuperWeight] = []
    for name, module in modules.items():
        if name not in maxima:
            continue
        w = linear_weight(module).float()
        score = w.abs() * maxima[name].to(w.device).unsqueeze(0)
        k = min(n, score.numel())
        top = torch.topk(score.flatten(), k)
        for s, flat in zip(top.values.tolist(), top.indices.tolist()):
            row, col = divmod(flat, w.shape[1])
            scored.append(SuperWeight(name, row, col, float(w[row, col]), float(maxima[name][col]), float(s)))
    scored.sort(key=lambda sw: (-sw.score, sw.tensor, sw.row, sw.col))
    return scored[:n]


def as_outlier_indices(found: list[SuperWeight], shapes: dict[str, tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Weight name -> sorted flat indices into its [out, in] (linear-layout) weight."""
    by_tensor: dict[str, list[int]] = {}
    for sw in found:
        by_tensor.setdefault(sw.tensor, []).append(sw.flat_index(shapes[sw.tensor][1]))
    return {name: torch.tensor(sorted(set(idx)), dtype=torch.long) for name, idx in sorted(by_tensor.items())}


def linear_shapes(model: nn.Module, names: Iterable[str]) -> dict[str, tuple[int, int]]:
    modules = dict(model.named_modules())
    return {name: tuple(linear_weight(modules[name[: -len(".weight")]]).shape) for name in names}


def zeroed(model: nn.Module, found: list[SuperWeight]):
    """Context manager: the super weights set to zero (Yu et al.'s test of what they carry), then restored."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        modules = dict(model.named_modules())
        saved = []
        for sw in found:
            module = modules[sw.tensor[: -len(".weight")]]
            conv = module_kind(module) == CONV1D
            r, c = (sw.col, sw.row) if conv else (sw.row, sw.col)
            saved.append((module, r, c, module.weight[r, c].item()))
            with torch.no_grad():
                module.weight[r, c] = 0.0
        try:
            yield
        finally:
            with torch.no_grad():
                for module, r, c, v in saved:
                    module.weight[r, c] = v

    return ctx()
