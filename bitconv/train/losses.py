"""What training minimises and how its knobs move over the steps: distillation KL, hidden-state and attention-map
matching, the quantization schedule (progressive widths, warm-up blend) and the learning-rate schedule."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from bitconv.train.config import RecoverConfig


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


def attention_loss(student_attentions, teacher_attentions, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over layers of KL(teacher || student) between attention distributions (MiniLM, Wang et al. 2020;
    TernaryBERT matches the same maps): per head and query position, over the keys, padding queries left out.

    Attention maps are [batch, heads, queries, keys] probabilities; teacher and student need the same heads.
    """
    losses = []
    for s, t in zip(student_attentions, teacher_attentions):
        s_log = s.float().clamp(min=1e-12).log()
        t = t.float()
        kl = (t * (t.clamp(min=1e-12).log() - s_log)).sum(-1)  # [batch, heads, queries]
        if mask is not None:
            m = mask[:, None, :].to(kl.dtype)
            losses.append((kl * m).sum() / (m.sum() * kl.shape[1]))
        else:
            losses.append(kl.mean())
    return torch.stack(losses).mean()


def quant_phase(cfg: RecoverConfig, step: int) -> tuple[float, float]:
    """(bits, blend) at a step: progressive phases first, then the target; blend ramps over the warm-up."""
    bits = cfg.quant.bits
    if cfg.progressive and step < len(cfg.progressive) * cfg.phase_steps:
        bits = cfg.progressive[step // cfg.phase_steps]
    blend = 1.0 if cfg.quant_warmup_steps <= 0 else min(1.0, step / cfg.quant_warmup_steps)
    return bits, blend


def lr_factor(step: int, total: int, warmup_fraction: float) -> float:
    """Linear warm-up over `warmup_fraction` of the steps, then linear decay to 0."""
    warm = max(1, int(total * warmup_fraction))
    if step < warm:
        return (step + 1) / warm
    return max(0.0, (total - step) / max(1, total - warm))


# ---------------------------------------------------------------------------------------------------------
# the language-model head and its losses, chunked over tokens


def _chunk_losses(s: torch.Tensor, s_bias: torch.Tensor | None, t: torch.Tensor | None, t_bias: torch.Tensor | None,
                  target: torch.Tensor, temperature: float, distill_weight: float, grad_scale: float,
                  grad_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss, grad_scale * d loss / d logits in grad_dtype) of one chunk of student (and teacher) logits in
    any dtype, softmaxed in fp32: (1 - w) * CE + w * T^2 * KL(teacher || student).

    Each eager pass over a chunk reads and writes tokens x vocabulary floats, so: terms of weight 0 are skipped,
    at T = 1 one softmax serves both terms, buffers are reused in place, and the one-hot of the targets is
    subtracted from the finished gradient (tokens elements, not tokens x vocabulary). Compiled (CUDA), the
    casts, biases, softmaxes, loss and gradient fuse into a few kernels that read the logits and write the
    gradient once or twice."""
    w, T = distill_weight, temperature
    ce_w = 1.0 if t is None else 1.0 - w  # the weight of the cross-entropy term
    s = s.float() if s_bias is None else s.float() + s_bias
    log_p = torch.log_softmax(s, dim=-1)
    loss = torch.zeros((), dtype=torch.float32, device=s.device)
    if ce_w > 0:
        loss = loss - ce_w * log_p.gather(1, target[:, None]).sum()
    if t is None or w == 0:
        grad = log_p.exp_().mul_(ce_w * grad_scale)
    else:
        log_ps = log_p if T == 1 else torch.log_softmax(s / T, dim=-1)
        t = t.float() if t_bias is None else t.float() + t_bias
        log_pt = torch.log_softmax(t if T == 1 else t / T, dim=-1)
        pt = log_pt.exp()
        loss = loss + w * T * T * torch.dot(pt.view(-1), log_pt.sub_(log_ps).view(-1))
        if T == 1:  # (1 - w) * (p - onehot) + w * (p - pt) = p - w * pt - (1 - w) * onehot
            grad = log_p.exp_().sub_(pt, alpha=w).mul_(grad_scale)
        else:
            grad = log_ps.exp_().sub_(pt).mul_(w * T * grad_scale)
            if ce_w > 0:
                grad.add_(log_p.exp_(), alpha=ce_w * grad_scale)
    grad = grad.to(grad_dtype)
    if ce_w > 0:
        grad[torch.arange(len(target), device=grad.device), target] -= ce_w * grad_scale
    return loss, grad


@functools.cache
def _compiled_chunk_losses():
    """_chunk_losses compiled once per shape (a full chunk, the last one): only used on CUDA, where Inductor's
    fused softmax and reduction kernels are known to work."""
    return torch.compile(_chunk_losses, dynamic=False, fullgraph=True)


class _HeadLoss(torch.autograd.Function):
    """The LM head and its loss in one pass over chunks of tokens: logits (bf16 or fp32 matmul, fp32 softmax)
    exist for one chunk at a time and the gradients with respect to the hidden states and the head's weight
    are computed on the way, so no [tokens, vocabulary] tensor is kept for the backward pass (the idea of
    fused linear cross-entropy kernels such as Liger's, in plain torch)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, t_hidden, t_weight, t_bias, temperature, distill_weight,
                chunk, dtype, compiled):
        n = hidden.shape[0]
        w = weight.detach().to(dtype)
        b = bias.detach().float() if bias is not None else None
        tw = t_weight.detach().to(dtype) if t_weight is not None else None
        tb = t_bias.detach().float() if t_bias is not None else None
        losses = _compiled_chunk_losses() if compiled and hidden.is_cuda else _chunk_losses
        grad_h = torch.empty_like(hidden)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if bias is not None else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False), torch.no_grad():
            for lo in range(0, n, chunk):
                h = hidden[lo:lo + chunk].detach().to(dtype)
                t = t_hidden[lo:lo + chunk].to(dtype) @ tw.t() if t_hidden is not None else None
                # logits in the matmul's dtype; the loss casts them to fp32 (fused with its first pass when compiled)
                loss, g = losses(h @ w.t(), b, t, tb, target[lo:lo + chunk], temperature, distill_weight, 1.0 / n,
                                 dtype)
                total += loss
                grad_h[lo:lo + chunk] = (g @ w).to(grad_h.dtype)
                grad_w += (g.t() @ h).float()
                if grad_b is not None:
                    grad_b += g.float().sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b if grad_b is not None else torch.empty(0))
        ctx.has_bias = bias is not None
        return total / n

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        return (grad_h * grad_out, (grad_w * grad_out), (grad_b * grad_out) if ctx.has_bias else None,
                None, None, None, None, None, None, None, None, None)


