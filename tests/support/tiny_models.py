"""Tiny Llama and GPT-2 checkpoints whose widths are multiples of 256 (llama.cpp's TQ block), with a small
byte-level BPE tokenizer trained on Shakespeare fixture text kept in the repository, for the GGUF and plain-transformers exports.

q/k (Llama) and c_attn (GPT-2) weights are scaled up so that attention is far from uniform: then a wrong
row order of q/k (RoPE layout) changes the logits visibly instead of hiding in nearly equal scores.
"""

from __future__ import annotations

from pathlib import Path

import torch

from support.paths import FIXTURE_TEXT

VOCAB = 320


def save_tokenizer(folder: Path, pre: str = "gpt2") -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = byte_level if pre == "gpt2" else pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), byte_level])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    text = FIXTURE_TEXT.read_text()
    tok.train_from_iterator([text[i:i + 1000] for i in range(0, len(text), 1000)], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>").save_pretrained(folder)


def make_llama(folder: Path, hidden: int = 256, intermediate: int = 336, layers: int = 2, tokenizer: str | None = "smollm",
               qk_gain: float = 8.0, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(num_hidden_layers=layers, hidden_size=hidden, intermediate_size=intermediate,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128,
                         tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, rms_norm_eps=1e-5)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(qk_gain)
            layer.self_attn.k_proj.weight.mul_(qk_gain)
    model.save_pretrained(folder)
    if tokenizer:
        save_tokenizer(folder, tokenizer)
    return folder


def make_gpt2(folder: Path, hidden: int = 256, inner: int = 288, layers: int = 2, qk_gain: float = 8.0,
              seed: int = 0) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=layers, n_embd=hidden, n_head=4, n_inner=inner, vocab_size=VOCAB, n_positions=128,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(qk_gain)
    model.save_pretrained(folder)
    save_tokenizer(folder, "gpt2")
    return folder
