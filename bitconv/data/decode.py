"""Batched one-token-at-a-time decoding of a causal LM with a key/value cache (the stepping half of
bitconv.data.synth): `decoder_for(model, batch, length)` gives a callable `step(ids, t) -> logits` that feeds the
tokens `ids` [batch] at position t and returns the next-token logits [batch, vocabulary].

For Llama-family models (`KVDecoder`) the loop keeps its own preallocated cache [batch, kv_heads, length, head_dim]
per layer in the model's dtype. Every sequence of a batch is at the same position, so a step needs no mask: the new
position attends to cache[:, :, :t + 1], and the cost of a step grows with t instead of always covering the full
length. Grouped-query attention repeats no keys or values: the query heads that share a key/value head are laid out
as that head's query rows ([batch, kv_heads, groups, head_dim]), and one unmasked attention call of `groups` queries
against the shared keys computes them all (how decoding kernels such as FlashAttention's handle GQA), with any
scaled_dot_product_attention backend. The model's own embedding, Linear, norm and MLP modules and its rotary
embedding compute everything else, so biases, activations and rope scaling stay the model's.

Other architectures step through transformers' own preallocated cache (`HFDecoder`).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

# families whose decoder layer is Llama's: pre-norm attention (q/k/v/o projections, rotate-half rope on every
# dimension) and MLP blocks, a final norm, no embedding scaling or logit capping
LLAMA_FAMILIES = ("llama", "mistral", "qwen2")


def supports_kv_decoding(model, length: int) -> bool:
    """Whether `KVDecoder` computes exactly what the model's forward pass computes, for sequences of `length`."""
    config = model.config
    if getattr(config, "model_type", None) not in LLAMA_FAMILIES:
        return False
    window = getattr(config, "sliding_window", None)
    if window is not None and window < length:  # a window shorter than the sequence needs a mask
        return False
    if getattr(config, "partial_rotary_factor", 1.0) != 1.0:
        return False
    base = getattr(model, "model", None)
    if base is None or not all(hasattr(base, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return False
    return all(hasattr(layer, "input_layernorm") and hasattr(layer, "post_attention_layernorm")
               and hasattr(layer, "mlp") and all(hasattr(layer.self_attn, p) for p in
                                                 ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling"))
               for layer in base.layers)


def decoder_for(model, batch: int, length: int):
    return KVDecoder(model, batch, length) if supports_kv_decoding(model, length) else HFDecoder(model, length)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Llama's rope on [..., head_dim]: x * cos + rotate_half(x) * sin."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class KVDecoder:
    """Decoding for Llama-family models (see the module docstring) with a cache for `batch` sequences of
    `length` tokens."""

    def __init__(self, model, batch: int, length: int):
        self.model, self.base = model, model.model
        attn = self.base.layers[0].self_attn
        self.heads, self.kv_heads = model.config.num_attention_heads, model.config.num_key_value_heads
        self.head_dim = attn.head_dim
        weight = self.base.embed_tokens.weight
        shape = (len(self.base.layers), batch, self.kv_heads, length, self.head_dim)
        self.keys = torch.empty(shape, dtype=weight.dtype, device=weight.device)
        self.values = torch.empty(shape, dtype=weight.dtype, device=weight.device)

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, t: int) -> torch.Tensor:
        base, n = self.base, ids.shape[0]
        x = base.embed_tokens(ids)
        # the model's rotary embedding for this one position ([1, 1, head_dim]; dynamic rope types see it too)
        position = torch.full((1, 1), t, dtype=torch.long, device=ids.device)
        cos, sin = base.rotary_emb(x[:, None], position_ids=position)
        groups = self.heads // self.kv_heads
        for i, layer in enumerate(base.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = _rotate(attn.q_proj(h).view(n, self.heads, self.head_dim), cos, sin)
            self.keys[i, :, :, t] = _rotate(attn.k_proj(h).view(n, self.kv_heads, self.head_dim), cos, sin)
            self.values[i, :, :, t] = attn.v_proj(h).view(n, self.kv_heads, self.head_dim)
            # query head j uses key/value head j // groups (transformers' repeat_kv order)
            o = F.scaled_dot_product_attention(q.view(n, self.kv_heads, groups, self.head_dim),
                                               self.keys[i, :, :, :t + 1], self.values[i, :, :, :t + 1],
                                               scale=attn.scaling)
            x = x + attn.o_proj(o.reshape(n, self.heads * self.head_dim))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.model.get_output_embeddings()(base.norm(x))


class HFDecoder:
    """Any transformers causal LM, stepping through its own cache: a preallocated StaticCache (filled in place by
    the model) where this transformers has one, else the growing DynamicCache."""

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

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, t: int) -> torch.Tensor:
        """The cache knows the position (t is implied by the steps before)."""
        out = self.model(input_ids=ids[:, None], use_cache=True, **{self.name: self.cache})
        return out.logits[:, -1, :]
