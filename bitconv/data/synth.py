"""Text the original model writes itself (`--train teacher:N`): recovery data for a user who has none.

LLM-QAT (Liu et al. 2023, arXiv 2305.17888) showed that a quantized model recovers as well on text sampled
from its full-precision self as on real pretraining data. Here: batches of sequences start from the
beginning-of-sequence token, the first token is drawn from the model's own distribution after it and each
next one by sampling, on the GPU in large batches with a preallocated key/value cache (bitconv.data.decode).

Sampling, as transformers' `generate` does it: logits / temperature (1), the top_k (50) most likely tokens, then
within those the smallest set whose probability reaches top_p (0.95); top_k=0 considers the whole vocabulary.
Options: `teacher:N?length=512&batch=B&top_k=50&top_p=0.95&temperature=1`; without `batch`, as many sequences as
`default_batch` fits on the device (up to 2048 on a GPU, 16 off one).

Batch b is drawn from a generator seeded with (seed, b), so the stream is the same for a seed however often
it was interrupted: finished batches are appended to `<key>.partial.u32` (progress in `<key>.partial.json`)
and a rerun continues after the last one. The finished stream is an ordinary cached token stream
(bitconv.data.tokens), keyed by the model's weights, the tokenizer and these options.

Under torchrun every process generates: process r writes batches r, r + world, ... to a partial file of its own
(resumable the same way), and the first process joins them in batch order. Since batch b's generator depends on b
alone, the stream is the same for any number of processes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bitconv.data.decode import HFDecoder
from bitconv.data.sources import SourceSpec, parse_count
from bitconv.data.tokens import TokenCache, tokenizer_key
from bitconv.display import task_progress
from bitconv.errors import DataError

SYNTH_VERSION = 2  # 2: top-k before top-p, the Llama-family decoder


@dataclass(frozen=True)
class SynthOptions:
    n_tokens: int
    length: int = 512  # tokens per generated sequence, the first being the start token
    batch: int = 1024  # sequences generated together
    top_k: int = 50  # 0: the whole vocabulary
    top_p: float = 0.95
    temperature: float = 1.0
    seed: int = 0

    @classmethod
    def from_spec(cls, spec: SourceSpec, seq_len: int, seed: int) -> "SynthOptions":
        """teacher:N[?length=..&batch=..&top_k=..&top_p=..&temperature=..], checked against one training block;
        without `batch` the field's default, which `options_for` replaces with what fits the device."""
        n = parse_count(spec.target, spec.text)
        o = spec.options
        try:
            opts = cls(n, int(o.get("length", 512)), int(o.get("batch", cls.batch)), int(o.get("top_k", 50)),
                       float(o.get("top_p", 0.95)), float(o.get("temperature", 1.0)), seed)
        except ValueError:
            raise DataError(f"{spec.text}: length, batch and top_k must be integers, top_p and temperature numbers"
                            ) from None
        if n <= 0:
            raise DataError(f"{spec.text}: the generation budget must be a positive number of tokens, e.g. teacher:20M")
        if n < seq_len:
            raise DataError(f"{spec.text}: {n} tokens is below one training block of --seq-len {seq_len}; ask for "
                            "more, e.g. teacher:20M")
        if opts.length < 2 or opts.batch < 1 or opts.top_k < 0 or not 0 < opts.top_p <= 1 or opts.temperature <= 0:
            raise DataError(f"{spec.text}: need length >= 2, batch >= 1, top_k >= 0 (0: off), 0 < top_p <= 1 and "
                            "temperature > 0")
        return opts

    @property
    def n_sequences(self) -> int:
        return math.ceil(self.n_tokens / self.length)

    @property
    def n_batches(self) -> int:
        return math.ceil(self.n_sequences / self.batch)


GENERATION_MEMORY_SHARE = 0.4  # of the GPU's memory, for the key/value cache of the default batch
# The default batch's ceiling on a GPU. Every decoding step costs about the same up to it, so the batch sets the speed
# (one H200, SmolLM2-135M, 512 tokens: 1024 sequences 34,000-38,000 tokens/s, 2048 68,000; docs/benchmarks/recover.md);
# larger batches were not measured.
MAX_GPU_BATCH = 2048
CPU_BATCH = 16  # off a GPU: SmolLM2's fp32 cache for 1024 x 512 tokens would be 22.5 GiB of host memory
UNSIZED_GPU_BATCH = 1024  # on a GPU for a config without the usual attention sizes (the fixed default before)


