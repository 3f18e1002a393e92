"""The TernaryMatMul custom op loaded into the real onnxruntime, checked against the Python reference.

Reference: bitconv.quantize.schemes quantize -> encode -> decode -> dequantize, then a numpy matmul (with the int8 activation
fake-quant of bitconv.quantize.schemes for act_quant=1). The library must be built first:
`python setup.py build_ext --inplace`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from bitconv import ort as bort
from bitconv.errors import BitconvError
from bitconv.quantize.config import QuantConfig
from bitconv.quantize.schemes import decode, dequantize, encode, quantize, quantize_activations_int8
from support.paths import REPO

ISAS = ("scalar", "avx2", "avx512")


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


_FLAGS = _cpu_flags()
_NEEDS = {"avx2": {"avx2", "fma"}, "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "fma"}}


def _skip_unless_cpu_has(isa: str) -> None:
    missing = _NEEDS.get(isa, set()) - _FLAGS
    if missing:
        pytest.skip(f"this CPU lacks {', '.join(sorted(missing))} needed by the {isa} kernels")


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    _skip_unless_cpu_has(request.param)
    monkeypatch.setenv("BITCONV_ORT_ISA", request.param)
    return request.param


def _weight(rng, n, k, *, granularity="tensor", outliers=0.0, packing="2bit", act_quant=False, bias=False):
    """Quantized weight arrays (as the format stores them) and the reference dequantized float weight."""
    w = torch.from_numpy(rng.standard_normal((n, k)).astype(np.float32))
    cfg = QuantConfig.for_bits(1.58, granularity, keep_outliers=outliers, packing=packing,
                               activations="int8" if act_quant else "none")
    q = quantize(w, cfg)
    arrays = encode(q)
    ref_w = dequantize(decode(q.spec, arrays)).numpy()
    inits = {"qcodes": arrays[".qcodes"], "qscale": arrays[".qscale"]}
    if q.spec.n_outliers:
        inits["outlier_idx"] = arrays[".outlier_idx"]
        inits["outlier_val"] = arrays[".outlier_val"]
    if bias:
        inits["bias"] = rng.standard_normal(n).astype(np.float32)
    group_size = q.spec.group_size if q.spec.granularity == "group" else 0
    return inits, ref_w, group_size


def _reference(a: np.ndarray, w: np.ndarray, bias, act_quant: bool) -> np.ndarray:
    x = quantize_activations_int8(torch.from_numpy(a)).numpy() if act_quant else a
    y = x.astype(np.float64) @ w.T.astype(np.float64)
    return y + bias if bias is not None else y


def _tolerance(a: np.ndarray, w: np.ndarray) -> float:
    # fp32 accumulation over K terms: a few ulps of the largest partial sums
    return 1e-5 * (np.abs(a).sum(axis=-1).max() * np.abs(w).max() + 1.0)


def _codes_as_graph_input(model: bytes) -> bytes:
    """The same model with the codes fed at run time instead of stored (a weight that is not a constant)."""
    proto = onnx.load_from_string(model)
    init = next(t for t in proto.graph.initializer if t.name == "codes")
    proto.graph.initializer.remove(init)
    proto.graph.input.append(onnx.helper.make_tensor_value_info("codes", onnx.TensorProto.UINT8, list(init.dims)))
    return proto.SerializeToString()


def _run(model: bytes, a: np.ndarray, threads: int = 1, extra: dict | None = None) -> np.ndarray:
    sess = bort.session(model, threads=threads)
    return sess.run(None, {"A": a, **(extra or {})})[0]


def _check(rng, *, M=3, N=37, K=70, granularity="tensor", outliers=0.0, bias=False, act_quant=False,
           packing="2bit", a_shape=None, codes_input=False, threads=1):
    inits, w, group_size = _weight(rng, N, K, granularity=granularity, outliers=outliers, packing=packing,
                                   act_quant=act_quant, bias=bias)
    shape = tuple(a_shape) if a_shape else (M, K)
    a = rng.standard_normal(shape).astype(np.float32)
    model = bort.ternary_matmul_model(K, N, inits, group_size=group_size, act_quant=act_quant, packing=packing,
                                      a_shape=[f"d{i}" for i in range(len(shape) - 1)] + [K])
    extra = None
    if codes_input:
        model = _codes_as_graph_input(model)
        extra = {"codes": inits["qcodes"]}
    y = _run(model, a, threads=threads, extra=extra)
    ref = _reference(a, w, inits.get("bias"), act_quant)
    assert y.shape == shape[:-1] + (N,)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=_tolerance(a, w))
    return y


# ---------------------------------------------------------------------------------------------------------------
# correctness against the reference, on every kernel set


@pytest.mark.parametrize("granularity", ["tensor", "channel", "group:64", "group:16", "group:24", "group:10"])
@pytest.mark.parametrize("act_quant", [False, True])
def test_matches_reference_by_granularity(isa, granularity, act_quant):
    rng = np.random.default_rng(1)
    _check(rng, M=5, N=40, K=200, granularity=granularity, act_quant=act_quant)


@pytest.mark.parametrize("act_quant", [False, True])
def test_outliers_and_bias(isa, act_quant):
    rng = np.random.default_rng(2)
    _check(rng, M=2, N=33, K=96, granularity="channel", outliers=0.02, bias=True, act_quant=act_quant)


@pytest.mark.parametrize("act_quant", [False, True])
def test_k_not_multiple_of_4_and_batch_dims(isa, act_quant):
    rng = np.random.default_rng(3)
    _check(rng, N=19, K=37, a_shape=(2, 3, 37), granularity="group:8", bias=True, act_quant=act_quant)


def test_single_row_gemv_large(isa):
    rng = np.random.default_rng(4)
    _check(rng, M=1, N=256, K=512, granularity="tensor")
    _check(rng, M=1, N=256, K=512, granularity="group:64", act_quant=True)


@pytest.mark.parametrize("act_quant", [False, True])
@pytest.mark.parametrize("M", [1, 2, 3, 6])
@pytest.mark.parametrize("granularity", ["tensor", "channel", "group:32", "group:320", "group:1024"])
def test_long_rows(isa, M, granularity, act_quant):
    # K = 1100 crosses several of the AVX-512 float kernel's L1-sized passes (fewer columns for more activation
    # rows) and ends off a 16-column boundary; the int8 kernels take each group in 256-wide chunks, then 64-wide
    # ones, then a scalar tail (group:320 = one of each)
    rng = np.random.default_rng(40 + M)
    _check(rng, M=M, N=48, K=1100, granularity=granularity, act_quant=act_quant)


@pytest.mark.parametrize("M", [16, 23])
@pytest.mark.parametrize("granularity", ["tensor", "channel", "group:32", "group:10"])
def test_many_rows_use_decoded_weight_panels(isa, M, granularity):
    # from 16 activation rows the AVX-512 float kernel decodes weight panels (32 or 16 output columns x 128 input
    # columns) and multiplies them with register blocks of 6 rows: K = 200 needs two panels and ends off a
    # 16-column boundary, N = 200 leaves 16-column and 8-column remainders, M = 23 a 5-row remainder
    rng = np.random.default_rng(60 + M)
    _check(rng, M=M, N=200, K=200, granularity=granularity, outliers=0.01, bias=True)


def test_many_rows_with_codes_fed_at_run_time(isa):
    rng = np.random.default_rng(70)
    _check(rng, M=20, N=48, K=64, granularity="channel", codes_input=True)


@pytest.mark.parametrize("packing", ["2bit", "base3"])
@pytest.mark.parametrize("act_quant", [False, True])
def test_codes_fed_at_run_time(isa, packing, act_quant):
    # not a constant initializer: no regrouping or repacking at session start, all done per run
    rng = np.random.default_rng(5)
    _check(rng, M=4, N=48, K=64, granularity="tensor", codes_input=True, packing=packing, act_quant=act_quant)


@pytest.mark.parametrize("act_quant", [False, True])
def test_base3_packing(isa, act_quant):
    rng = np.random.default_rng(6)
    _check(rng, M=3, N=35, K=53, granularity="group:16", packing="base3", outliers=0.01, bias=True,
           act_quant=act_quant)


def test_two_threads_give_the_same_result():
    rng = np.random.default_rng(7)
    inits, w, _ = _weight(rng, 300, 128)
    model = bort.ternary_matmul_model(128, 300, inits)
    a = rng.standard_normal((4, 128)).astype(np.float32)
    np.testing.assert_array_equal(_run(model, a, threads=1), _run(model, a, threads=2))


@pytest.mark.parametrize("spin", [True, False])
def test_pool_spinning_can_be_set_and_results_do_not_change(spin):
    options = bort.session_options(2, spin=spin)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if spin else "0")
    rng = np.random.default_rng(12)
    inits, w, _ = _weight(rng, 64, 96)
    a = rng.standard_normal((3, 96)).astype(np.float32)
    y = bort.session(bort.ternary_matmul_model(96, 64, inits), threads=2, spin=spin).run(None, {"A": a})[0]
    np.testing.assert_allclose(y, _reference(a, w, None, False), rtol=1e-5, atol=_tolerance(a, w))


def test_random_shapes_fuzz():
    rng = np.random.default_rng(1234)
    isas = [i for i in ISAS if not (_NEEDS.get(i, set()) - _FLAGS)]
    for case in range(16):
        K = int(rng.integers(1, 160))
        N = int(rng.integers(1, 70))
        lead = tuple(int(d) for d in rng.integers(1, 4, size=int(rng.integers(1, 3))))
        gran = str(rng.choice(["tensor", "channel", f"group:{int(rng.integers(1, 80))}"]))
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("BITCONV_ORT_ISA", isas[case % len(isas)])
            try:
                _check(rng, N=N, K=K, a_shape=lead + (K,), granularity=gran,
                       outliers=float(rng.choice([0.0, 0.05])), bias=bool(rng.integers(2)),
                       act_quant=bool(rng.integers(2)), packing=str(rng.choice(["2bit", "base3"])),
                       codes_input=bool(rng.integers(2)), threads=int(rng.integers(1, 3)))
            except AssertionError as e:
                raise AssertionError(f"fuzz case {case}: K={K} N={N} lead={lead} {gran}: {e}") from None


# ---------------------------------------------------------------------------------------------------------------
# int8 activations (act_quant=1): the exact rounding (formats/ort_op/kernels.h), bit for bit on every kernel set


def _trits_from_codes(codes: np.ndarray, K: int) -> np.ndarray:
    """2-bit codes [N, ceil(K/4)] -> t = code - 2, [N, K] (formats/SPEC.md)."""
    fields = np.stack([(codes >> (2 * i)) & 3 for i in range(4)], axis=-1).reshape(codes.shape[0], -1)
    return fields[:, :K].astype(np.int64) - 2


def _int8_exact(a: np.ndarray, codes: np.ndarray, scale: np.ndarray, K: int, group_size: int, outliers=None,
                bias=None) -> np.ndarray:
    """The op's int8 mode, rounding step by step in float32 as kernels.h defines it:
    s = 127 / max(max|a|, 1e-5), q = clamp(rint(a * s)) (NaN: -128); isum_g exact; y = 0, y = y + scale_g * float(isum_g) in
    group order (product and sum each rounded); Y = y / s; then each outlier (in index order) y += (q / s) * val;
    then bias."""
    a = a.reshape(-1, K).astype(np.float32)
    f32 = np.float32
    with np.errstate(invalid="ignore"):
        s = f32(127) / np.maximum(np.nanmax(np.abs(a), axis=1), f32(1e-5))  # a NaN is left out of the max
        q = np.clip(np.rint(a * s[:, None]), -128, 127)
    q = np.where(np.isnan(q), -128, q).astype(np.int64)  # and quantizes to -128
    t = _trits_from_codes(codes, K)
    N = t.shape[0]
    g = group_size if group_size else K
    n_groups = -(-K // g)
    if scale.size == 1:
        sc = np.full((N, n_groups), scale.reshape(-1)[0], np.float32)
    elif scale.ndim == 1:
        sc = np.repeat(scale.astype(np.float32)[:, None], n_groups, axis=1)
    else:
        sc = scale.astype(np.float32)
    y = np.zeros((a.shape[0], N), np.float32)
    for gi in range(n_groups):
        isum = q[:, gi * g:(gi + 1) * g] @ t[:, gi * g:(gi + 1) * g].T
        y = y + sc[:, gi][None, :] * isum.astype(np.float32)
    y = y / s[:, None]
    if outliers is not None:
        idx, val = outliers
        for i, v in zip(idx.tolist(), val.astype(np.float32).tolist()):
            n, k = divmod(i, K)
            y[:, n] = y[:, n] + (q[:, k].astype(np.float32) / s) * f32(v)
    if bias is not None:
        y = y + bias.astype(np.float32)
    return y


@pytest.mark.parametrize("granularity", ["tensor", "channel", "group:16", "group:64", "group:48", "group:24"])
@pytest.mark.parametrize("M, N, K", [(1, 48, 256), (3, 37, 200), (5, 16, 1100), (2, 33, 37)])
def test_int8_matches_the_exact_rounding_bit_for_bit(isa, granularity, M, N, K):
    # N off a multiple of 16 leaves a partial row block of the tile layout; K off a multiple of 16 a partial run;
    # group:24 is not a whole number of 16-column runs, so the SIMD sets fall back to the reference loop there
    rng = np.random.default_rng(M * 1000 + N + K)
    inits, _, group_size = _weight(rng, N, K, granularity=granularity, act_quant=True, bias=True)
    a = (rng.standard_normal((M, K)) * rng.uniform(0.1, 10, size=(M, 1))).astype(np.float32)
    y = _run(bort.ternary_matmul_model(K, N, inits, group_size=group_size, act_quant=True), a)
    expected = _int8_exact(a, inits["qcodes"], inits["qscale"], K, group_size, bias=inits["bias"])
    np.testing.assert_array_equal(y, expected)


def test_int8_outliers_match_the_exact_rounding(isa):
    rng = np.random.default_rng(80)
    K, N = 160, 40
    inits, _, _ = _weight(rng, N, K, granularity="channel", outliers=0.02, act_quant=True, bias=True)
    a = rng.standard_normal((3, K)).astype(np.float32)
    y = _run(bort.ternary_matmul_model(K, N, inits, act_quant=True), a)
    expected = _int8_exact(a, inits["qcodes"], inits["qscale"], K, 0,
                           outliers=(inits["outlier_idx"], inits["outlier_val"]), bias=inits["bias"])
    np.testing.assert_array_equal(y, expected)


def test_int8_long_rows_fold_their_accumulators(isa):
    # the AVX-512 tile kernel folds its 32-bit accumulators every 4096 runs (65536 columns); K = 70000 crosses that
    rng = np.random.default_rng(81)
    K, N = 70000, 20
    codes = rng.integers(1, 4, size=(N, K)).astype(np.uint8)  # every column +-1 or 0
    packed = np.zeros((N, (K + 3) // 4), np.uint8)
    for i in range(4):
        part = codes[:, i::4]
        packed[:, :part.shape[1]] |= (part << (2 * i)).astype(np.uint8)
    inits = {"qcodes": packed, "qscale": np.array([0.03], np.float32)}
    a = np.full((2, K), 0.7, np.float32)
    a[1] = -1.0  # |q| = 127 everywhere: the largest sums the activations allow
    y = _run(bort.ternary_matmul_model(K, N, inits, act_quant=True), a)
    np.testing.assert_array_equal(y, _int8_exact(a, packed, inits["qscale"], K, 0))


def _int8_outputs_by_isa(model: bytes, a: np.ndarray, extra: dict | None = None, threads: int = 1) -> dict:
    out = {}
    for name in ISAS:
        if _NEEDS.get(name, set()) - _FLAGS:
            continue
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("BITCONV_ORT_ISA", name)
            out[name] = _run(model, a, threads=threads, extra=extra)
    return out


@pytest.mark.parametrize("packing", ["2bit", "base3"])
@pytest.mark.parametrize("codes_input", [False, True])
def test_int8_kernel_sets_agree_bit_for_bit(packing, codes_input):
    rng = np.random.default_rng(82)
    for K, N, gran, M in [(300, 70, "group:32", 4), (96, 33, "channel", 1), (53, 35, "group:16", 3),
                          (130, 64, "group:10", 2), (1536, 96, "tensor", 1)]:
        inits, _, group_size = _weight(rng, N, K, granularity=gran, packing=packing, outliers=0.01, bias=True,
                                       act_quant=True)
        model = bort.ternary_matmul_model(K, N, inits, group_size=group_size, act_quant=True, packing=packing)
        extra = None
        if codes_input:
            model, extra = _codes_as_graph_input(model), {"codes": inits["qcodes"]}
        a = rng.standard_normal((M, K)).astype(np.float32)
        outs = _int8_outputs_by_isa(model, a, extra, threads=2)
        first = next(iter(outs.values()))
        for name, y in outs.items():
            np.testing.assert_array_equal(y, first, err_msg=f"{name} K={K} N={N} {gran} {packing}")


def test_int8_nan_inf_and_zero_rows_agree_across_kernel_sets():
    # a NaN is left out of the row's absmax and quantizes to -128; an infinity makes s = 0 (its row all NaN or
    # -128); an all-zero row uses the 1e-5 floor
    rng = np.random.default_rng(83)
    K, N = 100, 40
    inits, _, _ = _weight(rng, N, K, act_quant=True)
    a = rng.standard_normal((4, K)).astype(np.float32)
    a[0, [3, 50]] = np.nan
    a[1, 7] = np.inf
    a[2] = 0.0
    a[3, 99] = -np.inf
    outs = _int8_outputs_by_isa(bort.ternary_matmul_model(K, N, inits, act_quant=True), a)
    first = next(iter(outs.values()))
    for name, y in outs.items():
        np.testing.assert_array_equal(y, first, err_msg=name)
    expected = _int8_exact(a[[0, 2]], inits["qcodes"], inits["qscale"], K, 0)
    np.testing.assert_array_equal(first[[0, 2]], expected)


# ---------------------------------------------------------------------------------------------------------------
# bad input: an ONNX Runtime error naming the op and the problem, never a crash


def _good_model(rng, K=32, N=8, **kwargs):
    inits, _, group_size = _weight(rng, N, K, **kwargs)
    return inits, group_size


def _assert_still_alive():
    rng = np.random.default_rng(0)
    _check(rng, M=1, N=8, K=16)


def _expect_error(match: str, model: bytes, a: np.ndarray, extra: dict | None = None):
    with pytest.raises(Exception, match=match):
        _run(model, a, extra=extra)
    _assert_still_alive()


def test_error_wrong_k_for_the_packed_weight():
    rng = np.random.default_rng(10)
    inits, _ = _good_model(rng)
    model = bort.ternary_matmul_model(32, 8, inits, a_shape=["M", "K_in"])
    _expect_error(r"TernaryMatMul node .*last dimension 31.*K=32", model, np.zeros((2, 31), np.float32))


def test_error_codes_of_wrong_byte_length():
    rng = np.random.default_rng(11)
    inits, _ = _good_model(rng)
    inits["qcodes"] = inits["qcodes"][:, :-1].copy()
    model = bort.ternary_matmul_model(32, 8, inits)
    _expect_error(r"TernaryMatMul .*'codes' has shape \[8, 7\], expected \[8, 8\]", model, np.ones((1, 32), np.float32))


def test_error_attribute_k_disagrees_with_codes():
    rng = np.random.default_rng(12)
    inits, _ = _good_model(rng, K=32)
    model = bort.ternary_matmul_model(40, 8, inits, a_shape=["M", 40])
    _expect_error(r"'codes' has shape \[8, 8\], expected \[8, 10\]", model, np.ones((1, 40), np.float32))


@pytest.mark.parametrize("shape", [(9,), (8, 2), (2,)])
def test_error_scale_of_wrong_shape(shape):
    rng = np.random.default_rng(13)
    inits, _ = _good_model(rng)
    inits["qscale"] = np.ones(shape, np.float32)
    model = bort.ternary_matmul_model(32, 8, inits)
    _expect_error(r"TernaryMatMul .*'scale' has shape", model, np.ones((1, 32), np.float32))


def test_error_group_scale_of_wrong_group_count():
    rng = np.random.default_rng(14)
    inits, group_size = _good_model(rng, granularity="group:8")
    model = bort.ternary_matmul_model(32, 8, inits, group_size=16)
    _expect_error(r"'scale' has shape \[8, 4\], expected \[8, 2\]", model, np.ones((1, 32), np.float32))


@pytest.mark.parametrize("act_quant", [False, True], ids=["float", "int8"])
@pytest.mark.parametrize("group_size", [2**63 - 1, 2**63 - 16, 2**62], ids=["INT64_MAX", "INT64_MAX-15", "2^62"])
def test_group_size_near_int64_max(isa, group_size, act_quant):
    """ceil(K / group_size) is 1 for any group_size >= K. It was computed as (K + group_size - 1) / group_size,
    which overflows near INT64_MAX (UBSan: signed overflow) to 0 or -1 groups: an empty [N, 0] scale was then
    accepted and read past its end. Now [N, 0] is an ONNX Runtime error and [N, 1] is one group per row."""
    rng = np.random.default_rng(22)
    inits, w, _ = _weight(rng, 8, 32, granularity="channel", act_quant=act_quant)
    a = rng.standard_normal((3, 32)).astype(np.float32)
    empty = dict(inits, qscale=np.ones((8, 0), np.float32))
    model = bort.ternary_matmul_model(32, 8, empty, group_size=group_size, act_quant=act_quant)
    _expect_error(r"TernaryMatMul .*'scale' has shape \[8, 0\], expected \[8, 1\]", model, a)
    one_group = dict(inits, qscale=inits["qscale"].reshape(8, 1))
    y = _run(bort.ternary_matmul_model(32, 8, one_group, group_size=group_size, act_quant=act_quant), a)
    np.testing.assert_allclose(y, _reference(a, w, None, act_quant), rtol=1e-5, atol=_tolerance(a, w))


@pytest.mark.parametrize("packing", ["2bit", "base3"])
def test_error_k_near_int64_max(packing):
    """The codes' row length ceil(K / 4) or ceil(K / 5) is computed when the kernel is created, from the attribute
    alone: near INT64_MAX it must not overflow, and the mismatch is an ONNX Runtime error."""
    rng = np.random.default_rng(23)
    inits, _ = _good_model(rng, packing=packing)
    for K in (2**63 - 1, 2**63 - 3):
        model = bort.ternary_matmul_model(K, 8, inits, packing=packing, a_shape=["M", "K_in"])
        _expect_error(rf"TernaryMatMul .*last dimension 32 .*K={K}", model, np.ones((1, 32), np.float32))


def test_error_zero_rows():
    rng = np.random.default_rng(15)
    inits, _ = _good_model(rng)
    model = bort.ternary_matmul_model(32, 8, inits)
    _expect_error(r"zero rows", model, np.zeros((0, 32), np.float32))


def test_error_wrong_dtypes():
    rng = np.random.default_rng(16)
    inits, _ = _good_model(rng)
    bad = dict(inits, qcodes=inits["qcodes"].astype(np.int8))
    with pytest.raises(Exception, match=r"(?i)type"):
        _run(bort.ternary_matmul_model(32, 8, bad), np.ones((1, 32), np.float32))
    bad = dict(inits, qscale=inits["qscale"].astype(np.float64))
    with pytest.raises(Exception, match=r"(?i)type"):
        _run(bort.ternary_matmul_model(32, 8, bad), np.ones((1, 32), np.float32))
    _assert_still_alive()


def test_error_outliers():
    rng = np.random.default_rng(17)
    inits, _ = _good_model(rng, outliers=0.05)
    a = np.ones((1, 32), np.float32)
    idx = inits["outlier_idx"]
    cases = {
        r"outside the weight": dict(inits, outlier_idx=np.where(np.arange(idx.size) == idx.size - 1, 8 * 32, idx)),
        r"sorted ascending": dict(inits, outlier_idx=idx[::-1].copy()),
        r"give both or neither": {k: v for k, v in inits.items() if k != "outlier_val"},
        r"same length": dict(inits, outlier_val=inits["outlier_val"][:-1].copy()),
    }
    for match, bad in cases.items():
        _expect_error(match, bort.ternary_matmul_model(32, 8, bad), a)
    # a nonzero trit under an outlier contradicts the format (outliers are stored over code 2)
    codes = inits["qcodes"].copy()
    row, col = divmod(int(idx[0]), 32)
    codes[row, col // 4] |= np.uint8(3 << (2 * (col % 4)))  # code 3 (+1) in place of code 2
    _expect_error(r"nonzero trit under outlier", bort.ternary_matmul_model(32, 8, dict(inits, qcodes=codes)), a)


def test_error_bias_of_wrong_shape():
    rng = np.random.default_rng(18)
    inits, _ = _good_model(rng)
    model = bort.ternary_matmul_model(32, 8, dict(inits, bias=np.ones(9, np.float32)))
    _expect_error(r"'bias' has shape \[9\], expected \[8\]", model, np.ones((1, 32), np.float32))


def test_error_bad_attributes_fail_at_session_creation():
    rng = np.random.default_rng(19)
    inits, _ = _good_model(rng)
    model = onnx.load_from_string(bort.ternary_matmul_model(32, 8, inits, act_quant=True))
    for attr in model.graph.node[0].attribute:
        if attr.name == "act_quant":
            attr.i = 2
    with pytest.raises(Exception, match=r"act_quant' must be 0"):
        bort.session(model.SerializeToString())
    model = onnx.load_from_string(bort.ternary_matmul_model(32, 8, inits))
    kept = [a for a in model.graph.node[0].attribute if a.name != "K"]
    del model.graph.node[0].attribute[:]
    model.graph.node[0].attribute.extend(kept)
    with pytest.raises(Exception, match=r"attribute 'K' \(int\) is required"):
        bort.session(model.SerializeToString())
    _assert_still_alive()


def test_error_unknown_isa_override(monkeypatch):
    rng = np.random.default_rng(20)
    inits, _ = _good_model(rng)
    monkeypatch.setenv("BITCONV_ORT_ISA", "sse9")
    with pytest.raises(Exception, match=r"BITCONV_ORT_ISA=sse9 is not one of"):
        bort.session(bort.ternary_matmul_model(32, 8, inits))
    monkeypatch.delenv("BITCONV_ORT_ISA")
    _assert_still_alive()


# ---------------------------------------------------------------------------------------------------------------
# the library itself


def test_library_exports_only_register_custom_ops():
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) is not installed")
    out = subprocess.run([nm, "-D", "--defined-only", str(bort.library_path())], check=True, capture_output=True,
                         text=True).stdout
    symbols = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert symbols == {"RegisterCustomOps"}


def test_library_links_nothing_from_onnxruntime():
    ldd = shutil.which("ldd")
    if ldd is None:
        pytest.skip("ldd is not available")
    out = subprocess.run([ldd, str(bort.library_path())], check=True, capture_output=True, text=True).stdout
    assert "onnxruntime" not in out


def test_library_path_missing_says_how_to_build(monkeypatch, tmp_path):
    monkeypatch.setattr(bort, "__file__", str(tmp_path / "ort.py"))
    with pytest.raises(BitconvError, match=r"build_ext --inplace"):
        bort.library_path()


def test_stored_codes_are_a_valid_matmulnbits_weight():
    # formats/SPEC.md: the 2-bit codes are, byte for byte, com.microsoft.MatMulNBits bits=2 B with its default zero
    # point 2; with float activations (accuracy_level 0) both ops compute the same product
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(30)
    K, N, block = 128, 24, 32
    inits, w, group_size = _weight(rng, N, K, granularity=f"group:{block}")
    codes, scale = inits["qcodes"], inits["qscale"]
    node = helper.make_node("MatMulNBits", ["A", "B", "S"], ["Y"], domain="com.microsoft", K=K, N=N, bits=2,
                            block_size=block, accuracy_level=0)
    graph = helper.make_graph([node], "nbits", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", K])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", N])],
                              [numpy_helper.from_array(codes.reshape(N, K // block, block // 4), "B"),
                               numpy_helper.from_array(scale, "S")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9
    a = rng.standard_normal((3, K)).astype(np.float32)
    y_nbits = _run(model.SerializeToString(), a)
    y_op = _run(bort.ternary_matmul_model(K, N, inits, group_size=group_size), a)
    np.testing.assert_allclose(y_nbits, y_op, rtol=1e-4, atol=_tolerance(a, w))
    np.testing.assert_allclose(y_op, _reference(a, w, None, False), rtol=1e-5, atol=_tolerance(a, w))


def test_golden_vectors(tmp_path):
    # formats/golden: every ternary tensor the reference writer produced, multiplied by the identity, gives back the
    # decoded values recorded in expected.json
    import json

    from bitconv.format.reader import PackedReader

    golden = REPO / "formats" / "golden"
    expected = json.loads((golden / "expected.json").read_text())
    (tmp_path / "model.safetensors").write_bytes((golden / "golden.safetensors").read_bytes())
    reader = PackedReader(tmp_path)
    checked = 0
    for name, entry in expected.items():
        spec = reader.specs.get(name)
        if spec is None or spec.scheme != "ternary":
            continue
        arrays = reader.quantized_arrays(name)
        n, k = spec.shape
        inits = {"qcodes": arrays[".qcodes"], "qscale": arrays[".qscale"]}
        if spec.n_outliers:
            inits["outlier_idx"] = arrays[".outlier_idx"]
            inits["outlier_val"] = arrays[".outlier_val"]
        model = bort.ternary_matmul_model(k, n, inits, group_size=spec.group_size or 0, packing=spec.packing)
        y = _run(model, np.eye(k, dtype=np.float32))
        np.testing.assert_allclose(y.T, np.asarray(entry["values"], dtype=np.float32).reshape(n, k), rtol=1e-6, atol=1e-7,
                                   err_msg=name)
        checked += 1
    assert checked >= 5


# ---------------------------------------------------------------------------------------------------------------
# HalfMatMul: float16 weights used as stored


def _half_weight(rng, n, k):
    w16 = (rng.standard_normal((n, k)) * 0.05).astype(np.float16)
    w16.flat[:3] = [np.float16(6.0e-8), np.float16(-65504.0), np.float16(0.0)]  # subnormal, extreme, zero
    return w16


@pytest.mark.parametrize("shape, n", [((1, 768), 50), ((5, 33), 7), ((2, 3, 100), 300), ((17, 16), 513)])
def test_half_matmul_matches_float32_product(isa, shape, n):
    rng = np.random.default_rng(sum(shape) + n)
    w16 = _half_weight(rng, n, shape[-1])
    a = rng.standard_normal(shape).astype(np.float32)
    y = _run(bort.half_matmul_model(w16, a_shape=[f"d{i}" for i in range(len(shape) - 1)] + [shape[-1]]), a)
    ref = (a.astype(np.float64) @ w16.astype(np.float64).T)
    assert y.shape == shape[:-1] + (n,) and y.dtype == np.float32
    # the conversion is exact; only the float32 summation order differs
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(a).sum(-1, keepdims=True).max() * 65504)


def test_half_matmul_two_threads_give_the_same_result():
    rng = np.random.default_rng(5)
    w16 = _half_weight(rng, 1000, 64)
    a = rng.standard_normal((3, 64)).astype(np.float32)
    model = bort.half_matmul_model(w16)
    np.testing.assert_array_equal(_run(model, a, threads=1), _run(model, a, threads=2))


@pytest.mark.parametrize("k", [768, 100, 16])
def test_half_matmul_gives_the_same_bits_for_any_batch_and_thread_split(isa, k):
    """A row's output does not depend on the rows beside it (decode vs prefill) or on how N is split between
    threads (an odd N puts single rows of W at the ends of the splits)."""
    if isa == "avx2":  # its single-row loop keeps four accumulators (faster there), batches two: other roundings
        pytest.skip("the AVX2 half kernel sums a lone row in another order than a batch of four")
    rng = np.random.default_rng(k)
    w16 = _half_weight(rng, 1001, k)
    x = rng.standard_normal((1, k)).astype(np.float32)
    batch = np.concatenate([x, rng.standard_normal((3, k)).astype(np.float32), x])  # 4 rows together, then 1
    model = bort.half_matmul_model(w16)
    alone = _run(model, x)
    np.testing.assert_array_equal(_run(model, x, threads=2), alone)
    together = _run(model, batch, threads=2)
    np.testing.assert_array_equal(together[0], alone[0])
    np.testing.assert_array_equal(together[4], alone[0])


def test_half_matmul_errors():
    rng = np.random.default_rng(6)
    w16 = _half_weight(rng, 8, 32)
    free = ["M", "K"]  # symbolic, so that ONNX Runtime's own shape check lets the op see the mismatch
    _expect_error(r"HalfMatMul node .*'A' has last dimension 31.*K=32", bort.half_matmul_model(w16, a_shape=free),
                  np.zeros((2, 31), np.float32))
    _expect_error(r"HalfMatMul node .*zero rows", bort.half_matmul_model(w16, a_shape=free),
                  np.zeros((0, 32), np.float32))
    # the declared input types let ONNX Runtime refuse a float32 W when the session is created
    _expect_error(r"input parameter \(W\) of operator \(HalfMatMul\)",
                  bort.half_matmul_model(w16.astype(np.float32)), np.zeros((2, 32), np.float32))



# ---------------------------------------------------------------------------------------------------------------
# Int8MatMul: int8 weights with per-row or per-group scales (the int8 lm_head), float activations


def _int8_weight(rng, n, k, group_size=0):
    codes = rng.integers(-127, 128, size=(n, k), dtype=np.int8)
    codes.flat[:2] = [-127, 127]
    n_groups = -(-k // group_size) if group_size else 1
    scale = (rng.random((n, n_groups)) * 0.02 + 1e-3).astype(np.float32)
    full = np.repeat(scale, group_size, axis=1)[:, :k] if group_size else scale
    return codes, scale if group_size else scale[:, 0], codes.astype(np.float64) * full


@pytest.mark.parametrize("shape, n, group_size, bias", [
    ((1, 768), 300, 0, False),  # a GEMV, K a multiple of 16
    ((1, 100), 37, 0, True),  # K with a tail of 4
    ((5, 70), 513, 32, False),  # groups with a partial last group, rows in blocks of 4 and one left over
    ((2, 3, 96), 40, 48, True),  # batch dimensions, groups of 48 (not a multiple of 16)
    ((4, 20), 9, 7, False),  # groups narrower than a vector
])
def test_int8_matmul_matches_dequantized_product(isa, shape, n, group_size, bias):
    rng = np.random.default_rng(sum(shape) + n + group_size)
    codes, scale, w = _int8_weight(rng, n, shape[-1], group_size)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    a = rng.standard_normal(shape).astype(np.float32)
    model = bort.int8_matmul_model(codes, scale, group_size=group_size, bias=b,
                                   a_shape=[f"d{i}" for i in range(len(shape) - 1)] + [shape[-1]])
    y = _run(model, a)
    ref = a.astype(np.float64) @ w.T + (b if bias else 0)
    assert y.shape == shape[:-1] + (n,) and y.dtype == np.float32
    # the activations are rounded to int16 per row: each moves by at most max|row| / 65534; the integer sums are
    # exact, the float32 steps (scales, group sums) add rounding of their own
    rounding = np.abs(a).max(-1, keepdims=True) / 65534 * np.abs(w).sum(-1)
    assert np.all(np.abs(y - ref) <= rounding + 1e-5 * (np.abs(a) @ np.abs(w).T) + 1e-6)


def test_int8_matmul_long_rows_do_not_overflow(isa):
    # every product at its largest (32767 * -128) over 20000 columns: beyond int32 in any lane unless the sums are
    # flushed to float along the row
    codes = np.full((3, 20000), -128, dtype=np.int8)
    codes[1] = 127
    scale = np.array([1.0, 0.5, 2.0], dtype=np.float32)
    a = np.full((1, 20000), 3.0, dtype=np.float32)
    y = _run(bort.int8_matmul_model(codes, scale), a)
    want = [3.0 * -128 * 20000, 3.0 * 127 * 20000 * 0.5, 3.0 * -128 * 20000 * 2.0]
    np.testing.assert_allclose(y[0], want, rtol=1e-6)


def test_int8_matmul_two_threads_give_the_same_result():
    rng = np.random.default_rng(7)
    codes, scale, _ = _int8_weight(rng, 1000, 64)
    a = rng.standard_normal((3, 64)).astype(np.float32)
    model = bort.int8_matmul_model(codes, scale)
    np.testing.assert_array_equal(_run(model, a, threads=1), _run(model, a, threads=2))


def test_int8_matmul_errors():
    rng = np.random.default_rng(8)
    codes, scale, _ = _int8_weight(rng, 8, 32)
    free = ["M", "K"]  # symbolic, so that ONNX Runtime's own shape check lets the op see the mismatch
    a = np.zeros((2, 32), np.float32)
    _expect_error(r"Int8MatMul node .*'A' has last dimension 31.*K=32", bort.int8_matmul_model(codes, scale, a_shape=free),
                  np.zeros((2, 31), np.float32))
    _expect_error(r"Int8MatMul node .*zero rows", bort.int8_matmul_model(codes, scale, a_shape=free),
                  np.zeros((0, 32), np.float32))
    _expect_error(r"'scale' has shape \[7\], expected \[8\] \(one per output row\)",
                  bort.int8_matmul_model(codes, scale[:7]), a)
    _expect_error(r"'scale' has shape \[8\], expected \[8, 2\] \(one per output row and group of 16",
                  bort.int8_matmul_model(codes, scale, group_size=16), a)
    _expect_error(r"'bias' has shape \[3\], expected \[8\]",
                  bort.int8_matmul_model(codes, scale, bias=np.zeros(3, np.float32)), a)
    _expect_error(r"'group_size' must be >= 0", bort.int8_matmul_model(codes, scale, group_size=-1), a)
    # the declared input types let ONNX Runtime refuse a uint8 W when the session is created
    _expect_error(r"input parameter \(W\) of operator \(Int8MatMul\)",
                  bort.int8_matmul_model(codes.view(np.uint8), scale), a)
