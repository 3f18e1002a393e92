"""The Python reader against hostile files (issue 12): every rule of formats/SPEC.md "Validation" once, changes that
must not matter, and seeded structured mutations. A mutated file is either decoded to exactly the original's values
or refused with a FormatError of one line that starts with the file's path; nothing else (no other exception, no
different values)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bitconv.errors import FormatError
from bitconv.format.reader import PackedReader
from support.hostile_files import Mutations, load_model, read_everything, write_base
from support.isolation import one_line_error

N_RANDOM = 330


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Mutations:
    path = tmp_path_factory.mktemp("base") / "model.safetensors"
    write_base(path)
    return Mutations(load_model(path))


@pytest.fixture(scope="module")
def expected(corpus, tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("unmutated")
    (folder / "model.safetensors").write_bytes(corpus.make())
    return read_everything(folder)


def outcome(folder: Path, raw: bytes, expected: dict, label: str) -> tuple[str, str]:
    """("same", "") or ("refused", message), after checking the refusal is one line naming the file."""
    path = folder / "model.safetensors"
    path.write_bytes(raw)
    try:
        got = read_everything(folder)
    except FormatError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith(f"{path}: "), f"{label}: {message!r}"
        return "refused", message
    assert got == expected, f"{label}: accepted, but decodes differently from the original"
    return "same", ""


def test_the_base_file_holds_every_scheme(expected, corpus):
    assert {"t2.weight", "t3.weight", "b.weight", "i8.weight", "u4.weight", "u2.weight", "empty", "flag"} <= set(expected)
    specs = {name: dict(spec) for name, spec in corpus.base.entries}
    assert {s["scheme"] for s in specs.values()} == {"ternary", "binary", "int8", "uint4", "uint2"}
    assert specs["t3.weight"]["packing"] == "base3" and specs["t2.weight"]["layout"] == "conv1d"
    assert specs["t2.weight"]["n_outliers"] == 3 and specs["i8.weight"]["n_outliers"] == 2


def test_each_rule_is_refused(corpus, expected, tmp_path):
    """One file per rule; each refused with the message that names the rule (one test, so one line each on failure)."""
    failures = []
    for label, raw, message in corpus.rules():
        result, text = outcome(tmp_path, raw, expected, label)
        if result != "refused" or message not in text:
            failures.append(f"{label}: {result} {text!r}")
    assert not failures, "\n".join(failures)


def test_changes_that_do_not_matter_decode_identically(corpus, expected, tmp_path):
    for label, raw in corpus.harmless():
        assert outcome(tmp_path, raw, expected, label) == ("same", ""), label


def test_structured_mutations(corpus, expected, tmp_path):
    rng = np.random.default_rng(20250612)
    counts: dict[str, dict[str, int]] = {}
    for trial in range(N_RANDOM):
        label, raw = corpus.random_mutation(rng)
        result, _ = outcome(tmp_path, raw, expected, f"trial {trial}: {label}")
        kind = counts.setdefault(label.split()[0], {"same": 0, "refused": 0})
        kind[result] += 1
    assert sum(c["refused"] for c in counts.values()) > 0.9 * N_RANDOM, counts


@pytest.mark.parametrize("dtype", ["U8", "F32"])
def test_an_empty_tensor_numpy_cannot_make_is_refused(corpus, tmp_path, dtype):
    """[0, 2^63-1] is 0 bytes, but numpy cannot make an array whose non-zero sizes exceed 2^63-1 bytes (U8 fits,
    yet not once converted to float32): the reader refuses it when the file is opened, not when it is used
    (SPEC.md "Validation"; formats/reader_c refuses it too, tests/format/test_reader_c_fuzz.py)."""
    raw = corpus.make(lambda m: (m.entry("empty").set("dtype", dtype), m.entry("empty").set("shape", [0, 2**63 - 1])))
    result, message = outcome(tmp_path, raw, {}, f"{dtype} [0, 2^63-1]")
    assert result == "refused" and "too large for an array of any dtype" in message


def test_inspect_refuses_every_broken_header_in_one_line(corpus, tmp_path, run_cli):
    """Through the command line: a file the reader refuses when opening it makes `inspect` exit 1 with that one line
    (control characters from the file shown escaped, never sent to the terminal); stored values are checked when a
    weight is decoded, so those files still list."""
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {
        "quant_method": "bitconv", "format": "bitconv-packed", "format_version": 1, "bits": 1.58}}))
    escape = ("dtype with an escape sequence", corpus.make(lambda m: m.entry("u8").set("dtype", "\x1b[31mU8")),
              "unsupported dtype")
    for label, raw, message in [*corpus.rules(), escape]:
        (tmp_path / "model.safetensors").write_bytes(raw)
        try:
            PackedReader(tmp_path)
        except FormatError as exc:
            code, _, err = run_cli("inspect", tmp_path)
            assert code == 1 and one_line_error(err) == f"error: {exc}".replace("\x1b", "\\x1b"), label
            assert "\x1b" not in err and message in err, label
            continue
        code, _, err = run_cli("inspect", tmp_path)
        assert code == 0, (label, err)
