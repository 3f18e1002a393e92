"""Training data for `recover`: labelled examples and text as it trains on them, a fixed split, token blocks.

Files are read by bitconv.data_files (as `eval` reads them) and checked before any model is loaded, so a
wrong column or a label that the training file never saw fails in a second with the file and line named,
not after an hour of training.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import torch

from bitconv.data.files import Examples, label_ids, read_examples, read_text
from bitconv.errors import DataError

# more distinct values than this and the label column is probably the text column
MAX_LABELS = 64


def read_labelled(path: Path, text_column: str | None = None, label_column: str | None = None) -> Examples:
    """Labelled examples (bitconv.data_files.read_examples, columns found where not given), texts stripped.

    Training has always seen texts without surrounding white space (GLUE's end in a space); evaluation
    scores them as written.
    """
    data = read_examples(path, text_column, label_column)
    if len(set(data.labels)) > MAX_LABELS:
        raise DataError(
            f"{data.path}: {len(set(data.labels))} distinct labels in the label column; is it the text column? "
            "pass --text-column and --label-column"
        )
    return replace(data, texts=[text.strip() for text in data.texts])


def read_training_text(path: Path) -> tuple[str, str]:
    """A text file's text with every line end made '\\n', and the SHA-256 of its bytes.

    Training has always read text as Python's text mode does, so a file with Windows line ends trains on
    the same tokens as its Unix twin; evaluation scores the text as written.
    """
    text, sha = read_text(path)
    return text.replace("\r\n", "\n").replace("\r", "\n"), sha


def label_names(train: Examples) -> list[str]:
    """Sorted label strings, integers in numeric order ('0','1',... or 'ham','spam')."""
    names = sorted(set(train.labels), key=lambda s: (0, int(s), "") if s.lstrip("-").isdigit() else (1, 0, s))
    if len(names) < 2:
        raise DataError(f"{train.path}: only one label ({names[0]!r}); classification needs at least two")
    return names


def class_ids(data: Examples, names: list[str]) -> list[int]:
    """Each label's position in `names` (the training file's labels), by exact name."""
    return label_ids(data.labels, dict(enumerate(names)), {name: i for i, name in enumerate(names)}, data.path,
                     map_what="the training file's labels")


def split_labelled_tsv(path: Path, out_dir: Path, validation_fraction: float = 0.2, seed: int = 0) -> tuple[Path, Path]:
    """Fixed-seed stratified split into train.tsv and validation.tsv (header `sentence<TAB>label`)."""
    data = read_labelled(path)
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(data.labels):
        by_label.setdefault(label, []).append(i)
    val_idx: set[int] = set()
    for label in sorted(by_label):
        idx = by_label[label]
        rng.shuffle(idx)
        val_idx.update(idx[: round(len(idx) * validation_fraction)])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, keep in (("train.tsv", lambda i: i not in val_idx), ("validation.tsv", lambda i: i in val_idx)):
        lines = ["sentence\tlabel"] + [f"{data.texts[i]}\t{data.labels[i]}" for i in range(len(data.texts)) if keep(i)]
        target = out_dir / name
        tmp = target.with_name(target.name + ".partial")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.replace(target)
        paths.append(target)
    return paths[0], paths[1]


def token_blocks(ids: list[int] | torch.Tensor, seq_len: int, path: Path) -> torch.Tensor:
    """Non-overlapping [n, seq_len] blocks of token ids (the ragged tail is dropped)."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    n = ids.numel() // seq_len
    if n == 0:
        raise DataError(f"{path}: {ids.numel()} tokens, fewer than one block of --seq-len {seq_len}; "
                           "use more text or a shorter --seq-len")
    return ids[: n * seq_len].reshape(n, seq_len)
