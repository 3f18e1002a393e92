import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from bitconv.errors import BitconvError, InternalError
from bitconv.format.reader import PackedReader
from bitconv.format.safetensors import StreamingSafetensorsWriter, read_safetensors_header
from bitconv.format.spec import FilePlan, PlannedTensor, TensorSpec
from bitconv.quantize.schemes import decode, dequantize
from support.paths import REPO

GOLDEN = REPO / "formats" / "golden"


def _golden_folder(tmp_path: Path) -> Path:
    (tmp_path / "model.safetensors").write_bytes((GOLDEN / "golden.safetensors").read_bytes())
    return tmp_path


def test_golden_vectors_decode_to_expected_values(tmp_path):
    expected = json.loads((GOLDEN / "expected.json").read_text())
    reader = PackedReader(_golden_folder(tmp_path))
    assert set(reader.specs) == set(expected)
    for name, entry in expected.items():
        spec = reader.specs[name]
        assert spec.to_json() == entry["spec"]
        values = dequantize(decode(spec, reader.quantized_arrays(name))).flatten()
        assert values.tolist() == entry["values"], name


def test_golden_file_opens_with_a_plain_safetensors_reader():
    tensors = load_file(str(GOLDEN / "golden.safetensors"))
    codes = tensors["ternary_tensor.weight.qcodes"]
    assert codes.dtype == np.uint8 and codes.shape == (3, 3)
    assert set(np.unique((codes[:, :, None] >> np.array([0, 2, 4, 6], dtype=np.uint8)) & 3)) <= {1, 2, 3}


def test_golden_vectors_are_reproduced_by_the_writer(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(GOLDEN / "make_golden.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_streaming_writer_matches_safetensors_reader(tmp_path):
    a = np.arange(12, dtype=np.float16).reshape(3, 4)
    b = np.arange(5, dtype=np.uint8)
    plan = FilePlan("x.safetensors", [PlannedTensor("b", "U8", (5,)), PlannedTensor("a", "F16", (3, 4))])
    w = StreamingSafetensorsWriter(tmp_path / "x.safetensors", plan)
    w.write("b", b)
    w.write("a", a)
    w.close()
    loaded = load_file(str(tmp_path / "x.safetensors"))
    assert np.array_equal(loaded["a"], a) and np.array_equal(loaded["b"], b)


def test_writer_refuses_unplanned_shapes_and_leaves_no_partial_file(tmp_path):
    plan = FilePlan("x.safetensors", [PlannedTensor("a", "F16", (2,))])
    w = StreamingSafetensorsWriter(tmp_path / "x.safetensors", plan)
    with pytest.raises(InternalError, match="planned"):
        w.write("a", np.zeros(3, dtype=np.float16))
    with pytest.raises(InternalError, match="never written"):
        w.close()
    assert list(tmp_path.iterdir()) == []


def test_truncated_and_corrupt_files_are_named(tmp_path):
    data = (GOLDEN / "golden.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[:-100])
    with pytest.raises(BitconvError, match="t.safetensors: truncated"):
        read_safetensors_header(tmp_path / "t.safetensors")
    (tmp_path / "c.safetensors").write_bytes(struct.pack("<Q", 10) + b"not json!!")
    with pytest.raises(BitconvError, match="c.safetensors: corrupt"):
        read_safetensors_header(tmp_path / "c.safetensors")
    (tmp_path / "s.safetensors").write_bytes(b"abc")
    with pytest.raises(BitconvError, match="not a safetensors file"):
        read_safetensors_header(tmp_path / "s.safetensors")


def test_tensor_spec_sizes():
    spec = TensorSpec("ternary", (768, 768))
    assert spec.n_bytes() * 8 / (768 * 768) <= 2.01
    assert TensorSpec("ternary", (768, 768), packing="base3").n_bytes() * 8 / (768 * 768) <= 1.61
    assert TensorSpec("uint4", (4, 10), granularity="group", group_size=4).stored()[".qzero"] == ("U8", (4, 3))
    with pytest.raises(BitconvError, match="unknown scheme"):
        TensorSpec.from_json("x", {"scheme": "ternary9", "shape": [1, 1]})
