"""Greedy decoding through ONNX Runtime with the key/value cache of a decoder exported by bitconv.export.onnx."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bitconv.errors import ExportError


class OnnxDecoder:
    """An exported decoder (.onnx with past_key_values inputs) in an ONNX Runtime session, one step at a time."""

    def __init__(self, onnx_path: str | Path, threads: int | None = None, spin: bool | None = None):
        from bitconv import ort as bort

        self.path = Path(onnx_path)
        self.session = bort.session(self.path, threads=threads, spin=spin)
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("bitconv.kind") != "decoder":
            raise ExportError(f"{self.path}: not a decoder exported by `bitconv export` (no key/value cache inputs); "
                               "generate needs a GPT-2 or Llama export")
        self.past_inputs = [i for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def empty_cache(self, batch: int = 1) -> list[np.ndarray]:
        # [batch, kv_heads, 0, head_dim]: the heads and head size are fixed in the graph's input shapes
        return [np.zeros((batch, i.shape[1], 0, i.shape[3]), dtype=np.float32) for i in self.past_inputs]

    def step(self, input_ids: np.ndarray, past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits [batch, seq, vocab] for `input_ids` after `past`, and the cache extended by them."""
        batch, seq = input_ids.shape
        n_past = past[0].shape[2] if past else 0
        feed = {"input_ids": input_ids.astype(np.int64),
                "attention_mask": np.ones((batch, n_past + seq), dtype=np.int64),
                "position_ids": np.broadcast_to(np.arange(n_past, n_past + seq, dtype=np.int64), (batch, seq)).copy()}
        feed.update({i.name: p for i, p in zip(self.past_inputs, past)})
        logits, *present = self.session.run(self.output_names, feed)
        return logits, present

    def greedy(self, prompt_ids: list[int], max_new_tokens: int, eos_token_id: int | None = None) -> list[int]:
        """The prompt followed by up to `max_new_tokens` greedily chosen tokens (stops after `eos_token_id`)."""
        if not prompt_ids:
            raise ExportError("the prompt is empty: give at least one token")
        ids = list(prompt_ids)
        logits, past = self.step(np.array([ids]), self.empty_cache())
        for _ in range(max_new_tokens):
            token = int(np.argmax(logits[0, -1]))
            ids.append(token)
            if eos_token_id is not None and token == eos_token_id:
                break
            logits, past = self.step(np.array([[token]]), past)
        return ids


def _tokenizer_folder(onnx_path: Path, tokenizer: str | Path | None) -> Path:
    folder = Path(tokenizer).expanduser() if tokenizer else onnx_path.parent
    if not any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise ExportError(f"{folder}: no tokenizer files; pass --tokenizer with the bitconv folder the model was "
                           "exported from")
    return folder


def generate(onnx_path: str | Path, prompt: str, *, max_new_tokens: int = 32, tokenizer: str | Path | None = None,
             threads: int | None = None) -> str:
    """Greedy continuation of `prompt` by an exported decoder; the tokenizer comes from next to the .onnx."""
    from transformers import AutoTokenizer

    onnx_path = Path(onnx_path).expanduser()
    if max_new_tokens < 0:
        raise ExportError(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
    decoder = OnnxDecoder(onnx_path, threads=threads)
    folder = _tokenizer_folder(onnx_path, tokenizer)
    tok = AutoTokenizer.from_pretrained(str(folder))
    eos = tok.eos_token_id
    config_path = folder / "generation_config.json"
    if config_path.is_file():
        eos = json.loads(config_path.read_text()).get("eos_token_id", eos)
        eos = eos[0] if isinstance(eos, list) else eos
    ids = decoder.greedy(tok(prompt)["input_ids"], max_new_tokens, eos)
    return tok.decode(ids, skip_special_tokens=True)
