"""Training data for `recover`: labelled TSV files for classification, plain text for language modelling.

Readers check the files before any model is loaded, so a wrong column or a label that the training file
never saw fails in a second with the file and line named, not after an hour of training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from bitconv.errors import BitconvError

TEXT_COLUMN_NAMES = ("sentence", "text", "message", "sms", "review", "content")
LABEL_COLUMN_NAMES = ("label", "labels", "class", "category", "target")
# a headerless file's label column is the one with few distinct values
MAX_LABELS = 64


@dataclass
class LabelledTexts:
    path: Path
    texts: list[str]
    labels: list[str]


def _rows(path: Path) -> list[list[str]]:
    path = Path(path)
    if not path.is_file():
        raise BitconvError(f"{path}: no such file; pass a TSV file of text<TAB>label rows")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise BitconvError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    rows = [line.split("\t") for line in lines if line.strip()]
    if not rows:
        raise BitconvError(f"{path}: the file is empty; it needs text<TAB>label rows")
    return rows


def _find_column(header: list[str], wanted: str | None, names: tuple[str, ...], kind: str, path: Path) -> int | None:
    lowered = [h.strip().lower() for h in header]
    if wanted is not None:
        if wanted.isdigit():
            return int(wanted)
        if wanted.lower() in lowered:
            return lowered.index(wanted.lower())
        raise BitconvError(f"{path}: no {kind} column '{wanted}' (columns: {', '.join(header)}); pass --{kind}-column")
    for name in names:
        if name in lowered:
            return lowered.index(name)
    return None


def read_labelled_tsv(path: Path, text_column: str | None = None, label_column: str | None = None) -> LabelledTexts:
    """Rows of text and label, tab-separated, with or without a header line.

    With a header the columns are found by name (sentence/text/message and label/class, or the names
    given); without one the file must have two columns and the label column is the one with few
    distinct values (SMS Spam's `ham<TAB>message` and SST-2's `sentence<TAB>label` both work).
    """
    path = Path(path)
    rows = _rows(path)
    header = rows[0]
    text_idx = _find_column(header, text_column, TEXT_COLUMN_NAMES, "text", path)
    label_idx = _find_column(header, label_column, LABEL_COLUMN_NAMES, "label", path)
    has_header = text_idx is not None and label_idx is not None and not (
        (text_column or "").isdigit() or (label_column or "").isdigit())
    if has_header:
        body, first_line = rows[1:], 2
    else:
        body, first_line = rows, 1
        if len(header) < 2:
            raise BitconvError(f"{path}: line 1 has no tab; each row must be text<TAB>label (or label<TAB>text)")
        if text_idx is None or label_idx is None:
            if len(header) != 2:
                raise BitconvError(
                    f"{path}: {len(header)} columns and no header naming them; add a header line with "
                    "'sentence' and 'label' columns or pass --text-column/--label-column"
                )
            distinct = [len({r[i] for r in rows if len(r) > i}) for i in (0, 1)]
            label_idx = 0 if distinct[0] <= distinct[1] else 1
            text_idx = 1 - label_idx
    if not body:
        raise BitconvError(f"{path}: a header and no rows; the file needs text<TAB>label rows")
    need = max(text_idx, label_idx) + 1
    texts, labels = [], []
    for n, row in enumerate(body, start=first_line):
        if len(row) < need:
            raise BitconvError(f"{path}: line {n} has {len(row)} column(s), expected at least {need} (text<TAB>label)")
        texts.append(row[text_idx].strip())
        labels.append(row[label_idx].strip())
    if len(set(labels)) > MAX_LABELS:
        raise BitconvError(
            f"{path}: {len(set(labels))} distinct labels in the label column; is it the text column? "
            "pass --text-column and --label-column"
        )
    return LabelledTexts(path, texts, labels)


def label_names(train: LabelledTexts) -> list[str]:
    """Sorted label strings, integers in numeric order ('0','1',... or 'ham','spam')."""
    names = sorted(set(train.labels), key=lambda s: (0, int(s), "") if s.lstrip("-").isdigit() else (1, 0, s))
    if len(names) < 2:
        raise BitconvError(f"{train.path}: only one label ({names[0]!r}); classification needs at least two")
    return names


def label_ids(data: LabelledTexts, names: list[str]) -> list[int]:
    index = {name: i for i, name in enumerate(names)}
    ids = []
    for n, label in enumerate(data.labels):
        if label not in index:
            raise BitconvError(
                f"{data.path}: label {label!r} (row {n + 1}) is not among the training file's labels "
                f"({', '.join(names)}); use files with the same label set"
            )
        ids.append(index[label])
    return ids


def split_labelled_tsv(path: Path, out_dir: Path, validation_fraction: float = 0.2, seed: int = 0) -> tuple[Path, Path]:
    """Fixed-seed stratified split into train.tsv and validation.tsv (header `sentence<TAB>label`)."""
    data = read_labelled_tsv(path)
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


def read_text(path: Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise BitconvError(f"{path}: no such file; pass a UTF-8 text file for --task lm")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BitconvError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    if not text.strip():
        raise BitconvError(f"{path}: the file is empty; language-model training needs text")
    return text


def token_blocks(ids: list[int] | torch.Tensor, seq_len: int, path: Path) -> torch.Tensor:
    """Non-overlapping [n, seq_len] blocks of token ids (the ragged tail is dropped)."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    n = ids.numel() // seq_len
    if n == 0:
        raise BitconvError(f"{path}: {ids.numel()} tokens, fewer than one block of --seq-len {seq_len}; "
                           "use more text or a shorter --seq-len")
    return ids[: n * seq_len].reshape(n, seq_len)
