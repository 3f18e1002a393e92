"""Hostile bitconv files for the reader tests: a small file holding every scheme, granularity and packing (written by
the reference writer), and mutations of it along formats/SPEC.md "Validation (what every reader must refuse)".

The header is kept as lists of [key, value] pairs, so a mutation can repeat a key, and `Raw` text is written as is,
so it can hold what Python values cannot say (NaN, 1.0 for an integer, -0, broken literals). `RULES` breaks each
rule once; `HARMLESS` changes a file without changing what it decodes to; `random_mutation` draws structured
mutations (shapes, offsets, dtypes, duplicates, removals, wrong types, entries, names, metadata, stored values,
lengths) from a seeded generator. Both readers, Python and C, must refuse or decode identically every one.
"""

from __future__ import annotations

import copy
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bitconv.format.reader import PackedReader
from bitconv.quantize.config import QuantConfig
from bitconv.quantize.schemes import decode, dequantize, quantize
from support.packed_files import write_bitconv_file

BIG = 2**63 - 1
TENSORS = "<the entries, serialized here>"  # where bitconv.tensors stands in the metadata until serialized
SUFFIXES = (".qcodes", ".qscale", ".qzero", ".outlier_idx", ".outlier_val")


class Obj(list):
    """A JSON object as a list of (key, value) pairs, so a key can appear twice."""

    def get(self, key):
        return next(v for k, v in self if k == key)

    def set(self, key, value) -> None:
        for i, (k, _) in enumerate(self):
            if k == key:
                self[i] = (key, value)
                return
        self.append((key, value))

    def remove(self, key) -> None:
        self[:] = [(k, v) for k, v in self if k != key]

    def rename(self, key, new) -> None:
        self[:] = [(new if k == key else k, v) for k, v in self]


class Raw(str):
    """JSON text written as is."""


def dumps(v) -> str:
    """JSON of `v`, with Obj's repeated keys and Raw's text kept as they are."""
    if isinstance(v, Raw):
        return str(v)
    if isinstance(v, Obj):
        return "{" + ",".join(json.dumps(k) + ":" + dumps(x) for k, x in v) + "}"
    if isinstance(v, list):
        return "[" + ",".join(dumps(x) for x in v) + "]"
    return json.dumps(v)


@dataclass
class Model:
    header: Obj  # "__metadata__" and one entry per stored tensor
    entries: Obj  # bitconv.tensors, serialized back into the metadata
    data: bytearray

    def meta(self) -> Obj:
        return self.header.get("__metadata__")

    def entry(self, name: str) -> Obj:
        return self.header.get(name)

    def spec(self, name: str) -> Obj:
        return self.entries.get(name)

    def span(self, name: str) -> tuple[int, int]:
        return tuple(self.entry(name).get("data_offsets"))

    def serialize(self, header_len: int | None = None) -> bytes:
        header = copy.deepcopy(self.header)
        for key, value in header:
            if key == "__metadata__" and isinstance(value, Obj):
                value[:] = [(k, dumps(self.entries) if v == TENSORS else v) for k, v in value]
        text = dumps(header).encode()
        text += b" " * (-len(text) % 8)
        return struct.pack("<Q", len(text) if header_len is None else header_len) + text + bytes(self.data)


