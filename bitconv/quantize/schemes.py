"""Quantization configs and codecs: quantize a float weight, encode it into stored arrays, decode it back.

The same `quantize()` serves `convert` and the straight-through training in `recover` (through
`fake_quantize`), so converting trained latent weights gives exactly what training saw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from bitconv.errors import BitconvError, FormatError
from bitconv.format.packing import (
    pack_bits,
    pack_ternary_2bit,
    pack_ternary_base3,
    unpack_bits,
    unpack_ternary_2bit,
    unpack_ternary_base3,
)
from bitconv.format.spec import TensorSpec
from bitconv.format.vocab import SUFFIX_CODES, SUFFIX_OUTLIER_IDX, SUFFIX_OUTLIER_VAL, SUFFIX_SCALE, SUFFIX_ZERO
from bitconv.quantize.config import QuantConfig

# grid of multiples of mean|W| searched by the "mse" scale estimator
MSE_GRID = tuple(round(0.3 + 0.05 * i, 2) for i in range(35))

# ---------------------------------------------------------------------------------------------------------
# reductions over granularity units


def reduce_units(x: torch.Tensor, granularity: str, group_size: int | None, op: str,
                 masked: bool = False) -> torch.Tensor:
    """Reduce [out, in] over each unit -> [1], [out] or [out, n_groups]. With `masked`, NaN entries
    (the outlier positions) are left out; without it the faster unmasked reductions run."""

    def red(t: torch.Tensor, dim) -> torch.Tensor:
        if op == "mean":
            return torch.nanmean(t, dim=dim) if masked else t.mean(dim=dim)
        if op == "median":
            flat = t.flatten(start_dim=dim if isinstance(dim, int) else 0) if dim is not None else t
            return torch.nanmedian(flat, dim=-1).values if flat.dim() else flat
        if op == "max":
            return torch.nan_to_num(t, nan=-math.inf).amax(dim=dim)
        if op == "min":
            return torch.nan_to_num(t, nan=math.inf).amin(dim=dim)
        raise ValueError(op)

    if granularity == "tensor":
        if op == "median":
            return torch.nanmedian(x.flatten()).reshape(1)
        return red(x.flatten(), 0).reshape(1)
    if granularity == "channel":
        return red(x, 1)
    out, n_in = x.shape
    full = (n_in // group_size) * group_size
    parts = []
    if full:
        parts.append(red(x[:, :full].reshape(out, -1, group_size), 2))
    if full < n_in:
        parts.append(red(x[:, full:], 1).reshape(out, 1))
    return torch.cat(parts, dim=1)


def expand(values: torch.Tensor, shape: tuple[int, int], granularity: str, group_size: int | None) -> torch.Tensor:
    """Broadcastable per-element view of per-unit values."""
    if granularity == "tensor":
        return values.reshape(1, 1)
    if granularity == "channel":
        return values.reshape(-1, 1)
    return values.repeat_interleave(group_size, dim=1)[:, : shape[1]]


# ---------------------------------------------------------------------------------------------------------
# quantize / dequantize on integer codes


@dataclass
class QuantizedWeight:
    """Unpacked codes (int8 [out, in]) with their scales, zero points and fp16 outliers."""

    spec: TensorSpec
    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None = None
    outlier_idx: torch.Tensor | None = None
    outlier_val: torch.Tensor | None = None


def n_outliers_for(fraction: float, numel: int) -> int:
    return int(round(fraction * numel))


def _outlier_indices(w: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest |w| flat indices; ties go to the lower index; returned sorted."""
    flat = w.abs().flatten()
    # a stable sort by descending magnitude breaks ties by index, so the choice is deterministic
    order = torch.sort(flat, descending=True, stable=True).indices[:k]
    return torch.sort(order).values


def _ternary_codes(w: torch.Tensor, scale_full: torch.Tensor) -> torch.Tensor:
    """clamp(round(w / s), -1, 1) as float, 0 where s == 0; in place on one temporary (this is the hot loop)."""
    if bool((scale_full > 0).all()):
        t = w / scale_full
        return t.round_().clamp_(-1, 1)
    safe = torch.where(scale_full > 0, scale_full, torch.ones_like(scale_full))
    t = torch.clamp(torch.round(w / safe), -1, 1)
    return torch.where(scale_full > 0, t, torch.zeros_like(t))


