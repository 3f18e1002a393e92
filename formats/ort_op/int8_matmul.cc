// The bitconv.Int8MatMul custom op: Y = A @ W^T (+ bias) with W stored as int8 codes [N, K] and float32 scales,
// one per output row ([N]) or per row and group of `group_size` input columns ([N, ceil(K / group_size)]).
//
// Why: the lm_head is the largest single matrix of a small decoder (GPT-2 small: 50257 x 768, the 0.68B Llama
// shape: 49152 x 1536) and is read in full for every decoded token; a converted model keeps it (tied to the
// embeddings) in float16 unless `--embeddings int8` stores it as int8, half the bytes.
//
// Arithmetic (W8A16): each activation row is rounded to int16 with its own scale, s_m = 32767 / max|A[m, :]|,
// and multiplied with the int8 codes in exact int32 sums (VPDPWSSD on AVX-512, VPMADDWD on AVX2: 32 or 16
// products per instruction, where widening codes to floats took three instructions for 16), so that the GEMV
// reads memory as fast as it streams instead of waiting on conversions:
//     Y[m, n] = (1 / s_m) * sum over groups g of scale[n, g] * sum_{k in g} q[m, k] * code[n, k]  (+ bias[n]).
// The rounding moves each activation by at most max|A[m, :]| / 65534, so |Y - A @ dequantized(W)^T| is at most
// that times sum_k |scale * code| of the row: about 1e-5 of the row's scale, far below the int8 weight rounding.
// Integer sums are flushed to float every kRun columns, so no int32 lane can overflow whatever K is.
//
// Inputs: A float32 [..., K] (at least one row), W int8 [N, K], scale float32 [N] (group_size 0) or
// [N, ceil(K / group_size)], bias float32 [N] (optional). Attribute: group_size (int, default 0: one scale per
// row). Output: Y float32 [..., N]. The SIMD path (AVX-512 with VNNI, AVX2, scalar) follows the library's kernel
// choice for this CPU, including the BITCONV_ORT_ISA override (op_support.h).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kernels.h"
#include "op_support.h"
#include "ort_abi.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace bitconv {
namespace {

constexpr int64_t kColumnsPerTask = 256;  // output columns (rows of W) one thread-pool task computes
// Columns summed in int32 before a flush to float: a SIMD lane adds at most kRun / 16 pairs of products (AVX2:
// 8 lanes), each pair at most 2 * 32767 * 128 < 2^23 in size, so 1024 columns stay below 2^30.
constexpr int64_t kRun = 1024;
constexpr float kInt16Max = 32767.f;
constexpr const char* kInputNames[] = {"A", "W", "scale", "bias"};

struct Int8Problem {
  int64_t M = 0, N = 0, K = 0;
  int64_t group = 0;     // input columns per scale: K when there is one scale per row
  int64_t n_groups = 1;  // scales per row
  const int16_t* q = nullptr;        // [M, K]: the activations rounded to int16
  const float* q_inverse = nullptr;  // [M]: 1 / s_m
  const int8_t* w = nullptr;         // [N, K]
  const float* scale = nullptr;      // [N, n_groups]
  const float* bias = nullptr;       // [N] or null
  float* y = nullptr;                // [M, N]
};

// Columns [n0, n1) of Y for every row.
using Int8GemmFn = void (*)(const Int8Problem& p, int64_t n0, int64_t n1);

// Rounds row m of A to int16 (q) with s_m = 32767 / max|A[m, :]| and records 1 / s_m (0 for an all-zero row).
void quantize_rows(const float* a, int64_t M, int64_t K, int16_t* q, float* q_inverse) {
  for (int64_t m = 0; m < M; ++m) {
    const float* row = a + m * K;
    float amax = 0.f;
    for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(row[k]));
    const float s = amax > 0.f ? kInt16Max / amax : 0.f;
    for (int64_t k = 0; k < K; ++k)
      q[m * K + k] = static_cast<int16_t>(std::max(-kInt16Max, std::min(kInt16Max, std::nearbyint(row[k] * s))));
    q_inverse[m] = amax > 0.f ? amax / kInt16Max : 0.f;
  }
}