def kv_cache_bytes(config, length: int, element_bytes: int = 2) -> int | None:
    """Bytes of one sequence's key/value cache over `length` tokens (bf16 by default: generation's dtype on a GPU),
    from the text decoder's config (a multimodal model's nested one); None when it lacks the usual attention sizes.
    An upper bound for multi-query or sliding-window attention that the config does not spell out that way."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    try:
        heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        layers = text.num_hidden_layers
    except (AttributeError, TypeError, ZeroDivisionError):
        return None
    return 2 * layers * kv_heads * head_dim * length * element_bytes


def default_batch(device: torch.device, config, length: int) -> int:
    """Sequences sampled together when teacher:N names no batch: on a GPU the largest power of two up to
    MAX_GPU_BATCH whose key/value cache fits in GENERATION_MEMORY_SHARE of the GPU's memory (the total, not what is
    free now, so the same GPU model always draws the same stream; SmolLM2-135M: 2048 from about 56 GiB up, 1024 on a
    40 GB card, 512 on 24 GB); CPU_BATCH elsewhere. The stream depends on the batch (batch b's generator is seeded
    with b), and its cache key names it: under torchrun every process must see the same kind of GPU, or name
    `batch=`."""
    if device.type != "cuda":
        return CPU_BATCH
    per_sequence = kv_cache_bytes(config, length)
    if per_sequence is None:
        return UNSIZED_GPU_BATCH
    budget = GENERATION_MEMORY_SHARE * torch.cuda.get_device_properties(device).total_memory
    batch = MAX_GPU_BATCH
    while batch > 1 and batch * per_sequence > budget:
        batch //= 2
    return batch


def options_for(spec: SourceSpec, seq_len: int, seed: int, model, device: torch.device) -> SynthOptions:
    """teacher:N's options for `model` on `device`: the spec's, with `default_batch` when it names no batch."""
    opts = SynthOptions.from_spec(spec, seq_len, seed)
    if "batch" in spec.options:
        return opts
    return replace(opts, batch=default_batch(device, model.config, opts.length))


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


def sample_next(logits: torch.Tensor, opts: SynthOptions, generator: torch.Generator) -> torch.Tensor:
    """One token per row of `logits` [batch, vocabulary]: temperature, top-k, then top-p among those (see above).
    With top-k only k candidates per row are softmaxed, sorted and summed, not the whole vocabulary."""
    if opts.top_k:
        # the temperature keeps the order, so the k largest logits are the same before and after it
        top, order = torch.topk(logits, min(opts.top_k, logits.shape[-1]), dim=-1)  # sorted, largest first
        probs = torch.softmax(top.float() / opts.temperature, dim=-1)
    else:
        probs = torch.softmax(logits.float() / opts.temperature, dim=-1)
        order = None
        if opts.top_p < 1.0:
            probs, order = torch.sort(probs, dim=-1, descending=True)
    if opts.top_p < 1.0:
        # keep the smallest prefix whose mass reaches top_p (the first token always)
        probs = probs.masked_fill((probs.cumsum(-1) - probs) >= opts.top_p, 0.0)
    choice = torch.multinomial(probs, 1, generator=generator)
    return (choice if order is None else order.gather(-1, choice)).squeeze(-1)


@torch.no_grad()
def sample_batch(model, start_id: int, n_seq: int, opts: SynthOptions, generator: torch.Generator,
                 device: torch.device, step: HFDecoder | None = None) -> torch.Tensor:
    """[n_seq, length] token ids: the start token, then tokens sampled from the model one at a time. `step`: a
    decoder of the same batch size to reuse (reset here), so that its cache is allocated once."""
    out = torch.empty((n_seq, opts.length), dtype=torch.long, device=device)
    out[:, 0] = start_id
    if step is None:
        step = HFDecoder(model, opts.length)
    else:
        step.reset()
    for t in range(opts.length - 1):
        out[:, t + 1] = sample_next(step(out[:, t], t), opts, generator)
    return out


def stream_key(source_key: str, tok_key: str, opts: SynthOptions) -> str:
    """The token cache's key of a generated stream. `"compile": false` is what the removed compiled-decoding option
    (`teacher:N?compile=1`) added to every key: kept, so that streams cached before its removal are found."""
    return hashlib.sha256(json.dumps([SYNTH_VERSION, source_key, tok_key, {**asdict(opts), "compile": False}]
                                     ).encode()).hexdigest()


def generate_stream(model, tokenizer, source_key: str, opts: SynthOptions, cache: TokenCache, device: torch.device,
                    progress: bool = True, say=print, rank: int = 0, world: int = 1,
                    barrier: Callable[[], None] = lambda: None) -> np.ndarray:
    """The token stream of `opts.n_tokens` sampled tokens (whole sequences, so a little more), cached, resumable.
    With `world` processes each calls this with its `rank` and a `barrier` over all of them (see above)."""
    start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start_id is None:
        raise DataError("the tokenizer has no beginning- or end-of-sequence token to start generated text from")
    key = stream_key(source_key, tokenizer_key(tokenizer), opts)
    done = cache.load(key)
    if done is not None:
        say(f"teacher:{opts.n_tokens}: {done.size:,} generated tokens from the cache ({cache.path(key)})")
        return done
    _generate_share(model, start_id, _partial_stem(cache, key, rank, world), opts, range(rank, opts.n_batches, world),
                    device, progress, say)
    barrier()
    if rank == 0:
        stems = [_partial_stem(cache, key, r, world) for r in range(world)]
        parts = [np.fromfile(f"{stem}.u32", dtype=np.uint32) for stem in stems]
        rows = opts.batch * opts.length

        def in_batch_order():  # batch b is process b % world's (b // world)-th; only the last batch is short
            for b in range(opts.n_batches):
                yield parts[b % world][(b // world) * rows:(b // world + 1) * rows]

        result = cache.store(key, in_batch_order(), {"source": f"teacher:{opts.n_tokens}", "options": asdict(opts)})
        for stem in stems:
            Path(f"{stem}.u32").unlink(missing_ok=True)
            Path(f"{stem}.json").unlink(missing_ok=True)
    barrier()
    if rank != 0:
        result = cache.load(key)
        if result is None:
            raise DataError(f"{cache.path(key)}: the stream the first process generated is not there; every process "
                            "needs the same --cache-dir, on a file system they share")
    return result


def _partial_stem(cache: TokenCache, key: str, rank: int, world: int) -> str:
    """`<key>.partial` (one process), `<key>.<rank>of<world>.partial` (one of several): the partial file's stem."""
    return str(cache.folder / (f"{key}.partial" if world == 1 else f"{key}.{rank}of{world}.partial"))