def _ternary_scale(w: torch.Tensor, abs_w: torch.Tensor, cfg_gran: str, gs: int | None, method: str,
                   masked: bool) -> torch.Tensor:
    if method == "absmean":
        return reduce_units(abs_w, cfg_gran, gs, "mean", masked)
    if method == "absmax":
        return reduce_units(abs_w, cfg_gran, gs, "max", masked)
    if method == "median":
        return reduce_units(abs_w, cfg_gran, gs, "median", masked)
    # mse: best multiple of absmean on a grid, then the least-squares scale for the chosen trits
    base = reduce_units(abs_w, cfg_gran, gs, "mean", masked)
    best_err = best_scale = None
    # outlier positions (NaN) become 0: their trit is then 0 and they add nothing to <w,t>, <t,t> or the error,
    # and every candidate of a unit is averaged over the same count, so plain means compare correctly
    w0 = torch.nan_to_num(w, nan=0.0)
    for mult in MSE_GRID:
        t = _ternary_codes(w0, expand(base * mult, w.shape, cfg_gran, gs))
        dot = reduce_units(w0 * t, cfg_gran, gs, "mean")
        tt = reduce_units(t * t, cfg_gran, gs, "mean")
        fitted = torch.where(tt > 0, dot / torch.where(tt > 0, tt, torch.ones_like(tt)), torch.zeros_like(tt))
        err = reduce_units((w0 - expand(fitted, w.shape, cfg_gran, gs) * t) ** 2, cfg_gran, gs, "mean")
        if best_err is None:
            best_err, best_scale = err, fitted
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_scale = torch.where(better, fitted, best_scale)
    return best_scale


def spec_for(cfg: QuantConfig, shape: tuple[int, int], scheme: str, layout: str = "linear",
             source_dtype: str = "float32", n_explicit_outliers: int | None = None) -> TensorSpec:
    """The stored layout of one weight under `cfg`: shared by the converter's plan and by `quantize()`."""
    gran, gs = cfg.granularity, cfg.group_size
    if scheme == "int8" and gran == "tensor":  # int8 embeddings under a per-tensor main scheme
        gran = "channel"
    # outliers belong to the main scheme; int8 embeddings (a different scheme) keep none
    k = n_outliers_for(cfg.keep_outliers, shape[0] * shape[1]) if scheme == cfg.scheme else 0
    if n_explicit_outliers is not None:
        k = n_explicit_outliers
    return TensorSpec(
        scheme=scheme, shape=tuple(shape), dtype=source_dtype, packing=cfg.packing if scheme == "ternary" else "2bit",
        granularity=gran, group_size=gs if gran == "group" else None, scale_method=cfg.scale_method, n_outliers=k,
        layout=layout,
    )


def quantize(weight: torch.Tensor, cfg: QuantConfig, scheme: str | None = None, layout: str = "linear",
             source_dtype: str | None = None, outlier_idx: torch.Tensor | None = None) -> QuantizedWeight:
    """Quantize a float weight [out, in] (linear layout) with `cfg`; `scheme` overrides cfg's (int8 embeddings).

    `outlier_idx` (flat indices into [out, in], e.g. super weights found by `bitconv.super_weights`) names
    the weights kept in fp16 explicitly; it replaces the top-|w| choice of `cfg.keep_outliers`.
    """
    scheme = scheme or cfg.scheme
    if weight.dim() != 2:
        raise BitconvError(f"only 2-D weights can be quantized, got shape {list(weight.shape)}")
    w = weight.detach().to(torch.float32).contiguous()
    # one reduction instead of an element-wise isfinite pass: any NaN or Inf makes the sum of |w| non-finite
    if not math.isfinite(w.abs().sum().item()):
        raise BitconvError("contains NaN or Inf values")
    n_explicit = None
    if outlier_idx is not None:
        outlier_idx = torch.unique(outlier_idx.to(device=w.device, dtype=torch.long))  # sorted, as stored
        if outlier_idx.numel() and (outlier_idx.min() < 0 or outlier_idx.max() >= w.numel()):
            raise BitconvError(f"outlier indices fall outside the weight of shape {list(w.shape)}")
        n_explicit = outlier_idx.numel()
    spec = spec_for(cfg, tuple(w.shape), scheme, layout, source_dtype or str(weight.dtype).replace("torch.", ""),
                    n_explicit)
    gran, gs, k = spec.granularity, spec.group_size, spec.n_outliers
    idx = val = None
    w_for_scale = w
    if k:
        idx = outlier_idx if outlier_idx is not None else _outlier_indices(w, k)
        val = w.flatten()[idx].to(torch.float16)
        w_for_scale = w.flatten().clone()
        w_for_scale[idx] = math.nan
        w_for_scale = w_for_scale.reshape(w.shape)
    masked = k > 0
    abs_w = w_for_scale.abs()
    zero = None
    if scheme == "ternary":
        scale = _ternary_scale(w_for_scale, abs_w, gran, gs, cfg.scale_method, masked)
        codes = _ternary_codes(w, expand(scale, w.shape, gran, gs))
        if k:
            codes.view(-1)[idx] = 0
    elif scheme == "binary":
        scale = reduce_units(abs_w, gran, gs, "mean", masked)
        codes = torch.where(w >= 0, 1.0, -1.0)
    elif scheme == "int8":
        scale = reduce_units(abs_w, gran, gs, "max", masked) / 127.0
        full = expand(scale, w.shape, gran, gs)
        codes = torch.clamp(torch.round(w / torch.where(full > 0, full, torch.ones_like(full))), -127, 127)
    else:
        levels = (1 << (4 if scheme == "uint4" else 2)) - 1
        lo = torch.clamp(reduce_units(w_for_scale, gran, gs, "min", masked), max=0.0)
        hi = torch.clamp(reduce_units(w_for_scale, gran, gs, "max", masked), min=0.0)
        scale = (hi - lo) / levels
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.clamp(torch.round(-lo / safe), 0, levels)
        codes = torch.clamp(torch.round(w / expand(safe, w.shape, gran, gs)) + expand(zero, w.shape, gran, gs), 0, levels)
        zero = zero.to(torch.uint8)
    scale = torch.nan_to_num(scale.to(torch.float32), nan=0.0)
    return QuantizedWeight(spec, codes.to(torch.int8), scale, zero, idx, val)


