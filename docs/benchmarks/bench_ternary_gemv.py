"""Batch-1 GEMV of bitconv.TernaryMatMul (int8 activations) against ggml's TQ2_0 on the same ternary weights.

For every block-matrix shape of GPT-2 small and of a Llama-shaped 0.68B model (hidden 1536, intermediate 4096,
GQA 12/4 heads of 128), both contenders compute, per timed call, as many GEMVs of that shape as the model does per
decoded token, each with its own weight -- so the weights come from the caches (or memory) as they would while
decoding, and per-call overhead is shared out as in a model:

- bitconv: one ONNX graph of L `bitconv.TernaryMatMul` nodes (act_quant=1: per-token absmax int8 activations,
  W1.58A8), codes stored exactly as formats/SPEC.md stores them, run by ONNX Runtime with IO binding to
  preallocated outputs, threads = the session's intra-op pool.
- ggml: one ggml graph of L `ggml_mul_mat` nodes with TQ2_0 weights and a float32 activation vector, computed by
  the ggml CPU backend (`ggml_backend_cpu_init`, `ggml_backend_cpu_set_n_threads`, `ggml_backend_graph_compute`:
  the calls llama.cpp makes, with its persistent work buffer) from the ggml shared libraries that llama-cpp-python
  ships: the activations are quantized to Q8_K inside each mul_mat, then ggml_vec_dot_tq2_0_q8_K runs per row.

The weights are the same: random trits t in {-1, 0, 1} with one float32 scale per tensor; bitconv gets the packed
2-bit codes (code = t + 2, four a byte, least significant bits first), ggml gets t * scale quantized by its own
`ggml_quantize_chunk(GGML_TYPE_TQ2_0, ...)` (exact: every block's absmax is the scale). Before timing, every
contender's output is checked against a float64 product of the int8-quantized activations and the weights.

Two regimes, both timed in rounds that interleave the contenders (median over rounds of the seconds per GEMV; ratios
within the same run):
- cold: before every timed graph run the caches are flushed (a write pass over a buffer 4x the last-level cache),
  so every weight comes from memory -- the decode regime of a model larger than the cache (the 0.68B model, and
  GPT-2 small once its float16 lm_head has passed through);
- warm: after a 30 ms pause (the previous contender's idle threads stop busy-waiting) and one untimed run, `--calls`
  runs back to back: the weights come from wherever the L weights fit (L2, L3 or memory, by the size column).
The report carries the command, machine, date and load average.

    python docs/benchmarks/bench_ternary_gemv.py --out docs/benchmarks/ternary_gemv.md
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from bitconv import ort as bort  # noqa: E402

# (model, K, N, GEMVs of this shape per decoded token)
SHAPES = [
    ("gpt2", 768, 768, 12),     # attn c_proj
    ("gpt2", 768, 2304, 12),    # attn c_attn (q, k, v fused)
    ("gpt2", 768, 3072, 12),    # mlp c_fc
    ("gpt2", 3072, 768, 12),    # mlp c_proj
    ("llama", 1536, 1536, 48),  # q_proj, o_proj
    ("llama", 1536, 512, 48),   # k_proj, v_proj
    ("llama", 1536, 4096, 48),  # gate_proj, up_proj
    ("llama", 4096, 1536, 24),  # down_proj
]


# ---------------------------------------------------------------------------------------------------------------
# the shared weights


def random_trits(rng, n: int, k: int) -> np.ndarray:
    return rng.integers(-1, 2, size=(n, k), dtype=np.int8)


def pack_codes(trits: np.ndarray) -> np.ndarray:
    """formats/SPEC.md 2-bit codes: code = t + 2, four a byte, least significant bits first along K."""
    n, k = trits.shape
    pad = (-k) % 4
    codes = np.pad(trits + 2, ((0, 0), (0, pad)), constant_values=2).astype(np.uint8).reshape(n, -1, 4)
    return (codes[..., 0] | codes[..., 1] << 2 | codes[..., 2] << 4 | codes[..., 3] << 6).astype(np.uint8)


def int8_activations(a: np.ndarray) -> np.ndarray:
    """The op's act_quant=1 activations as float64: q / s with s = 127 / max(max|a|, 1e-5)."""
    a = a.astype(np.float32)
    s = np.float32(127) / np.maximum(np.abs(a).max(axis=-1, keepdims=True), np.float32(1e-5))
    q = np.clip(np.rint(a * s), -128, 127)
    return q.astype(np.float64) / s.astype(np.float64)


