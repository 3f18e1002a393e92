"""The one way bitconv writes files and folders: under a temporary name beside the target, then renamed into place,
so a reader never sees half an output and an interrupted run leaves the old output (or nothing) behind.

Every command that writes an output checks it first with `check_output`, before any work: the output must not be,
hold or sit inside one of the command's inputs (through symbolic links too), must not be a link itself, and its
nearest existing folder must be a writable folder. An existing output is replaced only with `force`, and only when
it looks like something bitconv writes: a regular file for a file output; an empty folder or a flat folder with a
config.json for a folder output. Anything else is refused, whatever the flags.

Temporary names carry the host and process id (`.NAME.partial-HOST-PID-XXXX` beside an output, `bitconv-onnx-HOST-
PID-XXXX` in the system temporary folder). A run killed with SIGKILL cannot clean up; the next run that writes the
same output (or uses the same kind of scratch folder) removes the temporaries whose process is gone: only names of
this pattern, from this host, owned by this user.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from bitconv.errors import OutputError

PARTIAL = ".partial-"  # marks bitconv's temporary names: .NAME.partial-HOST-PID-XXXX
REPLACED = ".replaced-"  # an old output moved aside while the new one is renamed into place
# errors that only writing produces: a full disk or quota, a file over the size limit, a read-only file system
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _related(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_output(out: str | os.PathLike, *, force: bool, inputs: Iterable[str | os.PathLike] = (),
                 option: str = "--out", kind: str = "folder") -> Path:
    """Refuse an output bitconv must not write (see the module docstring). `kind`: "folder" or "file" (replaced as
    a whole, with `force`), or "results" (a folder bitconv adds its files to: an existing folder is kept, never
    replaced). A previous output that a killed run had moved aside is put back first. Returns `out` with ~
    expanded."""
    if kind not in ("file", "folder", "results"):
        raise ValueError(f"unknown output kind {kind!r}")
    out = Path(out).expanduser()
    _put_back_replaced(out)
    resolved = out.resolve()
    for given in inputs:
        source = Path(given).expanduser().resolve()
        if _related(resolved, source):
            raise OutputError(f"{out} is, holds or sits inside the input {given}; bitconv never writes over its "
                              f"input: choose another {option}")
    if out.is_symlink():
        raise OutputError(f"{out} is a symbolic link; bitconv does not write through or replace links: remove it or "
                          f"choose another {option}")
    if kind == "results" and out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a folder; choose another {option}")
    if kind != "results" and out.exists():
        if not force:
            raise OutputError(f"{out} already exists; choose another {option} or pass --force to replace it")
        _check_replaceable(out, kind, option)
    _check_writable_parent(out, option)
    return out


def _check_replaceable(out: Path, kind: str, option: str) -> None:
    mode = os.stat(out).st_mode
    if kind == "file":
        if not stat.S_ISREG(mode):
            raise OutputError(f"{out} exists and is not a regular file (a folder, FIFO or device); --force replaces "
                              f"only files: choose another {option}")
        return
    if not stat.S_ISDIR(mode):
        raise OutputError(f"{out} exists and is not a folder; --force replaces only model folders: choose another "
                          f"{option}")
    try:
        entries = list(out.iterdir())
    except OSError as exc:
        raise OutputError(f"{out} cannot be listed ({exc.strerror}); choose another {option}") from None
    flat = all(e.is_file() and not e.is_symlink() for e in entries)
    if entries and not (flat and _written_by_bitconv(out)):
        raise OutputError(f"{out} exists and is not a folder bitconv wrote (it holds sub-folders or links, or its "
                          f"config.json and weights do not say bitconv); --force replaces only bitconv's own outputs "
                          f"or an empty folder: choose another {option}")


def _written_by_bitconv(folder: Path) -> bool:
    """A folder bitconv wrote: a converted folder (config.json names the bitconv method) or an export whose
    weights carry bitconv's export mark in their safetensors metadata."""
    from bitconv.errors import FormatError
    from bitconv.format.safetensors import read_json_file, read_safetensors_header
    from bitconv.format.vocab import META_EXPORT, QUANT_METHOD

    try:
        config = read_json_file(folder / "config.json", fix="")
        qc = config.get("quantization_config") if isinstance(config, dict) else None
        if isinstance(qc, dict) and qc.get("quant_method") == QUANT_METHOD:
            return True
        header, _ = read_safetensors_header(folder / "model.safetensors")
    except FormatError:
        return False
    return META_EXPORT in (header.get("__metadata__") or {})


def _check_writable_parent(out: Path, option: str) -> None:
    """The nearest existing ancestor of `out` must be a folder bitconv may create entries in."""
    ancestor = out.absolute().parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{ancestor} is not a folder, so {out} cannot be created; choose another {option}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{ancestor} is not writable, so {out} cannot be created; choose another {option}")


def output_error(exc: OSError, out: Path, staged: Path, option: str) -> OutputError | None:
    """The OutputError to report for an OSError raised while writing `out` through its temporary `staged` name, or
    None if it is not about the output (an error reading an input keeps its own meaning)."""
    names = [exc.filename, exc.filename2]
    ours = (str(out.absolute()), str(staged.absolute()))
    about_output = exc.errno in WRITE_ERRNOS or any(
        n is not None and str(Path(os.fsdecode(n)).absolute()).startswith(ours) for n in names)
    if not about_output:
        return None
    return OutputError(f"cannot write {out} ({exc.strerror or exc}); free some space, check the permissions or "
                       f"choose another {option}")


