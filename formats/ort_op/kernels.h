// Ternary matrix-multiply kernels behind the TernaryMatMul op: one portable scalar set and SIMD sets compiled with
// __attribute__((target(...))) (kernels_avx2.cc, kernels_avx512.cc), chosen at run time in ternary_matmul.cc.
//
// Every kernel computes, for output columns n in [n0, n1) and every activation row m,
//     Y[m, n] = sum over groups g of scale(n, g) * sum_{k in g} a[m, k] * t[n, k]
// from the packed 2-bit codes (t = code - 2, four codes a byte, least significant bits first along K).
// Outliers and bias are added by the caller. Two activation forms:
//   float  (act_quant = 0): a = A, float accumulation;
//   int8   (act_quant = 1): a = q (int8 per-token absmax codes), exact int32 accumulation, then
//                           Y = (sum_g scale * isum_g) / s_m with s_m = 127 / max|A[m, :]|.
#ifndef BITCONV_ORT_OP_KERNELS_H_
#define BITCONV_ORT_OP_KERNELS_H_

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

namespace bitconv {

enum class ScaleKind { kTensor, kChannel, kGroup };

struct GemmProblem {
  int64_t M = 0, N = 0, K = 0;
  const uint8_t* codes = nullptr;  // [N, row_bytes], 2-bit codes
  int64_t row_bytes = 0;           // ceil(K / 4)
  const float* scale = nullptr;    // [1], [N] or [N, n_groups]
  ScaleKind scale_kind = ScaleKind::kTensor;
  // K when not grouped, so every row is one group. May exceed K (then n_groups = 1): kernels only add it to a group
  // start, which is 0 or a multiple of it below K, so no sum exceeds INT64_MAX even for a group_size near it.
  int64_t group_size = 0;
  int64_t n_groups = 1;
  // float activations
  const float* a = nullptr;  // [M, K]
  // int8 activations, laid out by `permute_int8_rows` for the kernel set in use
  const int8_t* q = nullptr;            // [M, K]
  const int32_t* q_chunk_sum = nullptr;  // [M, n_groups]: sum of q over the SIMD-chunked part of each group
  const float* q_row_scale = nullptr;    // [M]: s_m = 127 / max|A[m, :]|
  int64_t q_chunk = 0;                   // chunk width the q layout was permuted for (0: natural order)
  // per-call tables a kernel set derives from the float activations (KernelSet::prepare_float), or null
  const float* a_tables = nullptr;
  // the codes regrouped by interleave_codes (built once for a constant weight), or null
  const uint32_t* interleaved = nullptr;
  float* y = nullptr;                    // [M, N]
};

// IEEE binary16 bits -> float, exact (every half is a float).
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: exact as a float
      const float v = std::ldexp(static_cast<float>(mant), -24);
      std::memcpy(&bits, &v, 4);
      bits |= sign;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline float scale_at(const GemmProblem& p, int64_t n, int64_t g) {
  switch (p.scale_kind) {
    case ScaleKind::kTensor: return p.scale[0];
    case ScaleKind::kChannel: return p.scale[n];
    default: return p.scale[n * p.n_groups + g];
  }
}

inline int code_at(const uint8_t* row, int64_t k) { return (row[k >> 2] >> (2 * (k & 3))) & 3; }

// Dot products of one code row with natural-order activations over [k0, k1), any alignment.
inline float dot_float_scalar(const uint8_t* codes_row, const float* a_row, int64_t k0, int64_t k1) {
  float acc = 0.f;
  for (int64_t k = k0; k < k1; ++k) acc += a_row[k] * static_cast<float>(code_at(codes_row, k) - 2);
  return acc;
}
inline int32_t dot_int8_scalar(const uint8_t* codes_row, const int8_t* q_row, int64_t k0, int64_t k1) {
  int32_t acc = 0;
  for (int64_t k = k0; k < k1; ++k) acc += static_cast<int32_t>(q_row[k]) * (code_at(codes_row, k) - 2);
  return acc;
}

// The part of group [g0, g1) that SIMD int8 kernels process in chunks of `chunk` (0 when g0 is not byte-aligned).
inline int64_t chunked_length(int64_t g0, int64_t g1, int64_t chunk) {
  if (chunk == 0 || (g0 & 3) != 0) return 0;
  return ((g1 - g0) / chunk) * chunk;
}
// Of that part, the leading run a kernel set processes in wider chunks of `wide` (a multiple of `chunk`; 0: none).
inline int64_t wide_length(int64_t chunked, int64_t wide) { return wide ? chunked / wide * wide : 0; }

// Column-interleaved codes for kernels that read 16 output rows at once: for each block of 16 rows and each run of
// 16 input columns, the 16 rows' 32-bit code words (16 codes each) side by side. Covers floor(N / 16) row blocks
// and floor(K / 16) column runs; the rest is read from the row-major codes.
constexpr int64_t kInterleaveRows = 16;
inline int64_t interleaved_words(int64_t N, int64_t K) { return (N / 16) * (K / 16) * 16; }
inline void interleave_block(const uint8_t* codes, int64_t row_bytes, int64_t K, int64_t n0, uint32_t* dst) {
  const int64_t runs = K / 16;
  for (int64_t i = 0; i < kInterleaveRows; ++i) {
    const uint8_t* row = codes + (n0 + i) * row_bytes;
    for (int64_t c = 0; c < runs; ++c) {
      const uint8_t* w = row + 4 * c;
      dst[c * 16 + i] = static_cast<uint32_t>(w[0]) | static_cast<uint32_t>(w[1]) << 8 |
                        static_cast<uint32_t>(w[2]) << 16 | static_cast<uint32_t>(w[3]) << 24;
    }
  }
}
inline void interleave_codes(const uint8_t* codes, int64_t row_bytes, int64_t N, int64_t K, uint32_t* dst) {
  const int64_t block_words = (K / 16) * 16;
  for (int64_t b = 0; b < N / 16; ++b) interleave_block(codes, row_bytes, K, b * 16, dst + b * block_words);
}

// An array on a 64-byte boundary: the SIMD kernels read tables and code words in whole 64-byte vectors, and an
// unaligned one spans two cache lines (malloc only promises 16 bytes, which made timings swing by 40% run to run).
template <typename T>
class AlignedArray {
 public:
  void resize(size_t n) {
    const size_t bytes = (n * sizeof(T) + 63) / 64 * 64;
    data_.reset(bytes ? static_cast<T*>(std::aligned_alloc(64, bytes)) : nullptr);
    if (bytes && !data_) throw std::bad_alloc();
    size_ = n;
  }
  T* data() const { return data_.get(); }
  bool empty() const { return size_ == 0; }

