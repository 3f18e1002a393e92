"""Batched one-token-at-a-time decoding of a causal LM with a key/value cache (the stepping half of
bitconv.data.synth): `HFDecoder(model, length)` is a callable `step(ids, t) -> logits` that feeds the tokens `ids`
[batch] at the next position and returns the next-token logits [batch, vocabulary].

It steps through transformers' own preallocated cache. A decoder with a cache of its own for Llama-family models
(each step attending only to the positions so far, grouped-query attention without repeated keys and values) was
tried and measured slower: on one H200 with SmolLM2-135M in bf16, batch 2048, 73 ms a step over whole 512-token
sequences against 37 ms for this one (docs/benchmarks/recover.md); on the CPU no faster over whole sequences.
Each step compiled (`torch.compile(mode="reduce-overhead")`, CUDA graphs over the static cache) was also tried and
measured 3x slower on one H200 (20,171 against 62,122 tokens/s at batch 2048, docs/benchmarks/recover.md), so it
was removed.
"""

from __future__ import annotations

import inspect

import torch


class HFDecoder:
    """Any transformers causal LM, stepping through its own cache: a preallocated StaticCache (filled in place by
    the model) where this transformers has one, else the growing DynamicCache. `reset()` starts new sequences of
    the same batch size in the same cache, so a stream allocates it once."""

    def __init__(self, model, length: int):
        self.model = model
        try:
            from transformers import StaticCache

            self.cache = StaticCache(config=model.config, max_cache_len=length)
        except (ImportError, TypeError, ValueError):
            from transformers import DynamicCache

            self.cache = DynamicCache()
        # transformers renamed `past_key_values` to `cache` (5.2x); pass it under the name this version reads
        self.name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def reset(self) -> None:
        self.cache.reset()

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, t: int) -> torch.Tensor:
        """The cache knows the position (t is implied by the steps before)."""
        out = self.model(input_ids=ids[:, None], use_cache=True, **{self.name: self.cache})
        return out.logits[:, -1, :]
