"""Evaluation inputs: a slice of a plain-text file, and labelled examples from a TSV/CSV file.

Both readers are deterministic and never modify the file; every problem is a one-line BitconvError naming
the file (and line or column) and what to do.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

from bitconv.errors import BitconvError


@dataclass
class TextSlice:
    """The characters [start_char, end_char) of a text file (Python string indices)."""

    path: str
    text: str
    start_char: int
    end_char: int
    file_chars: int
    file_sha256: str


def read_text(path: str | Path) -> str:
    path = Path(path).expanduser()
    if not path.exists():
        raise BitconvError(f"{path}: data file not found")
    if not path.is_file():
        raise BitconvError(f"{path}: is not a file; pass a plain text file with --data")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BitconvError(f"{path}: not UTF-8 text (byte {exc.start}); convert it to UTF-8") from None
    if not text.strip():
        raise BitconvError(f"{path}: the data file is empty")
    return text


def text_slice(path: str | Path, start_fraction: float = 0.0, end_fraction: float = 1.0) -> TextSlice:
    """The part of a text file between two fractions of its length, both moved forward to a line start.

    Moving to line starts keeps a held-out tail from beginning mid-word, and makes the slice the same for
    every tokenizer. `start_fraction=0.9` is the last tenth of the file.
    """
    if not 0.0 <= start_fraction < end_fraction <= 1.0:
        raise BitconvError(f"--start-fraction {start_fraction} and --end-fraction {end_fraction}: "
                           "need 0 <= start < end <= 1")
    text = read_text(path)
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
        raise BitconvError(f"{path}: the slice {start_fraction}..{end_fraction} of the file holds no text; widen it")
    sha = hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()
    return TextSlice(str(path), text[start:end], start, end, n, sha)


# ---------------------------------------------------------------------------------------------------------
# labelled tables


@dataclass
class Examples:
    path: str
    texts: list[str]
    labels: list[str]  # as written in the file
    text_column: str
    label_column: str
    header: bool
    file_sha256: str


def _column_index(spec: str, header: list[str] | None, path: Path, option: str) -> tuple[int, str]:
    if spec.isdigit():
        return int(spec), spec
    if header is None:
        raise BitconvError(f"{path}: {option} '{spec}' is a column name, but the file is read without a header; "
                           f"pass a column number (0-based) or --header")
    if spec not in header:
        raise BitconvError(f"{path}: no column named '{spec}' (the header has {', '.join(repr(h) for h in header)}); "
                           f"pass {option} with one of those names or a 0-based number")
    return header.index(spec), spec


def read_examples(path: str | Path, text_column: str = "sentence", label_column: str = "label",
                  header: bool | None = None, delimiter: str | None = None, max_examples: int | None = None) -> Examples:
    """Texts and labels from a TSV/CSV file.

    Columns are names (the file then has a header line) or 0-based numbers. `header=None` means: a header
    exactly when a column is given by name. TSV files are read without quote processing (GLUE's are not
    quoted); CSV files with the usual double-quote rules. The delimiter follows the extension (.csv is a
    comma, anything else a tab) unless given.
    """
    path = Path(path).expanduser()
    text = read_text(path)
    if delimiter is None:
        delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    if header is None:
        header = not (text_column.isdigit() and label_column.isdigit())
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    rows = list(csv.reader(text.splitlines(), delimiter=delimiter, quoting=quoting))
    head = rows.pop(0) if header else None
    t_idx, t_name = _column_index(text_column, head, path, "--text-column")
    l_idx, l_name = _column_index(label_column, head, path, "--label-column")
    texts, labels = [], []
    first_line = 2 if header else 1
    for line_no, row in enumerate(rows, start=first_line):
        if not row or all(not cell.strip() for cell in row):
            continue
        if max(t_idx, l_idx) >= len(row):
            raise BitconvError(f"{path}: line {line_no} has {len(row)} columns, column {max(t_idx, l_idx)} is needed; "
                               "check --delimiter and the column options")
        texts.append(row[t_idx])
        labels.append(row[l_idx].strip())
        if max_examples is not None and len(texts) >= max_examples:
            break
    if not texts:
        raise BitconvError(f"{path}: no examples (only a header or blank lines)")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return Examples(str(path), texts, labels, t_name, l_name, header, sha)


def parse_label_map(text: str | None) -> dict[str, int] | None:
    """`ham=0,spam=1` -> {"ham": 0, "spam": 1}."""
    if not text:
        return None
    mapping = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise BitconvError(f"--label-map {text!r}: write NAME=ID pairs separated by commas, e.g. ham=0,spam=1")
        mapping[name.strip()] = int(value)
    return mapping


def label_ids(labels: list[str], id2label: dict[int, str], label_map: dict[str, int] | None, path: str,
              what: str = "the model's label map (config.json id2label)") -> list[int]:
    """Map each label as written in the data to a class id.

    Order of rules: an explicit --label-map; a label name from id2label (case-insensitive); an integer that is
    a valid class id. Anything else is an error naming the label and its line.
    """
    by_name = {v.lower(): k for k, v in id2label.items()}
    ids = []
    for i, label in enumerate(labels):
        if label_map is not None:
            if label not in label_map:
                raise BitconvError(f"{path}: label '{label}' (example {i + 1}) is not in --label-map "
                                   f"({', '.join(label_map)})")
            class_id = label_map[label]
        elif label.lower() in by_name:
            class_id = by_name[label.lower()]
        elif label.lstrip("-").isdigit() and int(label) in id2label:
            class_id = int(label)
        else:
            known = ", ".join(f"{k}={v}" for k, v in sorted(id2label.items()))
            raise BitconvError(f"{path}: label '{label}' (example {i + 1}) is not in {what} ({known}); "
                               "pass --label-map NAME=ID,...")
        if class_id not in id2label:
            raise BitconvError(f"{path}: label '{label}' maps to class {class_id}, which the model does not have "
                               f"(classes {sorted(id2label)})")
        ids.append(class_id)
    return ids
