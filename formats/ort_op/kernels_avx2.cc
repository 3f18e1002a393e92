// AVX2 + FMA kernels, the same scheme as kernels_avx512.cc at half the width.
//
// Float activations: 8 codes (16 bits) broadcast to 8 lanes, lane i shifted right by 2i; VPERMPS reads the low 3
// bits (this code plus the next code's low bit) from an 8-entry table of t = (index & 3) - 2.
// Int8 activations: 8 code bytes (32 codes) broadcast to the four 64-bit lanes, lane L shifted right by 2L and
// masked, so lane L byte b is the code of k = 4b + L (the activations were permuted to match); VPMADDUBSW
// multiplies the unsigned codes by the signed activations (|sum of a pair| <= 2 * 3 * 128, no saturation) and
// VPMADDWD widens to int32.
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

constexpr int64_t kChunk = 32;

BITCONV_AVX2 inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

template <int MB>
BITCONV_AVX2 void gemm_int8_block(const GemmProblem& p, int64_t m0, int64_t n0, int64_t n1) {
  const __m256i shifts = _mm256_setr_epi64x(0, 2, 4, 6);
  const __m256i low2 = _mm256_set1_epi8(3);
  const __m256i ones = _mm256_set1_epi16(1);
  const int8_t* q[MB];
  for (int r = 0; r < MB; ++r) q[r] = p.q + (m0 + r) * p.K;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = p.codes + n * p.row_bytes;
    float y[MB] = {};
    for (int64_t g = 0, g0 = 0; g0 < p.K; ++g, g0 += p.group_size) {
      const int64_t g1 = g0 + p.group_size < p.K ? g0 + p.group_size : p.K;
      const int64_t chunked_end = g0 + chunked_length(g0, g1, kChunk);
      __m256i acc[MB][2];
      for (int r = 0; r < MB; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
      int64_t k = g0;
      int u = 0;
      for (; k < chunked_end; k += kChunk, u ^= 1) {
        int64_t w;
        std::memcpy(&w, row + (k >> 2), 8);
        const __m256i c = _mm256_and_si256(_mm256_srlv_epi64(_mm256_set1_epi64x(w), shifts), low2);
        for (int r = 0; r < MB; ++r) {
          const __m256i prod = _mm256_maddubs_epi16(c, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q[r] + k)));
          acc[r][u] = _mm256_add_epi32(acc[r][u], _mm256_madd_epi16(prod, ones));
        }
      }
      const float s = scale_at(p, n, g);
      for (int r = 0; r < MB; ++r) {
        const int32_t isum = hsum_epi32(_mm256_add_epi32(acc[r][0], acc[r][1])) -
                             2 * p.q_chunk_sum[(m0 + r) * p.n_groups + g] +
                             dot_int8_scalar(row, q[r], chunked_end, g1);
        y[r] += s * static_cast<float>(isum);
      }
    }
    for (int r = 0; r < MB; ++r) p.y[(m0 + r) * p.N + n] = y[r] / p.q_row_scale[m0 + r];
  }
}

BITCONV_AVX2 void gemm_int8(const GemmProblem& p, int64_t n0, int64_t n1) {
  int64_t m = 0;
  for (; m + 4 <= p.M; m += 4) gemm_int8_block<4>(p, m, n0, n1);
  for (; m < p.M; ++m) gemm_int8_block<1>(p, m, n0, n1);
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
  KernelSet k{"avx2", gemm_float, gemm_int8, kChunk};
  k.gemm_half = gemm_half;
  return k;
}

}  // namespace bitconv

#else  // not x86: no avx2 code; the dispatcher never selects it
namespace bitconv {
KernelSet avx2_kernels() { return scalar_kernels(); }
}  // namespace bitconv
#endif