inline float finish(const Int8Problem& p, int64_t m, int64_t n, float sum) {
  const float y = sum * p.q_inverse[m];
  return p.bias ? y + p.bias[n] : y;
}

void gemm_scalar(const Int8Problem& p, int64_t n0, int64_t n1) {
  for (int64_t m = 0; m < p.M; ++m) {
    const int16_t* q = p.q + m * p.K;
    for (int64_t n = n0; n < n1; ++n) {
      const int8_t* w = p.w + n * p.K;
      float y = 0.f;
      for (int64_t g = 0; g < p.n_groups; ++g) {
        const int64_t g1 = std::min(p.K, (g + 1) * p.group);
        float sum = 0.f;
        for (int64_t r = g * p.group; r < g1; r += kRun) {
          int64_t run = 0;  // one accumulator for the whole run: 64 bits
          for (int64_t k = r; k < std::min(g1, r + kRun); ++k) run += static_cast<int32_t>(q[k]) * w[k];
          sum += static_cast<float>(run);
        }
        y += p.scale[n * p.n_groups + g] * sum;
      }
      p.y[m * p.N + n] = finish(p, m, n, y);
    }
  }
}

#if defined(__x86_64__) || defined(__i386__)
#define BITCONV_I8_AVX2 __attribute__((target("avx2,fma")))
#define BITCONV_I8_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma")))

// MB activation rows share each widened vector of codes; U independent accumulators per row keep the latency of
// the multiply-add hidden when MB is 1 (a GEMV). A run's leftover columns (fewer than 16) are summed in scalars.
template <int MB, int U>
BITCONV_I8_AVX2 void rows_avx2(const Int8Problem& p, int64_t m0, int64_t n0, int64_t n1) {
  const int16_t* q[MB];
  for (int r = 0; r < MB; ++r) q[r] = p.q + (m0 + r) * p.K;
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* w = p.w + n * p.K;
    __m256 total[MB];
    for (int r = 0; r < MB; ++r) total[r] = _mm256_setzero_ps();
    for (int64_t g = 0; g < p.n_groups; ++g) {
      const int64_t g1 = std::min(p.K, (g + 1) * p.group);
      __m256 sum[MB];
      for (int r = 0; r < MB; ++r) sum[r] = _mm256_setzero_ps();
      for (int64_t k = g * p.group; k < g1;) {
        const int64_t k1 = std::min(g1, k + kRun);
        __m256i acc[MB][U];
        int32_t rest[MB] = {};
        for (int r = 0; r < MB; ++r)
          for (int u = 0; u < U; ++u) acc[r][u] = _mm256_setzero_si256();
        for (; k + 16 * U <= k1; k += 16 * U)
          for (int u = 0; u < U; ++u) {
            const __m128i codes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k + 16 * u));
            const __m256i wv = _mm256_cvtepi8_epi16(codes);
            for (int r = 0; r < MB; ++r) {
              const __m256i qv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q[r] + k + 16 * u));
              acc[r][u] = _mm256_add_epi32(acc[r][u], _mm256_madd_epi16(qv, wv));
            }
          }
        for (; k < k1; ++k)
          for (int r = 0; r < MB; ++r) rest[r] += static_cast<int32_t>(q[r][k]) * w[k];
        for (int r = 0; r < MB; ++r) {
          __m256i run = acc[r][0];
          for (int u = 1; u < U; ++u) run = _mm256_add_epi32(run, acc[r][u]);
          run = _mm256_add_epi32(run, _mm256_setr_epi32(rest[r], 0, 0, 0, 0, 0, 0, 0));
          sum[r] = _mm256_add_ps(sum[r], _mm256_cvtepi32_ps(run));
        }
      }
      const __m256 s = _mm256_set1_ps(p.scale[n * p.n_groups + g]);
      for (int r = 0; r < MB; ++r) total[r] = _mm256_fmadd_ps(sum[r], s, total[r]);
    }
    for (int r = 0; r < MB; ++r) {
      const __m128 h = _mm_add_ps(_mm256_castps256_ps128(total[r]), _mm256_extractf128_ps(total[r], 1));
      const __m128 h2 = _mm_add_ps(h, _mm_movehl_ps(h, h));
      p.y[(m0 + r) * p.N + n] = finish(p, m0 + r, n, _mm_cvtss_f32(_mm_add_ss(h2, _mm_shuffle_ps(h2, h2, 1))));
    }
  }
}

