"""Token streams on disk: documents tokenized once, joined with a separator token, cached memory-mapped and
cut into fixed-length blocks; several streams mixed with weights.

A stream is a flat uint32 file `<key>.u32` in the cache folder (default ~/.cache/bitconv/tokens, or
$XDG_CACHE_HOME/bitconv/tokens), with `<key>.json` beside it. The key hashes the tokenizer (its full
definition) with the source's content key, so a second run with the same data starts at once and changed
data or another tokenizer is tokenized again. Files are written under a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from bitconv.data.sources import Documents
from bitconv.display import task_progress
from bitconv.errors import DataError
from bitconv.format.atomic import staged_file

TOKENIZE_BATCH = 256  # documents per tokenizer call
LONG_DOCUMENT = 200_000  # characters; longer documents are tokenized in pieces cut at line ends


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bitconv" / "tokens"


def tokenizer_key(tokenizer) -> str:
    """A hash of everything that decides the ids: the fast tokenizer's full JSON, else its vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{type(tokenizer).__name__}\0{text}".encode()).hexdigest()


def separator_id(tokenizer) -> int:
    """The token written between documents: end of sequence, else separator (BERT-style), else beginning."""
    for tid in (tokenizer.eos_token_id, getattr(tokenizer, "sep_token_id", None), tokenizer.bos_token_id):
        if tid is not None:
            return int(tid)
    raise DataError("the tokenizer has no end-of-sequence, separator or beginning-of-sequence token to separate "
                    "documents; use a tokenizer that has one")


