"""The one way bitconv writes files and folders: under a temporary name beside the target, then renamed into place,
so a reader never sees half an output and an interrupted run leaves the old output (or nothing) behind.

Every command that writes an output checks it first with `check_output`: an existing output is replaced only with
`force`, and never when it is (or holds, or sits inside) one of the command's inputs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from bitconv.errors import OutputError

PARTIAL = ".partial-"  # marks bitconv's temporary names: .NAME.partial-XXXX


def _default_mode(directory: bool) -> int:
    """The permissions an ordinary mkdir/open would give under the current umask (mkdtemp would give 0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def _related(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_output(out: str | os.PathLike, *, force: bool, inputs: Iterable[str | os.PathLike] = (),
                 option: str = "--out") -> Path:
    """Refuse an output that exists (unless `force`) or that is, holds or sits inside an input; returns it resolved."""
    out = Path(out).expanduser()
    resolved = out.resolve()
    for given in inputs:
        source = Path(given).expanduser().resolve()
        if _related(resolved, source):
            raise OutputError(f"{out} is, holds or sits inside the input {given}; bitconv never writes over its "
                              f"input: choose another {option}")
    if out.exists() or out.is_symlink():
        if not force:
            raise OutputError(f"{out} already exists; choose another {option} or pass --force to replace it")
        if out.is_dir() and not _replaceable_folder(out):
            raise OutputError(f"{out} exists and is not a model folder (it holds sub-folders or no config.json); "
                              f"--force only replaces outputs like bitconv's: choose another {option}")
    if resolved.parent.exists() and not resolved.parent.is_dir():
        raise OutputError(f"{out.parent} is not a folder; choose another {option}")
    return out


def _replaceable_folder(folder: Path) -> bool:
    """An empty folder, or a flat folder with a config.json: what bitconv (or a model export) writes."""
    entries = list(folder.iterdir())
    if not entries:
        return True
    return (folder / "config.json").is_file() and all(e.is_file() and not e.is_symlink() for e in entries)


def _make_parent(path: Path, option: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {path.parent} ({exc.strerror}); choose another {option}") from None


@contextmanager
def staged_folder(out: str | os.PathLike, *, option: str = "--out") -> Iterator[Path]:
    """Yields an empty temporary folder beside `out`; when the block succeeds it replaces `out` atomically
    (the old folder is moved aside first, then removed), and when it fails it is removed."""
    out = Path(out).expanduser()
    _make_parent(out, option)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{PARTIAL}", dir=out.parent))
    except OSError as exc:
        raise OutputError(f"cannot write in {out.parent} ({exc.strerror}); choose another {option}") from None
    try:
        os.chmod(tmp, _default_mode(directory=True))
        yield tmp
        if out.exists() or out.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:  # KeyboardInterrupt included: never leave a half-written output behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def staged_file(path: str | os.PathLike, *, option: str = "--out") -> Iterator[Path]:
    """Yields a temporary file name beside `path`; renamed onto `path` when the block succeeds, removed if not."""
    path = Path(path).expanduser()
    _make_parent(path, option)
    tmp = path.with_name(f".{path.name}{PARTIAL}{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write under a temporary name and rename, so a reader never sees half a file."""
    with staged_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, obj, indent: int = 2) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")