def lm_head_loss(hidden: torch.Tensor, head: nn.Module, target: torch.Tensor, teacher_hidden: torch.Tensor | None = None,
                 teacher_head: nn.Module | None = None, temperature: float = 1.0, distill_weight: float = 0.0,
                 chunk: int = 8192, dtype: torch.dtype = torch.float32, compiled: bool = False) -> torch.Tensor:
    """Mean over tokens of (1 - w) * next-token CE + w * T^2 * KL(teacher || student), computed from the final
    hidden states [tokens, hidden] and the heads (nn.Linear) without materialising the full logits. `compiled`:
    the per-chunk loss runs torch.compile'd on CUDA (eager elsewhere)."""
    t_weight = teacher_head.weight if teacher_head is not None else None
    t_bias = teacher_head.bias if teacher_head is not None else None
    return _HeadLoss.apply(hidden, head.weight, head.bias, target, teacher_hidden, t_weight, t_bias, temperature,
                           distill_weight if teacher_hidden is not None else 0.0, chunk, dtype, compiled)


def logits_loss(logits: torch.Tensor, target: torch.Tensor, teacher_logits: torch.Tensor | None = None,
                temperature: float = 1.0, distill_weight: float = 0.0) -> torch.Tensor:
    """The same loss from logits a model already computed (models whose head does more than a linear map,
    and sharded training), through autograd."""
    ce = F.cross_entropy(logits.float(), target)
    if teacher_logits is None:
        return ce
    return (1 - distill_weight) * ce + distill_weight * distillation_kl(logits, teacher_logits, temperature)
