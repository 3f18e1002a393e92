"""Teacher-labelled data augmentation for distillation (TinyBERT, Jiao et al. 2020): more inputs near the
training texts, whose targets come from the teacher, not from the data.

TinyBERT proposes word replacements with a masked language model; none ships with the models bitconv
recovers offline (all-MiniLM-L6-v2 and all-mpnet-base-v2 have no MLM head), so the edits here are
model-free and the same for every tokenizer: drop words, swap neighbours, replace words with words drawn
from the training texts, or keep a contiguous span of at least half the words (SST-2's phrases are such
spans). The teacher then says what each variant is, so an edit that flips the sentiment is labelled as
flipped.

Deterministic: the variants depend on the texts, `n_per_text` and `seed` only.
"""

from __future__ import annotations

import random

EDIT_FRACTION = 0.15  # share of the words a drop / replace edit touches (BERT's masking rate)


def _edit(words: list[str], rng: random.Random, vocabulary: list[str]) -> list[str]:
    n = len(words)
    k = max(1, round(EDIT_FRACTION * n))
    kind = rng.randrange(4)
    if kind == 0 and n > 1:  # drop k words
        gone = set(rng.sample(range(n), min(k, n - 1)))
        return [w for i, w in enumerate(words) if i not in gone]
    if kind == 1 and n > 1:  # swap k pairs of neighbours
        out = list(words)
        for _ in range(k):
            i = rng.randrange(n - 1)
            out[i], out[i + 1] = out[i + 1], out[i]
        return out
    if kind == 2 and n >= 4:  # a contiguous span of at least half the words
        length = rng.randint((n + 1) // 2, n - 1)
        start = rng.randint(0, n - length)
        return words[start:start + length]
    out = list(words)  # replace k words by words of the training texts
    for i in rng.sample(range(n), min(k, n)):
        out[i] = rng.choice(vocabulary)
    return out


def augment_texts(texts: list[str], n_per_text: int, seed: int = 0) -> list[str]:
    """`n_per_text` edited variants of each text, in order (text 0's variants first); unlabelled on purpose.

    A variant equal to its text or to one already made is drawn again (a few times), so the variants add
    inputs rather than repeat them.
    """
    rng = random.Random(seed)
    split = [t.split() for t in texts]
    vocabulary = sorted({w for words in split for w in words})
    out = []
    for text, words in zip(texts, split):
        if not words:
            out.extend([text] * n_per_text)
            continue
        seen = {text}
        for _ in range(n_per_text):
            variant = text
            for _attempt in range(4):
                variant = " ".join(_edit(words, rng, vocabulary))
                if variant not in seen:
                    break
            seen.add(variant)
            out.append(variant)
    return out
