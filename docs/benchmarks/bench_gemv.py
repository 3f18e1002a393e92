"""GEMV/GEMM speed of bitconv.TernaryMatMul against ONNX Runtime's float32 MatMul and MatMulNBits (bits=2).

All three run the same weight: a random K x N matrix quantized to ternary (per tensor). The custom op reads the
packed codes as stored; MatMulNBits (com.microsoft, bits=2, block_size=64, accuracy_level=4) reads the very same
code bytes as its B (formats/SPEC.md, "Compatibility with ONNX Runtime's MatMulNBits") with the scale broadcast to
[N, K/64]; MatMul reads the dequantized float32 weight. Every configuration is timed in rounds that interleave the
contenders, so machine noise hits them alike; the reported figure is the median over rounds, and the ratios are
taken within the same run. Weight bandwidth = bytes of the weight each call reads / median time, printed beside a
measured memory copy bandwidth (numpy copy of a 256 MiB buffer: bytes read / time).

    python docs/benchmarks/bench_gemv.py --out docs/benchmarks/gemv.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from bitconv import ort as bort  # noqa: E402
from bitconv.quantize.config import QuantConfig  # noqa: E402
from bitconv.quantize.schemes import decode, dequantize, encode, quantize

BLOCK = 64


def _model(nodes, inits, K, N, extra_opsets=()):
    graph = helper.make_graph(nodes, "bench", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", K])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", N])], initializer=inits)
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in extra_opsets]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    return model.SerializeToString()


def build_models(K: int, N: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = torch.from_numpy(rng.standard_normal((N, K)).astype(np.float32))
    q = quantize(w, QuantConfig.for_bits(1.58, "tensor"))
    arrays = encode(q)
    codes, scale = arrays[".qcodes"], arrays[".qscale"]
    w_float = dequantize(decode(q.spec, arrays)).numpy()
    models = {
        "float32 MatMul": (_model([helper.make_node("MatMul", ["A", "W"], ["Y"])],
                                  [numpy_helper.from_array(np.ascontiguousarray(w_float.T), "W")], K, N), w_float.nbytes),
        "MatMulNBits bits=2 acc4": (_model(
            [helper.make_node("MatMulNBits", ["A", "B", "S"], ["Y"], domain="com.microsoft", K=K, N=N, bits=2,
                              block_size=BLOCK, accuracy_level=4)],
            [numpy_helper.from_array(codes.reshape(N, K // BLOCK, BLOCK // 4), "B"),
             numpy_helper.from_array(np.full((N, K // BLOCK), scale[0], np.float32), "S")],
            K, N, ["com.microsoft"]), codes.nbytes + N * (K // BLOCK) * 4),
        "TernaryMatMul float A": (bort.ternary_matmul_model(K, N, {"qcodes": codes, "qscale": scale}), codes.nbytes),
        "TernaryMatMul int8 A": (bort.ternary_matmul_model(K, N, {"qcodes": codes, "qscale": scale}, act_quant=True),
                                 codes.nbytes),
    }
    return models, w_float


def session(model: bytes, threads: int, spin: bool | None = None):
    options = bort.session_options(threads, spin=spin)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def memcpy_bandwidth(n_bytes: int = 256 << 20, repeats: int = 7) -> float:
    src = np.ones(n_bytes // 8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t)
    return n_bytes / statistics.median(times)


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("Model name"))
        cpus = next(l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("CPU(s)"))
    except (OSError, StopIteration):
        model, cpus = platform.processor() or "unknown", "?"
    return f"{model}, {cpus} CPUs ({platform.machine()})"


def pools(threads_list, spin: str) -> list[tuple[str, int, bool | None]]:
    """(label, threads, spin) per thread-pool setting: above 1 thread, with and/or without busy-waiting workers."""
    out = []
    for threads in threads_list:
        if threads == 1:
            out.append(("1", 1, None))
            continue
        if spin in ("on", "both"):
            out.append((f"{threads} spin", threads, True))
        if spin in ("off", "both"):
            out.append((f"{threads} no-spin", threads, False))
    return out


def measure(K, N, Ms, pool_list, rounds, calls):
    models, w_float = build_models(K, N)
    results = {}
    rng = np.random.default_rng(1)
    for threads, n_threads, spin in pool_list:
        sessions = {name: session(m, n_threads, spin) for name, (m, _) in models.items()}
        for M in Ms:
            a = rng.standard_normal((M, K)).astype(np.float32)
            ref = a @ w_float.T
            for name, s in sessions.items():  # warm up, and check every contender computes the same product
                y = s.run(None, {"A": a})[0]
                err = float(np.abs(y - ref).max() / np.abs(ref).max())
                results[(name, threads, M, "err")] = err
            medians = median_seconds(sessions, a, rounds, max(1, calls // M) if M > 8 else calls)
            for name, t in medians.items():
                results[(name, threads, M)] = t
    return models, results


def median_seconds(sessions: dict, a: np.ndarray, rounds: int, calls: int) -> dict[str, float]:
    """Median seconds per call of each session on input `a`, timed in rounds that interleave the contenders."""
    times = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, s in sessions.items():
            t = time.perf_counter()
            for _ in range(calls):
                s.run(None, {"A": a})
            times[name].append((time.perf_counter() - t) / calls)
    return {name: statistics.median(ts) for name, ts in times.items()}


def measure_half(pool_list, rounds: int, calls: int, vocab: int = 50257, hidden: int = 768):
    """HalfMatMul against float32 MatMul for a GPT-2-small lm_head GEMV (the float16 matrix of a packed model)."""
    rng = np.random.default_rng(2)
    w16 = (rng.standard_normal((vocab, hidden)) * 0.02).astype(np.float16)
    float_model = _model([helper.make_node("MatMul", ["A", "W"], ["Y"])],
                         [numpy_helper.from_array(np.ascontiguousarray(w16.astype(np.float32).T), "W")], hidden, vocab)
    models = {"float32 MatMul": float_model, "HalfMatMul (float16 W)": bort.half_matmul_model(w16)}
    a = rng.standard_normal((1, hidden)).astype(np.float32)
    rows = []
    for label, threads, spin in pool_list:
        sessions = {name: session(m, threads, spin) for name, m in models.items()}
        for s in sessions.values():  # warm up
            s.run(None, {"A": a})
        medians = median_seconds(sessions, a, rounds, calls)
        base = medians["float32 MatMul"]
        for name, t in medians.items():
            rows.append(f"| {label} | {name} | {t * 1e3:.3f} | {base / t:.2f}x |")
    return ["", f"## Float16 lm_head: HalfMatMul vs float32 MatMul (M = 1, N = {vocab}, K = {hidden})", "",
            "| threads | contender | median ms | speed-up vs float32 MatMul |", "|---|---|---|---|"] + rows


def load_average() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def report(K, N, Ms, pool_labels, models, results, copy_bw, command, date, load_before, load_after) -> str:
    lines = [
        "# GEMV / GEMM: TernaryMatMul vs ONNX Runtime MatMul (float32) and MatMulNBits (bits=2)",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine()}; onnxruntime {ort.__version__}, numpy {np.__version__}",
        f"- Date: {date} (when the run started)",
        f"- Weight: K = {K}, N = {N}, ternary per tensor; median of interleaved rounds; ratios from the same run.",
        f"- Memory copy bandwidth (numpy copy of 256 MiB, bytes read / time): {copy_bw / 1e9:.1f} GB/s",
        f"- Load average (1 / 5 / 15 min) before the run: {load_before}, after: {load_after} -- on a machine with",
        f"  {os.cpu_count()} CPUs, a load above 1 means other processes competed for the cores; the 2-thread rows",
        "  suffer most from that.",
        "- threads: `1`, or N with the intra-op pool's idle workers busy-waiting (`spin`, ONNX Runtime's default)",
        "  or sleeping (`no-spin`, session option session.intra_op.allow_spinning=0), the same for every contender.",
        "- `TernaryMatMul float A`: act_quant=0 (float activations, exact to fp32 rounding); `int8 A`: act_quant=1",
        "  (per-token int8 activations, the same arithmetic class as MatMulNBits accuracy_level=4).",
        "",
        "| threads | M | contender | median ms | weight GB/s | speed-up vs float32 MatMul | vs MatMulNBits | max rel. error vs float |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for threads in pool_labels:
        for M in Ms:
            base = results[("float32 MatMul", threads, M)]
            nbits = results[("MatMulNBits bits=2 acc4", threads, M)]
            for name, (_, n_bytes) in models.items():
                t = results[(name, threads, M)]
                lines.append(f"| {threads} | {M} | {name} | {t * 1e3:.3f} | {n_bytes / t / 1e9:.1f} | "
                             f"{base / t:.2f}x | {nbits / t:.2f}x | {results[(name, threads, M, 'err')]:.1e} |")
    if 1 not in Ms:
        return "\n".join(lines) + "\n"
    lines += ["", "## Targets (M = 1)", ""]
    for threads in pool_labels:
        base = results[("float32 MatMul", threads, 1)]
        nbits = results[("MatMulNBits bits=2 acc4", threads, 1)]
        for name in ("TernaryMatMul float A", "TernaryMatMul int8 A"):
            t = results[(name, threads, 1)]
            ok8 = base / t >= 8
            okn = t <= nbits
            lines.append(f"- threads {threads}, {name}: {base / t:.2f}x float32 MatMul (target >= 8x: "
                         f"{'met' if ok8 else 'NOT met'}), {nbits / t:.2f}x MatMulNBits (target >= 1x: "
                         f"{'met' if okn else 'NOT met'})")
    lines += ["", "## Reading the numbers", "",
              "- MatMulNBits with accuracy_level=4 quantizes the activations to int8 inside the kernel; the op's "
              "like-for-like mode is `int8 A`",
              "  (act_quant=1, W1.58A8 as BitNet b1.58 runs). `float A` keeps float32 activations and is exact to "
              "fp32 rounding (see the",
              "  error column); its AVX-512 inner step is one shift, one 16-lane permute and one add per 32 weights. "
              "`g++ -O3 -std=c++17",
              "  docs/benchmarks/lut_loop.cc -o /tmp/lut_loop && /tmp/lut_loop` times that step alone on the "
              "machine, for comparison with the op's M = 1 row.",
              "- Above 1 thread, compare `spin` with `no-spin`: where cores are shared (this kind of virtual "
              "machine), busy-waiting pool workers",
              "  slow the working thread down. `bitconv.ort.session(..., spin=False)` turns it off."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--K", type=int, default=4096)
    parser.add_argument("--N", type=int, default=4096)
    parser.add_argument("--M", type=int, nargs="+", default=[1, 8, 128])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--spin", choices=["on", "off", "both"], default="both",
                        help="above 1 thread: idle pool workers busy-wait (on), sleep (off), or measure both")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=20, help="calls per round (divided by M above 8)")
    parser.add_argument("--out", type=Path, help="write the Markdown report here (default: print it)")
    args = parser.parse_args()
    if args.K % BLOCK:
        raise SystemExit(f"--K must be a multiple of {BLOCK} so the codes are a valid MatMulNBits B")
    command = "python docs/benchmarks/bench_gemv.py " + " ".join(sys.argv[1:])
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load_before = load_average()
    copy_bw = memcpy_bandwidth()
    pool_list = pools(args.threads, args.spin)
    models, results = measure(args.K, args.N, args.M, pool_list, args.rounds, args.calls)
    half_lines = measure_half(pool_list, args.rounds, args.calls)
    text = report(args.K, args.N, args.M, [label for label, _, _ in pool_list], models, results, copy_bw, command,
                  date, load_before, load_average())
    text += "\n".join(half_lines) + "\n"
    if args.out:
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)
    print(text)


if __name__ == "__main__":
    main()
