"""Test helpers: bitconv packed files and folders written through the reference writer (bitconv.format.safetensors),
for tests that must not depend on `bitconv.convert` (hub, C reader)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from bitconv.format.safetensors import StreamingSafetensorsWriter
from bitconv.format.spec import FilePlan, PlannedTensor
from bitconv.format.vocab import NP_TO_ST
from bitconv.quantize.config import QuantConfig
from bitconv.quantize.schemes import encode, quantize


def write_bitconv_file(path: Path, quantized: dict, plain: dict[str, np.ndarray]) -> None:
    """quantized: {logical name: QuantizedWeight}; plain: {name: array} stored as is."""
    plan = FilePlan(path.name)
    for name, q in quantized.items():
        plan.specs[name] = q.spec
        for suffix, (dtype, shape) in q.spec.stored().items():
            plan.tensors.append(PlannedTensor(name + suffix, dtype, shape))
    for name, arr in plain.items():
        plan.tensors.append(PlannedTensor(name, NP_TO_ST[arr.dtype], arr.shape))
    writer = StreamingSafetensorsWriter(path, plan)
    for name, q in quantized.items():
        for suffix, arr in encode(q).items():
            writer.write(name + suffix, arr)
    for name, arr in plain.items():
        writer.write(name, arr)
    writer.close()


def write_bitconv_folder(folder: Path, *, hidden: int = 64, vocab: int = 96, n_layers: int = 2, seed: int = 0,
                         source: str = "HuggingFaceTB/SmolLM2-135M-Instruct", readme: str | None = None) -> Path:
    """A small Llama-shaped bitconv output folder: config.json with quantization_config, packed weights,
    fp16 embeddings and norms, a tokenizer file and (optionally) the source's README."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    cfg = QuantConfig.for_bits(1.58)
    quantized, plain = {}, {}
    for i in range(n_layers):
        for proj, shape in (("self_attn.q_proj", (hidden, hidden)), ("self_attn.k_proj", (hidden, hidden)),
                            ("self_attn.v_proj", (hidden, hidden)), ("self_attn.o_proj", (hidden, hidden)),
                            ("mlp.gate_proj", (2 * hidden, hidden)), ("mlp.up_proj", (2 * hidden, hidden)),
                            ("mlp.down_proj", (hidden, 2 * hidden))):
            quantized[f"model.layers.{i}.{proj}.weight"] = quantize(torch.randn(shape, generator=gen) * 0.02, cfg)
        plain[f"model.layers.{i}.input_layernorm.weight"] = np.ones(hidden, np.float16)
        plain[f"model.layers.{i}.post_attention_layernorm.weight"] = np.ones(hidden, np.float16)
    plain["model.embed_tokens.weight"] = (torch.randn(vocab, hidden, generator=gen) * 0.02).numpy().astype(np.float16)
    plain["model.norm.weight"] = np.ones(hidden, np.float16)
    write_bitconv_file(folder / "model.safetensors", quantized, plain)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": 2 * hidden, "num_hidden_layers": n_layers, "num_attention_heads": 4,
        "num_key_value_heads": 4, "vocab_size": vocab, "tie_word_embeddings": True,
        "quantization_config": {"quant_method": "bitconv", "format": "bitconv-packed", "format_version": 1,
                                **cfg.to_dict(), "source": source, "source_revision": "0123abc"},
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {f"t{i}": i for i in range(vocab)}}}))
    if readme is not None:
        (folder / "README.md").write_text(readme)
    return folder
