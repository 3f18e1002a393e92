"""The chunked LM-head loss (bitconv.train.losses.lm_head_loss) against the same loss through autograd on full
logits (F.cross_entropy and distillation_kl): loss and gradients with respect to the hidden states and the head,
with and without a teacher and biases, at T = 1 and T = 2, w = 0, 0.5 and 1; and the per-chunk function as
torch.compile traces it (the graph CUDA compiles) against the eager one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bitconv.train import losses

TOKENS, HIDDEN, VOCAB, CHUNK = 50, 16, 40, 16  # three full chunks and a ragged one


def _setup(bias: bool):
    g = torch.Generator().manual_seed(0)
    hidden = (torch.randn(TOKENS, HIDDEN, generator=g) * 2).requires_grad_()
    head, t_head = nn.Linear(HIDDEN, VOCAB, bias=bias), nn.Linear(HIDDEN, VOCAB, bias=bias)
    with torch.no_grad():
        for layer in (head, t_head):
            layer.weight.copy_(torch.randn(VOCAB, HIDDEN, generator=g))
            if bias:
                layer.bias.copy_(torch.randn(VOCAB, generator=g))
    t_hidden = torch.randn(TOKENS, HIDDEN, generator=g) * 2
    target = torch.randint(0, VOCAB, (TOKENS,), generator=g)
    return hidden, head, t_hidden, t_head, target


def _grads(loss, hidden, head):
    params = [hidden, head.weight] + ([head.bias] if head.bias is not None else [])
    return torch.autograd.grad(loss, params)


CASES = [(False, 1.0, 0.0)] + [(True, temperature, w) for temperature in (1.0, 2.0) for w in (0.0, 0.5, 1.0)]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("teacher,temperature,w", CASES)
def test_the_chunked_head_loss_equals_autograd_on_full_logits(bias, teacher, temperature, w):
    hidden, head, t_hidden, t_head, target = _setup(bias)
    got = losses.lm_head_loss(hidden, head, target, t_hidden if teacher else None, t_head if teacher else None,
                              temperature, w, chunk=CHUNK)
    logits = head(hidden)
    t_logits = t_head(t_hidden) if teacher else None
    want = losses.logits_loss(logits, target, t_logits, temperature, w)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for g_got, g_want in zip(_grads(got, hidden, head), _grads(want, hidden, head)):
        torch.testing.assert_close(g_got, g_want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("temperature,w", [(1.0, 1.0), (2.0, 0.5)])
def test_the_chunk_loss_traced_by_torch_compile_equals_the_eager_one(temperature, w):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(CHUNK, VOCAB, generator=g) * 3, torch.randn(CHUNK, VOCAB, generator=g) * 3
    bias = torch.randn(VOCAB, generator=g)
    target = torch.randint(0, VOCAB, (CHUNK,), generator=g)
    args = (bias, t, bias, target, temperature, w, 1 / 50, torch.float32)
    # aot_eager: the same graph capture and functionalization of the in-place ops as on CUDA, without code generation
    compiled = torch.compile(losses._chunk_losses, backend="aot_eager", dynamic=False, fullgraph=True)
    for got, want in zip(compiled(s.clone(), *args), losses._chunk_losses(s.clone(), *args)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