# ---------------------------------------------------------------------------------------------------------------
# ggml through llama-cpp-python's shared libraries

GGML_TYPE_F32 = 0
GGML_TYPE_TQ2_0 = 35


class GgmlInitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


class Ggml:
    def __init__(self):
        import llama_cpp

        lib_dir = Path(llama_cpp.__file__).parent / "lib"
        mode = getattr(os, "RTLD_GLOBAL", 0)
        self.base = ctypes.CDLL(str(lib_dir / "libggml-base.so"), mode=mode)
        self.cpu = ctypes.CDLL(str(lib_dir / "libggml-cpu.so"), mode=mode)
        self.version = llama_cpp.__version__
        b, c = self.base, self.cpu
        vp, i64, sz = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t
        b.ggml_init.argtypes, b.ggml_init.restype = [GgmlInitParams], vp
        b.ggml_free.argtypes, b.ggml_free.restype = [vp], None
        b.ggml_new_tensor_2d.argtypes, b.ggml_new_tensor_2d.restype = [vp, ctypes.c_int, i64, i64], vp
        b.ggml_get_data.argtypes, b.ggml_get_data.restype = [vp], vp
        b.ggml_mul_mat.argtypes, b.ggml_mul_mat.restype = [vp, vp, vp], vp
        b.ggml_new_graph_custom.argtypes, b.ggml_new_graph_custom.restype = [vp, sz, ctypes.c_bool], vp
        b.ggml_build_forward_expand.argtypes, b.ggml_build_forward_expand.restype = [vp, vp], None
        b.ggml_row_size.argtypes, b.ggml_row_size.restype = [ctypes.c_int, i64], sz
        b.ggml_tensor_overhead.restype = sz
        b.ggml_graph_overhead_custom.argtypes, b.ggml_graph_overhead_custom.restype = [sz, ctypes.c_bool], sz
        b.ggml_quantize_chunk.argtypes = [ctypes.c_int, vp, vp, i64, i64, i64, vp]
        b.ggml_quantize_chunk.restype = sz
        b.ggml_backend_graph_compute.argtypes, b.ggml_backend_graph_compute.restype = [vp, vp], ctypes.c_int
        b.ggml_backend_free.argtypes, b.ggml_backend_free.restype = [vp], None
        c.ggml_backend_cpu_init.restype = vp
        c.ggml_backend_cpu_set_n_threads.argtypes, c.ggml_backend_cpu_set_n_threads.restype = [vp, ctypes.c_int], None
        c.ggml_cpu_init.restype = None
        c.ggml_cpu_init()
        self.features = [f for f in ("avx2", "avx512", "avx512_vnni", "fma", "llamafile")
                         if getattr(c, f"ggml_cpu_has_{f}")()]


