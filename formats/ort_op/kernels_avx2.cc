// AVX2 + FMA kernels.
//
// Float activations: 8 codes (16 bits) broadcast to 8 lanes, lane i shifted right by 2i; VPERMPS reads the low 3
// bits (this code plus the next code's low bit) from an 8-entry table of t = (index & 3) - 2.
// Int8 activations: the tile layout shared with the AVX-512 set (kernels.h), 8 output rows per 256-bit half tile,
// VPMADDUBSW + 16-bit accumulation + VPMADDWD (below).
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <cstring>

#define BITCONV_AVX2 __attribute__((target("avx2,fma")))

namespace bitconv {
namespace {

BITCONV_AVX2 inline __m256 trits8(const uint8_t* codes2, __m256i shifts, __m256 table) {
  uint16_t w;
  std::memcpy(&w, codes2, 2);
  return _mm256_permutevar8x32_ps(table, _mm256_srlv_epi32(_mm256_set1_epi32(w), shifts));
}

template <int MB, int U>
BITCONV_AVX2 void dot_rows_float(const uint8_t* row, const float* const* a, int64_t k0, int64_t k1, float* out) {
  const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  const __m256 table = _mm256_setr_ps(-2, -1, 0, 1, -2, -1, 0, 1);
  __m256 acc[MB][U];
  for (int r = 0; r < MB; ++r)
    for (int u = 0; u < U; ++u) acc[r][u] = _mm256_setzero_ps();
  int64_t k = k0;
  for (; k + 8 * U <= k1; k += 8 * U) {
    for (int u = 0; u < U; ++u) {
      const __m256 t = trits8(row + ((k + 8 * u) >> 2), shifts, table);
      for (int r = 0; r < MB; ++r) acc[r][u] = _mm256_fmadd_ps(_mm256_loadu_ps(a[r] + k + 8 * u), t, acc[r][u]);
    }
  }
  for (; k + 8 <= k1; k += 8) {
    const __m256 t = trits8(row + (k >> 2), shifts, table);
    for (int r = 0; r < MB; ++r) acc[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(a[r] + k), t, acc[r][0]);
  }
  for (int r = 0; r < MB; ++r) {
    __m256 s = acc[r][0];
    for (int u = 1; u < U; ++u) s = _mm256_add_ps(s, acc[r][u]);
    const __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    const __m128 h2 = _mm_add_ps(h, _mm_movehl_ps(h, h));
    const __m128 h3 = _mm_add_ss(h2, _mm_shuffle_ps(h2, h2, 1));
    out[r] = _mm_cvtss_f32(h3) + dot_float_scalar(row, a[r], k, k1);
  }
}

template <int MB, int U>
BITCONV_AVX2 void gemm_float_block(const GemmProblem& p, int64_t m0, int64_t n0, int64_t n1) {
  const float* a[MB];
  for (int r = 0; r < MB; ++r) a[r] = p.a + (m0 + r) * p.K;
  float part[MB];
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = p.codes + n * p.row_bytes;
    float y[MB] = {};
    for (int64_t g = 0, g0 = 0; g0 < p.K; ++g, g0 += p.group_size) {
      const int64_t g1 = g0 + p.group_size < p.K ? g0 + p.group_size : p.K;
      const float s = scale_at(p, n, g);
      if ((g0 & 3) == 0) {
        dot_rows_float<MB, U>(row, a, g0, g1, part);
      } else {
        for (int r = 0; r < MB; ++r) part[r] = dot_float_scalar(row, a[r], g0, g1);
      }
      for (int r = 0; r < MB; ++r) y[r] += s * part[r];
    }
    for (int r = 0; r < MB; ++r) p.y[(m0 + r) * p.N + n] = y[r];
  }
}

BITCONV_AVX2 void gemm_float(const GemmProblem& p, int64_t n0, int64_t n1) {
  int64_t m = 0;
  for (; m + 4 <= p.M; m += 4) gemm_float_block<4, 2>(p, m, n0, n1);
  if (p.M - m >= 2) {
    gemm_float_block<2, 2>(p, m, n0, n1);
    m += 2;
  }
  if (m < p.M) gemm_float_block<1, 4>(p, m, n0, n1);
}

// ---- int8 activations: VPMADDUBSW over the tile layout (kernels.h, tile_codes) --------------------------------
//
// A 64-byte tile is 16 output rows x 16 input columns; each half (32 bytes) is 8 rows, 32-bit lane i = row i. Per
// half: one shift by 4 and four ANDs (with 0x03 and 0x0C before and after the shift) leave code * {1, 4} for the
// columns 16c + 4s .. +3, VPMADDUBSW multiplies them by the broadcast activations (unsigned code x signed
// activation, pairs summed into 16 bits: at most 2 * 12 * 128), and two 16-bit accumulators (weights 1 and 4)
// collect four runs before VPMADDWD widens them to 32 bits. The codes are t + 2, so 2 * sum(q) of the group comes
// off at the end.
constexpr int64_t kInt16Runs = 4;  // runs summed in 16 bits: the weight-4 lanes grow by 2 * 3072 a run
constexpr int64_t kTilePrefetch = 4096;  // tiles asked for this many bytes ahead, within the task (kernels_avx512.cc)

BITCONV_AVX2 inline __m256 rounded(__m256 v) {  // keeps the compiler from fusing a product into the next add
  asm("" : "+x"(v));
  return v;
}

BITCONV_AVX2 inline __m256i bcast4(const int8_t* q) {
  int32_t v;
  std::memcpy(&v, q, 4);
  return _mm256_set1_epi32(v);
}

// The scales of the `valid` output rows from n0 (at most 8) for group g.
BITCONV_AVX2 inline __m256 scales8(const GemmProblem& p, int64_t n0, int64_t g, int64_t valid) {
  if (p.scale_kind == ScaleKind::kTensor) return _mm256_set1_ps(p.scale[0]);
  alignas(32) float s[8] = {};
  for (int64_t i = 0; i < valid && i < 8; ++i) s[i] = scale_at(p, n0 + i, g);
  return _mm256_load_ps(s);
}

// Runs [c0, c1) of one row block: the exact sums of q * code for rows 0-7 (out[2r]) and 8-15 (out[2r + 1]) of the
// block, for MB activation rows, before the 2 * sum(q) correction.
template <int MB>
BITCONV_AVX2 void tile_sums(const uint8_t* t, const int8_t* const* q, int64_t c0, int64_t c1, __m256i* out,
                            const uint8_t* end) {
  const __m256i m0 = _mm256_set1_epi8(0x03), m1 = _mm256_set1_epi8(0x0C), ones = _mm256_set1_epi16(1);
  __m256i lo32[MB][2], hi32[MB][2];
  for (int r = 0; r < MB; ++r)
    for (int h = 0; h < 2; ++h) lo32[r][h] = hi32[r][h] = _mm256_setzero_si256();
  for (int64_t c = c0; c < c1;) {
    const int64_t stop = c + kInt16Runs < c1 ? c + kInt16Runs : c1;
    __m256i lo16[MB][2], hi16[MB][2];
    for (int r = 0; r < MB; ++r)
      for (int h = 0; h < 2; ++h) lo16[r][h] = hi16[r][h] = _mm256_setzero_si256();
    for (; c < stop; ++c) {
      if (t + c * kTileBytes + kTilePrefetch < end)
        _mm_prefetch(reinterpret_cast<const char*>(t + c * kTileBytes + kTilePrefetch), _MM_HINT_T0);
      __m256i x[2][4];
      for (int h = 0; h < 2; ++h) {
        const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(t + c * kTileBytes + 32 * h));
        const __m256i w4 = _mm256_srli_epi16(w, 4);
        x[h][0] = _mm256_and_si256(w, m0);   // columns +0..3, weight 1
        x[h][1] = _mm256_and_si256(w, m1);   // columns +4..7, weight 4
        x[h][2] = _mm256_and_si256(w4, m0);  // columns +8..11, weight 1
        x[h][3] = _mm256_and_si256(w4, m1);  // columns +12..15, weight 4
      }
      for (int r = 0; r < MB; ++r) {
        const int8_t* qr = q[r] + c * kTileColumns;
        const __m256i a0 = bcast4(qr), a1 = bcast4(qr + 4), a2 = bcast4(qr + 8), a3 = bcast4(qr + 12);
        for (int h = 0; h < 2; ++h) {
          lo16[r][h] = _mm256_add_epi16(lo16[r][h], _mm256_add_epi16(_mm256_maddubs_epi16(x[h][0], a0),
                                                                     _mm256_maddubs_epi16(x[h][2], a2)));
          hi16[r][h] = _mm256_add_epi16(hi16[r][h], _mm256_add_epi16(_mm256_maddubs_epi16(x[h][1], a1),
                                                                     _mm256_maddubs_epi16(x[h][3], a3)));
        }
      }
    }
    for (int r = 0; r < MB; ++r)
      for (int h = 0; h < 2; ++h) {
        lo32[r][h] = _mm256_add_epi32(lo32[r][h], _mm256_madd_epi16(lo16[r][h], ones));
        hi32[r][h] = _mm256_add_epi32(hi32[r][h], _mm256_madd_epi16(hi16[r][h], ones));
      }
  }
  for (int r = 0; r < MB; ++r)
    for (int h = 0; h < 2; ++h) out[2 * r + h] = _mm256_add_epi32(lo32[r][h], _mm256_srai_epi32(hi32[r][h], 2));
}