BITCONV_I8_AVX2 void gemm_avx2(const Int8Problem& p, int64_t n0, int64_t n1) {
  int64_t m = 0;
  for (; m + 4 <= p.M; m += 4) rows_avx2<4, 1>(p, m, n0, n1);
  for (; m < p.M; ++m) rows_avx2<1, 4>(p, m, n0, n1);
}

// As rows_avx2 with 32 columns per VPDPWSSD; a run's last partial vector is read with masked loads.
template <int MB, int U>
BITCONV_I8_AVX512 void rows_avx512(const Int8Problem& p, int64_t m0, int64_t n0, int64_t n1) {
  const int16_t* q[MB];
  for (int r = 0; r < MB; ++r) q[r] = p.q + (m0 + r) * p.K;
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* w = p.w + n * p.K;
    __m512 total[MB];
    for (int r = 0; r < MB; ++r) total[r] = _mm512_setzero_ps();
    for (int64_t g = 0; g < p.n_groups; ++g) {
      const int64_t g1 = std::min(p.K, (g + 1) * p.group);
      __m512 sum[MB];
      for (int r = 0; r < MB; ++r) sum[r] = _mm512_setzero_ps();
      for (int64_t k = g * p.group; k < g1;) {
        const int64_t k1 = std::min(g1, k + kRun);
        __m512i acc[MB][U];
        for (int r = 0; r < MB; ++r)
          for (int u = 0; u < U; ++u) acc[r][u] = _mm512_setzero_si512();
        for (; k + 32 * U <= k1; k += 32 * U)
          for (int u = 0; u < U; ++u) {
            const __m256i codes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k + 32 * u));
            const __m512i wv = _mm512_cvtepi8_epi16(codes);
            for (int r = 0; r < MB; ++r)
              acc[r][u] = _mm512_dpwssd_epi32(acc[r][u], _mm512_loadu_si512(q[r] + k + 32 * u), wv);
          }
        for (; k < k1; k += 32) {
          const __mmask32 mask = k + 32 <= k1 ? ~static_cast<__mmask32>(0)
                                              : static_cast<__mmask32>((1ull << (k1 - k)) - 1);
          const __m512i wv = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(mask, w + k));
          for (int r = 0; r < MB; ++r)
            acc[r][0] = _mm512_dpwssd_epi32(acc[r][0], _mm512_maskz_loadu_epi16(mask, q[r] + k), wv);
        }
        for (int r = 0; r < MB; ++r) {
          __m512i run = acc[r][0];
          for (int u = 1; u < U; ++u) run = _mm512_add_epi32(run, acc[r][u]);
          sum[r] = _mm512_add_ps(sum[r], _mm512_cvtepi32_ps(run));
        }
      }
      const __m512 s = _mm512_set1_ps(p.scale[n * p.n_groups + g]);
      for (int r = 0; r < MB; ++r) total[r] = _mm512_fmadd_ps(sum[r], s, total[r]);
    }
    for (int r = 0; r < MB; ++r) p.y[(m0 + r) * p.N + n] = finish(p, m0 + r, n, _mm512_reduce_add_ps(total[r]));
  }
}

BITCONV_I8_AVX512 void gemm_avx512(const Int8Problem& p, int64_t n0, int64_t n1) {
  int64_t m = 0;
  for (; m + 4 <= p.M; m += 4) rows_avx512<4, 1>(p, m, n0, n1);
  for (; m < p.M; ++m) rows_avx512<1, 2>(p, m, n0, n1);
}
#endif

// The path for the kernel set the library chose for this CPU (or BITCONV_ORT_ISA forced).
Int8GemmFn gemm_for(const KernelSet& kernels) {
#if defined(__x86_64__) || defined(__i386__)
  if (std::strcmp(kernels.name, "avx512") == 0) return gemm_avx512;
  if (std::strcmp(kernels.name, "avx2") == 0) return gemm_avx2;
#endif
  return gemm_scalar;
}

