"""Text the original model writes itself (`--train teacher:N`): recovery data for a user who has none.

LLM-QAT (Liu et al. 2023, arXiv 2305.17888) showed that a quantized model recovers as well on text sampled
from its full-precision self as on real pretraining data. Here: batches of sequences start from the
beginning-of-sequence token, the first token is drawn from the model's own distribution after it and each
next one by nucleus sampling (top-p), on the GPU in large batches with a preallocated key/value cache.

Batch b is drawn from a generator seeded with (seed, b), so the stream is the same for a seed however often
it was interrupted: finished batches are appended to `<key>.partial.u32` (progress in `<key>.partial.json`)
and a rerun continues after the last one. The finished stream is an ordinary cached token stream
(bitconv.data.tokens), keyed by the model's weights, the tokenizer and these options.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from bitconv.data.sources import SourceSpec, parse_count
from bitconv.data.tokens import TokenCache, tokenizer_key
from bitconv.display import task_progress
from bitconv.errors import DataError

SYNTH_VERSION = 1


@dataclass(frozen=True)
class SynthOptions:
    n_tokens: int
    length: int = 512  # tokens per generated sequence, the first being the start token
    batch: int = 1024  # sequences generated together
    top_p: float = 0.95
    temperature: float = 1.0
    seed: int = 0

    @classmethod
    def from_spec(cls, spec: SourceSpec, seq_len: int, seed: int) -> "SynthOptions":
        """teacher:N[?length=..&batch=..&top_p=..&temperature=..], checked against one training block."""
        n = parse_count(spec.target, spec.text)
        o = spec.options
        try:
            opts = cls(n, int(o.get("length", 512)), int(o.get("batch", 1024)), float(o.get("top_p", 0.95)),
                       float(o.get("temperature", 1.0)), seed)
        except ValueError:
            raise DataError(f"{spec.text}: length and batch must be integers, top_p and temperature numbers") from None
        if n <= 0:
            raise DataError(f"{spec.text}: the generation budget must be a positive number of tokens, e.g. teacher:20M")
        if n < seq_len:
            raise DataError(f"{spec.text}: {n} tokens is below one training block of --seq-len {seq_len}; ask for "
                            "more, e.g. teacher:20M")
        if opts.length < 2 or opts.batch < 1 or not 0 < opts.top_p <= 1 or opts.temperature <= 0:
            raise DataError(f"{spec.text}: need length >= 2, batch >= 1, 0 < top_p <= 1 and temperature > 0")
        return opts

    @property
    def n_sequences(self) -> int:
        return math.ceil(self.n_tokens / self.length)

    @property
    def n_batches(self) -> int:
        return math.ceil(self.n_sequences / self.batch)


def model_key(source: str) -> str:
    """A hash of the source's weight files (a GGUF file, or the safetensors of a folder), so generated data is
    reused only for the very same model."""
    path = Path(source).expanduser()
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors")) + sorted(path.glob("*.gguf"))
    digest = hashlib.sha256()
    if not files:  # a Hub id: its resolved snapshot folder names the commit
        from bitconv.quantize.source import open_source

        return model_key(str(open_source(source).folder))
    for f in files:
        digest.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _top_p_sample(logits: torch.Tensor, top_p: float, generator: torch.Generator) -> torch.Tensor:
    probs = torch.softmax(logits.float(), dim=-1)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always)
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        choice = torch.multinomial(sorted_p, 1, generator=generator)
        return order.gather(-1, choice).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _cache(model, length: int):
    """A preallocated key/value cache (no copy per step); the growing one where this transformers has none.
    Either is filled in place by the model, so the loop never reads it back from the outputs."""
    try:
        from transformers import StaticCache

        return StaticCache(config=model.config, max_cache_len=length)
    except (ImportError, TypeError, ValueError):
        from transformers import DynamicCache

        return DynamicCache()


@torch.no_grad()
def sample_batch(model, start_id: int, n_seq: int, opts: SynthOptions, generator: torch.Generator,
                 device: torch.device) -> torch.Tensor:
    """[n_seq, length] token ids: the start token, then tokens sampled from the model one at a time."""
    out = torch.empty((n_seq, opts.length), dtype=torch.long, device=device)
    out[:, 0] = start_id
    past = _cache(model, opts.length)
    # transformers renamed `past_key_values` to `cache` (5.2x); pass it under the name this version reads
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cur = out[:, :1]
    for t in range(1, opts.length):
        o = model(input_ids=cur, use_cache=True, **{name: past})
        nxt = _top_p_sample(o.logits[:, -1, :] / opts.temperature, opts.top_p, generator)
        out[:, t] = nxt
        cur = nxt[:, None]
    return out


def generate_stream(model, tokenizer, source_key: str, opts: SynthOptions, cache: TokenCache, device: torch.device,
                    progress: bool = True, say=print) -> np.ndarray:
    """The token stream of `opts.n_tokens` sampled tokens (whole sequences, so a little more), cached, resumable."""
    start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start_id is None:
        raise DataError("the tokenizer has no beginning- or end-of-sequence token to start generated text from")
    key = hashlib.sha256(json.dumps([SYNTH_VERSION, source_key, tokenizer_key(tokenizer), asdict(opts)]).encode()
                         ).hexdigest()
    done = cache.load(key)
    if done is not None:
        say(f"teacher:{opts.n_tokens}: {done.size:,} generated tokens from the cache ({cache.path(key)})")
        return done
    partial, progress_file = cache.folder / f"{key}.partial.u32", cache.folder / f"{key}.partial.json"
    seq_bytes = opts.length * 4
    done_batches = 0
    if partial.exists() and progress_file.exists():
        try:
            done_batches = int(json.loads(progress_file.read_text())["batches"])
        except (OSError, ValueError, KeyError, TypeError):
            done_batches = 0
    full_batches = min(done_batches, opts.n_batches)
    with open(partial, "ab" if full_batches else "wb") as fh:
        fh.truncate(full_batches * opts.batch * seq_bytes)  # drops a batch half-written when interrupted
    if full_batches:
        say(f"teacher:{opts.n_tokens}: resuming generation after batch {full_batches} of {opts.n_batches}")
    # on a GPU a bf16 copy writes (the cache then holds one dtype); the fp32 original stays as it is
    model = copy.deepcopy(model).to(torch.bfloat16) if device.type == "cuda" else model
    model.eval()
    with task_progress("generating", total=opts.n_batches, enabled=progress, completed=full_batches,
                       unit="tokens") as advance, open(partial, "ab") as fh:
        for b in range(full_batches, opts.n_batches):
            n_seq = min(opts.batch, opts.n_sequences - b * opts.batch)
            gen = torch.Generator(device=device).manual_seed(opts.seed * 1_000_003 + b)
            ids = sample_batch(model, start_id, n_seq, opts, gen, device)
            fh.write(ids.to("cpu", torch.int64).numpy().astype(np.uint32).tobytes())
            fh.flush()
            os.fsync(fh.fileno())
            progress_file.write_text(json.dumps({"batches": b + 1}))
            advance(f"{(b + 1) * opts.batch * opts.length:,} tokens")
    stream = np.fromfile(partial, dtype=np.uint32)
    result = cache.store(key, [stream], {"source": f"teacher:{opts.n_tokens}", "options": asdict(opts)})
    partial.unlink(missing_ok=True)
    progress_file.unlink(missing_ok=True)
    return result
