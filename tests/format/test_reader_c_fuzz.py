"""The C reader (formats/reader_c) against hostile files, under AddressSanitizer and UBSan (issue 12).

A small bitconv file holding every scheme, granularity and packing is built byte by byte here (numpy only: the
test does not depend on the Python writer), then mutated along formats/SPEC.md "Validation (what every reader
must refuse)": shapes, offsets, dtypes, duplicate keys, huge and negative numbers, missing members, wrong types,
the metadata and its entries, and stored values (codes, scales, zero points, outlier indices). A mutated file
must either decode to exactly the same tensors as the original or be refused with one line naming the file and
exit code 1: never a crash, a hang or a sanitizer report.

`test_each_rule_is_refused` checks every rule once with its message; `test_structured_mutations` draws a few
hundred random mutations from a fixed seed. Both run a small driver (below) linked with the reader, which opens
the file and decodes every tensor in one process.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from support.hostile_files import Obj, Raw, dumps, mutated  # JSON with repeated keys and raw text; mutated copies
from support.paths import REPO

READER_DIR = REPO / "formats" / "reader_c"
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
# Sanitizers exit with 1 by default, which is also the reader's "refused" code: give them codes of their own.
SANITIZER_ENV = {"ASAN_OPTIONS": "exitcode=86:detect_leaks=1", "UBSAN_OPTIONS": "exitcode=87:print_stacktrace=1"}

DRIVER_C = r"""
/* Opens argv[1], decodes every tensor and prints "name<TAB>hex words of the float32 values" a line; on any error
 * one line "fuzz: <message>" on stderr and exit code 1, as bitconv-read does. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "bitconv_reader.h"

int main(int argc, char **argv) {
    char err[BCR_ERR_LEN];
    bcr_file *f;
    bcr_info info;
    float *values;
    size_t i, k, n;
    if (argc != 2) return 2;
    if (bcr_open(argv[1], &f, err, sizeof(err))) { fprintf(stderr, "fuzz: %s\n", err); return 1; }
    for (i = 0; i < bcr_count(f); i++) {
        bcr_info_at(f, i, &info);
        if (bcr_decode(f, info.name, &values, &n, err, sizeof(err))) {
            fprintf(stderr, "fuzz: %s\n", err);
            bcr_close(f);
            return 1;
        }
        printf("%s\t", info.name);
        for (k = 0; k < n; k++) {
            unsigned int bits;
            memcpy(&bits, &values[k], 4);
            printf(k ? " %08x" : "%08x", bits);
        }
        putchar('\n');
        free(values);
    }
    bcr_close(f);
    return 0;
}
"""


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        pytest.skip("no C compiler (gcc or cc) to build formats/reader_c")
    work = tmp_path_factory.mktemp("reader_fuzz")
    probe = work / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    res = subprocess.run([cc, *SANITIZE, "-o", str(work / "probe"), str(probe)], capture_output=True, text=True,
                         check=False)
    if res.returncode or subprocess.run([str(work / "probe")], env={**os.environ, **SANITIZER_ENV}, check=False).returncode:
        pytest.skip(f"{cc} cannot build and run programs with {' '.join(SANITIZE)}: {res.stderr.strip()[-300:]}")
    (work / "driver.c").write_text(DRIVER_C)
    out = work / "fuzz-driver"
    subprocess.run([cc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-O1", "-g", *SANITIZE, f"-I{READER_DIR}",
                    "-o", str(out), str(work / "driver.c"), str(READER_DIR / "bitconv_reader.c")],
                   check=True, capture_output=True, text=True)
    return out


TENSORS = "<bitconv.tensors: the entries, serialized>"


@dataclass
class Model:
    header: Obj         # "__metadata__" and one entry per stored tensor
    entries: Obj        # bitconv.tensors, serialized into the metadata where TENSORS stands
    data: bytearray
    expected: dict      # logical name -> decoded float32 values as the driver prints them

    def serialize(self, header_len: int | None = None) -> bytes:
        header = copy.deepcopy(self.header)
        for k, v in header:
            if k == "__metadata__" and isinstance(v, Obj):
                v[:] = [(mk, dumps(self.entries) if mv is TENSORS else mv) for mk, mv in v]
        text = dumps(header).encode()
        text += b" " * (-len(text) % 8)  # as the writer pads
        return struct.pack("<Q", len(text) if header_len is None else header_len) + text + bytes(self.data)

    def span(self, name: str) -> tuple[int, int]:
        return tuple(self.header.get(name).get("data_offsets"))


def _pack(levels: np.ndarray, bits: int, pad: int) -> np.ndarray:
    """Codes of `bits` bits, least significant first along a row, each row padded with `pad` to whole bytes."""
    per = 8 // bits
    out, n_in = levels.shape
    row = -(-n_in // per)
    padded = np.full((out, row * per), pad, np.uint32)
    padded[:, :n_in] = levels
    padded = padded.reshape(out, row, per)
    return sum(padded[:, :, j] << (bits * j) for j in range(per)).astype(np.uint8)


def _pack_base3(trits: np.ndarray) -> np.ndarray:
    out, n_in = trits.shape
    row = -(-n_in // 5)
    padded = np.ones((out, row * 5), np.uint32)  # padding trit 1 = zero
    padded[:, :n_in] = trits + 1
    padded = padded.reshape(out, row, 5)
    return sum(padded[:, :, j] * 3**j for j in range(5)).astype(np.uint8)


def _hex(values: np.ndarray) -> str:
    return " ".join(f"{b:08x}" for b in np.ascontiguousarray(values, np.float32).reshape(-1).view(np.uint32))


def build_model() -> Model:
    """Six packed weights (every scheme; tensor/channel/group; 2bit and base3; outliers; widths with padding)
    and eleven plain tensors of every dtype, one of them empty, stored in an order unlike the header's keys."""
    rng = np.random.default_rng(2024)
    f32 = np.float32
    stored: list[tuple[str, str, list[int], bytes]] = []
    entries = Obj()
    expected = {}

    def entry(name, scheme, shape, packing="2bit", granularity="tensor", group_size=None, n_outliers=0,
              layout="linear"):
        entries.append((name, Obj([("scheme", scheme), ("shape", list(shape)), ("dtype", "float32"),
                                   ("packing", packing), ("granularity", granularity), ("group_size", group_size),
                                   ("scale_method", "absmean"), ("n_outliers", n_outliers), ("layout", layout)])))

    def plain(name, st, arr, as_f32=None):
        stored.append((name, st, list(arr.shape), arr.astype(arr.dtype.newbyteorder("<")).tobytes()))
        expected[name] = _hex(arr.astype(f32) if as_f32 is None else as_f32)

    def scales(*shape):
        return rng.uniform(0.01, 0.2, shape).astype(f32)

    plain("emb.weight", "F32", rng.standard_normal((4, 6)).astype(f32))
    # ternary 2bit, per tensor, 3 outliers (zero trits under them), stored transposed in the source
    t = rng.integers(-1, 2, (5, 21))
    oidx = np.sort(rng.choice(t.size, 3, replace=False)).astype(np.int64)
    t.flat[oidx] = 0
    s, oval = scales(1), np.array([0.9, -1.25, 2.5], np.float16)
    entry("t2.weight", "ternary", t.shape, n_outliers=3, layout="conv1d")
    stored += [("t2.weight.qcodes", "U8", [5, 6], _pack(t + 2, 2, 2).tobytes()), ("t2.weight.qscale", "F32", [1], s.tobytes()),
               ("t2.weight.outlier_idx", "I64", [3], oidx.astype("<i8").tobytes()),
               ("t2.weight.outlier_val", "F16", [3], oval.astype("<f2").tobytes())]
    w = t.astype(f32) * s[0]
    w.flat[oidx] = oval.astype(f32)
    expected["t2.weight"] = _hex(w)
    plain("norm.weight", "F16", rng.standard_normal(7).astype(np.float16))
    # ternary base3, groups of 8 over 13 columns (a short last group)
    t = rng.integers(-1, 2, (4, 13))
    s = scales(4, 2)
    entry("t3.weight", "ternary", t.shape, packing="base3", granularity="group", group_size=8)
    stored += [("t3.weight.qcodes", "U8", [4, 3], _pack_base3(t).tobytes()), ("t3.weight.qscale", "F32", [4, 2], s.tobytes())]
    expected["t3.weight"] = _hex(t.astype(f32) * s[:, np.arange(13) // 8])
    bf = rng.standard_normal(3).astype(f32)
    plain("bf", "BF16", (bf.view(np.uint32) >> 16).astype(np.uint16), as_f32=(bf.view(np.uint32) & 0xFFFF0000).view(f32))
    # binary per channel
    bits = rng.integers(0, 2, (3, 19))
    s = scales(3)
    entry("b.weight", "binary", bits.shape, granularity="channel")
    stored += [("b.weight.qcodes", "U8", [3, 3], _pack(bits, 1, 0).tobytes()), ("b.weight.qscale", "F32", [3], s.tobytes())]
    expected["b.weight"] = _hex((2 * bits - 1).astype(f32) * s[:, None])
    plain("ids", "I64", np.arange(5, dtype=np.int64)[None])
    # int8, groups of 4, 2 outliers (replacing whatever the codes say)
    q = rng.integers(-127, 128, (3, 10)).astype(np.int8)
    s = scales(3, 3)
    oidx = np.array([4, 21], np.int64)
    oval = np.array([-3.5, 7.0], np.float16)
    entry("i8.weight", "int8", q.shape, granularity="group", group_size=4, n_outliers=2)
    stored += [("i8.weight.qcodes", "I8", [3, 10], q.tobytes()), ("i8.weight.qscale", "F32", [3, 3], s.tobytes()),
               ("i8.weight.outlier_idx", "I64", [2], oidx.astype("<i8").tobytes()),
               ("i8.weight.outlier_val", "F16", [2], oval.astype("<f2").tobytes())]
    w = q.astype(f32) * s[:, np.arange(10) // 4]
    w.flat[oidx] = oval.astype(f32)
    expected["i8.weight"] = _hex(w)
    plain("mask", "I8", np.array([0, 1, -3], np.int8))
    plain("empty", "F32", np.zeros((0, 3), f32))
    # uint4, groups of 8 over 21 columns, zero points
    q, z, s = rng.integers(0, 16, (4, 21)), rng.integers(0, 16, (4, 3)).astype(np.uint8), scales(4, 3)
    entry("u4.weight", "uint4", q.shape, granularity="group", group_size=8)
    stored += [("u4.weight.qcodes", "U8", [4, 11], _pack(q, 4, 0).tobytes()), ("u4.weight.qscale", "F32", [4, 3], s.tobytes()),
               ("u4.weight.qzero", "U8", [4, 3], z.tobytes())]
    g = np.arange(21) // 8
    expected["u4.weight"] = _hex((q.astype(f32) - z[:, g].astype(f32)) * s[:, g])
    plain("flag", "BOOL", np.array([1, 0], np.uint8))
    # uint2 per channel
    q, z, s = rng.integers(0, 4, (3, 22)), rng.integers(0, 4, (3, 1)).astype(np.uint8), scales(3)
    entry("u2.weight", "uint2", q.shape, granularity="channel")
    stored += [("u2.weight.qcodes", "U8", [3, 6], _pack(q, 2, 0).tobytes()), ("u2.weight.qscale", "F32", [3], s.tobytes()),
               ("u2.weight.qzero", "U8", [3, 1], z.tobytes())]
    expected["u2.weight"] = _hex((q.astype(f32) - z.astype(f32)) * s[:, None])
    plain("f64", "F64", np.array([1.5, -2.0e-3]))
    plain("i32", "I32", np.array([7, -9], np.int32))
    plain("i16", "I16", np.array([300, -2, 5], np.int16))
    plain("u8", "U8", np.array([0, 1, 2, 254, 255], np.uint8))

    meta = Obj([("format", "pt"), ("bitconv.format", "bitconv-packed"), ("bitconv.format_version", "1"),
                ("bitconv.tensors", TENSORS)])
    header, data = Obj([("__metadata__", meta)]), bytearray()
    for name, st, shape, raw in stored:
        header.append((name, Obj([("dtype", st), ("shape", shape), ("data_offsets", [len(data), len(data) + len(raw)])])))
        data += raw
    return Model(header, entries, data, expected)


BASE = build_model()


@dataclass
class Result:
    rc: int
    stderr: str
    decoded: dict


def run(driver: Path, path: Path) -> Result:
    res = subprocess.run([str(driver), str(path)], capture_output=True, text=True, errors="replace", timeout=30,
                         check=False, env={**os.environ, **SANITIZER_ENV})
    decoded = dict(line.partition("\t")[::2] for line in res.stdout.splitlines()) if res.returncode == 0 else {}
    return Result(res.returncode, res.stderr, decoded)


def check_outcome(res: Result, path: Path, label: str) -> str:
    """Identical decode or a one-line refusal naming the file; returns "same" or "refused"."""
    assert res.rc in (0, 1), f"{label}: exit code {res.rc} (86: AddressSanitizer, 87: UBSan)\n{res.stderr[-3000:]}"
    if res.rc == 0:
        assert res.decoded == BASE.expected, f"{label}: accepted, but decodes differently from the original"
        return "same"
    assert res.stderr.endswith("\n") and res.stderr.count("\n") == 1, f"{label}: not one line: {res.stderr!r}"
    assert res.stderr.startswith(f"fuzz: {path}: "), f"{label}: the message does not name the file: {res.stderr!r}"
    return "refused"


def test_unmutated_file_decodes_as_built(driver, tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(BASE.serialize())
    res = run(driver, path)
    assert res.rc == 0, res.stderr
    assert res.decoded == BASE.expected


# ---------------------------------------------------------------------------------------------------------------
# mutations: each returns the bytes of a mutated copy of BASE


def mutate(edit=None, **changes) -> bytes:
    """A mutated copy of BASE (support.hostile_files.mutated)."""
    return mutated(BASE, edit, **changes)


def entry_of(name):
    """An edit on the header entry of a stored tensor."""
    def at(fn):
        return lambda m: fn(m.header.get(name))
    return at


def spec_of(name):
    """An edit on the bitconv.tensors entry of a packed weight."""
    def at(fn):
        return lambda m: fn(m.entries.get(name))
    return at


def meta(fn):
    return lambda m: fn(m.header.get("__metadata__"))


def data_at(name, offset, value, fmt="<B"):
    """Writes `value` (struct format `fmt`) at byte `offset` of stored tensor `name`."""
    begin, _ = BASE.span(name)
    return lambda d: struct.pack_into(fmt, d, begin + offset, value)


def header_length() -> int:
    return struct.unpack("<Q", BASE.serialize()[:8])[0]


def _set(key, value):
    return lambda o: o.set(key, value)


def _shape_dim(i, value):
    def fn(o):
        shape = list(o.get("shape"))
        shape[i] = value
        o.set("shape", shape)
    return fn


def _offsets(fn):
    return lambda o: o.set("data_offsets", fn(list(o.get("data_offsets"))))


def _t2_code_at(flat, code):
    """Sets the 2-bit code of element `flat` of t2.weight (5 x 21, 6 bytes a row)."""
    r, c = divmod(flat, 21)
    begin, _ = BASE.span("t2.weight.qcodes")

    def fn(d):
        at = begin + r * 6 + c // 4
        d[at] = (d[at] & ~(3 << (2 * (c % 4))) & 0xFF) | (code << (2 * (c % 4)))
    return fn


def _bits(name, offset, keep, add):
    """Byte `offset` of stored tensor `name` becomes (byte & keep) | add."""
    begin, _ = BASE.span(name)
    return lambda d: d.__setitem__(begin + offset, (d[begin + offset] & keep) | add)


T2_OUTLIERS = np.frombuffer(BASE.data[slice(*BASE.span("t2.weight.outlier_idx"))], "<i8")
BIG = 2**63 - 1

# (id, mutated file, the message it must give): every rule of SPEC.md "Validation" at least once
RULES = [
    # the file and its header
    ("short file", lambda: b"\x01\x02\x03", r"shorter than 8 bytes"),
    ("header longer than the file", lambda: mutate(header_len=len(BASE.serialize())), r"corrupt safetensors header \(length"),
    ("header length 2^64-1", lambda: mutate(header_len=2**64 - 1), r"corrupt safetensors header \(length"),
    ("header not starting with {", lambda: mutate(header_len=header_length() + 8, tail=lambda b: b[:8] + b" " * 8 + b[8:]),
     r"does not start with '\{'"),
    ("header not JSON", lambda: mutate(header_len=header_length() - 9), r"malformed JSON"),
    ("duplicate tensor key", lambda: mutate(lambda m: m.header.insert(3, m.header[1])), r"duplicate key 'emb.weight'"),
    ("duplicate member", lambda: mutate(entry_of("emb.weight")(lambda o: o.append(("dtype", "F32")))), r"duplicate key 'dtype'"),
    ("duplicate metadata key", lambda: mutate(meta(lambda o: o.append(("bitconv.format_version", "1")))),
     r"duplicate key 'bitconv.format_version'"),
    ("NUL in a string", lambda: mutate(entry_of("emb.weight")(_set("dtype", Raw('"F32\\u0000x"')))), r"u0000 in string"),
    ("control character in a name", lambda: mutate(lambda m: m.header.rename("emb.weight", "emb\nweight")),
     r"control character in a key"),
    ("DEL in a name", lambda: mutate(lambda m: m.header.rename("u8", "u\x7f8")), r"control character in a key"),
    ("metadata value not a string", lambda: mutate(meta(lambda o: o.append(("x", 5)))), r"'__metadata__' must be a JSON object of strings"),
    ("metadata not an object", lambda: mutate(lambda m: m.header.set("__metadata__", ["x"])), r"'__metadata__' must be a JSON object"),
    # each stored tensor
    ("tensor entry not an object", lambda: mutate(lambda m: m.header.set("u8", [0, 5])), r"tensor 'u8': its header entry is not a JSON object"),
    ("missing dtype", lambda: mutate(entry_of("emb.weight")(lambda o: o.remove("dtype"))), r"tensor 'emb.weight': its header entry has no 'dtype'"),
    ("unsupported dtype", lambda: mutate(entry_of("u8")(_set("dtype", "F8_E4M3"))), r"tensor 'u8' has unsupported dtype 'F8_E4M3'"),
    ("missing shape", lambda: mutate(entry_of("emb.weight")(lambda o: o.remove("shape"))), r"tensor 'emb.weight': 'shape' must be"),
    ("negative shape", lambda: mutate(entry_of("emb.weight")(_shape_dim(0, -4))), r"'shape' must be a list of at most 8 integers"),
    ("float shape", lambda: mutate(entry_of("emb.weight")(_shape_dim(0, Raw("4.0")))), r"'shape' must be a list"),
    ("boolean shape", lambda: mutate(entry_of("flag")(_set("shape", [True, True]))), r"'shape' must be a list"),
    ("shape beyond int64", lambda: mutate(entry_of("empty")(_shape_dim(1, 2**63))), r"'shape' must be a list"),
    ("empty F32 [0, 2^63-1] (no reader can make the array)", lambda: mutate(entry_of("empty")(_set("shape", [0, BIG]))),
     r"tensor 'empty' has a shape too large for an array of any dtype even with a 0 dimension"),
    ("nine dimensions", lambda: mutate(entry_of("ids")(_set("shape", [1] * 8 + [5]))), r"'shape' must be a list of at most 8"),
    ("negative offset", lambda: mutate(entry_of("norm.weight")(_offsets(lambda o: [-1, o[1]]))), r"'data_offsets' must be two integers"),
    ("offsets reversed", lambda: mutate(entry_of("norm.weight")(_offsets(lambda o: o[::-1]))), r"'data_offsets' must be two integers"),
    ("three offsets", lambda: mutate(entry_of("norm.weight")(_offsets(lambda o: o + [o[1]]))), r"'data_offsets' must be two integers"),
    ("string offset", lambda: mutate(entry_of("norm.weight")(_offsets(lambda o: [str(o[0]), o[1]]))), r"'data_offsets' must be two integers"),
    ("truncated", lambda: mutate(tail=lambda b: b[:-4]), r"truncated \(tensor 'u8' ends at data byte"),
    ("bytes that disagree with the shape", lambda: mutate(entry_of("emb.weight")(_shape_dim(1, 5))),
     r"tensor 'emb.weight' is 96 bytes, which is not what its dtype F32 and shape need"),
    ("F32 [2^31, 2^31] at [x, x] (2^64 bytes wrap to 0)", lambda: mutate(entry_of("empty")(_set("shape", [2**31, 2**31]))),
     r"tensor 'empty' is 0 bytes, which is not what its dtype F32 and shape need"),
    ("U8 [2^32, 2^32, 1] (wraps to 0)", lambda: mutate(entry_of("empty")(lambda o: (o.set("dtype", "U8"), o.set("shape", [2**32, 2**32, 1])))),
     r"tensor 'empty' is 0 bytes"),
    ("overlap", lambda: mutate(entry_of("norm.weight")(_offsets(lambda o: [o[0] - 2, o[1] - 2]))), r"an overlap\)"),
    ("gap", lambda: mutate(lambda m: m.header.remove("bf")), r"a gap\)"),
    ("trailing bytes", lambda: mutate(tail=lambda b: b + bytes(8)), r"8 bytes after the last tensor"),
    # the bitconv metadata
    ("not a bitconv file", lambda: mutate(meta(lambda o: o.remove("bitconv.format"))), r"not a bitconv packed file"),
    ("format version 2", lambda: mutate(meta(_set("bitconv.format_version", "2"))), r"format version 2, this reader reads version 1"),
    ("format version 01", lambda: mutate(meta(_set("bitconv.format_version", "01"))), r"format version 01,"),
    ("format version as a number", lambda: mutate(meta(_set("bitconv.format_version", 1))), r"must be a JSON object of strings"),
    ("no bitconv.tensors", lambda: mutate(meta(lambda o: o.remove("bitconv.tensors"))), r"no 'bitconv.tensors' metadata"),
    ("bitconv.tensors a list", lambda: mutate(meta(_set("bitconv.tensors", "[]"))), r"'bitconv.tensors' metadata is not a JSON object \(another"),
    ("bitconv.tensors not JSON", lambda: mutate(meta(_set("bitconv.tensors", "{"))), r"'bitconv.tensors' metadata is not a JSON object \(malformed"),
    # each bitconv.tensors entry
    ("duplicate logical weight", lambda: mutate(lambda m: m.entries.append(m.entries[0])), r"duplicate key 't2.weight'"),
    ("bitconv entry not an object", lambda: mutate(lambda m: m.entries.set("b.weight", 1)), r"tensor 'b.weight': its bitconv.tensors entry is not a JSON object"),
    ("unknown scheme", lambda: mutate(spec_of("t2.weight")(_set("scheme", "zstd"))), r"tensor 't2.weight': unknown scheme 'zstd'"),
    ("unknown packing", lambda: mutate(spec_of("t2.weight")(_set("packing", "zstd"))), r"unknown packing 'zstd'"),
    ("missing packing", lambda: mutate(spec_of("t2.weight")(lambda o: o.remove("packing"))), r"has no 'packing' string"),
    ("unknown granularity", lambda: mutate(spec_of("b.weight")(_set("granularity", "row"))), r"unknown granularity 'row'"),
    ("unknown layout", lambda: mutate(spec_of("b.weight")(_set("layout", "transposed"))), r"unknown layout 'transposed'"),
    ("scheme not a string", lambda: mutate(spec_of("b.weight")(_set("scheme", 2))), r"has no 'scheme' string"),
    ("base3 for binary", lambda: mutate(spec_of("b.weight")(_set("packing", "base3"))), r"base3 is defined for ternary only"),
    ("informative dtype not a string", lambda: mutate(spec_of("b.weight")(_set("dtype", 32))), r"must be strings"),
    ("entry shape negative", lambda: mutate(spec_of("b.weight")(_set("shape", [-3, 19]))), r"needs a shape \[out, in\]"),
    ("entry shape 3-D", lambda: mutate(spec_of("b.weight")(_set("shape", [3, 19, 1]))), r"needs a shape \[out, in\]"),
    ("group_size with tensor granularity", lambda: mutate(spec_of("t2.weight")(_set("group_size", 8))), r"group_size must be null"),
    ("group_size missing", lambda: mutate(spec_of("t2.weight")(lambda o: o.remove("group_size"))), r"group_size must be null"),
    ("group_size 0", lambda: mutate(spec_of("t3.weight")(_set("group_size", 0))), r"group_size must be a positive integer"),
    ("group_size INT64_MAX", lambda: mutate(spec_of("t3.weight")(_set("group_size", BIG))),
     r"'t3.weight.qscale' has dtype F32 and the wrong shape or dtype for its spec \(needs F32 \[4, 1\]\)"),
    ("group_size as a float", lambda: mutate(spec_of("u4.weight")(_set("group_size", Raw("8.0")))), r"group_size must be a positive integer"),
    ("n_outliers negative", lambda: mutate(spec_of("t2.weight")(_set("n_outliers", -1))), r"n_outliers must be an integer"),
    ("n_outliers above out*in", lambda: mutate(spec_of("t2.weight")(_set("n_outliers", 106))), r"n_outliers 106 is more than its 105 weights"),
    ("huge entry shape", lambda: mutate(spec_of("b.weight")(_set("shape", [BIG, BIG]))), r"'b.weight.qcodes' has dtype U8 and the wrong shape"),
    ("logical name also stored", lambda: mutate(lambda m: m.header.rename("u8", "t2.weight")), r"'t2.weight' is both a packed weight and a stored tensor"),
    ("missing part", lambda: mutate(lambda m: m.header.rename("t2.weight.qscale", "t2.weight.qscalx")), r"tensor 't2.weight.qscale' is missing"),
    ("part of the wrong shape", lambda: mutate(spec_of("t2.weight")(_set("shape", [5, 25]))),
     r"'t2.weight.qcodes' has dtype U8 and the wrong shape or dtype for its spec \(needs U8 \[5, 7\]\)"),
    ("part of the wrong dtype", lambda: mutate(entry_of("i8.weight.qcodes")(_set("dtype", "U8"))), r"'i8.weight.qcodes' has dtype U8 and the wrong"),
    ("zero points for a ternary weight", lambda: mutate(lambda m: m.header.rename("u8", "t2.weight.qzero")),
     r"tensor 't2.weight.qzero' is named as a part \(.qzero\) of packed weight 't2.weight'"),
    ("parts without an entry", lambda: mutate(lambda m: m.entries.remove("b.weight")), r"tensor 'b.weight.qcodes' is named as a part"),
    ("outlier parts with n_outliers 0", lambda: mutate(spec_of("t2.weight")(_set("n_outliers", 0))), r"'t2.weight.outlier_idx' is named as a part"),
    # stored values
    ("NaN scale", lambda: mutate(data=data_at("t3.weight.qscale", 12, float("nan"), "<f")), r"tensor 't3.weight': scale 3 is NaN or infinite"),
    ("infinite scale", lambda: mutate(data=data_at("t2.weight.qscale", 0, float("inf"), "<f")), r"scale 0 is NaN or infinite"),
    ("-Inf scale", lambda: mutate(data=data_at("u2.weight.qscale", 4, float("-inf"), "<f")), r"scale 1 is NaN or infinite"),
    ("uint4 zero point 16", lambda: mutate(data=data_at("u4.weight.qzero", 5, 16)), r"zero point 5 is 16, above the uint4 maximum 15"),
    ("uint2 zero point 4", lambda: mutate(data=data_at("u2.weight.qzero", 2, 4)), r"zero point 2 is 4, above the uint2 maximum 3"),
    ("reserved code 0", lambda: mutate(data=_t2_code_at(int(T2_OUTLIERS[0]) + 1, 0)), r"tensor 't2.weight': reserved code at row"),
    ("base3 byte 243", lambda: mutate(data=data_at("t3.weight.qcodes", 4, 243)), r"tensor 't3.weight': reserved code at row 1"),
    ("outlier index -1", lambda: mutate(data=data_at("t2.weight.outlier_idx", 0, -1, "<q")), r"outlier index -1 falls outside"),
    ("outlier index out*in", lambda: mutate(data=data_at("t2.weight.outlier_idx", 16, 105, "<q")), r"outlier index 105 falls outside"),
    ("outlier index -2^63", lambda: mutate(data=data_at("i8.weight.outlier_idx", 8, -(2**63), "<q")), r"outlier index -9223372036854775808 falls"),
    ("outlier indices repeated", lambda: mutate(data=data_at("i8.weight.outlier_idx", 8, 4, "<q")), r"outlier indices must increase strictly"),
    ("outlier indices decreasing", lambda: mutate(data=data_at("i8.weight.outlier_idx", 0, 25, "<q")), r"outlier indices must increase strictly"),
    ("nonzero trit under an outlier", lambda: mutate(data=_t2_code_at(int(T2_OUTLIERS[1]), 3)), r"nonzero code under outlier 1"),
]


@pytest.mark.parametrize("make, message", [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_each_rule_is_refused(driver, tmp_path, make, message):
    path = tmp_path / "model.safetensors"
    path.write_bytes(make())
    res = run(driver, path)
    assert check_outcome(res, path, message) == "refused"
    assert re.search(message, res.stderr), res.stderr


# Mutations that must leave the decoded tensors unchanged: padding, informative members, unknown members, order.
HARMLESS = [
    ("header keys reordered", lambda: mutate(lambda m: m.header.reverse())),
    ("entries reordered", lambda: mutate(lambda m: m.entries.reverse())),
    ("unknown member in a tensor entry", lambda: mutate(entry_of("emb.weight")(lambda o: o.append(("note", [1, {"a": None}]))))),
    ("unknown member in a bitconv entry", lambda: mutate(spec_of("b.weight")(lambda o: o.append(("future", 3))))),
    ("unknown metadata key", lambda: mutate(meta(lambda o: o.append(("bitconv.future", "x"))))),
    ("layout changed", lambda: mutate(spec_of("t2.weight")(_set("layout", "linear")))),
    ("informative members removed", lambda: mutate(spec_of("u2.weight")(lambda o: (o.remove("dtype"), o.remove("scale_method"))))),
    ("empty tensor with a large other dimension", lambda: mutate(entry_of("empty")(_set("shape", [0, 2**60 - 1])))),
    ("empty tensor written -0", lambda: mutate(entry_of("empty")(_shape_dim(0, Raw("-0"))))),
    ("trailing dimension of 1", lambda: mutate(entry_of("emb.weight")(_set("shape", [4, 6, 1])))),
    # padding codes after the last element of a row are ignored, whatever they are (t2: 21 of 24 codes a row)
    ("2bit padding code 0", lambda: mutate(data=_bits("t2.weight.qcodes", 5, 0x03, 0))),
    ("binary padding bits", lambda: mutate(data=_bits("b.weight.qcodes", 2, 0x07, 0xF8))),
    ("uint4 padding nibble", lambda: mutate(data=_bits("u4.weight.qcodes", 10, 0x0F, 0xF0))),
]


@pytest.mark.parametrize("make", [h[1] for h in HARMLESS], ids=[h[0] for h in HARMLESS])
def test_harmless_changes_decode_identically(driver, tmp_path, make):
    path = tmp_path / "model.safetensors"
    path.write_bytes(make())
    res = run(driver, path)
    assert check_outcome(res, path, "harmless") == "same", res.stderr


def test_header_over_100_mb_is_refused(driver, tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(mutate(header_len=100_000_001))
    os.truncate(path, 100_000_200)  # sparse: the length fits the file, only the 100 MB limit refuses it
    res = run(driver, path)
    assert check_outcome(res, path, "100 MB header") == "refused"
    assert "corrupt safetensors header (length 100000001" in res.stderr


def test_fifo_and_folder_are_refused_without_hanging(driver, tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    res = run(driver, fifo)  # a reader that opened it blocking would wait for a writer until the timeout
    assert res.rc == 1 and "not a regular file" in res.stderr, res.stderr
    res = run(driver, tmp_path)
    assert res.rc == 1 and "not a regular file" in res.stderr, res.stderr


# ---------------------------------------------------------------------------------------------------------------
# random structured mutations, fixed seed

INTS = [-1, -(2**63), -(2**63) - 1, 0, 1, 2**31, 2**32, 2**53 + 1, 2**62, BIG, 2**63, 2**64, 10**30]
WRONG = [None, True, False, "7", [], Obj(), Raw("1.5"), Raw("1.0"), Raw("1e2"), Raw("-0"), Raw("-0.0"), Raw("1e400")]
SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
STORED = [k for k, _ in BASE.header if k != "__metadata__"]
PACKED = [k for k, _ in BASE.entries]
PARTS = {name + suffix for name in PACKED for suffix in (".qcodes", ".qscale", ".qzero", ".outlier_idx", ".outlier_val")}
SUFFIXES = [".qcodes", ".qscale", ".qzero", ".outlier_idx", ".outlier_val"]


def pick(rng, options):
    return options[int(rng.integers(len(options)))]


def m_shape(rng):
    name = pick(rng, STORED)
    shape = list(BASE.header.get(name).get("shape"))
    how = pick(rng, ["dim", "dim", "append", "drop", "nine", "type"])
    if how == "dim" and shape:
        i, v = int(rng.integers(len(shape))), pick(rng, INTS + WRONG)
        return f"{name} shape[{i}] = {v!r}", mutate(entry_of(name)(_shape_dim(i, v)))
    if how == "append":
        v = pick(rng, [0, 1, 2] + INTS)
        return f"{name} shape + [{v}]", mutate(entry_of(name)(_set("shape", shape + [v])))
    if how == "drop" and shape:
        return f"{name} shape[:-1]", mutate(entry_of(name)(_set("shape", shape[:-1])))
    if how == "nine":
        return f"{name} 9-D", mutate(entry_of(name)(_set("shape", [1] * (9 - len(shape)) + shape)))
    v = pick(rng, WRONG)
    return f"{name} shape = {v!r}", mutate(entry_of(name)(_set("shape", v)))


def m_offsets(rng):
    name = pick(rng, STORED)
    b, e = BASE.span(name)
    size = e - b
    how = pick(rng, ["begin", "end", "shift", "reverse", "length", "type", "swap"])
    if how == "begin":
        v = pick(rng, INTS + [b - 1, b + 1, b + 8, b - 8])
        return f"{name} begin = {v}", mutate(entry_of(name)(_offsets(lambda o: [v, o[1]])))
    if how == "end":
        v = pick(rng, INTS + [e - 1, e + 1, e + 8, e - 8])
        return f"{name} end = {v}", mutate(entry_of(name)(_offsets(lambda o: [o[0], v])))
    if how == "shift":
        d = pick(rng, [-size, size, -1, 1, -8, 8, len(BASE.data)])
        return f"{name} shifted by {d}", mutate(entry_of(name)(_offsets(lambda o: [o[0] + d, o[1] + d])))
    if how == "reverse":
        return f"{name} offsets reversed", mutate(entry_of(name)(_offsets(lambda o: o[::-1])))
    if how == "length":
        v = pick(rng, [[b], [b, e, e], [], [[b, e]]])
        return f"{name} offsets {v}", mutate(entry_of(name)(_set("data_offsets", v)))
    if how == "type":
        v = pick(rng, [[b, pick(rng, WRONG)], [pick(rng, WRONG), e], pick(rng, WRONG), [Raw(f"{b}.0"), e], [str(b), e]])
        return f"{name} offsets {v!r}", mutate(entry_of(name)(_set("data_offsets", v)))
    other = pick(rng, [n for n in STORED if BASE.span(n)[1] - BASE.span(n)[0] != size])
    ob, oe = BASE.span(other)

    def swap(m):
        m.header.get(name).set("data_offsets", [ob, oe])
        m.header.get(other).set("data_offsets", [b, e])
    return f"{name} <-> {other} offsets", mutate(swap)


def m_dtype(rng):
    name = pick(rng, STORED)
    old = BASE.header.get(name).get("dtype")
    # a plain tensor may validly be read as another dtype of the same size (different values): not a mutation
    # this test can judge, so those only go to parts, whose dtype the spec fixes
    known = [d for d in SIZES if d != old and (name in PARTS or SIZES[d] != SIZES[old])]
    v = pick(rng, known + ["F8_E4M3", "U16", "U32", "U64", "f32", "", "float32", "F32 "] + WRONG)
    return f"{name} dtype = {v!r}", mutate(entry_of(name)(_set("dtype", v)))


def m_duplicate(rng):
    where = pick(rng, ["tensor", "member", "metadata", "weight", "spec member"])
    if where == "tensor":
        name = pick(rng, STORED)

        def dup(m):
            entry = copy.deepcopy(m.header.get(name))
            if rng.integers(2):
                entry.set("dtype", "U8")
            m.header.insert(int(rng.integers(len(m.header) + 1)), (name, entry))
        return f"duplicate tensor {name}", mutate(dup)
    if where == "member":
        name, key = pick(rng, STORED), pick(rng, ["dtype", "shape", "data_offsets"])
        return f"duplicate {name}.{key}", mutate(entry_of(name)(lambda o: o.append((key, copy.deepcopy(o.get(key))))))
    if where == "metadata":
        key = pick(rng, ["bitconv.format", "bitconv.format_version", "bitconv.tensors", "format"])
        return f"duplicate metadata {key}", mutate(meta(lambda o: o.append((key, o.get(key)))))
    name = pick(rng, PACKED)
    if where == "weight":
        return f"duplicate entry {name}", mutate(lambda m: m.entries.append((name, copy.deepcopy(m.entries.get(name)))))
    key = pick(rng, ["scheme", "shape", "packing", "granularity", "group_size", "n_outliers", "layout", "dtype"])
    return f"duplicate {name} spec {key}", mutate(spec_of(name)(lambda o: o.append((key, copy.deepcopy(o.get(key))))))


def m_remove(rng):
    where = pick(rng, ["tensor member", "tensor", "metadata", "spec member", "weight"])
    if where == "tensor member":
        name, key = pick(rng, STORED), pick(rng, ["dtype", "shape", "data_offsets"])
        return f"remove {name}.{key}", mutate(entry_of(name)(lambda o: o.remove(key)))
    if where == "tensor":  # not "empty": dropping a 0-byte plain tensor is a valid, different file
        name = pick(rng, [n for n in STORED if n != "empty"])
        return f"remove tensor {name}", mutate(lambda m: m.header.remove(name))
    if where == "metadata":
        key = pick(rng, ["bitconv.format", "bitconv.format_version", "bitconv.tensors", "format", "__metadata__"])
        if key == "__metadata__":
            return "remove __metadata__", mutate(lambda m: m.header.remove(key))
        return f"remove metadata {key}", mutate(meta(lambda o: o.remove(key)))
    name = pick(rng, PACKED)
    if where == "weight":
        return f"remove entry {name}", mutate(lambda m: m.entries.remove(name))
    key = pick(rng, ["scheme", "shape", "packing", "granularity", "group_size", "n_outliers", "layout", "dtype", "scale_method"])
    return f"remove {name} spec {key}", mutate(spec_of(name)(lambda o: o.remove(key)))


def m_wrong_type(rng):
    v = pick(rng, WRONG + INTS)
    where = pick(rng, ["tensor", "metadata", "spec", "entry"])
    if where == "tensor":
        name, key = pick(rng, STORED), pick(rng, ["dtype", "shape", "data_offsets"])
        return f"{name}.{key} = {v!r}", mutate(entry_of(name)(_set(key, v)))
    if where == "metadata":
        key = pick(rng, ["bitconv.format", "bitconv.format_version", "bitconv.tensors", "format"])
        return f"metadata {key} = {v!r}", mutate(meta(_set(key, v)))
    if where == "entry":
        name = pick(rng, STORED + PACKED)
        if name in PACKED:
            return f"entry {name} = {v!r}", mutate(lambda m: m.entries.set(name, v))
        return f"tensor {name} = {v!r}", mutate(lambda m: m.header.set(name, v))
    name = pick(rng, PACKED)
    key = pick(rng, ["scheme", "shape", "packing", "granularity", "group_size", "n_outliers", "layout", "dtype", "scale_method"])
    return f"{name} spec {key} = {v!r}", mutate(spec_of(name)(_set(key, v)))


def m_spec(rng):
    name = pick(rng, PACKED)
    spec = BASE.entries.get(name)
    key = pick(rng, ["scheme", "packing", "granularity", "layout", "shape", "group_size", "n_outliers"])
    choices = {
        "scheme": ["ternary", "binary", "int8", "uint4", "uint2", "zstd", "", "Ternary", "ternary "],
        "packing": ["2bit", "base3", "zstd", "3bit", "BASE3"],
        "granularity": ["tensor", "channel", "group", "row", "groups"],
        "layout": ["linear", "conv1d", "transposed"],
        "group_size": INTS + WRONG,
        "n_outliers": INTS + WRONG,
    }
    if key == "shape":
        shape = list(spec.get("shape"))
        how = pick(rng, ["dim", "dim", "len"])
        if how == "dim":
            i = int(rng.integers(2))
            shape[i] = pick(rng, INTS + WRONG)
        else:
            shape = pick(rng, [shape[:1], shape + [1], [], [shape]])
        return f"{name} spec shape = {shape!r}", mutate(spec_of(name)(_set("shape", shape)))
    v = pick(rng, choices[key])
    return f"{name} spec {key} = {v!r}", mutate(spec_of(name)(_set(key, v)))


def m_rename(rng):
    name = pick(rng, STORED)
    new = pick(rng, [name + "\n", name[:1] + "\x00" + name[1:], name + "\x7f", "\t" + name,
                     pick(rng, PACKED), pick(rng, PACKED) + pick(rng, SUFFIXES), pick(rng, STORED), name + ".qcodes"])
    return f"rename {name} -> {new!r}", mutate(lambda m: m.header.rename(name, new))


def m_metadata_value(rng):
    key = pick(rng, ["bitconv.format", "bitconv.format_version", "bitconv.tensors"])
    v = pick(rng, {
        "bitconv.format": ["bitconv-packed2", "", "Bitconv-packed", "bitconv-packed\n"],
        "bitconv.format_version": ["2", "0", "01", " 1", "1 ", "1.0", "+1", "-1", "\uff11", "1\u0000"],
        "bitconv.tensors": ["[]", "{", "null", "5", '{"t2.weight": 5}', '{"a": {}}', "{} {}", '"{}"', ""],
    }[key])
    return f"metadata {key} = {v!r}", mutate(meta(_set(key, v)))


def m_values(rng):
    how = pick(rng, ["scale", "zero", "code0", "base3", "outlier", "outlier code"])
    if how == "scale":
        name = pick(rng, [n + ".qscale" for n in PACKED])
        b, e = BASE.span(name)
        i, v = int(rng.integers((e - b) // 4)), pick(rng, [float("nan"), float("inf"), float("-inf")])
        return f"{name}[{i}] = {v}", mutate(data=data_at(name, 4 * i, v, "<f"))
    if how == "zero":
        name = pick(rng, ["u4.weight.qzero", "u2.weight.qzero"])
        b, e = BASE.span(name)
        i = int(rng.integers(e - b))
        v = int(rng.integers(16 if name.startswith("u4") else 4, 256))
        return f"{name}[{i}] = {v}", mutate(data=data_at(name, i, v))
    if how == "code0":
        flat = int(rng.integers(105))
        return f"t2 code 0 at {flat}", mutate(data=_t2_code_at(flat, 0))
    if how == "base3":
        i, v = int(rng.integers(12)), int(rng.integers(243, 256))
        return f"t3 byte {i} = {v}", mutate(data=data_at("t3.weight.qcodes", i, v))
    if how == "outlier code":
        k = int(rng.integers(3))
        return f"t2 nonzero code under outlier {k}", mutate(data=_t2_code_at(int(T2_OUTLIERS[k]), pick(rng, [1, 3])))
    name = pick(rng, ["t2.weight.outlier_idx", "i8.weight.outlier_idx"])
    idx = np.frombuffer(BASE.data[slice(*BASE.span(name))], "<i8")
    k = int(rng.integers(idx.size))
    numel = 105 if name.startswith("t2") else 30
    v = pick(rng, [-1, -(2**63), numel, numel + 7, BIG] + ([int(idx[k - 1])] if k else []) +
             ([int(idx[k + 1]) + 1] if k + 1 < idx.size else []))
    return f"{name}[{k}] = {v}", mutate(data=data_at(name, 8 * k, v, "<q"))


def m_file(rng):
    n = header_length()
    how = pick(rng, ["length", "truncate", "append", "prepend"])
    if how == "length":
        v = pick(rng, [n + d for d in (-16, -9, -8, -1, 1, 7, 8, 9)] + [0, 1, 2**63, 2**64 - 1, len(BASE.serialize()) - 8])
        return f"header length {v}", mutate(header_len=v)
    if how == "truncate":
        k = int(rng.integers(1, 40))
        return f"truncated by {k}", mutate(tail=lambda b: b[:-k])
    if how == "append":
        k = int(rng.integers(1, 40))
        return f"{k} bytes appended", mutate(tail=lambda b: b + bytes(rng.integers(0, 256, k, dtype=np.uint8)))
    ws = pick(rng, [b" ", b"\n", b"\t", b"\r\n "])
    return f"whitespace before the header {ws!r}", mutate(header_len=n + len(ws), tail=lambda b: b[:8] + ws + b[8:])


MUTATORS = [m_shape, m_offsets, m_dtype, m_duplicate, m_remove, m_wrong_type, m_spec, m_rename, m_metadata_value,
            m_values, m_file]
N_TRIALS = 440


def test_structured_mutations(driver, tmp_path):
    """Random mutations of every structural kind, with a fixed seed: each file decodes exactly as the original or
    is refused with one line naming it and exit code 1, with no sanitizer report."""
    rng = np.random.default_rng(20240612)
    path = tmp_path / "model.safetensors"
    outcomes: dict[str, dict[str, int]] = {}
    for trial in range(N_TRIALS):
        mutator = MUTATORS[trial % len(MUTATORS)]
        label, raw = mutator(rng)
        path.write_bytes(raw)
        outcome = check_outcome(run(driver, path), path, f"trial {trial} ({mutator.__name__}): {label}")
        counts = outcomes.setdefault(mutator.__name__, {"same": 0, "refused": 0})
        counts[outcome] += 1
    # each kind of mutation found files to refuse (a mutator that only ever produced harmless files tests nothing)
    assert all(c["refused"] for c in outcomes.values()), outcomes
