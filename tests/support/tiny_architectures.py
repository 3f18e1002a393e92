"""Tiny random checkpoints of the architectures bitconv claims (the README's matrix), their example inputs, and an
independent reference for a converted folder: its weights decoded by the numpy reference decoder into an ordinary
float checkpoint that plain transformers loads without bitconv's quantizer.

GPT-2 and Llama come from support.tiny_models (widths of 256 and a tokenizer: llama.cpp's TQ blocks and vocabulary),
so that their GGUF export runs too; the others are as small as their configs allow.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
import transformers as tf

from bitconv.format.reader import PackedReader
from bitconv.format.vocab import TRANSFORMERS_GUARD_KEY
from bitconv.quantize.schemes import decode, dequantize
from support.tiny_models import make_gpt2, make_llama

TOKENS = dict(vocab_size=64, bos_token_id=0, eos_token_id=1, pad_token_id=1)
DECODER = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=48, num_attention_heads=2,
               num_key_value_heads=1, max_position_embeddings=32, **TOKENS)
ENCODER = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=48, num_attention_heads=2,
               max_position_embeddings=40, **TOKENS)

# name -> (model class, config) of a tiny random model; gpt2 and llama are made by support.tiny_models
CONFIGS = {
    "bert": (tf.BertForSequenceClassification, tf.BertConfig(**ENCODER)),
    "roberta": (tf.RobertaForMaskedLM, tf.RobertaConfig(**ENCODER)),
    "distilbert": (tf.DistilBertForSequenceClassification,
                   tf.DistilBertConfig(n_layers=2, dim=32, hidden_dim=48, n_heads=2, max_position_embeddings=32,
                                       **TOKENS)),
    "qwen2": (tf.Qwen2ForCausalLM, tf.Qwen2Config(**DECODER)),
    "qwen3": (tf.Qwen3ForCausalLM, tf.Qwen3Config(head_dim=16, **DECODER)),
    "mistral": (tf.MistralForCausalLM, tf.MistralConfig(**DECODER)),
    "gemma3": (tf.Gemma3ForCausalLM, tf.Gemma3TextConfig(head_dim=16, sliding_window=16, **DECODER)),
    "phi3": (tf.Phi3ForCausalLM, tf.Phi3Config(**DECODER)),
    "opt": (tf.OPTForCausalLM, tf.OPTConfig(num_hidden_layers=2, hidden_size=32, ffn_dim=48, num_attention_heads=2,
                                           max_position_embeddings=32, word_embed_proj_dim=32, **TOKENS)),
    "gpt_neox": (tf.GPTNeoXForCausalLM, tf.GPTNeoXConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=48,
                                                        num_attention_heads=2, max_position_embeddings=32, **TOKENS)),
    "falcon": (tf.FalconForCausalLM, tf.FalconConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                                    **TOKENS)),
    "t5": (tf.T5ForConditionalGeneration, tf.T5Config(num_layers=2, d_model=32, d_ff=48, num_heads=2, d_kv=16,
                                                      decoder_start_token_id=0, **TOKENS)),
    "vit": (tf.ViTForImageClassification, tf.ViTConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=48,
                                                       num_attention_heads=2, image_size=16, patch_size=8,
                                                       num_labels=3)),
    "whisper": (tf.WhisperForConditionalGeneration,
                tf.WhisperConfig(encoder_layers=2, decoder_layers=2, d_model=32, encoder_attention_heads=2,
                                 decoder_attention_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=48, num_mel_bins=8,
                                 max_source_positions=16, max_target_positions=32, decoder_start_token_id=0,
                                 **TOKENS)),
}
ARCHITECTURES = ("gpt2", "bert", "roberta", "distilbert", "llama", "qwen2", "qwen3", "mistral", "gemma3", "phi3",
                 "opt", "gpt_neox", "falcon", "t5", "vit", "whisper")


def make_architecture(name: str, folder: Path) -> Path:
    """A tiny random checkpoint of architecture `name`, saved by transformers into `folder`."""
    if name == "gpt2":
        return make_gpt2(folder)
    if name == "llama":
        return make_llama(folder, tokenizer="gpt2")
    cls, config = CONFIGS[name]
    torch.manual_seed(0)
    cls(copy.deepcopy(config)).save_pretrained(folder)
    return folder


def example_inputs(name: str, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if name == "vit":
        return {"pixel_values": torch.randn(1, 3, 16, 16, generator=g, dtype=dtype)}
    if name == "whisper":
        return {"input_features": torch.randn(1, 8, 32, generator=g, dtype=dtype),
                "decoder_input_ids": torch.tensor([[0, 5, 7]])}
    ids = torch.tensor([[3, 5, 7, 9, 11, 2]])
    if name == "t5":
        return {"input_ids": ids, "decoder_input_ids": torch.tensor([[0, 5, 7]])}
    return {"input_ids": ids}


def main_output(output) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output.last_hidden_state


def dequantized_reference(folder: Path, out: Path) -> Path:
    """An ordinary float checkpoint of a bitconv folder, decoded by the numpy reference decoder (no torch unpacking,
    no quantizer): what the packed model must compute."""
    from safetensors.numpy import save_file

    reader = PackedReader(folder)
    tensors = dict(reader.iter_plain())
    for name, spec in reader.specs.items():
        weight = dequantize(decode(spec, reader.quantized_arrays(name))).numpy()
        tensors[name] = weight.T if spec.layout == "conv1d" else weight
    out.mkdir(parents=True)
    save_file({k: np.ascontiguousarray(v).reshape(v.shape) for k, v in tensors.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    for key in ("quantization_config", TRANSFORMERS_GUARD_KEY):
        config.pop(key)
    (out / "config.json").write_text(json.dumps(config))
    return out


def architecture_class(folder: Path):
    """The transformers class config.json names (what a user of that model calls from_pretrained on)."""
    return getattr(tf, json.loads((folder / "config.json").read_text())["architectures"][0])