struct Int8MatMulKernel : KernelBase {
  static constexpr const char* kOpType = "Int8MatMul";
  static constexpr ONNXTensorElementDataType kWeightType = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
  static constexpr size_t kInputs = 4, kRequiredInputs = 3;  // A, W, scale[, bias]
  int64_t group_size = 0;
  Int8GemmFn gemm = gemm_scalar;

  OrtStatus* compute(OrtKernelContext* ctx);
};

OrtStatus* Int8MatMulKernel::compute(OrtKernelContext* ctx) {
  Tensor in[kInputs];
  bool present[kInputs];
  if (OrtStatus* st = read_inputs(*this, ctx, kInputNames, kRequiredInputs, kInputs,
                                  "3 or 4 inputs (A, W, scale[, bias])", in, present))
    return st;
  auto dtype_error = [&](size_t i, const char* want) {
    return error(std::string("input '") + kInputNames[i] + "' must be " + want + ", got " + dtype_name(in[i].dtype));
  };
  const Tensor &A = in[0], &W = in[1], &S = in[2], &B = in[3];
  if (A.dtype != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) return dtype_error(0, "float32");
  if (W.dtype != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8) return dtype_error(1, "int8");
  if (S.dtype != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) return dtype_error(2, "float32");
  if (OrtStatus* st = check_product_shapes(*this, A, W)) return st;
  const int64_t N = W.dims[0], K = W.dims[1];

  Int8Problem p;
  p.M = A.numel() / K;
  p.N = N;
  p.K = K;
  if (group_size > 0) {
    p.group = group_size;
    p.n_groups = (K + group_size - 1) / group_size;
    if (S.dims.size() != 2 || S.dims[0] != N || S.dims[1] != p.n_groups)
      return error("input 'scale' has shape " + shape_str(S.dims) + ", expected [" + std::to_string(N) + ", " +
                   std::to_string(p.n_groups) + "] (one per output row and group of " + std::to_string(group_size) +
                   " input columns)");
  } else {
    p.group = K;
    if (S.dims.size() != 1 || S.dims[0] != N)
      return error("input 'scale' has shape " + shape_str(S.dims) + ", expected [" + std::to_string(N) +
                   "] (one per output row); grouped scales need the group_size attribute");
  }
  if (present[3]) {
    if (B.dtype != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) return dtype_error(3, "float32");
    if (B.dims.size() != 1 || B.dims[0] != N)
      return error("input 'bias' has shape " + shape_str(B.dims) + ", expected [" + std::to_string(N) + "]");
    p.bias = static_cast<const float*>(B.data);
  }

  float* y = nullptr;
  if (OrtStatus* st = product_output(api, ctx, A, N, &y)) return st;
  std::vector<int16_t> q(static_cast<size_t>(p.M * K));
  std::vector<float> q_inverse(static_cast<size_t>(p.M));
  quantize_rows(static_cast<const float*>(A.data), p.M, K, q.data(), q_inverse.data());
  p.q = q.data();
  p.q_inverse = q_inverse.data();
  p.w = static_cast<const int8_t*>(W.data);
  p.scale = static_cast<const float*>(S.data);
  p.y = y;
  return parallel_columns(api, ctx, N, kColumnsPerTask, [&](int64_t n0, int64_t n1) { gemm(p, n0, n1); });
}

OrtStatus* create_kernel(const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo* info, void** out) noexcept {
  using K = Int8MatMulKernel;
  return create_kernel_with<K>(api, info, K::kOpType, out, [&](K& kernel) -> OrtStatus* {
    if (OrtStatus* st = api->KernelInfoGetAttribute_int64(info, "group_size", &kernel.group_size))
      api->ReleaseStatus(st);  // absent: one scale per row
    if (kernel.group_size < 0)
      return kernel.error("attribute 'group_size' must be >= 0 (0: one scale per row), got " +
                          std::to_string(kernel.group_size));
    KernelSet kernels{};
    std::string why;
    if (!select_kernels(&kernels, &why)) return kernel.error(why);
    kernel.gemm = gemm_for(kernels);
    return nullptr;
  });
}

}  // namespace

const OrtCustomOp* int8_matmul_op(uint32_t version) {
  static OrtCustomOp op;
  return describe_op<Int8MatMulKernel>(&op, version, create_kernel);
}

}  // namespace bitconv