def _make_parent(path: Path, option: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {path.parent} ({exc.strerror}); choose another {option}") from None


def _owner_tag() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-"


def _pid_is_gone(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def stale_temporaries(directory: Path, prefix: str) -> list[Path]:
    """`directory`'s entries named `prefix` + HOST-PID-XXXX whose process (on this host) is gone and that this user
    owns: temporaries of bitconv runs that were killed."""
    pattern = re.compile(re.escape(prefix) + r"(?P<host>.+)-(?P<pid>\d+)-[A-Za-z0-9_]+$")
    host = socket.gethostname()
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return []
    stale = []
    for entry in entries:
        match = pattern.match(entry.name)
        if not match or match["host"] != host or not _pid_is_gone(int(match["pid"])):
            continue
        try:
            if entry.lstat().st_uid == os.getuid():
                stale.append(entry)
        except OSError:
            continue  # another run cleaned it first
    return stale


def remove_stale(directory: Path, prefix: str) -> list[Path]:
    """Remove the stale temporaries (see `stale_temporaries`); returns what was removed."""
    removed = []
    for entry in stale_temporaries(directory, prefix):
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            continue  # another run cleaned it first, or it cannot be removed: not worth failing for
    return removed


def _remove_quietly(path: Path) -> None:
    """Cleanup after a failure: never let a cleanup error replace the error being reported."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def _temporary_name(directory: Path, prefix: str) -> Path:
    return directory / f"{prefix}{_owner_tag()}{secrets.token_hex(4)}"


def _mkdir(path: Path, option: str, what: Path) -> None:
    """Create a temporary folder whose name the caller already holds, so that a signal arriving at any moment
    after this call started finds it in the caller's cleanup. os.mkdir applies the umask, as a user's mkdir does
    (tempfile.mkdtemp would make it 0700)."""
    try:
        os.mkdir(path)
    except OSError as exc:
        raise OutputError(f"cannot write in {path.parent} ({exc.strerror}); choose another {option} than {what}") from None


@contextmanager
def _reporting_write_errors(out: Path, staged: Path, option: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        error = output_error(exc, out, staged, option)
        if error is None:
            raise
        raise error from exc


@contextmanager
def staged_folder(out: str | os.PathLike, *, option: str = "--out") -> Iterator[Path]:
    """Yields an empty temporary folder beside `out`; when the block succeeds it replaces `out` atomically
    (the old folder is moved aside first, then removed), and when it fails it is removed."""
    out = Path(out).expanduser()
    _make_parent(out, option)
    remove_stale(out.parent, f".{out.name}{PARTIAL}")
    _put_back_replaced(out)
    remove_stale(out.parent, f".{out.name}{REPLACED}")
    tmp = _temporary_name(out.parent, f".{out.name}{PARTIAL}")
    try:
        _mkdir(tmp, option, out)
        with _reporting_write_errors(out, tmp, option):
            yield tmp
            if os.path.lexists(out):
                _swap_in(tmp, out, option)
            else:
                os.replace(tmp, out)
    except BaseException:  # KeyboardInterrupt and SIGTERM included: never leave a half-written output behind
        _remove_quietly(tmp)
        raise


def _put_back_replaced(out: Path) -> None:
    """A run killed between the two renames of `_swap_in` left the previous output in a stale `.replaced-` folder
    and no `out`: put it back, so that the killed run changed nothing."""
    if os.path.lexists(out):
        return
    for stale in stale_temporaries(out.parent, f".{out.name}{REPLACED}"):
        try:
            os.replace(stale / out.name, out)
            return
        except OSError:
            continue


def _swap_in(tmp: Path, out: Path, option: str) -> None:
    """Replace the folder `out` by `tmp`: the old one is moved aside, the new one renamed into place, the old one
    removed. Interrupted between the two renames, the old one is put back (or, if killed, by the next run)."""
    old = _temporary_name(out.parent, f".{out.name}{REPLACED}")
    try:
        _mkdir(old, option, out)
        os.replace(out, old / out.name)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old / out.name, out)
            raise
    finally:
        if not os.path.lexists(old / out.name) or os.path.lexists(out):
            _remove_quietly(old)


@contextmanager
def staged_file(path: str | os.PathLike, *, option: str = "--out") -> Iterator[Path]:
    """Yields a temporary file name beside `path`; renamed onto `path` when the block succeeds, removed if not."""
    path = Path(path).expanduser()
    _make_parent(path, option)
    prefix = f".{path.name}{PARTIAL}"
    remove_stale(path.parent, prefix)
    tmp = path.with_name(f"{prefix}{_owner_tag()}file")
    try:
        with _reporting_write_errors(path, tmp, option):
            yield tmp
            os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise


@contextmanager
def scratch_folder(prefix: str, *, beside: Path | None = None, option: str = "--out") -> Iterator[Path]:
    """A temporary working folder, removed afterwards: beside the output `beside` (same file system, so its files
    can be renamed into place) or in the system temporary folder. Stale ones of killed runs are removed first."""
    directory = Path(beside).expanduser().parent if beside is not None else Path(tempfile.gettempdir())
    if beside is not None:
        _make_parent(Path(beside).expanduser(), option)
    remove_stale(directory, prefix)
    tmp = _temporary_name(directory, prefix)
    try:
        _mkdir(tmp, option, beside or directory)
        if beside is None:
            yield tmp
        else:
            with _reporting_write_errors(Path(beside).expanduser(), tmp, option):
                yield tmp
    finally:
        _remove_quietly(tmp)


def write_text_atomic(path: Path, text: str, *, option: str = "--out") -> None:
    """Write under a temporary name and rename, so a reader never sees half a file."""
    with staged_file(path, option=option) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, obj, indent: int = 2, *, option: str = "--out") -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n", option=option)