def write_base(path: Path) -> None:
    """Six packed weights (every scheme; tensor, channel and group scales; 2bit and base3; outliers; rows with
    padding; a conv1d layout) and ten plain tensors of every dtype numpy has, one of them empty."""
    gen = torch.Generator().manual_seed(12)

    def weight(*shape):
        return torch.randn(shape, generator=gen) * 0.02

    quantized = {
        "t2.weight": quantize(weight(5, 21), QuantConfig.for_bits(1.58, keep_outliers="3%"), layout="conv1d"),
        "t3.weight": quantize(weight(4, 13), QuantConfig.for_bits(1.58, "group:8", packing="base3")),
        "b.weight": quantize(weight(3, 19), QuantConfig.for_bits(1, "channel")),
        "i8.weight": quantize(weight(3, 10), QuantConfig.for_bits(8, "group:4", keep_outliers="7%")),
        "u4.weight": quantize(weight(4, 21), QuantConfig.for_bits(4, "group:8")),
        "u2.weight": quantize(weight(3, 22), QuantConfig.for_bits(2, "group:11")),
    }
    rng = np.random.default_rng(12)
    plain = {
        "emb.weight": rng.standard_normal((4, 6)).astype(np.float32), "norm.weight": rng.standard_normal(7).astype(np.float16),
        "ids": np.arange(5, dtype=np.int64)[None], "mask": np.array([0, 1, -3], np.int8),
        "empty": np.zeros((0, 3), np.float32), "flag": np.array([True, False]), "f64": np.array([1.5, -2e-3]),
        "i32": np.array([7, -9], np.int32), "i16": np.array([300, -2, 5], np.int16),
        "u8": np.array([0, 1, 2, 254, 255], np.uint8),
    }
    write_bitconv_file(path, quantized, plain)


def read_everything(folder: Path) -> dict[str, bytes]:
    """Every logical tensor of the folder decoded to float32 bytes, as `load` and the exporters decode them (a broken
    file raises FormatError)."""
    reader = PackedReader(folder)
    out = {name: reader.raw(name).astype(np.float32).tobytes() for name in reader.plain_names()}
    for name, spec in reader.specs.items():
        out[name] = dequantize(decode(spec, reader.quantized_arrays(name))).numpy().astype(np.float32).tobytes()
    return out


def load_model(path: Path) -> Model:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n], object_pairs_hook=Obj)
    entries = json.loads(header.get("__metadata__").get("bitconv.tensors"), object_pairs_hook=Obj)
    header.get("__metadata__").set("bitconv.tensors", TENSORS)
    return Model(header, entries, bytearray(raw[8 + n:]))


def mutated(base, edit=None, *, header_len=None, data=None, tail=None) -> bytes:
    """A mutated copy of `base` (a model with `data` and `serialize(header_len)`) as bytes: `edit(model)` changes
    the copy, `data(bytearray)` its data, `tail(bytes)` the whole file."""
    m = copy.deepcopy(base)
    if edit:
        edit(m)
    if data:
        data(m.data)
    raw = m.serialize(header_len)
    return tail(raw) if tail else raw