class GgmlGemvs:
    """L TQ2_0 GEMVs y_l = W_l a in one ggml graph."""

    def __init__(self, g: Ggml, weights, L: int, K: int, N: int, threads: int):
        self.g, self.threads, self.L = g, threads, L
        row = g.base.ggml_row_size(GGML_TYPE_TQ2_0, K)
        mem = (self.L * (row * N + N * 4 + 2 * g.base.ggml_tensor_overhead()) + K * 4 + (1 << 20)
               + g.base.ggml_graph_overhead_custom(2 * self.L + 8, False))
        self.ctx = g.base.ggml_init(GgmlInitParams(mem, None, False))
        if not self.ctx:
            raise RuntimeError("ggml_init failed")
        self.backend = g.cpu.ggml_backend_cpu_init()
        g.cpu.ggml_backend_cpu_set_n_threads(self.backend, threads)
        self.x = g.base.ggml_new_tensor_2d(self.ctx, GGML_TYPE_F32, K, 1)
        self.graph = g.base.ggml_new_graph_custom(self.ctx, 2 * self.L + 8, False)
        self.outputs = []
        for w in weights:  # L float32 [N, K] arrays, t * scale
            t = g.base.ggml_new_tensor_2d(self.ctx, GGML_TYPE_TQ2_0, K, N)
            g.base.ggml_quantize_chunk(GGML_TYPE_TQ2_0, w.ctypes.data, g.base.ggml_get_data(t), 0, N, K, None)
            y = g.base.ggml_mul_mat(self.ctx, t, self.x)
            g.base.ggml_build_forward_expand(self.graph, y)
            self.outputs.append(y)
        self.K, self.N = K, N

    def set_input(self, a: np.ndarray) -> None:
        ctypes.memmove(self.g.base.ggml_get_data(self.x), np.ascontiguousarray(a, np.float32).ctypes.data, self.K * 4)

    def run(self) -> None:
        if self.g.base.ggml_backend_graph_compute(self.backend, self.graph) != 0:
            raise RuntimeError("ggml_backend_graph_compute failed")

    def output(self, l: int) -> np.ndarray:
        ptr = ctypes.cast(self.g.base.ggml_get_data(self.outputs[l]), ctypes.POINTER(ctypes.c_float))
        return np.ctypeslib.as_array(ptr, shape=(self.N,)).copy()

    def close(self) -> None:
        if self.ctx:
            self.g.base.ggml_backend_free(self.backend)
            self.g.base.ggml_free(self.ctx)
            self.ctx = None


# ---------------------------------------------------------------------------------------------------------------
# bitconv's op in ONNX Runtime


def op_model(codes: list[np.ndarray], scales: list[float], K: int, N: int) -> bytes:
    nodes, inits, outputs = [], [], []
    for l, (c, s) in enumerate(zip(codes, scales)):
        inits += [numpy_helper.from_array(c, f"codes{l}"), numpy_helper.from_array(np.array([s], np.float32), f"scale{l}")]
        nodes.append(helper.make_node(bort.OP_TYPE, ["A", f"codes{l}", f"scale{l}"], [f"Y{l}"], domain=bort.OP_DOMAIN,
                                      name=f"gemv{l}", K=K, N=N, act_quant=1))
        outputs.append(helper.make_tensor_value_info(f"Y{l}", TensorProto.FLOAT, [1, N]))
    graph = helper.make_graph(nodes, "gemvs", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, K])],
                              outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(bort.OP_DOMAIN, 1)])
    model.ir_version = 9
    return model.SerializeToString()


@contextlib.contextmanager
def isa_env(isa: str | None):
    old = os.environ.get("BITCONV_ORT_ISA")
    if isa:
        os.environ["BITCONV_ORT_ISA"] = isa
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("BITCONV_ORT_ISA", None)
        else:
            os.environ["BITCONV_ORT_ISA"] = old


class OrtGemvs:
    def __init__(self, model: bytes, L: int, N: int, threads: int, spin: bool | None, isa: str | None,
                 library: Path | None = None):
        if library is None:
            options = bort.session_options(threads, spin=spin)
        else:  # another build of the op library (before/after comparisons)
            options = ort.SessionOptions()
            options.register_custom_ops_library(str(library))
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            if spin is not None:
                options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        with isa_env(isa):
            t = time.perf_counter()
            self.sess = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
            self.create_seconds = time.perf_counter() - t
        self.binding = self.sess.io_binding()
        self.outputs = [ort.OrtValue.ortvalue_from_numpy(np.zeros((1, N), np.float32)) for _ in range(L)]
        for l, v in enumerate(self.outputs):
            self.binding.bind_ortvalue_output(f"Y{l}", v)
        self.a = None

    def set_input(self, a: np.ndarray) -> None:
        self.a = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a.reshape(1, -1), np.float32))
        self.binding.bind_ortvalue_input("A", self.a)

    def run(self) -> None:
        self.sess.run_with_iobinding(self.binding)

    def output(self, l: int) -> np.ndarray:
        return self.outputs[l].numpy().reshape(-1)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------------------------
# measurement


@dataclass
class Row:
    regime: str
    model: str
    K: int
    N: int
    L: int
    threads: int
    medians: dict  # contender -> seconds per GEMV
    errors: dict   # contender -> max |y - ref| / max |ref|
    codes_bytes: int


