// The bitconv.Int8MatMul custom op: Y = A @ W^T (+ bias) with W stored as int8 codes [N, K] and float32 scales,
// one per output row ([N]) or per row and group of `group_size` input columns ([N, ceil(K / group_size)]).
//
// Why: the lm_head is the largest single matrix of a small decoder (GPT-2 small: 50257 x 768, SmolLM2's Llama
// shape: 49152 x 576) and is read in full for every decoded token; a converted model keeps it (tied to the
// embeddings) in float16 unless `--embeddings int8` stores it as int8, half the bytes. The activations stay
// float32 (W8A32): sixteen codes at a time are widened to floats in registers and multiplied with FMA, and each
// group's sum is scaled once,
//     Y[m, n] = sum over groups g of scale[n, g] * sum_{k in g} A[m, k] * code[n, k]  (+ bias[n]),
// which is the product with the dequantized weight up to the rounding of scale * code and the summation order.
//
// Inputs: A float32 [..., K] (at least one row), W int8 [N, K], scale float32 [N] (group_size 0) or
// [N, ceil(K / group_size)], bias float32 [N] (optional). Attribute: group_size (int, default 0: one scale per
// row). Output: Y float32 [..., N]. The SIMD path (AVX-512, AVX2, scalar) follows the library's kernel choice
// for this CPU, including the BITCONV_ORT_ISA override (op_support.h).
#include <algorithm>
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
constexpr const char* kInputNames[] = {"A", "W", "scale", "bias"};

struct Int8Problem {
  int64_t M = 0, N = 0, K = 0;
  int64_t group = 0;     // input columns per scale: K when there is one scale per row
  int64_t n_groups = 1;  // scales per row
  const float* a = nullptr;      // [M, K]
  const int8_t* w = nullptr;     // [N, K]
  const float* scale = nullptr;  // [N, n_groups]
  const float* bias = nullptr;   // [N] or null
  float* y = nullptr;            // [M, N]
};

// Columns [n0, n1) of Y for every row.
using Int8GemmFn = void (*)(const Int8Problem& p, int64_t n0, int64_t n1);

inline float finish(const Int8Problem& p, int64_t n, float y) { return p.bias ? y + p.bias[n] : y; }

void gemm_scalar(const Int8Problem& p, int64_t n0, int64_t n1) {
  for (int64_t m = 0; m < p.M; ++m) {
    const float* a = p.a + m * p.K;
    for (int64_t n = n0; n < n1; ++n) {
      const int8_t* w = p.w + n * p.K;
      float y = 0.f;
      for (int64_t g = 0; g < p.n_groups; ++g) {
        const int64_t k1 = std::min(p.K, (g + 1) * p.group);
        float sum = 0.f;
        for (int64_t k = g * p.group; k < k1; ++k) sum += a[k] * static_cast<float>(w[k]);
        y += p.scale[n * p.n_groups + g] * sum;
      }
      p.y[m * p.N + n] = finish(p, n, y);
    }
  }
}

#if defined(__x86_64__) || defined(__i386__)
#define BITCONV_I8_AVX2 __attribute__((target("avx2,fma")))
#define BITCONV_I8_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))