def dequantize(q: QuantizedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    spec = q.spec
    scale = expand(q.scale.to(torch.float32), spec.shape, spec.granularity, spec.group_size)
    codes = q.codes.to(torch.float32)
    if spec.scheme in ("uint4", "uint2"):
        codes = codes - expand(q.zero.to(torch.float32), spec.shape, spec.granularity, spec.group_size)
    w = codes * scale
    if spec.n_outliers:
        w = w.reshape(-1).clone()
        w[q.outlier_idx] = q.outlier_val.to(torch.float32)
        w = w.reshape(spec.shape)
    return w.to(dtype)


def _ternary_roundtrip(w: torch.Tensor, cfg: QuantConfig, outlier_idx: torch.Tensor | None) -> torch.Tensor:
    """dequantize(quantize(w)) for a ternary config with tensor operations only: no host synchronisation, so a
    training step on a GPU never waits for it. The same arithmetic as `quantize` (tested equal); outlier indices
    must be sorted and unique, as `quantize` makes them. Non-finite weights give non-finite outputs here
    (the training loop checks its loss) instead of `quantize`'s error."""
    w = w.to(torch.float32)
    gran, gs = cfg.granularity, cfg.group_size
    has_outliers = outlier_idx is not None and outlier_idx.numel() > 0
    w_for_scale = w
    if has_outliers:
        w_for_scale = w.flatten().clone()
        w_for_scale[outlier_idx] = math.nan
        w_for_scale = w_for_scale.reshape(w.shape)
    scale = _ternary_scale(w_for_scale, w_for_scale.abs(), gran, gs, cfg.scale_method, has_outliers)
    full = expand(torch.nan_to_num(scale, nan=0.0), w.shape, gran, gs)
    codes = torch.where(full > 0, (w / torch.where(full > 0, full, torch.ones_like(full))).round_().clamp_(-1, 1),
                        torch.zeros_like(w))
    out = codes * full
    if has_outliers:
        out = out.flatten()
        out[outlier_idx] = w.flatten()[outlier_idx].to(torch.float16).to(torch.float32)
        out = out.reshape(w.shape)
    return out


def roundtrip(weight: torch.Tensor, cfg: QuantConfig, outlier_idx: torch.Tensor | None = None) -> torch.Tensor:
    """The weight as the converted folder will compute with it: dequantize(quantize(weight)), in weight's dtype."""
    if cfg.scheme == "ternary":
        return _ternary_roundtrip(weight, cfg, outlier_idx).to(weight.dtype)
    return dequantize(quantize(weight, cfg, outlier_idx=outlier_idx), weight.dtype)


class _StraightThrough(torch.autograd.Function):
    """lerp(w, q(w), blend) forward, identity backward: the straight-through estimator with a warm-up blend
    (blend 1 gives q(w) exactly: torch.lerp returns its end point at weight 1)."""

    @staticmethod
    def forward(ctx, w, blend, cfg, outlier_idx):  # noqa: D401 - torch API
        q = roundtrip(w.detach(), cfg, outlier_idx)
        return q if blend is None else torch.lerp(w.detach(), q, blend)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None


def fake_quantize(weight: torch.Tensor, cfg: QuantConfig, outlier_idx: torch.Tensor | None = None,
                  blend: torch.Tensor | None = None) -> torch.Tensor:
    """Quantize-dequantize in the forward pass, identity gradient (straight-through estimator); with `blend`
    (a 0-d tensor, 0..1) the forward pass sees (1 - blend) * weight + blend * q(weight)."""
    if cfg.scheme == "fp16":
        return weight
    return _StraightThrough.apply(weight, blend, cfg, outlier_idx)


# ---------------------------------------------------------------------------------------------------------
# encode / decode to the stored arrays of formats/SPEC.md


def encode(q: QuantizedWeight) -> dict[str, np.ndarray]:
    spec = q.spec
    codes = q.codes.cpu().numpy()
    if spec.scheme == "ternary":
        packed = pack_ternary_base3(codes) if spec.packing == "base3" else pack_ternary_2bit(codes)
    elif spec.scheme == "binary":
        packed = pack_bits((codes > 0).astype(np.uint8), 1)
    elif spec.scheme == "int8":
        packed = codes.astype(np.int8)
    else:
        packed = pack_bits(codes.astype(np.uint8), 4 if spec.scheme == "uint4" else 2)
    arrays = {SUFFIX_CODES: packed, SUFFIX_SCALE: q.scale.cpu().numpy().astype(np.float32).reshape(spec.scale_shape())}
    if q.zero is not None:
        arrays[SUFFIX_ZERO] = q.zero.cpu().numpy().astype(np.uint8).reshape(spec.shape[0], spec.n_groups)
    if spec.n_outliers:
        arrays[SUFFIX_OUTLIER_IDX] = q.outlier_idx.cpu().numpy().astype(np.int64)
        arrays[SUFFIX_OUTLIER_VAL] = q.outlier_val.cpu().numpy().astype(np.float16)
    return arrays


def decode_codes(spec: TensorSpec, packed: np.ndarray) -> np.ndarray:
    """Stored code bytes -> int8 codes [out, in] (trits, signs, int8 or unsigned levels)."""
    n_in = spec.shape[1]
    if spec.scheme == "ternary":
        return unpack_ternary_base3(packed, n_in) if spec.packing == "base3" else unpack_ternary_2bit(packed, n_in)
    if spec.scheme == "binary":
        return unpack_bits(packed, 1, n_in).astype(np.int8) * 2 - 1
    if spec.scheme == "int8":
        return np.asarray(packed, dtype=np.int8)
    return unpack_bits(packed, 4 if spec.scheme == "uint4" else 2, n_in).astype(np.int8)


def decode(spec: TensorSpec, arrays: dict[str, np.ndarray]) -> QuantizedWeight:
    codes = torch.from_numpy(decode_codes(spec, arrays[SUFFIX_CODES]).copy())
    zero = torch.from_numpy(arrays[SUFFIX_ZERO].copy()) if SUFFIX_ZERO in arrays else None
    idx = val = None
    if spec.n_outliers:
        idx = torch.from_numpy(arrays[SUFFIX_OUTLIER_IDX].astype(np.int64))
        val = torch.from_numpy(arrays[SUFFIX_OUTLIER_VAL].astype(np.float16))
        if idx.numel() and (idx.min() < 0 or idx.max() >= spec.shape[0] * spec.shape[1]):
            raise FormatError("outlier indices fall outside the weight; the file is corrupt")
    scale = torch.from_numpy(np.asarray(arrays[SUFFIX_SCALE], dtype=np.float32).copy())
    return QuantizedWeight(spec, codes, scale, zero, idx, val)


def quantize_activations_int8(x: torch.Tensor) -> torch.Tensor:
    """W1.58A8 activations as BitNet b1.58: per-token absmax to int8 and back (fake-quant).

    s = 127 / max(|x|, 1e-5) over the last dimension; x_q = clamp(round(x * s), -128, 127) / s.
    Used by training (with a straight-through gradient), by `load()` and mirrored by the ONNX op.
    """
    s = 127.0 / x.detach().abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    q = torch.clamp(torch.round(x * s), -128, 127) / s
    return x + (q - x).detach()
