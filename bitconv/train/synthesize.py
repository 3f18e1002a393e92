"""`bitconv synth`: the text `teacher:N` trains on (bitconv.data.synth), written out as JSON lines, to read before
training on it, to keep, or to train on elsewhere (`--train FILE.jsonl`).

The stream is the one `bitconv recover --train teacher:N` uses with the same options and seed: generated once and
kept in the token cache, so a later `recover` with the same cache folder starts at once. Under torchrun every
process generates its share (bitconv.data.synth). Each sequence begins with the start token, which is left out;
the model may end a document inside a sequence and begin another, so sequences are cut at the end-of-sequence
token and every non-empty piece is one line `{"text": ...}`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from bitconv.errors import DataError

DECODE_BATCH = 1024  # pieces per batch_decode call


@dataclass
class SynthResult:
    out: Path | None  # None in a torchrun process other than the first
    n_tokens: int = 0
    n_documents: int = 0
    stream: Path | None = None  # the cached token stream


def synthesize(source: str, out: str | Path, *, tokens: str | None = None, length: int = 512,
               batch: int | None = None, top_k: int = 50, top_p: float = 0.95, temperature: float = 1.0, seed: int = 0,
               device: str = "auto", cache_dir: str | Path | None = None, force: bool = False, progress: bool = True,
               say: Callable[[str], None] | None = None) -> SynthResult:
    """Sample `tokens` tokens (None: recover's default, tasks.DEFAULT_TEACHER_TOKENS) from the model `source`
    (teacher:N's sampler and options; `batch` None: what bitconv.data.synth.default_batch fits on the device) and
    write them to `out` as JSON lines of text."""
    from transformers import AutoModelForCausalLM

    from bitconv.data.sources import parse_source
    from bitconv.data.synth import SynthOptions, generate_stream, model_key, options_for
    from bitconv.data.tokens import TokenCache
    from bitconv.format.atomic import check_output
    from bitconv.quantize.source import load_original
    from bitconv.train.runtime import start_runtime, stop_runtime
    from bitconv.train.tasks import DEFAULT_TEACHER_TOKENS, tokenizer_for

    say = say or (lambda text: print(text, file=sys.stderr))
    defaulted = tokens is None
    tokens = DEFAULT_TEACHER_TOKENS if defaulted else tokens
    spec = parse_source(f"teacher:{tokens}?length={length}&top_k={top_k}&top_p={top_p}&temperature={temperature}"
                        + (f"&batch={batch}" if batch is not None else ""))
    SynthOptions.from_spec(spec, 1, seed)  # every check before any work
    local = Path(source).expanduser()
    out = check_output(out, force=force, inputs=[local] if local.exists() else [], kind="file")
    cache = TokenCache(cache_dir)
    rt = start_runtime(device)
    if defaulted and rt.device.type != "cuda" and rt.main:
        say(f"note: --tokens {tokens} (what recover generates by default) is sized for a GPU; on the "
            f"{rt.device.type.upper()} it takes far longer: pass a smaller --tokens for a short run")
    try:
        tok = tokenizer_for(source)
        model = load_original(source, model_class=AutoModelForCausalLM).to(rt.device)
        opts = options_for(spec, 1, seed, model, rt.device)  # the batch as recover's teacher:N takes it here
        stream = generate_stream(model, tok, model_key(source), opts, cache, rt.device, progress and rt.main,
                                 say if rt.main else (lambda text: None), rt.rank, rt.world, rt.barrier)
        if not rt.main:
            return SynthResult(None)
        n_docs = write_documents(np.asarray(stream).reshape(-1, opts.length), tok, out)
        filename = getattr(stream, "filename", None)
        return SynthResult(out, int(stream.size), n_docs, Path(filename) if filename else None)
    finally:
        stop_runtime(rt)


def write_documents(sequences: np.ndarray, tokenizer, out: Path) -> int:
    """Sequences [n, length] (start token first) as JSON lines of text, cut at the end-of-sequence token."""
    from bitconv.format.atomic import write_text_atomic

    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no end-of-sequence token to cut generated documents at")
    eos = int(tokenizer.eos_token_id)
    pieces: list[list[int]] = []
    for row in sequences[:, 1:]:
        for piece in np.split(row, np.flatnonzero(row == eos)):
            piece = piece[piece != eos]
            if piece.size:
                pieces.append(piece.tolist())
    texts = [text for start in range(0, len(pieces), DECODE_BATCH)
             for text in tokenizer.batch_decode(pieces[start:start + DECODE_BATCH], skip_special_tokens=True)
             if text.strip()]
    if not texts:
        raise DataError(f"{out}: the model wrote no text (only special tokens); nothing was written")
    write_text_atomic(out, "".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in texts))
    return len(texts)