class TokenCache:
    """The cache folder, checked writable before any work is done."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder).expanduser() if folder is not None else default_cache_dir()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            probe = self.folder / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise DataError(f"cache folder {self.folder} is not writable ({exc.strerror}); pass --cache-dir with a "
                            "writable folder") from None

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.u32"

    def load(self, key: str) -> np.ndarray | None:
        """The stream under `key`, memory-mapped, or None when it is not (completely) there."""
        data, meta = self.path(key), self.folder / f"{key}.json"
        if not (data.is_file() and meta.is_file()):
            return None
        try:
            n = json.loads(meta.read_text())["n_tokens"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if data.stat().st_size != 4 * n:
            return None
        return np.memmap(data, dtype=np.uint32, mode="r") if n else np.zeros(0, dtype=np.uint32)

    def store(self, key: str, chunks: Iterable[np.ndarray], meta: dict) -> np.ndarray:
        """Write a stream from its chunks (uint32) under `key`, then return it memory-mapped."""
        n = 0
        with staged_file(self.path(key), option="--cache-dir") as tmp:
            with open(tmp, "wb") as fh:
                for chunk in chunks:
                    chunk = np.ascontiguousarray(chunk, dtype=np.uint32)
                    fh.write(chunk.tobytes())
                    n += chunk.size
        with staged_file(self.folder / f"{key}.json", option="--cache-dir") as tmp:
            tmp.write_text(json.dumps({**meta, "n_tokens": n}, indent=1, sort_keys=True))
        stream = self.load(key)
        if stream is None:
            raise DataError(f"{self.path(key)}: the token cache was changed while it was written; run again")
        return stream


def _pieces(doc: str) -> Iterator[str]:
    """A document, in pieces of at most about LONG_DOCUMENT characters cut at line ends (a 5 MB book tokenizes
    in bounded memory and without the tokenizer's length warnings)."""
    if len(doc) <= LONG_DOCUMENT:
        yield doc
        return
    start = 0
    while start < len(doc):
        end = doc.find("\n", start + LONG_DOCUMENT)
        end = len(doc) if end < 0 else end + 1
        yield doc[start:end]
        start = end


def _tokenized(docs: Documents, tokenizer, sep: int, progress: bool) -> Iterator[np.ndarray]:
    batch: list[tuple[int, str]] = []  # (document number, piece)
    n_docs = 0

    def flush() -> Iterator[np.ndarray]:
        ids = tokenizer([piece for _, piece in batch], add_special_tokens=False, verbose=False)["input_ids"]
        out: list[int] = []
        for (doc_no, _), piece_ids, nxt in zip(batch, ids, batch[1:] + [(None, "")]):
            out.extend(piece_ids)
            if nxt[0] != doc_no:  # the document's last piece: close it with the separator
                out.append(sep)
        batch.clear()
        yield np.asarray(out, dtype=np.uint32)

    with task_progress(f"tokenizing {docs.name}", total=0, enabled=progress) as advance:
        for doc in docs.read():
            if not doc.strip():
                continue
            for piece in _pieces(doc):
                batch.append((n_docs, piece))
            n_docs += 1
            if len(batch) >= TOKENIZE_BATCH:
                # a document split over two flushes would get a separator at the cut: flush at document ends only
                yield from flush()
                advance(f"{n_docs} documents")
        if batch:
            yield from flush()
    if n_docs == 0:
        raise DataError(f"{docs.name}: empty source (no text); pass a source that holds text")


def token_stream(docs: Documents, tokenizer, cache: TokenCache, progress: bool = True) -> np.ndarray:
    """The source's documents as one token stream (separator after each document), from the cache when there."""
    key = hashlib.sha256(f"{tokenizer_key(tokenizer)}\0{docs.key}".encode()).hexdigest()
    cached = cache.load(key)
    if cached is not None:
        return cached
    sep = separator_id(tokenizer)
    return cache.store(key, _tokenized(docs, tokenizer, sep, progress), {"source": docs.name, "separator": sep})


@dataclass
class TokenBlocks:
    """Fixed-length blocks drawn from one or more token streams: item i is block index[i, 1] of stream index[i, 0]."""

    streams: list[np.ndarray]
    seq_len: int
    index: np.ndarray  # [n, 2] int64

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def get(self, items: torch.Tensor | list[int]) -> torch.Tensor:
        rows = self.index[np.asarray(items, dtype=np.int64)]
        out = np.empty((len(rows), self.seq_len), dtype=np.int64)
        for r, (s, b) in enumerate(rows):
            out[r] = self.streams[s][b * self.seq_len:(b + 1) * self.seq_len]
        return torch.from_numpy(out)

    def n_tokens(self) -> int:
        return len(self) * self.seq_len


def n_blocks(stream: np.ndarray, seq_len: int) -> int:
    return stream.size // seq_len


def mix(streams: list[np.ndarray], names: list[str], weights: list[float | None], seq_len: int,
        seed: int) -> TokenBlocks:
    """Blocks of every stream in proportion to its size (no weights), or to the given weights: then each stream
    contributes weight / sum(weights) of as many blocks as the streams hold together, its own blocks repeated
    (in a fixed shuffled order) when it has fewer. Weights go to every source or to none."""
    sizes = [n_blocks(s, seq_len) for s in streams]
    for name, size, stream in zip(names, sizes, streams):
        if size == 0:
            raise DataError(f"{name}: {stream.size} tokens, fewer than one block of --seq-len {seq_len}; use more "
                            "text or a shorter --seq-len")
    given = [w for w in weights if w is not None]
    if given and len(given) != len(weights):
        raise DataError("give ?weight= to every --train source or to none (without weights they mix by size)")
    if any(w < 0 for w in given):
        raise DataError("mixing weights must be >= 0")
    if not given:
        index = np.concatenate([np.stack([np.full(n, s), np.arange(n)], 1) for s, n in enumerate(sizes)])
        return TokenBlocks(streams, seq_len, index.astype(np.int64))
    total_w = sum(given)
    if total_w <= 0:
        raise DataError("the mixing weights add up to 0; give at least one source a positive weight")
    total = sum(sizes)
    parts = []
    for s, (n, w) in enumerate(zip(sizes, given)):
        take = int(round(total * w / total_w))
        if take == 0:
            continue
        order = np.random.default_rng([seed, s]).permutation(n)
        picks = np.resize(order, take)  # cycles through the stream's blocks when it has fewer than `take`
        parts.append(np.stack([np.full(take, s), picks], 1))
    return TokenBlocks(streams, seq_len, np.concatenate(parts).astype(np.int64))