template <int MB>
BITCONV_AVX2 void tile_block(const GemmProblem& p, int64_t m0, int64_t n0, const uint8_t* end) {
  const int64_t runs = tile_runs(p.K);
  const uint8_t* t = p.tiles + (n0 / kTileRows) * runs * kTileBytes;
  const int64_t valid = p.N - n0 < kTileRows ? p.N - n0 : kTileRows;
  const int8_t* q[MB];
  for (int r = 0; r < MB; ++r) q[r] = p.q + (m0 + r) * p.q_stride;
  __m256 y[MB][2];
  for (int r = 0; r < MB; ++r) y[r][0] = y[r][1] = _mm256_setzero_ps();
  const int64_t group_runs = p.scale_kind == ScaleKind::kGroup ? p.group_size / kTileColumns : runs;
  for (int64_t g = 0, c0 = 0; c0 < runs; ++g, c0 += group_runs) {
    const int64_t c1 = c0 + group_runs < runs ? c0 + group_runs : runs;
    __m256i isum[2 * MB];
    tile_sums<MB>(t, q, c0, c1, isum, end);
    const __m256 s[2] = {scales8(p, n0, g, valid), scales8(p, n0 + 8, g, valid - 8)};
    for (int r = 0; r < MB; ++r) {
      const __m256i two_sum = _mm256_set1_epi32(2 * p.q_group_sum[(m0 + r) * p.n_groups + g]);
      for (int h = 0; h < 2; ++h) {
        const __m256 f = _mm256_cvtepi32_ps(_mm256_sub_epi32(isum[2 * r + h], two_sum));
        y[r][h] = _mm256_add_ps(y[r][h], rounded(_mm256_mul_ps(s[h], f)));
      }
    }
  }
  for (int r = 0; r < MB; ++r) {
    const __m256 inv = _mm256_set1_ps(p.q_row_scale[m0 + r]);
    alignas(32) float out[16];
    _mm256_store_ps(out, _mm256_div_ps(y[r][0], inv));
    _mm256_store_ps(out + 8, _mm256_div_ps(y[r][1], inv));
    std::memcpy(p.y + (m0 + r) * p.N + n0, out, static_cast<size_t>(valid) * sizeof(float));
  }
}

