// Ternary matrix-multiply kernels behind the TernaryMatMul op: one portable scalar set and SIMD sets compiled with
// __attribute__((target(...))) (kernels_avx2.cc, kernels_avx512.cc), chosen at run time in ternary_matmul.cc.
//
// Every kernel computes, for output columns n in [n0, n1) and every activation row m,
//     Y[m, n] = sum over groups g of scale(n, g) * sum_{k in g} a[m, k] * t[n, k]
// from the packed 2-bit codes (t = code - 2, four codes a byte, least significant bits first along K).
// Outliers and bias are added by the caller. Two activation forms:
//   float  (act_quant = 0): a = A, float accumulation;
//   int8   (act_quant = 1): a = q (int8 per-token absmax codes, quantize_int8_rows), exact integer sums, and every
//          kernel set rounds the same way, so all sets give bit-identical Y:
//              isum_g = sum_{k in g} q[m, k] * t[n, k]                 (exact, int32)
//              y = 0;  for g in order: y = y + (scale(n, g) * float(isum_g))   (float32; product and sum each
//                                                                             rounded: no fused multiply-add)
//              Y[m, n] = y / s_m,  s_m = 127 / max(max_k |A[m, k]|, 1e-5)
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
  // int8 activations (act_quant = 1), filled by the kernel set's quantize_int8
  const int8_t* q = nullptr;             // [M, q_stride]: q[m, k] in natural order, zero for k >= K
  int64_t q_stride = 0;                  // a multiple of 64 (int8_row_stride)
  const int32_t* q_group_sum = nullptr;  // [M, n_groups]: sum of q[m, k] over each group
  const float* q_row_scale = nullptr;    // [M]: s_m = 127 / max(max|A[m, :]|, 1e-5)
  // the codes in the int8 tile layout (tile_codes), or null
  const uint8_t* tiles = nullptr;
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

// ---- int8 activations ------------------------------------------------------------------------------------------

// Row stride of the quantized activations: K rounded up to 64, so SIMD kernels may read whole 16-column runs (and
// 64-byte vectors) of a row; the padding is zero.
inline int64_t int8_row_stride(int64_t K) { return (K + 63) / 64 * 64; }

// int8 per-token absmax, exactly as bitconv.schemes.quantize_activations_int8 before its division by s:
// s = 127 / max(max|x|, 1e-5) per row (a NaN in x is ignored by the max), q = clamp(round_half_even(x * s), -128,
// 127) (a NaN product becomes -128); zero padding up to p.q_stride; and the sum of q over each group. Every kernel
// set's quantize_int8 matches this byte for byte.
void quantize_int8_reference(const GemmProblem& p, const float* a, int8_t* q, int32_t* group_sum, float* row_scale);

// The int8 product of output rows [n0, n1), one output at a time, in the rounding order above: the scalar set's
// kernel, and the SIMD sets' path where their tiles do not apply. Both live in kernels_scalar.cc, which is compiled
// for the baseline ISA, so the compiler cannot fuse the multiply and the add.
void gemm_int8_reference(const GemmProblem& p, int64_t n0, int64_t n1);

// The tile layout of the SIMD int8 kernels, built from the stored codes (once per session for a constant weight).
// Output rows in blocks of 16, input columns in runs of 16; block b, run c is the 64 bytes at (b * runs + c) * 64,
// and its byte 4i + j holds in bits 2s, 2s+1 the code of row 16b + i at column 16c + 4s + j. So 32-bit lane i of a
// tile is output row i, and masking every byte to bits 2s, 2s+1 leaves code * 4^s for the four columns
// 16c + 4s .. 16c + 4s + 3 -- the four activations one broadcast 32-bit load hands VPDPBUSD (or VPMADDUBSW). Rows
// past N and columns past K hold code 2 (zero weight; the activations are zero there too).
//
// A stored row holds the same 16 codes as one 32-bit word (byte s, bits 2j: column 16c + 4s + j), so each tile
// lane is that word with its 4 x 4 matrix of 2-bit fields transposed.
constexpr int64_t kTileRows = 16;
constexpr int64_t kTileColumns = 16;
constexpr int64_t kTileBytes = 64;
inline int64_t tile_runs(int64_t K) { return (K + kTileColumns - 1) / kTileColumns; }
inline int64_t tile_blocks(int64_t N) { return (N + kTileRows - 1) / kTileRows; }
inline int64_t tile_bytes(int64_t N, int64_t K) { return tile_blocks(N) * tile_runs(K) * kTileBytes; }

// field (byte r, pair c) -> (byte c, pair r) of a 32-bit word of 4 x 4 two-bit fields
inline uint32_t transpose_code_fields(uint32_t x) {
  uint32_t t = ((x >> 6) ^ x) & 0x00CC00CCu;  // swap the off-diagonal fields inside each 2 x 2 block
  x ^= t ^ (t << 6);
  t = ((x >> 12) ^ x) & 0x0000F0F0u;  // swap the off-diagonal 2 x 2 blocks
  return x ^ t ^ (t << 12);
}

// Row blocks [b0, b1) of the tile layout of the 2-bit codes [N, row_bytes], written into `dst` (the layout's base).
inline void tile_codes(const uint8_t* codes, int64_t row_bytes, int64_t N, int64_t K, int64_t b0, int64_t b1,
                       uint8_t* dst) {
  const int64_t runs = tile_runs(K);
  for (int64_t b = b0; b < b1; ++b) {
    uint8_t* block = dst + b * runs * kTileBytes;
    for (int64_t i = 0; i < kTileRows; ++i) {
      const int64_t n = b * kTileRows + i;
      const uint8_t* row = codes + n * row_bytes;
      for (int64_t c = 0; c < runs; ++c) {
        uint32_t word = 0xAAAAAAAAu;  // code 2 everywhere
        if (n < N) {
          const int64_t avail = row_bytes - 4 * c < 4 ? row_bytes - 4 * c : 4;
          for (int64_t j = 0; j < avail; ++j)
            word = (word & ~(0xFFu << (8 * j))) | static_cast<uint32_t>(row[4 * c + j]) << (8 * j);
        }
        const uint32_t lane = transpose_code_fields(word);
        std::memcpy(block + c * kTileBytes + 4 * i, &lane, 4);
      }
    }
  }
}

// Whether the tile kernels apply: every group (if grouped) covers whole runs of 16 columns.
inline bool tiles_apply(const GemmProblem& p) {
  return p.scale_kind != ScaleKind::kGroup || p.group_size % kTileColumns == 0;
}

// An int8 tile kernel sums at most this many runs into its 32-bit lanes before it folds them into the exact
// per-group total (the lane that holds code * 64 grows by at most 4 * 192 * 128 per run).
constexpr int64_t kTileMaxRuns = 4096;

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

// int8 mode, once per call: quantize the float activations into the buffers given (p.q_stride set), byte for byte
// as quantize_int8_reference.
using QuantizeFn = void (*)(const GemmProblem& p, const float* a, int8_t* q, int32_t* group_sum, float* row_scale);

struct KernelSet {
  const char* name;
  GemmFn gemm_float;
  GemmFn gemm_int8;
  QuantizeFn quantize_int8;
  bool int8_tiles = false;  // gemm_int8 reads p.tiles (the tile layout) whenever tiles_apply(p)
  WorkspaceFn float_workspace = nullptr;
  PrepareFn prepare_float = nullptr;
  HalfGemmFn gemm_half = nullptr;
};

KernelSet scalar_kernels();
KernelSet avx2_kernels();
KernelSet avx512_kernels();

}  // namespace bitconv

#endif  // BITCONV_ORT_OP_KERNELS_H_