 private:
  struct Free {
    void operator()(T* ptr) const { std::free(ptr); }
  };
  std::unique_ptr<T, Free> data_;
  size_t size_ = 0;
};

// Per kernel set: columns [n0, n1) of Y for every row.
using GemmFn = void (*)(const GemmProblem& p, int64_t n0, int64_t n1);

// HalfMatMul: Y[m, n] = sum_k A[m, k] * W[n, k] with W in IEEE float16 (kept as stored: half the bytes of float32
// for the float16 embeddings / lm_head of a packed model), float32 accumulation. Columns [n0, n1), every row.
struct HalfProblem {
  int64_t M = 0, N = 0, K = 0;
  const float* a = nullptr;     // [M, K]
  const uint16_t* w = nullptr;  // [N, K], float16 bits
  float* y = nullptr;           // [M, N]
};
using HalfGemmFn = void (*)(const HalfProblem& p, int64_t n0, int64_t n1);

// Optional once-per-call preparation of the float activations (shared by all thread-pool tasks): the number of
// floats of workspace it needs (0: none) and the function that fills it.
using WorkspaceFn = int64_t (*)(const GemmProblem& p);
using PrepareFn = void (*)(const GemmProblem& p, float* workspace);

struct KernelSet {
  const char* name;
  GemmFn gemm_float;
  GemmFn gemm_int8;
  int64_t int8_chunk;  // how q must be permuted for gemm_int8 (0: natural order)
  WorkspaceFn float_workspace = nullptr;
  PrepareFn prepare_float = nullptr;
  int64_t int8_wide_chunk = 0;  // the leading wide_length() of each group is permuted in chunks of this width
  HalfGemmFn gemm_half = nullptr;
};

KernelSet scalar_kernels();
KernelSet avx2_kernels();
KernelSet avx512_kernels();

}  // namespace bitconv

#endif  // BITCONV_ORT_OP_KERNELS_H_
