// AVX-512 kernels (F + BW + VL + DQ + VNNI). Compiled with a function-level target attribute, so the rest of the
// library keeps the baseline ISA and this code only runs after the run-time CPU check in ternary_matmul.cc.
//
// Float activations: 16 codes (one 32-bit word) are broadcast to the 16 lanes, lane i shifted right by 2i, and
// a permute against a 16-entry table turns the low 4 bits (this code plus the next code's low bit) into the trit
// t = code - 2 as a float; then one FMA per activation row. No branches, no masks to build.
// Int8 activations: 16 code bytes (64 codes) are broadcast to the four 128-bit lanes, lane L shifted right by 2L
// and masked to 2 bits, so lane L byte b holds the code of k = 4b + L; the activations were laid out in the same
// order (permute_int8_rows), and VPDPBUSD multiplies unsigned codes by signed activations, four at a time. The
// codes are t + 2, so the caller's chunk sums remove the 2 * sum(q) offset.
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <cstring>

#define BITCONV_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma")))

namespace bitconv {
namespace {

BITCONV_AVX512 inline __m512 trits16(const uint8_t* codes4, __m512i shifts, __m512 table) {
  uint32_t w;
  std::memcpy(&w, codes4, 4);
  return _mm512_permutexvar_ps(_mm512_srlv_epi32(_mm512_set1_epi32(static_cast<int>(w)), shifts), table);
}

// Float dot products of one code row with MB activation rows over [k0, k1), k0 a multiple of 4.
template <int MB, int U>
BITCONV_AVX512 void dot_rows_float(const uint8_t* row, const float* const* a, int64_t k0, int64_t k1, float* out) {
  const __m512i shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512 table = _mm512_setr_ps(-2, -1, 0, 1, -2, -1, 0, 1, -2, -1, 0, 1, -2, -1, 0, 1);
  __m512 acc[MB][U];
  for (int r = 0; r < MB; ++r)
    for (int u = 0; u < U; ++u) acc[r][u] = _mm512_setzero_ps();
  int64_t k = k0;
  for (; k + 16 * U <= k1; k += 16 * U) {
    for (int u = 0; u < U; ++u) {
      const __m512 t = trits16(row + ((k + 16 * u) >> 2), shifts, table);
      for (int r = 0; r < MB; ++r) acc[r][u] = _mm512_fmadd_ps(_mm512_loadu_ps(a[r] + k + 16 * u), t, acc[r][u]);
    }
  }
  for (; k + 16 <= k1; k += 16) {
    const __m512 t = trits16(row + (k >> 2), shifts, table);
    for (int r = 0; r < MB; ++r) acc[r][0] = _mm512_fmadd_ps(_mm512_loadu_ps(a[r] + k), t, acc[r][0]);
  }
  for (int r = 0; r < MB; ++r) {
    __m512 s = acc[r][0];
    for (int u = 1; u < U; ++u) s = _mm512_add_ps(s, acc[r][u]);
    out[r] = _mm512_reduce_add_ps(s) + dot_float_scalar(row, a[r], k, k1);
  }
}

template <int MB, int U>
BITCONV_AVX512 void gemm_float_block(const GemmProblem& p, int64_t m0, int64_t n0, int64_t n1) {
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

BITCONV_AVX512 void gemm_float(const GemmProblem& p, int64_t n0, int64_t n1) {
  int64_t m = 0;
  for (; m + 4 <= p.M; m += 4) gemm_float_block<4, 2>(p, m, n0, n1);
  if (p.M - m >= 2) {
    gemm_float_block<2, 2>(p, m, n0, n1);
    m += 2;
  }
  if (m < p.M) gemm_float_block<1, 4>(p, m, n0, n1);
}

constexpr int64_t kChunk = 64;

template <int MB>
BITCONV_AVX512 void gemm_int8_block(const GemmProblem& p, int64_t m0, int64_t n0, int64_t n1) {
  const __m512i shifts = _mm512_setr_epi64(0, 0, 2, 2, 4, 4, 6, 6);
  const __m512i low2 = _mm512_set1_epi8(3);
  const int8_t* q[MB];
  for (int r = 0; r < MB; ++r) q[r] = p.q + (m0 + r) * p.K;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = p.codes + n * p.row_bytes;
    float y[MB] = {};
    for (int64_t g = 0, g0 = 0; g0 < p.K; ++g, g0 += p.group_size) {
      const int64_t g1 = g0 + p.group_size < p.K ? g0 + p.group_size : p.K;
      const int64_t chunked_end = g0 + chunked_length(g0, g1, kChunk);
      __m512i acc[MB][2];
      for (int r = 0; r < MB; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_si512();
      int64_t k = g0;
      for (; k + 2 * kChunk <= chunked_end; k += 2 * kChunk) {
        for (int u = 0; u < 2; ++u) {
          const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + ((k + u * kChunk) >> 2)));
          const __m512i c = _mm512_and_si512(_mm512_srlv_epi64(_mm512_broadcast_i32x4(bytes), shifts), low2);
          for (int r = 0; r < MB; ++r)
            acc[r][u] = _mm512_dpbusd_epi32(acc[r][u], c, _mm512_loadu_si512(q[r] + k + u * kChunk));
        }
      }
      for (; k < chunked_end; k += kChunk) {
        const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + (k >> 2)));
        const __m512i c = _mm512_and_si512(_mm512_srlv_epi64(_mm512_broadcast_i32x4(bytes), shifts), low2);
        for (int r = 0; r < MB; ++r) acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], c, _mm512_loadu_si512(q[r] + k));
      }
      const float s = scale_at(p, n, g);
      for (int r = 0; r < MB; ++r) {
        const int32_t isum = _mm512_reduce_add_epi32(_mm512_add_epi32(acc[r][0], acc[r][1])) -
                             2 * p.q_chunk_sum[(m0 + r) * p.n_groups + g] +
                             dot_int8_scalar(row, q[r], chunked_end, g1);
        y[r] += s * static_cast<float>(isum);
      }
    }
    for (int r = 0; r < MB; ++r) p.y[(m0 + r) * p.N + n] = y[r] / p.q_row_scale[m0 + r];
  }
}

BITCONV_AVX512 void gemm_int8(const GemmProblem& p, int64_t n0, int64_t n1) {
  int64_t m = 0;
  for (; m + 4 <= p.M; m += 4) gemm_int8_block<4>(p, m, n0, n1);
  for (; m < p.M; ++m) gemm_int8_block<1>(p, m, n0, n1);
}

}  // namespace

KernelSet avx512_kernels() { return {"avx512", gemm_float, gemm_int8, kChunk}; }

}  // namespace bitconv

#else  // not x86: no avx512 code; the dispatcher never selects it
namespace bitconv {
KernelSet avx512_kernels() { return scalar_kernels(); }
}  // namespace bitconv
#endif
