"""Training and evaluation text from anywhere, named by one string per source:

    notes.txt                         a text file (one document)
    corpus/  or  'corpus/**/*.jsonl'  a folder or glob of .txt / .md / .jsonl / .parquet / .csv / .tsv files
    wiki.jsonl?column=body            a table's text column (default: 'text', then sentence/message/content...)
    hf:wikitext?config=wikitext-2-raw-v1&split=train
                                      a dataset through `datasets.load_dataset` (also `hf:json?data_files=a.jsonl`,
                                      `&streaming=1`, `&revision=...`); a folder written by `save_to_disk` is
                                      read with `datasets.load_from_disk`
    teacher:20M                       text the original model writes itself (bitconv.data.synth)
    any of these + '&weight=0.3'      its share of the training mix (bitconv.data.tokens.mix)

Each source yields documents (strings) and a content key: the SHA-256 of the bytes read (files), the
dataset's fingerprint (datasets), or, for a streamed dataset, its name and options. The key and the
tokenizer name the token cache, so changed data is re-tokenized and unchanged data is not.
Every problem is one `DataError` line naming the source and what to do.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import parse_qsl

from bitconv.data.files import TEXT_COLUMN_NAMES, read_text
from bitconv.errors import DataError

TEXT_SUFFIXES = (".txt", ".md", ".text")
TABLE_SUFFIXES = (".jsonl", ".parquet", ".csv", ".tsv")
KNOWN_OPTIONS = {"weight", "column", "config", "split", "streaming", "data_files", "revision", "top_k", "top_p",
                 "temperature", "batch", "length"}
UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}


@dataclass(frozen=True)
class SourceSpec:
    """One --train/--eval source as given, split into its kind, target and options."""

    text: str
    kind: str  # "files", "dataset", "disk" (save_to_disk folder), "teacher"
    target: str  # path or glob, dataset name, or the token budget of teacher:N
    options: dict = field(default_factory=dict)

    @property
    def weight(self) -> float | None:
        if "weight" not in self.options:
            return None
        try:
            w = float(self.options["weight"])
        except ValueError:
            w = math.nan
        if not math.isfinite(w) or w < 0:
            raise DataError(f"{self.text}: weight {self.options['weight']!r} must be a number >= 0 (a share of the "
                            "training mix)")
        return w


def parse_count(text: str, what: str) -> int:
    """'20M' -> 20_000_000, '500k', '2e7', '1000'."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgb]?)\s*", text.lower())
    if not m:
        raise DataError(f"{what} {text!r}: write a count such as 20M, 500k or 1000000")
    return int(float(m.group(1)) * UNITS[m.group(2)])


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()) and (
        (path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def parse_source(text: str) -> SourceSpec:
    """Split `SOURCE?key=value&...` into a SourceSpec (an existing path keeps any '?' in its name)."""
    base, query = text, ""
    if "?" in text and not Path(text).expanduser().exists():
        base, query = text.split("?", 1)
    options = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    unknown = sorted(set(options) - KNOWN_OPTIONS)
    if unknown:
        raise DataError(f"{text}: unknown option(s) {', '.join(unknown)}; use {', '.join(sorted(KNOWN_OPTIONS))}")
    if base.startswith("teacher:"):
        return SourceSpec(text, "teacher", base[len("teacher:"):], options)
    if base.startswith("hf:"):
        return SourceSpec(text, "dataset", base[len("hf:"):], options)
    path = Path(base).expanduser()
    if _is_saved_dataset(path):
        return SourceSpec(text, "disk", str(path), options)
    if path.exists() or glob.has_magic(base):
        return SourceSpec(text, "files", base, options)
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", base):  # looks like a Hub dataset name
        return SourceSpec(text, "dataset", base, options)
    raise DataError(f"{text}: no such file, folder or glob; pass a path, 'hf:NAME' for a dataset or 'teacher:N'")


@dataclass
class Documents:
    """The documents of one source, read lazily: `name` for messages, `key` for the token cache."""

    name: str
    key: str
    read: Callable[[], Iterator[str]]
    kind: str = "files"


# ---------------------------------------------------------------------------------------------------------
# files


def _files_of(spec: SourceSpec) -> list[Path]:
    path = Path(spec.target).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES + TABLE_SUFFIXES)
        what = f"folder {path}"
    else:
        found = sorted(Path(p) for p in glob.glob(str(Path(spec.target).expanduser()), recursive=True)
                       if Path(p).is_file())
        what = f"glob {spec.target}"
    if not found:
        raise DataError(f"{spec.text}: the {what} holds no .txt/.md/.jsonl/.parquet/.csv/.tsv files; check the path")
    return found


def _pick_column(names: list[str], wanted: str | None, where: str) -> str:
    if wanted is not None:
        if wanted not in names:
            raise DataError(f"{where}: no text column '{wanted}' (columns: {', '.join(names) or 'none'}); pass "
                            "?column=NAME with one of those")
        return wanted
    lower = {n.lower(): n for n in names}
    for candidate in TEXT_COLUMN_NAMES:
        if candidate in lower:
            return lower[candidate]
    raise DataError(f"{where}: no text column (looked for {', '.join(TEXT_COLUMN_NAMES)}; columns: "
                    f"{', '.join(names) or 'none'}); pass ?column=NAME")


def _jsonl_documents(path: Path, column: str | None) -> Iterator[str]:
    text, _ = read_text(path)
    chosen = None
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{path}: line {n} is not JSON; each line of a .jsonl file is one JSON object") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {n} is not a JSON object with a text field")
        chosen = chosen or _pick_column(list(row), column, f"{path} (line {n})")
        if chosen not in row:
            raise DataError(f"{path}: line {n} has no '{chosen}' field; every line needs the text column")
        value = row[chosen]
        if value is not None:
            yield str(value)