// MB activation rows share each widened vector of codes; U independent accumulators per row keep the FMA
// latency hidden when MB is 1 (a GEMV).
template <int MB, int U>
BITCONV_I8_AVX2 void rows_avx2(const Int8Problem& p, int64_t m0, int64_t n0, int64_t n1) {
  const float* a[MB];
  for (int r = 0; r < MB; ++r) a[r] = p.a + (m0 + r) * p.K;
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* w = p.w + n * p.K;
    const float* scale = p.scale + n * p.n_groups;
    __m256 total[MB];
    float tail[MB];
    for (int r = 0; r < MB; ++r) {
      total[r] = _mm256_setzero_ps();
      tail[r] = 0.f;
    }
    for (int64_t g = 0; g < p.n_groups; ++g) {
      const int64_t k1 = std::min(p.K, (g + 1) * p.group);
      int64_t k = g * p.group;
      __m256 acc[MB][U];
      for (int r = 0; r < MB; ++r)
        for (int u = 0; u < U; ++u) acc[r][u] = _mm256_setzero_ps();
      for (; k + 8 * U <= k1; k += 8 * U)
        for (int u = 0; u < U; ++u) {
          const __m128i codes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w + k + 8 * u));
          const __m256 wf = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(codes));
          for (int r = 0; r < MB; ++r) acc[r][u] = _mm256_fmadd_ps(_mm256_loadu_ps(a[r] + k + 8 * u), wf, acc[r][u]);
        }
      for (; k + 8 <= k1; k += 8) {
        const __m128i codes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w + k));
        const __m256 wf = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(codes));
        for (int r = 0; r < MB; ++r) acc[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(a[r] + k), wf, acc[r][0]);
      }
      const __m256 s = _mm256_set1_ps(scale[g]);
      for (int r = 0; r < MB; ++r) {
        __m256 sum = acc[r][0];
        for (int u = 1; u < U; ++u) sum = _mm256_add_ps(sum, acc[r][u]);
        total[r] = _mm256_fmadd_ps(sum, s, total[r]);
        float rest = 0.f;
        for (int64_t kk = k; kk < k1; ++kk) rest += a[r][kk] * static_cast<float>(w[kk]);
        tail[r] += scale[g] * rest;
      }
    }
    for (int r = 0; r < MB; ++r) {
      const __m128 h = _mm_add_ps(_mm256_castps256_ps128(total[r]), _mm256_extractf128_ps(total[r], 1));
      const __m128 h2 = _mm_add_ps(h, _mm_movehl_ps(h, h));
      const float y = _mm_cvtss_f32(_mm_add_ss(h2, _mm_shuffle_ps(h2, h2, 1))) + tail[r];
      p.y[(m0 + r) * p.N + n] = finish(p, n, y);
    }
  }
}

BITCONV_I8_AVX2 void gemm_avx2(const Int8Problem& p, int64_t n0, int64_t n1) {
  int64_t m = 0;
  for (; m + 4 <= p.M; m += 4) rows_avx2<4, 1>(p, m, n0, n1);
  for (; m < p.M; ++m) rows_avx2<1, 4>(p, m, n0, n1);
}

// As rows_avx2 with 16 lanes; a group's last partial vector is read with masked loads.
template <int MB, int U>
BITCONV_I8_AVX512 void rows_avx512(const Int8Problem& p, int64_t m0, int64_t n0, int64_t n1) {
  const float* a[MB];
  for (int r = 0; r < MB; ++r) a[r] = p.a + (m0 + r) * p.K;
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* w = p.w + n * p.K;
    const float* scale = p.scale + n * p.n_groups;
    __m512 total[MB];
    for (int r = 0; r < MB; ++r) total[r] = _mm512_setzero_ps();
    for (int64_t g = 0; g < p.n_groups; ++g) {
      const int64_t k1 = std::min(p.K, (g + 1) * p.group);
      int64_t k = g * p.group;
      __m512 acc[MB][U];
      for (int r = 0; r < MB; ++r)
        for (int u = 0; u < U; ++u) acc[r][u] = _mm512_setzero_ps();
      for (; k + 16 * U <= k1; k += 16 * U)
        for (int u = 0; u < U; ++u) {
          const __m128i codes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k + 16 * u));
          const __m512 wf = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(codes));
          for (int r = 0; r < MB; ++r) acc[r][u] = _mm512_fmadd_ps(_mm512_loadu_ps(a[r] + k + 16 * u), wf, acc[r][u]);
        }
      for (; k < k1; k += 16) {
        const __mmask16 mask = k + 16 <= k1 ? static_cast<__mmask16>(0xffff)
                                            : static_cast<__mmask16>((1u << (k1 - k)) - 1);
        const __m512 wf = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, w + k)));
        for (int r = 0; r < MB; ++r) acc[r][0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, a[r] + k), wf, acc[r][0]);
      }
      const __m512 s = _mm512_set1_ps(scale[g]);
      for (int r = 0; r < MB; ++r) {
        __m512 sum = acc[r][0];
        for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, acc[r][u]);
        total[r] = _mm512_fmadd_ps(sum, s, total[r]);
      }
    }
    for (int r = 0; r < MB; ++r) p.y[(m0 + r) * p.N + n] = finish(p, n, _mm512_reduce_add_ps(total[r]));
  }
}

BITCONV_I8_AVX512 void gemm_avx512(const Int8Problem& p, int64_t n0, int64_t n1) {
  int64_t m = 0;
  for (; m + 4 <= p.M; m += 4) rows_avx512<4, 1>(p, m, n0, n1);
  for (; m < p.M; ++m) rows_avx512<1, 4>(p, m, n0, n1);
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
  p.a = static_cast<const float*>(A.data);
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
