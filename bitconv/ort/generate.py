"""Greedy decoding through ONNX Runtime with the key/value cache of a decoder exported by bitconv.export.onnx.

A decode graph built by bitconv.export.onnx_decoder (metadata `bitconv.kv_cache` = "in-place") keeps its cache
in one preallocated buffer per layer and key/value, bound through ONNX Runtime's IO binding as both the past
input and the present output: GroupQueryAttention appends each token in place, so a step copies no cache, and
the token, position and logits live in small arrays bound once and rewritten in place. Only the attention
mask, whose length is the step's total length, is bound anew each step (a view of one preallocated row of
ones). Other decoders (a traced export) run `step()`, which feeds the past and returns the present as arrays.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from bitconv.errors import ExportError

IN_PLACE_CACHE = "in-place"  # the `bitconv.kv_cache` metadata value of a graph that can update its cache in place


class OnnxDecoder:
    """An exported decoder (.onnx with past_key_values inputs) in an ONNX Runtime session."""

    def __init__(self, onnx_path: str | Path, threads: int | None = None, spin: bool | None = None, *,
                 session=None):
        """`session`: an InferenceSession of `onnx_path` made by the caller (e.g. with profiling turned on)."""
        from bitconv import ort as bort

        self.path = Path(onnx_path)
        self.session = session if session is not None else bort.session(self.path, threads=threads, spin=spin)
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("bitconv.kind") != "decoder":
            raise ExportError(f"{self.path}: not a decoder exported by `bitconv export` (no key/value cache inputs); "
                               "generate needs a GPT-2 or Llama export")
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.past_inputs = [i for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.in_place = meta.get("bitconv.kv_cache") == IN_PLACE_CACHE

    def empty_cache(self, batch: int = 1) -> list[np.ndarray]:
        # [batch, kv_heads, 0, head_dim]: the heads and head size are fixed in the graph's input shapes
        return [np.zeros((batch, i.shape[1], 0, i.shape[3]), dtype=np.float32) for i in self.past_inputs]

    def _inputs(self, input_ids: np.ndarray, n_past: int) -> dict[str, np.ndarray]:
        """input_ids, attention_mask and (where the graph takes them) position_ids for tokens after n_past."""
        batch, seq = input_ids.shape
        feed = {"input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
                "attention_mask": np.ones((batch, n_past + seq), dtype=np.int64)}
        if "position_ids" in self.input_names:
            feed["position_ids"] = np.broadcast_to(np.arange(n_past, n_past + seq, dtype=np.int64), (batch, seq)).copy()
        return feed

    def step(self, input_ids: np.ndarray, past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits [batch, seq, vocab] for `input_ids` after `past`, and the cache extended by them."""
        feed = self._inputs(input_ids, past[0].shape[2] if past else 0)
        feed.update({i.name: p for i, p in zip(self.past_inputs, past)})
        logits, *present = self.session.run(self.output_names, feed)
        return logits, present

    def tokens(self, prompt_ids: list[int], max_new_tokens: int) -> Iterator[int]:
        """Greedily chosen tokens after the prompt, one per step (the first comes from the prompt's pass)."""
        if not prompt_ids:
            raise ExportError("the prompt is empty: give at least one token")
        if self.in_place:
            yield from self._tokens_in_place(list(prompt_ids), max_new_tokens)
            return
        logits, past = self.step(np.array([prompt_ids]), self.empty_cache())
        for i in range(max_new_tokens):
            token = int(np.argmax(logits[0, -1]))
            yield token
            if i + 1 < max_new_tokens:
                logits, past = self.step(np.array([[token]]), past)

    def _tokens_in_place(self, prompt_ids: list[int], max_new_tokens: int) -> Iterator[int]:
        from onnxruntime import OrtValue

        n_prompt = len(prompt_ids)
        capacity = n_prompt + max_new_tokens
        binding = self.session.io_binding()
        binding.bind_output("logits")  # bound first: the prompt's logits are get_outputs()[0]
        for past in self.past_inputs:  # one buffer per layer and key/value: read as past, written as present
            cache = OrtValue.ortvalue_from_numpy(np.zeros((1, past.shape[1], capacity, past.shape[3]), np.float32))
            binding.bind_ortvalue_input(past.name, cache)
            binding.bind_ortvalue_output(past.name.replace("past_key_values.", "present."), cache)
        mask = np.ones((1, capacity), dtype=np.int64)
        # OrtValues made from numpy arrays on the CPU share their memory: rewriting the arrays rewrites the inputs
        feed = self._inputs(np.array([prompt_ids], dtype=np.int64), 0)
        for name, array in feed.items():
            if name != "attention_mask":
                binding.bind_ortvalue_input(name, OrtValue.ortvalue_from_numpy(array))
        binding.bind_ortvalue_input("attention_mask", OrtValue.ortvalue_from_numpy(mask[:, :n_prompt]))
        self.session.run_with_iobinding(binding)
        logits = binding.get_outputs()[0].numpy()
        token_ids, positions = np.zeros((1, 1), np.int64), np.zeros((1, 1), np.int64)
        step_logits = np.empty((1, 1, logits.shape[-1]), np.float32)
        binding.bind_ortvalue_input("input_ids", OrtValue.ortvalue_from_numpy(token_ids))
        if "position_ids" in self.input_names:
            binding.bind_ortvalue_input("position_ids", OrtValue.ortvalue_from_numpy(positions))
        binding.bind_ortvalue_output("logits", OrtValue.ortvalue_from_numpy(step_logits))
        token = int(np.argmax(logits[0, -1]))
        for i in range(max_new_tokens):
            yield token
            if i + 1 == max_new_tokens:
                break
            n_past = n_prompt + i
            token_ids[0, 0], positions[0, 0] = token, n_past
            binding.bind_ortvalue_input("attention_mask", OrtValue.ortvalue_from_numpy(mask[:, :n_past + 1]))
            self.session.run_with_iobinding(binding)
            token = int(np.argmax(step_logits[0, 0]))

    def greedy(self, prompt_ids: list[int], max_new_tokens: int, eos_token_id: int | None = None) -> list[int]:
        """The prompt followed by up to `max_new_tokens` greedily chosen tokens (stops after `eos_token_id`)."""
        ids = list(prompt_ids)
        for token in self.tokens(ids, max_new_tokens):
            ids.append(token)
            if eos_token_id is not None and token == eos_token_id:
                break
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