class Mutations:
    """Mutated copies of one base file, as bytes."""

    def __init__(self, base: Model):
        self.base = base
        self.stored = [k for k, _ in base.header if k != "__metadata__"]
        self.packed = [k for k, _ in base.entries]
        self.parts = {n + s for n in self.packed for s in SUFFIXES}

    def make(self, edit=None, **changes) -> bytes:
        return mutated(self.base, edit, **changes)

    def header_length(self) -> int:
        return struct.unpack("<Q", self.base.serialize()[:8])[0]

    def at(self, name: str, offset: int, value, fmt: str = "<B"):
        """A data edit: `value` (struct format `fmt`) at byte `offset` of stored tensor `name`."""
        begin, _ = self.base.span(name)
        return lambda d: struct.pack_into(fmt, d, begin + offset, value)

    def code_2bit(self, name: str, flat: int, code: int):
        """A data edit: the 2-bit code of element `flat` of a ternary 2bit weight becomes `code`."""
        n_in = self.base.spec(name).get("shape")[1]
        row_bytes = -(-n_in // 4)
        r, c = divmod(flat, n_in)
        begin, _ = self.base.span(name + ".qcodes")

        def edit(d):
            at = begin + r * row_bytes + c // 4
            d[at] = (d[at] & ~(3 << (2 * (c % 4))) & 0xFF) | (code << (2 * (c % 4)))
        return edit

    def bits(self, name: str, offset: int, *, keep: int, add: int):
        """A data edit: byte `offset` of stored tensor `name` becomes (byte & keep) | add."""
        begin, _ = self.base.span(name)
        return lambda d: d.__setitem__(begin + offset, (d[begin + offset] & keep) | add)

    def outliers(self, name: str) -> np.ndarray:
        return np.frombuffer(bytes(self.base.data[slice(*self.base.span(name + ".outlier_idx"))]), "<i8")

    # ---- one file per rule of SPEC "Validation": (id, file bytes, what the Python message says)

    def rules(self) -> list[tuple[str, bytes, str]]:
        mk, n = self.make, self.header_length()
        t2_outlier = int(self.outliers("t2.weight")[0])
        t2_zero = next(i for i in range(105) if i not in set(self.outliers("t2.weight").tolist()))
        return [
            ("short file", b"\x01\x02\x03", "shorter than 8 bytes"),
            ("header longer than the file", mk(header_len=len(self.base.serialize())), "corrupt safetensors header"),
            ("header length 2^64-1", mk(header_len=2**64 - 1), "corrupt safetensors header"),
            ("header not starting with {", mk(header_len=n + 8, tail=lambda b: b[:8] + b" " * 8 + b[8:]),
             "does not start with"),
            ("header cut short", mk(header_len=n - 9), "malformed JSON"),
            ("characters after the object", mk(header_len=n + 8, tail=lambda b: b[:8 + n] + b"{}      " + b[8 + n:]),
             "malformed JSON"),
            ("NaN literal", mk(lambda m: m.entry("u8").append(["x", Raw("NaN")])), "NaN is not JSON"),
            ("nested 65 deep", mk(lambda m: m.entry("u8").append(["x", Raw("[" * 64 + "]" * 64)])), "nested more than 64"),
            ("duplicate tensor", mk(lambda m: m.header.insert(3, copy.deepcopy(m.header[1]))), "duplicate key"),
            ("duplicate member", mk(lambda m: m.entry("u8").append(["dtype", "U8"])), "duplicate key 'dtype'"),
            ("duplicate metadata key", mk(lambda m: m.meta().append(["bitconv.format_version", "1"])), "duplicate key"),
            ("NUL in a string", mk(lambda m: m.meta().append(["x", Raw('"a\\u0000b"')])), "u0000"),
            ("unpaired surrogate", mk(lambda m: m.meta().append(["x", Raw('"\\ud800"')])), "unpaired surrogate"),
            ("control character in a name", mk(lambda m: m.header.rename("u8", "u\n8")), "control character"),
            ("DEL in a name", mk(lambda m: m.header.rename("u8", "u\x7f8")), "control character"),
            ("not UTF-8", mk(lambda m: m.meta().append(["x", Raw('"\xff"')]), tail=lambda b: b.replace(b"\xc3\xbf", b"\xff")),
             "not UTF-8"),
            ("metadata value not a string", mk(lambda m: m.meta().append(["x", 5])), "JSON object of strings"),
            ("metadata not an object", mk(lambda m: m.header.set("__metadata__", ["x"])), "JSON object of strings"),
            ("entry not an object", mk(lambda m: m.header.set("u8", [0, 5])), "tensor 'u8': its header entry is not"),
            ("missing dtype", mk(lambda m: m.entry("u8").remove("dtype")), "no 'dtype' string"),
            ("unsupported dtype", mk(lambda m: m.entry("u8").set("dtype", "F8_E4M3")), "unsupported dtype 'F8_E4M3'"),
            ("negative shape", mk(lambda m: m.entry("norm.weight").set("shape", [-7])), "'shape' must be a list"),
            ("shape [-256]", mk(lambda m: m.entry("norm.weight").set("shape", [-256])), "'shape' must be a list"),
            ("float shape", mk(lambda m: m.entry("norm.weight").set("shape", [Raw("7.0")])), "'shape' must be a list"),
            ("boolean shape", mk(lambda m: m.entry("flag").set("shape", [True, True])), "'shape' must be a list"),
            ("nine dimensions", mk(lambda m: m.entry("u8").set("shape", [1] * 8 + [5])), "at most 8"),
            ("shape beyond int64", mk(lambda m: m.entry("empty").set("shape", [0, 2**63])), "'shape' must be a list"),
            ("negative offset", mk(lambda m: m.entry("u8").set("data_offsets", [-1, self.base.span("u8")[1]])),
             "'data_offsets' must be two integers"),
            ("offsets reversed", mk(lambda m: m.entry("u8").set("data_offsets", list(self.base.span("u8"))[::-1])),
             "'data_offsets' must be two integers"),
            ("three offsets", mk(lambda m: m.entry("u8").set("data_offsets", [*self.base.span("u8"), 0])),
             "'data_offsets' must be two integers"),
            ("truncated", mk(tail=lambda b: b[:-4]), "truncated"),
            ("bytes that disagree with the shape", mk(lambda m: m.entry("emb.weight").set("shape", [4, 5])),
             "not what its dtype F32 and shape"),
            ("F32 [2^31, 2^31] in 0 bytes (2^64 wraps to 0)", mk(lambda m: m.entry("empty").set("shape", [2**31, 2**31])),
             "not what its dtype F32 and shape"),
            ("overlap", mk(lambda m: m.entry("u8").set("data_offsets", [x - 2 for x in self.base.span("u8")])),
             "an overlap"),
            ("gap", mk(lambda m: m.header.remove("mask")), "a gap"),
            ("trailing bytes", mk(tail=lambda b: b + bytes(8)), "bytes after the last tensor"),
            ("not a bitconv file", mk(lambda m: m.meta().remove("bitconv.format")), "not a bitconv packed file"),
            ("format version 2", mk(lambda m: m.meta().set("bitconv.format_version", "2")), "format version '2'"),
            ("format version 01", mk(lambda m: m.meta().set("bitconv.format_version", "01")), "format version '01'"),
            ("no bitconv.tensors", mk(lambda m: m.meta().remove("bitconv.tensors")), "no 'bitconv.tensors'"),
            ("bitconv.tensors a list", mk(lambda m: m.meta().set("bitconv.tensors", "[]")), "not a JSON object"),
            ("duplicate weight", mk(lambda m: m.entries.append(copy.deepcopy(m.entries[0]))), "duplicate key"),
            ("entry not an object", mk(lambda m: m.entries.set("b.weight", 5)), "entry is not a JSON object"),
            ("unknown scheme", mk(lambda m: m.spec("b.weight").set("scheme", "ternary9")), "unknown scheme"),
            ("packing zstd", mk(lambda m: m.spec("t2.weight").set("packing", "zstd")), "unknown packing 'zstd'"),
            ("packing missing (never a default)", mk(lambda m: m.spec("t2.weight").remove("packing")),
             "no 'packing' string"),
            ("base3 for binary", mk(lambda m: m.spec("b.weight").set("packing", "base3")), "base3 is defined for ternary"),
            ("unknown granularity", mk(lambda m: m.spec("b.weight").set("granularity", "row")), "unknown granularity"),
            ("unknown layout", mk(lambda m: m.spec("b.weight").set("layout", "transposed")), "unknown layout"),
            ("shape of three", mk(lambda m: m.spec("b.weight").set("shape", [3, 19, 1])), "shape [out, in]"),
            ("group_size missing", mk(lambda m: m.spec("u4.weight").remove("group_size")), "group_size must be"),
            ("group_size 0", mk(lambda m: m.spec("u4.weight").set("group_size", 0)), "group_size must be"),
            ("group_size with channel scales", mk(lambda m: m.spec("b.weight").set("group_size", 8)), "group_size must be"),
            ("n_outliers -1", mk(lambda m: m.spec("b.weight").set("n_outliers", -1)), "n_outliers must be"),
            ("n_outliers above the weights", mk(lambda m: m.spec("b.weight").set("n_outliers", 58)), "more than its 57"),
            ("dtype not a string", mk(lambda m: m.spec("b.weight").set("dtype", 4)), "must be a string"),
            ("weight also stored", mk(lambda m: m.entries.append(["u8", copy.deepcopy(m.spec("b.weight"))])),
             "both a packed weight and a stored tensor"),
            ("part missing", mk(lambda m: m.header.rename("b.weight.qscale", "bq")), "is missing (needed by"),
            ("codes shorter than the spec's shape", mk(lambda m: m.spec("t2.weight").set("shape", [5, 25])),
             "its spec needs U8[5, 7]"),
            ("scale of the wrong dtype", mk(lambda m: m.entry("b.weight.qscale").set("dtype", "I32")), "its spec needs F32"),
            ("zero points for ternary", mk(lambda m: m.header.rename("u8", "t3.weight.qzero")), "named as a part"),
            ("parts without an entry", mk(lambda m: m.entries.remove("b.weight")), "named as a part"),
            ("NaN scale", mk(data=self.at("b.weight.qscale", 4, float("nan"), "<f")), "scale 1 is NaN or infinite"),
            ("Inf scale", mk(data=self.at("t2.weight.qscale", 0, float("inf"), "<f")), "scale 0 is NaN or infinite"),
            ("zero point 16 for uint4", mk(data=self.at("u4.weight.qzero", 2, 16)), "above the uint4 maximum 15"),
            ("zero point 4 for uint2", mk(data=self.at("u2.weight.qzero", 0, 4)), "above the uint2 maximum 3"),
            ("reserved code 0", mk(data=self.code_2bit("t2.weight", t2_zero, 0)), "reserved code"),
            ("base3 byte 243", mk(data=self.at("t3.weight.qcodes", 4, 243)), "above 242"),
            ("outlier index -1", mk(data=self.at("t2.weight.outlier_idx", 0, -1, "<q")), "outlier index -1 falls outside"),
            ("outlier index past the end", mk(data=self.at("i8.weight.outlier_idx", 8, 30, "<q")), "falls outside"),
            ("outlier indices repeated", mk(data=self.at("i8.weight.outlier_idx", 8, int(self.outliers("i8.weight")[0]),
                                                         "<q")), "increase strictly"),
            ("nonzero trit under an outlier", mk(data=self.code_2bit("t2.weight", t2_outlier, 3)), "nonzero code under"),
        ]

    def harmless(self) -> list[tuple[str, bytes]]:
        """Changes that keep the decoded values: the file must still be read, identically."""
        mk = self.make
        return [
            ("header keys in another order", mk(lambda m: m.header.reverse())),
            ("entry members in another order", mk(lambda m: [e[1].reverse() for e in m.entries])),
            ("unknown members ignored", mk(lambda m: (m.entry("u8").append(["comment", "x"]),
                                                      m.spec("t3.weight").append(["future", [1, {"a": None}]])))),
            ("informative members removed", mk(lambda m: (m.spec("u2.weight").remove("dtype"),
                                                          m.spec("u2.weight").remove("scale_method")))),
            ("empty tensor with a large other dimension", mk(lambda m: m.entry("empty").set("shape", [0, 2**40]))),
            ("empty tensor written -0", mk(lambda m: m.entry("empty").set("shape", [Raw("-0"), 3]))),
            # t2: 21 codes in 6 bytes a row, so bits 2-7 of each row's last byte are padding; b: 19 bits in 3 bytes
            ("2bit padding codes 0", mk(data=self.bits("t2.weight.qcodes", 5, keep=0x03, add=0))),
            ("binary padding bits 1", mk(data=self.bits("b.weight.qcodes", 2, keep=0x07, add=0xF8))),
            ("extra metadata", mk(lambda m: m.meta().append(["note", "hello \u00e9"]))),
            ("whitespace before the data", mk(header_len=self.header_length() + 8,
                                             tail=lambda b: b[:8 + self.header_length()] + b"\n\t \r    "
                                             + b[8 + self.header_length():])),
        ]

    # ---- random structured mutations

    INTS = [-1, -(2**63), 0, 1, 2**31, 2**32, 2**53 + 1, BIG, 2**63, 2**64, 10**30]
    WRONG = [None, True, False, "7", [], Obj(), Raw("1.5"), Raw("1.0"), Raw("1e2"), Raw("-0.0"), Raw("1e400")]

    def random_mutation(self, rng: np.random.Generator) -> tuple[str, bytes]:
        def pick(options):
            return options[int(rng.integers(len(options)))]

        base, mk = self.base, self.make
        kind = pick(["shape", "offsets", "dtype", "duplicate", "remove", "type", "spec", "rename", "meta", "value",
                     "length"])
        if kind == "shape":
            name = pick(self.stored)
            shape = list(base.entry(name).get("shape"))
            how = pick(["dim", "append", "drop"])
            if how == "dim" and shape:
                shape[int(rng.integers(len(shape)))] = pick(self.INTS + self.WRONG)
            elif how == "append":
                shape.append(pick([0, 2] + self.INTS))
            else:
                shape = shape[:-1]
            return f"{name} shape {shape!r}", mk(lambda m: m.entry(name).set("shape", shape))
        if kind == "offsets":
            name = pick(self.stored)
            b, e = base.span(name)
            offsets = pick([[pick(self.INTS + [b - 1, b + 1]), e], [b, pick(self.INTS + [e - 1, e + 1])], [e, b],
                            [b - 8, e - 8], [b + 1, e + 1], [b], [b, e, e], pick(self.WRONG), [str(b), e]])
            return f"{name} offsets {offsets!r}", mk(lambda m: m.entry(name).set("data_offsets", offsets))
        if kind == "dtype":
            name = pick(sorted(self.parts & set(self.stored)))  # a part's dtype is fixed by its spec
            old = base.entry(name).get("dtype")
            dtype = pick([d for d in ("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL") if d != old]
                         + ["U16", "F8_E5M2", "f32", ""] + self.WRONG)
            return f"{name} dtype {dtype!r}", mk(lambda m: m.entry(name).set("dtype", dtype))
        if kind == "duplicate":
            where = pick(["tensor", "member", "meta", "weight", "spec member"])
            if where == "tensor":
                i = int(rng.integers(1, len(base.header)))
                return f"tensor {base.header[i][0]} twice", mk(lambda m: m.header.append(copy.deepcopy(m.header[i])))
            if where == "member":
                name, key = pick(self.stored), pick(["dtype", "shape", "data_offsets"])
                return f"{name}.{key} twice", mk(lambda m: m.entry(name).append([key, copy.deepcopy(m.entry(name).get(key))]))
            if where == "meta":
                key = pick(["bitconv.format", "bitconv.format_version", "format"])
                return f"metadata {key} twice", mk(lambda m: m.meta().append([key, m.meta().get(key)]))
            name = pick(self.packed)
            if where == "weight":
                return f"entry {name} twice", mk(lambda m: m.entries.append([name, copy.deepcopy(m.spec(name))]))
            key = pick(["scheme", "shape", "packing", "granularity", "group_size", "n_outliers", "layout"])
            return f"{name} {key} twice", mk(lambda m: m.spec(name).append([key, copy.deepcopy(m.spec(name).get(key))]))
        if kind == "remove":
            where = pick(["member", "tensor", "meta", "spec member", "weight"])
            if where == "member":
                name, key = pick(self.stored), pick(["dtype", "shape", "data_offsets"])
                return f"remove {name}.{key}", mk(lambda m: m.entry(name).remove(key))
            if where == "tensor":
                name = pick([n for n in self.stored if n != "empty"])  # dropping a 0-byte tensor is a valid file
                return f"remove tensor {name}", mk(lambda m: m.header.remove(name))
            if where == "meta":
                key = pick(["bitconv.format", "bitconv.format_version", "bitconv.tensors"])
                return f"remove metadata {key}", mk(lambda m: m.meta().remove(key))
            name = pick(self.packed)
            if where == "weight":
                return f"remove entry {name}", mk(lambda m: m.entries.remove(name))
            key = pick(["scheme", "shape", "packing", "granularity", "group_size", "n_outliers", "layout"])
            return f"remove {name} {key}", mk(lambda m: m.spec(name).remove(key))
        if kind == "type":
            value = pick(self.WRONG + self.INTS)
            if rng.integers(2):
                name, key = pick(self.stored), pick(["dtype", "shape", "data_offsets"])
                return f"{name}.{key} = {value!r}", mk(lambda m: m.entry(name).set(key, value))
            name = pick(self.packed)
            key = pick(["scheme", "shape", "packing", "granularity", "group_size", "n_outliers", "layout", "dtype"])
            return f"{name} {key} = {value!r}", mk(lambda m: m.spec(name).set(key, value))
        if kind == "spec":
            name = pick(self.packed)
            key, value = pick([("scheme", pick(["ternary", "binary", "int8", "uint4", "uint2", "zstd", "Ternary"])),
                               ("packing", pick(["2bit", "base3", "zstd", "3bit"])),
                               ("granularity", pick(["tensor", "channel", "group", "row"])),
                               ("group_size", pick(self.INTS + [None, 2, 3, 5])),  # none gives the same group count
                               ("n_outliers", pick(self.INTS + [2, 3, 4])),
                               ("shape", [pick(self.INTS + [3, 4, 5]), pick(self.INTS + [10, 19, 21, 22])])])
            if base.spec(name).get(key) == value:
                value = Raw('"changed"')
            return f"{name} {key} = {value!r}", mk(lambda m: m.spec(name).set(key, value))
        if kind == "rename":
            name = pick(self.stored)
            new = pick([name + "\n", name + "\x7f", "\t" + name, pick(self.packed), pick(self.packed) + pick(SUFFIXES),
                        pick([n for n in self.stored if n != name]), name + ".qcodes"])
            return f"rename {name} -> {new!r}", mk(lambda m: m.header.rename(name, new))
        if kind == "meta":
            key, value = pick([("bitconv.format", pick(["bitconv-packed2", "", "Bitconv-packed"])),
                               ("bitconv.format_version", pick(["2", "0", "01", " 1", "1.0", "+1", "\uff11"])),
                               ("bitconv.tensors", pick(["[]", "{", "null", "5", '{"a": {}}', "{} {}", ""]))])
            return f"metadata {key} = {value!r}", mk(lambda m: m.meta().set(key, value))
        if kind == "value":
            how = pick(["scale", "zero", "code0", "base3", "outlier", "outlier code"])
            if how == "scale":
                name = pick([n + ".qscale" for n in self.packed])
                b, e = base.span(name)
                i, v = int(rng.integers((e - b) // 4)), pick([float("nan"), float("inf"), float("-inf")])
                return f"{name}[{i}] = {v}", mk(data=self.at(name, 4 * i, v, "<f"))
            if how == "zero":
                name = pick(["u4.weight.qzero", "u2.weight.qzero"])
                b, e = base.span(name)
                i, v = int(rng.integers(e - b)), int(rng.integers(16 if name.startswith("u4") else 4, 256))
                return f"{name}[{i}] = {v}", mk(data=self.at(name, i, v))
            if how == "code0":
                flat = pick([i for i in range(105) if i not in set(self.outliers("t2.weight").tolist())])
                return f"t2 code 0 at {flat}", mk(data=self.code_2bit("t2.weight", flat, 0))
            if how == "base3":
                i, v = int(rng.integers(12)), int(rng.integers(243, 256))
                return f"t3 byte {i} = {v}", mk(data=self.at("t3.weight.qcodes", i, v))
            if how == "outlier code":
                k = int(rng.integers(len(self.outliers("t2.weight"))))
                flat = int(self.outliers("t2.weight")[k])
                return f"t2 nonzero code under outlier {k}", mk(data=self.code_2bit("t2.weight", flat, pick([1, 3])))
            name = pick(["t2.weight", "i8.weight"])
            idx = self.outliers(name)
            k = int(rng.integers(idx.size))
            numel = 105 if name == "t2.weight" else 30
            v = pick([-1, -(2**63), numel, numel + 7, BIG] + ([int(idx[k - 1])] if k else [])
                     + ([int(idx[k + 1]) + 1] if k + 1 < idx.size else []))
            return f"{name} outlier {k} = {v}", mk(data=self.at(name + ".outlier_idx", 8 * k, v, "<q"))
        n = self.header_length()
        how = pick(["length", "truncate", "append"])
        if how == "length":
            v = pick([n + d for d in (-16, -9, -1, 1, 7, 9)] + [0, 1, 2**63, 2**64 - 1])
            return f"header length {v}", mk(header_len=v)
        k = int(rng.integers(1, 40))
        if how == "truncate":
            return f"truncated by {k}", mk(tail=lambda b: b[:-k])
        return f"{k} bytes appended", mk(tail=lambda b: b + bytes(k))