def contenders_for(threads: int, with_avx2: bool, baseline: Path | None):
    """(label, kind, spin, isa, library)"""
    out = []
    if threads == 1:
        out.append(("op int8", "ort", None, None, None))
    else:
        out.append(("op int8 spin", "ort", True, None, None))
        out.append(("op int8 no-spin", "ort", False, None, None))
    if with_avx2:
        out.append(("op int8 avx2" + ("" if threads == 1 else " no-spin"), "ort", None if threads == 1 else False,
                    "avx2", None))
    if baseline is not None:
        out.append(("op int8 baseline" + ("" if threads == 1 else " no-spin"), "ort",
                    None if threads == 1 else False, None, baseline))
    out.append(("ggml TQ2_0", "ggml", None, None, None))
    return out


SETTLE_SECONDS = 0.03


class CacheFlush:
    """A write pass over a buffer 4x the last-level cache: afterwards no weight is left in any cache."""

    def __init__(self):
        self.buffer = np.zeros(max(4 * last_level_cache_bytes(), 64 << 20) // 8)

    def __call__(self) -> None:
        self.buffer += 1.0


def last_level_cache_bytes() -> int:
    try:
        return max(int(Path(f"/sys/devices/system/cpu/cpu0/cache/index{i}/size").read_text().strip().rstrip("K"))
                   * 1024 for i in range(4) if Path(f"/sys/devices/system/cpu/cpu0/cache/index{i}/size").exists())
    except (OSError, ValueError):
        return 64 << 20


def median_seconds(runners: dict, rounds: int, calls: int, L: int, regime: str, flush: CacheFlush) -> dict:
    times = {name: [] for name in runners}
    for _ in range(rounds):
        for name, r in runners.items():
            if regime == "warm":
                # let the previous contender's idle pool threads stop spinning (OpenMP's and ONNX Runtime's workers
                # busy-wait for a while after their work; on 2 CPUs they would take a core from this contender)
                time.sleep(SETTLE_SECONDS)
                r.run()
                t = time.perf_counter()
                for _ in range(calls):
                    r.run()
                elapsed = time.perf_counter() - t
            else:
                elapsed = 0.0
                for _ in range(calls):
                    flush()
                    t = time.perf_counter()
                    r.run()
                    elapsed += time.perf_counter() - t
            times[name].append(elapsed / (calls * L))
    return {name: statistics.median(ts) for name, ts in times.items()}


def measure_shape(g: Ggml, model: str, K: int, N: int, L: int, threads_list, regimes, rounds: int, calls: int,
                  with_avx2: bool, baseline: Path | None, seed: int, flush: CacheFlush, log) -> list[Row]:
    rng = np.random.default_rng(seed)
    trits = [random_trits(rng, N, K) for _ in range(L)]
    scales = [float(np.float32(rng.uniform(0.01, 0.05))) for _ in range(L)]
    codes = [pack_codes(t) for t in trits]
    model_bytes = op_model(codes, scales, K, N)
    a = rng.standard_normal(K).astype(np.float32)
    ref = [int8_activations(a) @ (t.astype(np.float64) * s).T for t, s in zip(trits, scales)]
    rows = []
    for threads in threads_list:
        runners = {}
        for label, kind, spin, isa, library in contenders_for(threads, with_avx2, baseline):
            if kind == "ggml":
                weights = (t.astype(np.float32) * np.float32(s) for t, s in zip(trits, scales))
                runners[label] = GgmlGemvs(g, weights, L, K, N, threads)
            else:
                runners[label] = OrtGemvs(model_bytes, L, N, threads, spin, isa, library)
        errors = {}
        for name, r in runners.items():  # warm up and check
            r.set_input(a)
            r.run()
            r.run()
            errors[name] = max(float(np.abs(r.output(l) - ref[l]).max() / np.abs(ref[l]).max()) for l in range(L))
        for regime in regimes:
            medians = median_seconds(runners, rounds, calls, L, regime, flush)
            rows.append(Row(regime, model, K, N, L, threads, medians, errors, sum(c.nbytes for c in codes)))
            log(f"{regime} {model} K={K} N={N} L={L} threads={threads}: " +
                ", ".join(f"{n} {t * 1e6:.1f} us" for n, t in medians.items()))
        for r in runners.values():
            r.close()
        del runners
    return rows


def tile_build_seconds(K: int, N: int, L: int, seed: int = 5, repeats: int = 3) -> float:
    """Session creation with the int8 tiles (the default kernel set) minus the same without (scalar set: no tile
    layout), per weight: the one-off cost of the repack at session creation."""
    rng = np.random.default_rng(seed)
    codes = [pack_codes(random_trits(rng, N, K)) for _ in range(L)]
    model = op_model(codes, [0.02] * L, K, N)
    with_tiles, without = [], []
    for _ in range(repeats):
        without.append(OrtGemvs(model, L, N, 1, None, "scalar").create_seconds)
        with_tiles.append(OrtGemvs(model, L, N, 1, None, None).create_seconds)
    return max(0.0, (statistics.median(with_tiles) - statistics.median(without)) / L)


# ---------------------------------------------------------------------------------------------------------------
# report


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        fields = dict(l.split(":", 1) for l in lscpu.splitlines() if ":" in l)
        model = fields.get("Model name", "?").strip()
        cpus = fields.get("CPU(s)", "?").strip()
        l2 = fields.get("L2 cache", "?").strip()
        l3 = fields.get("L3 cache", "?").strip()
        hv = fields.get("Hypervisor vendor", "").strip()
    except OSError:
        model, cpus, l2, l3, hv = platform.processor() or "unknown", "?", "?", "?", ""
    return f"{model}, {cpus} CPUs, L2 {l2}, L3 {l3}{', virtual machine (' + hv + ')' if hv else ''}"


def load_average() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def report(rows: list[Row], creation_ms_per_mb: float, g: Ggml, command: str, date: str, load_before: str,
           load_after: str, rounds: int, calls: int) -> str:
    lines = [
        "# Ternary GEMV at batch 1: bitconv.TernaryMatMul (int8 activations) vs ggml TQ2_0",
        "",
        f"- Command: `{command}`",
        f"- Date: {date}",
        f"- Machine: {machine()}",
        f"- Software: onnxruntime {ort.__version__}, llama-cpp-python {g.version} (ggml CPU features: "
        f"{', '.join(g.features)}), numpy {np.__version__}, Python {platform.python_version()}",
        f"- Load average (1 / 5 / 15 min) before: {load_before}; after: {load_after} ({os.cpu_count()} CPUs)",
        f"- Timing: {rounds} rounds interleaving the contenders, {calls} graph runs per contender per round; the "
        "figure is the median over rounds of the time per GEMV (graph time / L); ratios from the same run. A graph "
        "run computes L GEMVs of the shape, each with its own weight (L = how many such matrices the model reads per "
        "decoded token).",
        "- cold: caches flushed before every timed graph run (weights from memory, as when decoding a model larger "
        "than the cache); warm: back-to-back runs (weights from the smallest cache level that holds all L).",
        "- `op int8`: bitconv.TernaryMatMul, act_quant=1, the kernel set the CPU selects (AVX-512 VNNI here) unless "
        "named; `spin` / `no-spin`: ONNX Runtime's intra-op pool with busy-waiting (its default) or sleeping idle "
        "workers. `ggml TQ2_0`: ggml_mul_mat in one ggml graph, ggml's own threads.",
        f"- Session creation: the op regroups each constant weight into its int8 tile layout once; measured at "
        f"{creation_ms_per_mb:.2f} ms per MB of codes (session creation with tiles minus without), and the "
        "layout is a second copy of the codes (same size, plus padding to 16 rows x 16 columns).",
        "- Check before timing: max |y - ref| / max |ref| against a float64 product of the per-row int8 activations "
        "and the weights (the op's own definition: it differs by float32 rounding only; ggml quantizes activations "
        "per block of 256 (Q8_K), a different rounding, hence its larger difference).",
        "",
    ]
    names = []
    for r in rows:
        for n in r.medians:
            if n not in names:
                names.append(n)
    headline = ("op int8", "op int8 spin", "op int8 no-spin")
    for regime in [x for x in ("cold", "warm") if any(r.regime == x for r in rows)]:
        for threads in sorted({r.threads for r in rows}):
            sub = [r for r in rows if r.threads == threads and r.regime == regime]
            cols = [n for n in names if any(n in r.medians for r in sub)]
            ours = [n for n in cols if n != "ggml TQ2_0"]
            first = next(n for n in cols if n in headline)
            lines += [f"## {regime}, {threads} thread{'s' if threads > 1 else ''}", "",
                      "| model | K x N | L | codes MB (all L) | " + " | ".join(f"{n} us" for n in cols) + " | " +
                      " | ".join(f"TQ2_0 / {n}" for n in ours) + f" | GB/s {first} | GB/s TQ2_0 |",
                      "|---|---|---|---|" + "---|" * (len(cols) + len(ours) + 2)]
            for r in sub:
                base = r.medians["ggml TQ2_0"]
                per_gemv = r.codes_bytes / r.L  # bytes of codes one GEMV reads; TQ2_0 adds an fp16 scale per 256
                lines.append(f"| {r.model} | {r.K} x {r.N} | {r.L} | {r.codes_bytes / 1e6:.1f} | " +
                             " | ".join(f"{r.medians[n] * 1e6:.1f}" for n in cols) + " | " +
                             " | ".join(f"**{base / r.medians[n]:.2f}x**" if n in headline else
                                        f"{base / r.medians[n]:.2f}x" for n in ours) +
                             f" | {per_gemv / r.medians[first] / 1e9:.1f} | {per_gemv * 66 / 64 / base / 1e9:.1f} |")
            # per model: the sum over its shapes weighted by L (one token's block matrices)
            for model in sorted({r.model for r in sub}):
                mr = [r for r in sub if r.model == model]
                tot = {n: sum(r.medians[n] * r.L for r in mr) for n in cols}
                total_bytes = sum(r.codes_bytes for r in mr)
                lines.append(f"| **{model}: one token's block matrices** | all | {sum(r.L for r in mr)} | "
                             f"{total_bytes / 1e6:.1f} | " +
                             " | ".join(f"{tot[n] * 1e6:.0f}" for n in cols) + " | " +
                             " | ".join(f"**{tot['ggml TQ2_0'] / tot[n]:.2f}x**" if n in headline else
                                        f"{tot['ggml TQ2_0'] / tot[n]:.2f}x" for n in ours) +
                             f" | {total_bytes / tot[first] / 1e9:.1f} | "
                             f"{total_bytes * 66 / 64 / tot['ggml TQ2_0'] / 1e9:.1f} |")
            lines.append("")
    lines += ["Max relative error against the reference, over the shapes: " +
              ", ".join(f"{n} {max(r.errors[n] for r in rows if n in r.errors):.1e}" for n in names), ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["gpt2", "llama"], choices=["gpt2", "llama"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--regimes", nargs="+", default=["cold", "warm"], choices=["cold", "warm"])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=3, help="graph runs per contender per round")
    parser.add_argument("--avx2", action="store_true", help="also time the op's AVX2 kernel set")
    parser.add_argument("--baseline-library", type=Path,
                        help="also time another build of the op library (e.g. the previous commit's)")
    parser.add_argument("--out", type=Path, help="write the Markdown report here (default: print it)")
    args = parser.parse_args()
    command = "python docs/benchmarks/bench_ternary_gemv.py " + " ".join(sys.argv[1:])
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load_before = load_average()
    g = Ggml()
    flush = CacheFlush()
    rows = []
    for i, (model, K, N, L) in enumerate(SHAPES):
        if model in args.models:
            rows += measure_shape(g, model, K, N, L, args.threads, args.regimes, args.rounds, args.calls, args.avx2,
                                  args.baseline_library, seed=100 + i, flush=flush, log=lambda s: print(s, flush=True))
    per_gemv = tile_build_seconds(1536, 4096, 8)
    creation_ms_per_mb = per_gemv * 1e3 / (1536 * 4096 / 4 / 1e6)
    text = report(rows, creation_ms_per_mb, g, command, date, load_before, load_average(), args.rounds, args.calls)
    if args.out:
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)
    print(text)


if __name__ == "__main__":
    main()