def _generate_share(model, start_id: int, stem: str, opts: SynthOptions, batches: range, device: torch.device,
                    progress: bool, say) -> None:
    """Batches `batches` of the stream appended to `<stem>.u32`, after those it holds already (count in
    `<stem>.json`)."""
    partial, progress_file = Path(f"{stem}.u32"), Path(f"{stem}.json")
    n_seq = [min(opts.batch, opts.n_sequences - b * opts.batch) for b in batches]
    done_batches = 0
    if partial.exists() and progress_file.exists():
        try:
            done_batches = int(json.loads(progress_file.read_text())["batches"])
        except (OSError, ValueError, KeyError, TypeError):
            done_batches = 0
    full_batches = min(done_batches, len(batches))
    with open(partial, "ab" if full_batches else "wb") as fh:
        fh.truncate(sum(n_seq[:full_batches]) * opts.length * 4)  # drops a batch half-written when interrupted
    if full_batches:
        say(f"teacher:{opts.n_tokens}: resuming generation after batch {full_batches} of {len(batches)}")
    # on a GPU a bf16 copy writes (the cache then holds one dtype); the fp32 original stays as it is
    model = copy.deepcopy(model).to(torch.bfloat16) if device.type == "cuda" else model
    model.eval()
    with task_progress("generating", total=len(batches), enabled=progress, completed=full_batches,
                       unit="tokens") as advance, open(partial, "ab") as fh:
        decoder, decoder_batch = None, 0  # one cache at a time: only the last batch may be smaller
        for i in range(full_batches, len(batches)):
            if n_seq[i] != decoder_batch:
                decoder = None  # the full batches' cache goes before the last batch's is made
                decoder, decoder_batch = HFDecoder(model, opts.length), n_seq[i]
            gen = torch.Generator(device=device).manual_seed(opts.seed * 1_000_003 + batches[i])
            ids = sample_batch(model, start_id, n_seq[i], opts, gen, device, decoder)
            fh.write(ids.to("cpu", torch.int64).numpy().astype(np.uint32).tobytes())
            fh.flush()
            os.fsync(fh.fileno())
            progress_file.write_text(json.dumps({"batches": i + 1}))
            advance(f"{sum(n_seq[:i + 1]) * opts.length:,} tokens")
