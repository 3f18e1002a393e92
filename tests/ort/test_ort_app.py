"""A C++ host app loads the same .onnx and the same op library file through ONNX Runtime's C API.

formats/ort_op/example_app/run_model.cc is built here with g++ from the hand-written ABI declarations (ort_abi.h;
no ONNX Runtime headers exist on this machine) and run in a subprocess against the very libonnxruntime shared
library inside the onnxruntime wheel, with bitconv's op library registered through RegisterCustomOpsLibrary_V2.
Its output must equal the Python onnxruntime session's bit for bit; bad input must give one line and exit 1.
The op library must be built first: `python setup.py build_ext --inplace`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import bitconv
from bitconv import ort as bort
from bitconv.export.onnx import export_onnx
from bitconv.quantize.config import QuantConfig
from bitconv.quantize.schemes import encode, quantize
from support.paths import REPO

OP_DIR = REPO / "formats" / "ort_op"
APP_SOURCE = OP_DIR / "example_app" / "run_model.cc"
DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.int64): "int64"}


@pytest.fixture(scope="module")
def runtime() -> Path:
    """The wheel's own libonnxruntime: the file a C/C++ app would ship."""
    try:
        import onnxruntime
    except ImportError:
        pytest.skip("onnxruntime is not installed")
    found = sorted((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so*"))
    if not found:
        pytest.skip("the onnxruntime wheel has no libonnxruntime.so* in onnxruntime/capi")
    return found[0]


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Path:
    cxx = shutil.which("g++")
    if not cxx:
        pytest.skip("g++ is needed to build formats/ort_op/example_app/run_model.cc")
    out = tmp_path_factory.mktemp("ort_app") / "run_model"
    cmd = [cxx, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", "-I", str(OP_DIR), "-o", str(out),
           str(APP_SOURCE), "-ldl"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"run_model.cc does not build:\n{res.stderr}"
    return out


def _run_app(app: Path, runtime: Path, model: Path, inputs: dict[str, np.ndarray], out: Path, *,
             threads: int | None = 1, output: str | None = None,
             op_library: Path | None = None) -> subprocess.CompletedProcess:
    args = [str(app), str(runtime), str(op_library or bort.library_path()), str(model), str(out)]
    if threads is not None:
        args += ["--threads", str(threads)]
    if output is not None:
        args += ["--output", output]
    for name, value in inputs.items():
        path = out.parent / f"{out.stem}.{name}.bin"
        value.astype(value.dtype.newbyteorder("<")).tofile(path)
        args.append(f"{name}:{DTYPES[value.dtype]}:{'x'.join(map(str, value.shape))}:{path}")
    return _subprocess(args)


def _subprocess(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, ORT_DISABLE_TELEMETRY="1")
    return subprocess.run(args, capture_output=True, text=True, errors="replace", env=env, timeout=300)


def _app_output(res: subprocess.CompletedProcess, out: Path, shape: tuple[int, ...]) -> np.ndarray:
    assert res.returncode == 0, f"run_model exited {res.returncode}: {res.stderr}"
    return np.fromfile(out, dtype="<f4").reshape(shape)


def _assert_bitwise_equal(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    diff = np.flatnonzero(got.view(np.uint32) != expected.astype(np.float32).view(np.uint32))
    assert diff.size == 0, (f"{diff.size} of {got.size} values differ, first at flat index {diff[0]}: "
                            f"app {got.flat[diff[0]]!r} != python {expected.flat[diff[0]]!r}")


def _stored_weight(rng, n: int, k: int, *, granularity="tensor", outliers=0.0, packing="2bit", bias=False):
    """The initializers of a one-node model: the arrays the packed format stores for a random weight."""
    w = torch.from_numpy(rng.standard_normal((n, k)).astype(np.float32))
    q = quantize(w, QuantConfig.for_bits(1.58, granularity, keep_outliers=outliers, packing=packing))
    arrays = encode(q)
    inits = {"qcodes": arrays[".qcodes"], "qscale": arrays[".qscale"]}
    if q.spec.n_outliers:
        inits.update(outlier_idx=arrays[".outlier_idx"], outlier_val=arrays[".outlier_val"])
    if bias:
        inits["bias"] = rng.standard_normal(n).astype(np.float32)
    return inits, (q.spec.group_size if q.spec.granularity == "group" else 0)


ONE_NODE_CASES = {
    "2bit tensor": dict(a_shape=(3, 70), N=37),
    "2bit channel, one row": dict(a_shape=(1, 256), N=64, granularity="channel"),
    "base3 groups, outliers, bias, batch dims": dict(a_shape=(2, 3, 53), N=35, granularity="group:16",
                                                     packing="base3", outliers=0.02, bias=True),
    "int8 activations": dict(a_shape=(4, 96), N=40, granularity="group:32", act_quant=True),
    "two threads": dict(a_shape=(5, 128), N=300, threads=2),
}


@pytest.mark.parametrize("case", ONE_NODE_CASES)
def test_one_node_model_matches_python_session(app, runtime, tmp_path, case):
    cfg = dict(ONE_NODE_CASES[case])
    a_shape, n, threads = cfg.pop("a_shape"), cfg.pop("N"), cfg.pop("threads", 1)
    act_quant = cfg.pop("act_quant", False)
    rng = np.random.default_rng(list(ONE_NODE_CASES).index(case))
    k = a_shape[-1]
    inits, group_size = _stored_weight(rng, n, k, **cfg)
    model = tmp_path / "ternary_matmul.onnx"
    model.write_bytes(bort.ternary_matmul_model(
        k, n, inits, group_size=group_size, act_quant=act_quant, packing=cfg.get("packing", "2bit"),
        a_shape=[f"d{i}" for i in range(len(a_shape) - 1)] + [k]))
    a = rng.standard_normal(a_shape).astype(np.float32)

    expected = bort.session(model, threads=threads).run(None, {"A": a})[0]
    res = _run_app(app, runtime, model, {"A": a}, tmp_path / "y.f32", threads=threads)
    got = _app_output(res, tmp_path / "y.f32", expected.shape)
    _assert_bitwise_equal(got, expected)
    assert res.stdout == f"Y {list(expected.shape)}\n"
    assert res.stderr == ""


def test_exported_bert_matches_python_session(app, runtime, tiny_bert, tmp_path):
    folder = bitconv.convert(str(tiny_bert), str(tmp_path / "bert-1.58"), progress=False).out
    path = export_onnx(folder, tmp_path / "bert.onnx", target="op").path
    assert "TernaryMatMul" in {n.op_type for n in onnx.load(str(path)).graph.node}
    ids = np.random.default_rng(0).integers(0, 128, size=(2, 6)).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}

    sess = bort.session(path, threads=1)
    output_name = sess.get_outputs()[0].name
    expected = sess.run([output_name], feeds)[0]
    # no --output: the app asks the session for its first output, the same one
    res = _run_app(app, runtime, path, feeds, tmp_path / "logits.f32")
    got = _app_output(res, tmp_path / "logits.f32", expected.shape)
    _assert_bitwise_equal(got, expected)
    assert res.stdout.split()[0] == output_name


def _one_line_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 1, f"expected exit 1 (an error, not a crash), got {res.returncode}: {res.stderr}"
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("run_model: "), res.stderr
    return res.stderr


@pytest.fixture()
def small_model(tmp_path) -> Path:
    """K = 32, N = 8, with A's last dimension left free so that the op (not ONNX Runtime's shape check) sees it."""
    inits, _ = _stored_weight(np.random.default_rng(10), 8, 32)
    path = tmp_path / "small.onnx"
    path.write_bytes(bort.ternary_matmul_model(32, 8, inits, a_shape=["M", "K_in"]))
    return path


def test_wrong_k_gives_one_line_naming_the_op(app, runtime, small_model, tmp_path):
    out = tmp_path / "y.f32"
    res = _run_app(app, runtime, small_model, {"A": np.ones((2, 31), np.float32)}, out)
    message = _one_line_error(res)
    assert "TernaryMatMul node" in message and "last dimension 31" in message and "K=32" in message, message
    assert not out.exists() and res.stdout == ""
    # the same app and files run once the input is right
    res = _run_app(app, runtime, small_model, {"A": np.ones((2, 32), np.float32)}, out)
    assert _app_output(res, out, (2, 8)).shape == (2, 8)


def test_bad_attribute_fails_at_session_creation(app, runtime, tmp_path):
    inits, _ = _stored_weight(np.random.default_rng(11), 8, 32)
    model = onnx.load_from_string(bort.ternary_matmul_model(32, 8, inits))
    next(a for a in model.graph.node[0].attribute if a.name == "act_quant").i = 2
    path = tmp_path / "bad_attr.onnx"
    path.write_bytes(model.SerializeToString())
    message = _one_line_error(_run_app(app, runtime, path, {"A": np.ones((1, 32), np.float32)}, tmp_path / "y.f32"))
    assert "TernaryMatMul" in message and "act_quant' must be 0" in message, message


def test_setup_errors_give_one_line(app, runtime, small_model, tmp_path):
    a = {"A": np.ones((2, 32), np.float32)}
    out = tmp_path / "y.f32"
    missing = tmp_path / "no_such_library.so"
    # ONNX Runtime's own status for a library it cannot load, passed on as one line
    assert str(missing) in _one_line_error(_run_app(app, runtime, small_model, a, out, op_library=missing))
    assert "cannot load ONNX Runtime" in _one_line_error(_run_app(app, missing, small_model, a, out))
    assert "Invalid output name" in _one_line_error(_run_app(app, runtime, small_model, a, out, output="Z"))
    assert not out.exists()


def test_input_file_of_wrong_size_and_usage(app, runtime, small_model, tmp_path):
    (tmp_path / "a.f32").write_bytes(np.ones((2, 32), np.float32).tobytes())
    base = [str(app), str(runtime), str(bort.library_path()), str(small_model), str(tmp_path / "y.f32")]
    res = _subprocess(base + [f"A:float32:2x33:{tmp_path / 'a.f32'}"])
    assert "has 256 bytes, shape [2, 33] needs 264" in _one_line_error(res)
    for bad in ([], ["A:float16:2x32:a.f32"], ["A:float32:2xK:a.f32"], ["--threads", "0", "A:float32:2x32:a"]):
        res = _subprocess(base + bad)
        assert res.returncode == 2 and "usage: run_model" in res.stderr, (bad, res.stderr)
