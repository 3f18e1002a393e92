"""Data files, read the same way for `eval` and `recover`: plain text with its SHA-256, a slice of it,
labelled examples from a TSV/CSV file, and the mapping of their labels to class ids.

Every reader is deterministic and never modifies the file; every problem is a one-line BitconvError naming
the file (and line or column) and what to do.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

from bitconv.errors import DataError

# a column that is not given is the first of these names (any case) in the header line
TEXT_COLUMN_NAMES = ("sentence", "text", "message", "sms", "review", "content")
LABEL_COLUMN_NAMES = ("label", "labels", "class", "category", "target")


def read_text(path: str | Path) -> tuple[str, str]:
    """The file's text (UTF-8, line ends as written) and the SHA-256 of its bytes, read once."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: data file not found; check the path")
    if not path.is_file():
        raise DataError(f"{path}: is not a file; pass the data file itself")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); convert it to UTF-8") from None
    if not text.strip():
        raise DataError(f"{path}: the data file is empty; pass one that holds the data")
    return text, hashlib.sha256(raw).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# plain text


@dataclass
class TextSlice:
    """The characters [start_char, end_char) of a text file (Python string indices)."""

    path: str
    text: str
    start_char: int
    end_char: int
    file_chars: int
    file_sha256: str


def text_slice(path: str | Path, start_fraction: float = 0.0, end_fraction: float = 1.0) -> TextSlice:
    """The part of a text file between two fractions of its length, both moved forward to a line start.

    Moving to line starts keeps a held-out tail from beginning mid-word, and makes the slice the same for
    every tokenizer. `start_fraction=0.9` is the last tenth of the file.
    """
    if not 0.0 <= start_fraction < end_fraction <= 1.0:
        raise DataError(f"--start-fraction {start_fraction} and --end-fraction {end_fraction}: "
                           "need 0 <= start < end <= 1")
    text, sha = read_text(path)
    n = len(text)

    def line_start(fraction: float) -> int:
        if fraction <= 0.0:
            return 0
        if fraction >= 1.0:
            return n
        i = int(fraction * n)
        nl = text.find("\n", i - 1) if i > 0 else 0
        return n if nl < 0 else nl + 1

    start, end = line_start(start_fraction), line_start(end_fraction)
    if not text[start:end].strip():
        raise DataError(f"{path}: the slice {start_fraction}..{end_fraction} of the file holds no text; widen it")
    return TextSlice(str(path), text[start:end], start, end, n, sha)


# ---------------------------------------------------------------------------------------------------------
# labelled tables


@dataclass
class Examples:
    path: str
    texts: list[str]  # as written in the file
    labels: list[str]  # as written in the file, less surrounding white space
    text_column: str  # as given, else as found: a header name or a 0-based number
    label_column: str
    header: bool
    file_sha256: str


def _rows(text: str, delimiter: str) -> list[tuple[int, list[str]]]:
    """The rows that hold something, with their line numbers.

    Only commas get quote processing (CSV); tab-separated files such as GLUE's are not quoted, so a quote
    there is part of the text.
    """
    lines = text.splitlines()
    rows = csv.reader(lines) if delimiter == "," else (line.split(delimiter) for line in lines)
    return [(n, row) for n, row in enumerate(rows, start=1) if any(cell.strip() for cell in row)]


def _named_index(names: tuple[str, ...], header: list[str]) -> int | None:
    """The header cell of the first of `names` (lower case), compared without case or surrounding white space."""
    loose = [h.strip().lower() for h in header]
    return next((loose.index(name) for name in names if name in loose), None)


def _column_index(spec: str, header: list[str] | None, path: Path, option: str) -> int:
    if spec.isdigit():
        return int(spec)
    if header is None:
        raise DataError(f"{path}: {option} '{spec}' is a column name, but the file is read without a header; "
                           f"pass a column number (0-based) or --header")
    if spec in header:  # an exact match first: a header may hold 'Label' and 'label'
        return header.index(spec)
    index = _named_index((spec.strip().lower(),), header)
    if index is None:
        raise DataError(f"{path}: no column named '{spec}' (the header has {', '.join(repr(h) for h in header)}); "
                           f"pass {option} with one of those names or a 0-based number")
    return index


def _headerless_columns(rows: list[tuple[int, list[str]]], text_idx: int | None, label_idx: int | None,
                        path: Path) -> tuple[int, int]:
    """Columns not given, in a file without a header: it has two, and labels take the fewer distinct values."""
    line, first = rows[0]
    if len(first) != 2:
        raise DataError(f"{path}: line {line} has {len(first)} column(s) and no header naming them; check the "
                           "delimiter, add a header line with 'sentence' and 'label' columns or pass --text-column and "
                           "--label-column")
    if text_idx is None and label_idx is None:
        distinct = [len({row[i] for _, row in rows if len(row) > i}) for i in (0, 1)]
        label_idx = 0 if distinct[0] <= distinct[1] else 1
    given, option = (text_idx, "--text-column") if label_idx is None else (label_idx, "--label-column")
    if given > 1:
        raise DataError(f"{path}: {option} {given}, but the file has two columns (0 and 1); pass 0 or 1")
    return (1 - label_idx if text_idx is None else text_idx), (1 - text_idx if label_idx is None else label_idx)