def _parquet_documents(path: Path, column: str | None) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid and others for files that are not parquet
        raise DataError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
    chosen = _pick_column(pf.schema_arrow.names, column, str(path))
    for batch in pf.iter_batches(columns=[chosen], batch_size=4096):
        for value in batch.column(0).to_pylist():
            if value is not None:
                yield str(value)


def _csv_documents(path: Path, column: str | None) -> Iterator[str]:
    text, _ = read_text(path)
    reader = csv.DictReader(io.StringIO(text), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    chosen = _pick_column(list(reader.fieldnames or []), column, str(path))
    for row in reader:
        if row.get(chosen):
            yield row[chosen]


def _file_documents(path: Path, column: str | None) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _jsonl_documents(path, column)
    elif suffix == ".parquet":
        yield from _parquet_documents(path, column)
    elif suffix in (".csv", ".tsv"):
        yield from _csv_documents(path, column)
    else:  # plain text, line ends made '\n' as training has always read text
        text, _ = read_text(path)
        yield text.replace("\r\n", "\n").replace("\r", "\n")


def _files(spec: SourceSpec, column: str | None) -> Documents:
    paths = _files_of(spec)
    digest = hashlib.sha256(f"files\0{column}\0".encode())
    for p in paths:
        digest.update(p.name.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())

    def read() -> Iterator[str]:
        for p in paths:
            yield from _file_documents(p, column)

    return Documents(spec.text, digest.hexdigest(), read)


# ---------------------------------------------------------------------------------------------------------
# datasets (Hugging Face `datasets`)


def _offline_hint(name: str, exc: BaseException) -> DataError:
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DataError(f"dataset '{name}' is not available here ({detail[:160]}); without the Hub, pass local files "
                     "(--train 'data/*.jsonl', a folder, or hf:json?data_files=FILE) or a folder written by "
                     "Dataset.save_to_disk")


def _dataset_rows(ds, name: str, column: str | None) -> tuple[str, Callable[[], Iterator[str]]]:
    names = list(ds.column_names or []) if getattr(ds, "column_names", None) is not None else []
    if not names:  # a streamed dataset may not know its columns before the first row
        first = next(iter(ds), None)
        if first is None:
            raise DataError(f"{name}: the dataset has no rows")
        names = list(first)
    chosen = _pick_column(names, column, f"dataset {name}")

    def read() -> Iterator[str]:
        for row in ds:
            value = row.get(chosen)
            if value:
                yield str(value)

    return chosen, read


def _dataset(spec: SourceSpec, column: str | None) -> Documents:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{spec.text}: reading datasets needs the datasets package: pip install datasets") from None
    opts = spec.options
    streaming = opts.get("streaming", "0").lower() in ("1", "true", "yes")
    split = opts.get("split", "train")
    try:
        if spec.kind == "disk":
            ds = datasets.load_from_disk(spec.target)
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"{spec.text}: no split '{split}' (splits: {', '.join(ds)}); pass ?split=NAME")
                ds = ds[split]
        else:
            kwargs = {"split": split, "streaming": streaming}
            if "data_files" in opts:
                kwargs["data_files"] = opts["data_files"].split(",")
            if "revision" in opts:
                kwargs["revision"] = opts["revision"]
            ds = datasets.load_dataset(spec.target, opts.get("config") or None, **kwargs)
    except DataError:
        raise
    except Exception as exc:  # datasets raises many types (connection, not found, offline mode, bad config)
        raise _offline_hint(spec.target, exc) from None
    chosen, read = _dataset_rows(ds, spec.text, column)
    fingerprint = getattr(ds, "_fingerprint", None)
    if fingerprint is None:  # streamed: nothing to hash without reading it all; name and options stand for it
        fingerprint = json.dumps([spec.target, sorted(opts.items())])
    key = hashlib.sha256(f"dataset\0{fingerprint}\0{chosen}".encode()).hexdigest()
    return Documents(spec.text, key, read, kind="dataset")


def documents(spec: SourceSpec, text_column: str | None = None) -> Documents:
    """The documents of a files/dataset source (teacher sources are generated: bitconv.data.synth)."""
    column = spec.options.get("column") or text_column
    if spec.kind == "files":
        return _files(spec, column)
    if spec.kind in ("dataset", "disk"):
        return _dataset(spec, column)
    raise DataError(f"{spec.text}: a {spec.kind} source has no documents to read")


def joined_text(docs: Documents) -> str:
    """A source's documents as one text (a blank line between documents), as evaluation scores it."""
    text = "\n\n".join(d.strip("\n") for d in docs.read() if d.strip())
    if not text.strip():
        raise DataError(f"{docs.name}: empty source (no text); pass a source that holds text")
    return text
