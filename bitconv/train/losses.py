"""What training minimises and how its knobs move over the steps: distillation KL, hidden-state and attention-map
matching, the quantization schedule (progressive widths, warm-up blend) and the learning-rate schedule."""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