def read_examples(path: str | Path, text_column: str | None = None, label_column: str | None = None,
                  header: bool | None = None, delimiter: str | None = None, max_examples: int | None = None) -> Examples:
    """Texts and labels from a TSV/CSV file.

    Columns are header names (matched exactly, else without case) or 0-based numbers. A column not given is
    found by its usual name in the first line (sentence/text/message/... and label/class/...); where that
    line names no column, the file must have two columns and the labels are the one with fewer distinct
    values (SMS Spam's `ham<TAB>message` and SST-2's `sentence<TAB>label` both work). `header=None` means: a
    header exactly when a column is given by name or every column not given is found by name. The delimiter
    follows the extension (.csv is a comma, anything else a tab) unless given. Blank lines are skipped.
    """
    path = Path(path).expanduser()
    text, sha = read_text(path)
    if delimiter is None:
        delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    if len(delimiter) != 1:
        raise DataError(f"--delimiter {delimiter!r}: pass one character, e.g. ';'")
    rows = _rows(text, delimiter)
    if not rows:
        raise DataError(f"{path}: no examples, only blank lines; add rows of text and label")
    specs = {"text": text_column, "label": label_column}
    names = {"text": TEXT_COLUMN_NAMES, "label": LABEL_COLUMN_NAMES}
    if header is None:
        found = [_named_index(names[kind], rows[0][1]) for kind, spec in specs.items() if spec is None]
        header = any(spec is not None and not spec.isdigit() for spec in specs.values()) or (
            bool(found) and None not in found)
    head = rows.pop(0)[1] if header else None
    index: dict[str, int | None] = {}
    for kind, spec in specs.items():
        if spec is not None:
            index[kind] = _column_index(spec, head, path, f"--{kind}-column")
        elif head is None:
            index[kind] = None  # told apart by their values below
        else:
            index[kind] = _named_index(names[kind], head)
            if index[kind] is None:
                raise DataError(f"{path}: the header ({', '.join(repr(h) for h in head)}) names no {kind} column; "
                                   f"pass --{kind}-column with one of those names or a 0-based number")
    if not rows:
        raise DataError(f"{path}: no examples, only a header; add rows of text and label")
    t_idx, l_idx = index["text"], index["label"]
    if t_idx is None or l_idx is None:
        t_idx, l_idx = _headerless_columns(rows, t_idx, l_idx, path)
    texts, labels = [], []
    for line, row in rows:
        if max(t_idx, l_idx) >= len(row):
            raise DataError(f"{path}: line {line} has {len(row)} column(s), column {max(t_idx, l_idx)} is needed; "
                               "check the delimiter and the column options")
        texts.append(row[t_idx])
        labels.append(row[l_idx].strip())
        if max_examples is not None and len(texts) >= max_examples:
            break

    def column_name(spec: str | None, idx: int) -> str:
        return spec if spec is not None else head[idx] if head is not None else str(idx)

    return Examples(str(path), texts, labels, column_name(text_column, t_idx), column_name(label_column, l_idx),
                    header, sha)


# ---------------------------------------------------------------------------------------------------------
# labels


def parse_label_map(text: str | None) -> dict[str, int] | None:
    """`ham=0,spam=1` -> {"ham": 0, "spam": 1}."""
    if not text:
        return None
    mapping = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise DataError(f"--label-map {text!r}: write NAME=ID pairs separated by commas, e.g. ham=0,spam=1")
        mapping[name.strip()] = int(value)
    return mapping


def label_ids(labels: list[str], id2label: dict[int, str], label_map: dict[str, int] | None, path: str,
              what: str = "the model's label map (config.json id2label)", map_what: str = "--label-map") -> list[int]:
    """Map each label as written in the data to a class id.

    With a `label_map`, only it, by exact name. Without, a label name from id2label (case-insensitive), then an
    integer that is a valid class id. Anything else is an error naming the label and its example number, and
    `what` (or `map_what`) for where the label was looked up.
    """
    by_name = {v.lower(): k for k, v in id2label.items()}
    ids = []
    for i, label in enumerate(labels):
        if label_map is not None:
            if label not in label_map:
                raise DataError(f"{path}: label '{label}' (example {i + 1}) is not in {map_what} "
                                   f"({', '.join(label_map)}); every label must be one of those")
            class_id = label_map[label]
        elif label.lower() in by_name:
            class_id = by_name[label.lower()]
        elif label.lstrip("-").isdigit() and int(label) in id2label:
            class_id = int(label)
        else:
            known = ", ".join(f"{k}={v}" for k, v in sorted(id2label.items()))
            raise DataError(f"{path}: label '{label}' (example {i + 1}) is not in {what} ({known}); "
                               "pass --label-map NAME=ID,...")
        if class_id not in id2label:
            raise DataError(f"{path}: label '{label}' maps to class {class_id}, which the model does not have "
                               f"(classes {sorted(id2label)})")
        ids.append(class_id)
    return ids
