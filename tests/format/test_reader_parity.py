"""The Python reader and the C reader (formats/reader_c) on the same hostile files: they must accept and refuse the
same files (formats/SPEC.md "Validation"), and decode the files both accept to the same float32 bits.

The C reader runs through its command line (`bitconv-read FILE` checks the header, `bitconv-read FILE T -o OUT`
decodes a tensor and checks its values); the files come from support/hostile_files.py, the corpus the Python fuzz
test uses. The sanitizer runs of the C reader are in its own fuzz test.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bitconv.errors import FormatError
from support.hostile_files import Mutations, load_model, read_everything, write_base
from support.paths import REPO

READER_DIR = REPO / "formats" / "reader_c"
N_RANDOM = 250

@pytest.fixture(scope="module")
def reader_c(tmp_path_factory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler to build formats/reader_c")
    out = tmp_path_factory.mktemp("reader_c") / "bitconv-read"
    subprocess.run([cc, "-std=c99", "-O1", "-o", str(out), str(READER_DIR / "bitconv_read.c"),
                    str(READER_DIR / "bitconv_reader.c")], check=True, capture_output=True, text=True)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Mutations:
    path = tmp_path_factory.mktemp("base") / "model.safetensors"
    write_base(path)
    return Mutations(load_model(path))


def read_c(reader: Path, path: Path) -> dict[str, bytes] | str:
    """Every tensor as float32 bytes, or the one-line refusal."""
    listing = subprocess.run([str(reader), str(path)], capture_output=True, text=True, errors="replace", timeout=30)
    if listing.returncode:
        return listing.stderr.strip()
    values = {}
    for line in listing.stdout.splitlines():
        name = line.split("\t")[0]
        out = path.with_suffix(".f32")
        res = subprocess.run([str(reader), str(path), name, "-o", str(out)], capture_output=True, text=True,
                             errors="replace", timeout=30)
        if res.returncode:
            return res.stderr.strip()
        values[name] = out.read_bytes()
    return values


def read_python(folder: Path) -> dict[str, bytes] | str:
    try:
        return read_everything(folder)
    except FormatError as exc:
        return str(exc)


def test_python_and_c_accept_and_refuse_the_same_files(reader_c, corpus, tmp_path):
    rng = np.random.default_rng(7)
    files = [(label, raw) for label, raw, _ in corpus.rules()] + corpus.harmless()
    files += [corpus.random_mutation(rng) for _ in range(N_RANDOM)]
    path = tmp_path / "model.safetensors"
    disagreements = []
    for label, raw in files:
        path.write_bytes(raw)
        c, py = read_c(reader_c, path), read_python(tmp_path)
        if isinstance(c, str) != isinstance(py, str) or (not isinstance(c, str) and c != py):
            disagreements.append(f"{label}: C {'refused: ' + c if isinstance(c, str) else 'accepted'}; "
                                 f"Python {'refused: ' + py if isinstance(py, str) else 'accepted'}")
    assert not disagreements, "\n".join(disagreements)