BITCONV_AVX2 void gemm_int8(const GemmProblem& p, int64_t n0, int64_t n1) {
  if (!p.tiles || !tiles_apply(p) || n0 % kTileRows) {
    gemm_int8_reference(p, n0, n1);
    return;
  }
  const uint8_t* end = p.tiles + tile_blocks(n1) * tile_runs(p.K) * kTileBytes;  // this task's tiles
  for (int64_t n = n0; n < n1; n += kTileRows) {
    int64_t m = 0;
    for (; m + 2 <= p.M; m += 2) tile_block<2>(p, m, n, end);
    if (m < p.M) tile_block<1>(p, m, n, end);
  }
}

// quantize_int8_reference, 8 values at a time (same float operations; VCVTPS2DQ rounds half to even and turns a
// NaN into INT_MIN, which the clamp makes -128 as the reference does).
BITCONV_AVX2 void quantize_int8(const GemmProblem& p, const float* a, int8_t* q, int32_t* group_sum,
                                float* row_scale) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256i lo = _mm256_set1_epi32(-128), hi = _mm256_set1_epi32(127);
  const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,  //
                                        0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  for (int64_t m = 0; m < p.M; ++m) {
    const float* x = a + m * p.K;
    int8_t* qm = q + m * p.q_stride;
    __m256 vmax = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= p.K; k += 8)  // MAXPS returns its second operand when either is NaN: NaNs are skipped
      vmax = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + k)), vmax);
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, vmax);
    float amax = 0.f;
    for (float v : lanes) amax = v > amax ? v : amax;
    for (; k < p.K; ++k) amax = std::fabs(x[k]) > amax ? std::fabs(x[k]) : amax;
    const float s = 127.0f / (amax > 1e-5f ? amax : 1e-5f);
    row_scale[m] = s;
    const __m256 vs = _mm256_set1_ps(s);
    for (k = 0; k + 8 <= p.K; k += 8) {
      __m256i v = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k), vs));
      v = _mm256_shuffle_epi8(_mm256_min_epi32(_mm256_max_epi32(v, lo), hi), pick);
      const int32_t b0 = _mm256_extract_epi32(v, 0), b1 = _mm256_extract_epi32(v, 4);
      std::memcpy(qm + k, &b0, 4);
      std::memcpy(qm + k + 4, &b1, 4);
    }
    for (; k < p.K; ++k) {
      const int32_t v = _mm_cvtss_si32(_mm_mul_ss(_mm_set_ss(x[k]), _mm_set_ss(s)));
      qm[k] = static_cast<int8_t>(v < -128 ? -128 : v > 127 ? 127 : v);
    }
    for (; k < p.q_stride; ++k) qm[k] = 0;
    for (int64_t g = 0, g0 = 0; g < p.n_groups; ++g, g0 += p.group_size) {
      const int64_t g1 = g0 + p.group_size < p.K ? g0 + p.group_size : p.K;
      int64_t j = g0;
      __m256i acc = _mm256_setzero_si256();
      const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
      for (; j + 32 <= g1; j += 32)
        acc = _mm256_add_epi64(acc, _mm256_sad_epu8(_mm256_xor_si256(
                                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qm + j)), bias),
                                                    _mm256_setzero_si256()));
      alignas(32) int64_t parts[4];
      _mm256_store_si256(reinterpret_cast<__m256i*>(parts), acc);
      int64_t sum = parts[0] + parts[1] + parts[2] + parts[3] - 128 * (j - g0);
      for (; j < g1; ++j) sum += qm[j];
      group_sum[m * p.n_groups + g] = static_cast<int32_t>(sum);
    }
  }
}

