"""For the tests of hostile inputs and careless outputs: a snapshot of everything under a folder (to show that
nothing outside an output changed), and `bitconv` run in a child process (for what could hang or needs a signal)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from support.paths import REPO


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root` (itself included): a file's size and SHA-256, a link's target, a folder's mode."""
    root = Path(root)
    out = {}
    for path in [root, *sorted(root.rglob("*"))]:
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir", path.stat().st_mode)
        elif path.is_file():
            out[rel] = ("file", path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
        else:
            out[rel] = ("other", path.stat().st_mode)
    return out


def bitconv_process(*args, timeout: float = 120, cwd: Path | None = None, prefix: tuple[str, ...] = (),
                    start_only: bool = False, env: dict | None = None):
    """`python -m bitconv ARGS` in a child process: (exit code, stdout, stderr), or the Popen with `start_only`."""
    environ = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "ORT_DISABLE_TELEMETRY": "1",
               "COLUMNS": "200", **(env or {})}
    cmd = [*prefix, sys.executable, "-m", "bitconv", *map(str, args)]
    if start_only:
        return subprocess.Popen(cmd, cwd=cwd, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    res = subprocess.run(cmd, cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout)
    return res.returncode, res.stdout, res.stderr


def one_line_error(stderr: str) -> str:
    """The single line a refused command prints; fails the test on a traceback or more lines."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def dead_pid() -> int:
    """The id of a process that has ended (what a killed run's temporary names hold)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid
