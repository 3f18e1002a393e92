"""The C reader in formats/reader_c/: built with cc, run on files written by the Python writer, compared bit
for bit (float32) with bitconv.quantize.schemes.dequantize; bad files give one line and exit code 1, never a crash."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from bitconv.format.reader import PackedReader
from bitconv.quantize.config import QuantConfig
from bitconv.quantize.schemes import decode, dequantize, quantize
from support.packed_files import write_bitconv_file
from support.paths import REPO

READER_DIR = REPO / "formats" / "reader_c"
SOURCES = [READER_DIR / "bitconv_read.c", READER_DIR / "bitconv_reader.c"]


def _compile(out: Path, extra: list[str]) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler (cc) is needed to build formats/reader_c"
    cmd = [cc, "-std=c99", "-Wall", "-Wextra", "-Werror", *extra, "-o", str(out), *map(str, SOURCES)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


@pytest.fixture(scope="module")
def reader(tmp_path_factory) -> Path:
    return _compile(tmp_path_factory.mktemp("reader_c") / "bitconv-read", ["-O2", "-Wpedantic"])


@pytest.fixture(scope="module")
def reader_asan(tmp_path_factory) -> Path:
    return _compile(tmp_path_factory.mktemp("reader_asan") / "bitconv-read",
                    ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"])


def write_raw_safetensors(path: Path, tensors: list[tuple[str, str, list[int], bytes]], metadata: dict | None) -> None:
    """A safetensors file byte by byte, for dtypes and damage the reference writer never produces."""
    header: dict = {"__metadata__": metadata} if metadata is not None else {}
    offset = 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(t[3] for t in tensors))


def read_c(reader: Path, file: Path, name: str, tmp_path: Path) -> np.ndarray:
    out = tmp_path / "values.f32"
    subprocess.run([str(reader), str(file), name, "-o", str(out)], check=True, capture_output=True, text=True)
    return np.fromfile(out, dtype="<f4")


# every scheme x granularity x packing, odd widths (padding in the last byte, a short last group), outliers
CASES = [
    ("ternary 2bit tensor", QuantConfig.for_bits(1.58), (7, 13)),
    ("ternary 2bit channel", QuantConfig.for_bits(1.58, "channel"), (5, 33)),
    ("ternary 2bit group", QuantConfig.for_bits(1.58, "group:8"), (6, 21)),
    ("ternary base3 tensor", QuantConfig.for_bits(1.58, packing="base3"), (4, 17)),
    ("ternary base3 group", QuantConfig.for_bits(1.58, "group:16", packing="base3"), (3, 37)),
    ("ternary outliers", QuantConfig.for_bits(1.58, "channel", keep_outliers=0.02), (9, 50)),
    ("ternary base3 outliers", QuantConfig.for_bits(1.58, packing="base3", keep_outliers=0.05), (8, 11)),
    ("ternary mse group", QuantConfig.for_bits(1.58, "group:4", scale_method="mse"), (5, 10)),
    ("binary tensor", QuantConfig.for_bits(1), (6, 19)),
    ("binary group", QuantConfig.for_bits(1, "group:5"), (4, 23)),
    ("int8 channel", QuantConfig.for_bits(8), (5, 9)),
    ("int8 group outliers", QuantConfig.for_bits(8, "group:4", keep_outliers=0.05), (4, 10)),
    ("uint4 group", QuantConfig.for_bits(4, "group:8"), (5, 27)),
    ("uint4 outliers", QuantConfig.for_bits(4, keep_outliers=0.03), (6, 70)),
    ("uint2 group", QuantConfig.for_bits(2, "group:6"), (7, 15)),
    ("uint2 big group", QuantConfig.for_bits(2, "group:64"), (3, 30)),
]


@pytest.fixture(scope="module")
def all_schemes_file(tmp_path_factory):
    gen = torch.Generator().manual_seed(0)
    quantized = {}
    for k, (label, cfg, shape) in enumerate(CASES):
        w = torch.randn(shape, generator=gen) * 0.05
        w[0, 0] = 0.9  # a clear outlier
        name = f"layers.{k}.weight"
        quantized[name] = quantize(w, cfg, layout="conv1d" if k == 0 else "linear")
    # an all-zero unit (scale 0) decodes to zeros
    quantized["zero.weight"] = quantize(torch.zeros(3, 9), QuantConfig.for_bits(1.58, "channel"))
    plain = {
        "norm.weight": np.random.default_rng(1).standard_normal(7).astype(np.float16),
        "embed.weight": np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32),
        "position_ids": np.arange(5, dtype=np.int64)[None],
        "mask": np.array([[0, 1, -3]], dtype=np.int8),
    }
    path = tmp_path_factory.mktemp("schemes") / "model.safetensors"
    write_bitconv_file(path, quantized, plain)
    return path, quantized, plain


@pytest.mark.parametrize("k", range(len(CASES)), ids=[c[0] for c in CASES])
def test_packed_tensors_match_python_bit_for_bit(reader, all_schemes_file, k, tmp_path):
    path, quantized, _ = all_schemes_file
    name = f"layers.{k}.weight"
    expected = dequantize(quantized[name]).numpy().astype(np.float32).reshape(-1)
    got = read_c(reader, path, name, tmp_path)
    assert got.shape == expected.shape
    diff = np.flatnonzero(got.view(np.uint32) != expected.view(np.uint32))
    assert diff.size == 0, f"{CASES[k][0]}: {diff.size} values differ, first at {diff[0]}: {got[diff[0]]} != {expected[diff[0]]}"
    # the Python reader of the same file agrees as well (decode path, not just the in-memory quantization)
    reread = PackedReader(path.parent)
    py = dequantize(decode(reread.specs[name], reread.quantized_arrays(name))).numpy().reshape(-1)
    assert np.array_equal(got.view(np.uint32), py.view(np.uint32))


def test_zero_scale_and_plain_tensors(reader, all_schemes_file, tmp_path):
    path, _, plain = all_schemes_file
    assert not read_c(reader, path, "zero.weight", tmp_path).any()
    for name, arr in plain.items():
        got = read_c(reader, path, name, tmp_path)
        assert np.array_equal(got, arr.astype(np.float32).reshape(-1)), name


def test_listing_and_text_output(reader, all_schemes_file):
    path, quantized, plain = all_schemes_file
    listing = subprocess.run([str(reader), str(path)], check=True, capture_output=True, text=True).stdout
    rows = {line.split("\t")[0]: line.split("\t") for line in listing.splitlines()}
    # parts (.qcodes, .qscale, ...) are folded into their logical weight
    assert set(rows) == set(quantized) | set(plain)
    assert rows["layers.0.weight"][1:] == ["packed", "[7, 13]", "ternary 2bit tensor layout=conv1d"]
    assert rows["layers.5.weight"][3] == "ternary 2bit channel outliers=9"
    assert rows["layers.4.weight"][3] == "ternary base3 group:16"
    assert rows["norm.weight"][1:] == ["plain", "[7]", "F16"]
    text = subprocess.run([str(reader), str(path), "layers.2.weight"], check=True, capture_output=True, text=True).stdout
    lines = text.splitlines()
    assert lines[0] == "layers.2.weight [6, 21]"
    values = np.array([float(v) for v in lines[1:]], dtype=np.float32)  # %.9g round-trips float32 exactly
    assert np.array_equal(values, dequantize(quantized["layers.2.weight"]).numpy().reshape(-1))


def test_bf16_and_escaped_names(reader, tmp_path):
    bf16 = np.array([1.5, -2.25, 3.0e-3, 65504.0], dtype=np.float32)
    raw = (bf16.view(np.uint32) >> 16).astype("<u2").tobytes()
    meta = {"format": "pt", "bitconv.format": "bitconv-packed", "bitconv.format_version": "1", "bitconv.tensors": "{}"}
    name = "caf\u00e9.\U0001f600\"q\"\\w"  # json.dumps escapes these as \u00e9, a surrogate pair, \" and \\
    path = tmp_path / "model.safetensors"
    write_raw_safetensors(path, [(name, "BF16", [4], raw), ("h", "F16", [3], np.array([6e-8, -0.0, np.inf], "<f2").tobytes())], meta)
    got = read_c(reader, path, name, tmp_path)
    assert np.array_equal(got, (bf16.view(np.uint32) & 0xFFFF0000).view(np.float32))
    h = read_c(reader, path, "h", tmp_path)
    assert np.array_equal(h.view(np.uint32), np.array([6e-8, -0.0, np.inf], np.float16).astype(np.float32).view(np.uint32))


# AddressSanitizer and UBSan exit with 1 by default, the reader's own code for a refused file: move them away
SANITIZER_ENV = {"ASAN_OPTIONS": "exitcode=86", "UBSAN_OPTIONS": "exitcode=87:print_stacktrace=1"}


def _run(reader: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(reader), *map(str, args)], capture_output=True, text=True, errors="replace",
                          env={**os.environ, **SANITIZER_ENV})


def test_bad_files_give_one_line_and_exit_1(reader, all_schemes_file, tmp_path):
    path, _, _ = all_schemes_file
    data = path.read_bytes()
    cases = {
        "truncated": (data[:-10], "truncated"),
        "short": (b"\x01\x02", "shorter than 8 bytes"),
        "huge header length": (struct.pack("<Q", 1 << 40) + data[8:], "corrupt safetensors header"),
        "not JSON": (struct.pack("<Q", 4) + b"{{{{", "malformed JSON"),
        "not UTF-8": (struct.pack("<Q", 7) + b'{"\xff":1}', "invalid UTF-8"),
    }
    for label, (content, message) in cases.items():
        bad = tmp_path / f"{label}.safetensors"
        bad.write_bytes(content)
        res = _run(reader, bad, "layers.0.weight")
        assert res.returncode == 1, label
        assert message in res.stderr and res.stderr.count("\n") == 1, (label, res.stderr)
    res = _run(reader, path, "no.such.weight")
    assert res.returncode == 1 and "no tensor named 'no.such.weight'" in res.stderr
    assert _run(reader).returncode == 2


def test_refuses_other_formats_and_versions(reader, tmp_path):
    plain = tmp_path / "plain.safetensors"
    write_raw_safetensors(plain, [("w", "F32", [1], b"\0\0\0\0")], {"format": "pt"})
    res = _run(reader, plain)
    assert res.returncode == 1 and "not a bitconv packed file" in res.stderr
    v2 = tmp_path / "v2.safetensors"
    write_raw_safetensors(v2, [("w", "F32", [1], b"\0\0\0\0")],
                          {"bitconv.format": "bitconv-packed", "bitconv.format_version": "2", "bitconv.tensors": "{}"})
    res = _run(reader, v2)
    assert res.returncode == 1 and "format version 2" in res.stderr


def test_corrupt_codes_and_specs_are_reported(reader, tmp_path):
    q = quantize(torch.randn(2, 8), QuantConfig.for_bits(1.58))
    spec = dict(q.spec.to_json())
    meta = {"bitconv.format": "bitconv-packed", "bitconv.format_version": "1",
            "bitconv.tensors": json.dumps({"w": spec})}
    scale = np.float32(0.5).tobytes()
    # code 0 is reserved in ternary 2bit
    bad = tmp_path / "code0.safetensors"
    write_raw_safetensors(bad, [("w.qcodes", "U8", [2, 2], bytes([0xAA, 0xAA, 0xAA, 0xA8])), ("w.qscale", "F32", [1], scale)], meta)
    res = _run(reader, bad, "w")
    assert res.returncode == 1 and "reserved code at row 1 column 4" in res.stderr
    # codes of the wrong shape for the spec
    bad = tmp_path / "shape.safetensors"
    write_raw_safetensors(bad, [("w.qcodes", "U8", [2, 3], bytes(6)), ("w.qscale", "F32", [1], scale)], meta)
    res = _run(reader, bad)
    assert res.returncode == 1 and "'w.qcodes'" in res.stderr and "wrong shape" in res.stderr
    # a part missing
    bad = tmp_path / "missing.safetensors"
    write_raw_safetensors(bad, [("w.qcodes", "U8", [2, 2], bytes([0xAA] * 4))], meta)
    res = _run(reader, bad)
    assert res.returncode == 1 and "'w.qscale' is missing" in res.stderr


def test_damaged_headers_never_crash(reader_asan, all_schemes_file, tmp_path):
    """Bounded fuzzing under AddressSanitizer/UBSan: flipped header bytes give exit 0 or 1, never a crash."""
    path, _, _ = all_schemes_file
    data = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    rng = np.random.default_rng(7)
    bad = tmp_path / "fuzz.safetensors"
    for trial in range(40):
        mutated = bytearray(data)
        for pos in rng.integers(8, 8 + header_len, size=int(rng.integers(1, 4))):
            mutated[pos] = int(rng.integers(0, 256))
        bad.write_bytes(bytes(mutated))
        for args in ((bad,), (bad, "layers.3.weight")):
            res = _run(reader_asan, *args)
            assert res.returncode in (0, 1), (trial, res.returncode, res.stderr[-2000:])
            assert res.returncode == 0 or res.stderr.count("\n") == 1, (trial, res.stderr[-2000:])


def test_golden_vectors(reader, tmp_path):
    """formats/golden: every tensor decoded by the C reader equals expected.json bit for bit (float32)."""
    golden = REPO / "formats" / "golden"
    expected = json.loads((golden / "expected.json").read_text())
    listing = subprocess.run([str(reader), str(golden / "golden.safetensors")], check=True, capture_output=True,
                             text=True).stdout
    assert sorted(line.split("\t")[0] for line in listing.splitlines()) == sorted(expected)
    for name, entry in expected.items():
        got = read_c(reader, golden / "golden.safetensors", name, tmp_path)
        want = np.array(entry["values"], dtype=np.float32)
        assert got.shape == want.shape, name
        diff = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
        assert diff.size == 0, f"{name}: {diff.size} values differ, first at {diff[0]}: {got[diff[0]]} != {want[diff[0]]}"


@pytest.mark.parametrize("options", [{}, {"granularity": "group:16", "packing": "base3", "keep_outliers": "1%"}],
                         ids=["default", "group-base3-outliers"])
def test_converted_model(reader, tiny_gpt2, tmp_path, options):
    """A GPT-2 converted by bitconv.convert: every packed and plain tensor read by C equals the Python reader."""
    import bitconv

    out = bitconv.convert(tiny_gpt2, tmp_path / "gpt2-1.58", QuantConfig.for_bits(**options), progress=False).out
    file = out / "model.safetensors"
    packed = PackedReader(out)
    names = [line.split("\t")[0] for line in
             subprocess.run([str(reader), str(file)], check=True, capture_output=True, text=True).stdout.splitlines()]
    assert sorted(names) == sorted([*packed.specs, *packed.plain_names()])
    assert any(spec.layout == "conv1d" for spec in packed.specs.values())
    for name in names:
        got = read_c(reader, file, name, tmp_path)
        if name in packed.specs:
            want = dequantize(decode(packed.specs[name], packed.quantized_arrays(name))).numpy().reshape(-1)
        else:
            want = packed.raw(name).astype(np.float32).reshape(-1)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), name