// Float16 weights: 8 halves -> 8 floats per VCVTPH2PS (F16C), then FMA; MB activation rows share each conversion.
#define BITCONV_AVX2_F16C __attribute__((target("avx2,fma,f16c")))

template <int MB, int U>
BITCONV_AVX2_F16C void half_rows(const HalfProblem& p, int64_t m0, int64_t n0, int64_t n1) {
  const float* a[MB];
  for (int r = 0; r < MB; ++r) a[r] = p.a + (m0 + r) * p.K;
  for (int64_t n = n0; n < n1; ++n) {
    const uint16_t* w = p.w + n * p.K;
    __m256 acc[MB][U];
    for (int r = 0; r < MB; ++r)
      for (int u = 0; u < U; ++u) acc[r][u] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 * U <= p.K; k += 8 * U)
      for (int u = 0; u < U; ++u) {
        const __m256 wf = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k + 8 * u)));
        for (int r = 0; r < MB; ++r) acc[r][u] = _mm256_fmadd_ps(_mm256_loadu_ps(a[r] + k + 8 * u), wf, acc[r][u]);
      }
    for (int r = 0; r < MB; ++r) {
      __m256 sum = acc[r][0];
      for (int u = 1; u < U; ++u) sum = _mm256_add_ps(sum, acc[r][u]);
      const __m128 h = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
      const __m128 h2 = _mm_add_ps(h, _mm_movehl_ps(h, h));
      float y = _mm_cvtss_f32(_mm_add_ss(h2, _mm_shuffle_ps(h2, h2, 1)));
      for (int64_t kk = k; kk < p.K; ++kk) y += a[r][kk] * half_to_float(w[kk]);
      p.y[(m0 + r) * p.N + n] = y;
    }
  }
}

BITCONV_AVX2_F16C void gemm_half(const HalfProblem& p, int64_t n0, int64_t n1) {
  int64_t m = 0;
  for (; m + 4 <= p.M; m += 4) half_rows<4, 2>(p, m, n0, n1);
  for (; m < p.M; ++m) half_rows<1, 4>(p, m, n0, n1);
}

}  // namespace

KernelSet avx2_kernels() {
  KernelSet k{"avx2", gemm_float, gemm_int8, quantize_int8, true};
  k.gemm_half = gemm_half;
  return k;
}

}  // namespace bitconv

#else  // not x86: no avx2 code; the dispatcher never selects it
namespace bitconv {
KernelSet avx2_kernels() { return scalar_kernels(); }
}  // namespace bitconv
#endif
