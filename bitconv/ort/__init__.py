"""Finds the compiled TernaryMatMul custom-op library and opens ONNX Runtime sessions with it registered.

The library (`bitconv/_ternary_ops.so`) is built from formats/ort_op/ by the package build (`pip install .`, or
`python setup.py build_ext --inplace` in a checkout). Its contract -- inputs, attributes, errors, threads -- is in
formats/ort_op/README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from bitconv.errors import ExportError

OP_DOMAIN = "bitconv"
OP_TYPE = "TernaryMatMul"
HALF_OP_TYPE = "HalfMatMul"
INT8_OP_TYPE = "Int8MatMul"
OP_DOMAIN_VERSION = 1
PACKING_CODES = {"2bit": 0, "base3": 1}  # the op's `packing` attribute
_LIBRARY_BASENAME = "_ternary_ops"


def _library_filename() -> str:
    if sys.platform == "win32":
        return _LIBRARY_BASENAME + ".dll"
    return _LIBRARY_BASENAME + (".dylib" if sys.platform == "darwin" else ".so")


def library_path() -> Path:
    """Path of the compiled custom-op library inside the installed package."""
    path = Path(__file__).resolve().parent.parent / _library_filename()
    if not path.is_file():
        raise ExportError(
            f"the ONNX Runtime custom op library {path.name} is missing from {path.parent}: build it with "
            "`pip install .` (installed package) or `python setup.py build_ext --inplace` (source checkout)"
        )
    return path


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("onnxruntime is not installed: pip install onnxruntime") from None
    return onnxruntime


def session_options(threads: int | None = None, spin: bool | None = None):
    """SessionOptions with the custom op library registered; `threads` sets the intra-op thread count.

    `spin` sets whether idle intra-op threads busy-wait for work (ONNX Runtime's default: yes). Busy-waiting
    threads take execution resources from the thread doing the work when cores are shared (virtual machines,
    hyper-threads, other processes): on the 2-CPU machine of docs/benchmarks/gemv.md, 2 threads with spinning
    ran a GEMV slower than 1 thread, and without it faster.
    """
    ort = _import_onnxruntime()
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(library_path()))
    if threads is not None:
        if threads < 1:
            raise ExportError(f"threads must be at least 1, got {threads}")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if spin is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return options


def session(model_path: str | Path | bytes, threads: int | None = None,
            providers: Sequence[str] = ("CPUExecutionProvider",), spin: bool | None = None):
    """An onnxruntime.InferenceSession for a model that may use bitconv.TernaryMatMul.

    `model_path` is a .onnx file or the serialized model bytes; `threads` the intra-op threads (None: ONNX
    Runtime's default, one per physical core); `spin` as in `session_options`.
    """
    ort = _import_onnxruntime()
    if not isinstance(model_path, (bytes, bytearray)):
        model_path = Path(model_path)
        if not model_path.is_file():
            raise ExportError(f"{model_path}: no such ONNX model file")
        model_path = str(model_path)
    return ort.InferenceSession(model_path, sess_options=session_options(threads, spin),
                                providers=list(providers))


def ternary_matmul_model(K: int, N: int, initializers: dict[str, np.ndarray], *, group_size: int = 0,
                         act_quant: bool = False, packing: str = "2bit", a_shape: Sequence[int | str] | None = None,
                         opset: int = 17) -> bytes:
    """A one-node model Y = TernaryMatMul(A, codes, scale[, outlier_idx, outlier_val][, bias]), serialized.

    `initializers` holds the stored arrays by their format suffix names: "qcodes", "qscale", and optionally
    "outlier_idx", "outlier_val", "bias" (as `bitconv.quantize.schemes.encode` returns them, plus a bias). Arrays are
    stored as given (no dtype conversion), so tests can feed deliberately wrong inputs. The graph input is "A"
    with shape `a_shape` (default ["M", K]; the last entry should be K), the output "Y".
    """
    from onnx import TensorProto, helper, numpy_helper

    if packing not in PACKING_CODES:
        raise ExportError(f"unknown packing {packing!r}: use 2bit or base3")
    names = {"qcodes": "codes", "qscale": "scale", "outlier_idx": "outlier_idx", "outlier_val": "outlier_val",
             "bias": "bias"}
    unknown = set(initializers) - set(names)
    if unknown:
        raise ExportError(f"unknown initializer keys {sorted(unknown)}: use {sorted(names)}")
    a_shape = list(a_shape) if a_shape is not None else ["M", int(K)]
    inputs = ["A", "codes", "scale"]
    has_outliers = "outlier_idx" in initializers or "outlier_val" in initializers
    if has_outliers:
        inputs += [names["outlier_idx"] if "outlier_idx" in initializers else "",
                   names["outlier_val"] if "outlier_val" in initializers else ""]
    if "bias" in initializers:
        if not has_outliers:
            inputs += ["", ""]  # omitted optional inputs keep their positions
        inputs.append("bias")
    node = helper.make_node(OP_TYPE, inputs, ["Y"], domain=OP_DOMAIN, name="ternary_matmul", K=int(K), N=int(N),
                            group_size=int(group_size), act_quant=int(bool(act_quant)),
                            packing=PACKING_CODES[packing])
    tensors = [numpy_helper.from_array(np.asarray(v), names[k]) for k, v in initializers.items()]
    out_shape = list(a_shape[:-1]) + [int(N)]
    graph = helper.make_graph(
        [node], "ternary_matmul",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, list(a_shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, out_shape)],
        initializer=tensors,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid(OP_DOMAIN, OP_DOMAIN_VERSION)])
    model.ir_version = min(model.ir_version, 9)  # readable by every onnxruntime this project supports
    return model.SerializeToString()


def _one_node_model(op_type: str, weights: dict[str, np.ndarray], N: int, K: int,
                    a_shape: Sequence[int | str] | None, opset: int, **attributes) -> bytes:
    """Y = op_type(A, *weights) in the bitconv domain, serialized; A is [..., K] (default ["M", K]), Y [..., N]."""
    from onnx import TensorProto, helper, numpy_helper

    a_shape = list(a_shape) if a_shape is not None else ["M", K]
    node = helper.make_node(op_type, ["A", *weights], ["Y"], domain=OP_DOMAIN, name=op_type.lower(), **attributes)
    graph = helper.make_graph(
        [node], op_type.lower(),
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, list(a_shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, list(a_shape[:-1]) + [N])],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid(OP_DOMAIN, OP_DOMAIN_VERSION)])
    model.ir_version = min(model.ir_version, 9)
    return model.SerializeToString()


def half_matmul_model(w16: np.ndarray, *, a_shape: Sequence[int | str] | None = None, opset: int = 17) -> bytes:
    """A one-node model Y = HalfMatMul(A, W), serialized: W is `w16` [N, K] (float16, stored as given).

    HalfMatMul multiplies float32 activations by a float16 matrix without widening it to float32 in memory (the
    exporter uses it for float16 embeddings / lm_head). The graph input is "A" with shape `a_shape` (default
    ["M", K]), the output "Y".
    """
    w16 = np.asarray(w16)
    if w16.ndim != 2:
        raise ExportError(f"HalfMatMul's weight must be a matrix [N, K], got shape {list(w16.shape)}")
    return _one_node_model(HALF_OP_TYPE, {"W": w16}, int(w16.shape[0]), int(w16.shape[1]), a_shape, opset)


def int8_matmul_model(codes: np.ndarray, scale: np.ndarray, *, group_size: int = 0, bias: np.ndarray | None = None,
                      a_shape: Sequence[int | str] | None = None, opset: int = 17) -> bytes:
    """A one-node model Y = Int8MatMul(A, W, scale[, bias]), serialized: W is `codes` [N, K] (int8), `scale`
    [N] or, with `group_size`, [N, ceil(K / group_size)]; arrays are stored as given, so tests can feed wrong
    ones. The graph input is "A" with shape `a_shape` (default ["M", K]), the output "Y".
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ExportError(f"Int8MatMul's weight must be a matrix [N, K], got shape {list(codes.shape)}")
    weights = {"W": codes, "scale": scale} | ({"bias": bias} if bias is not None else {})
    return _one_node_model(INT8_OP_TYPE, weights, int(codes.shape[0]), int(codes.shape[1]), a_shape, opset,
                           group_size=int(group_size))
