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

#include <algorithm>
#include <cstring>
#include <vector>

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

BITCONV_AVX512 void gemm_float_decode(const GemmProblem& p, int64_t n0, int64_t n1) {
  int64_t m = 0;
  for (; m + 4 <= p.M; m += 4) gemm_float_block<4, 2>(p, m, n0, n1);
  if (p.M - m >= 2) {
    gemm_float_block<2, 2>(p, m, n0, n1);
    m += 2;
  }
  if (m < p.M) gemm_float_block<1, 4>(p, m, n0, n1);
}

// ---- float activations, few rows: table lookups over 16 output columns at once --------------------------------
//
// For every pair of input columns (k, k+1) of an activation row, a 16-entry table holds
//     T[nibble] = a[k] * t(nibble & 3) + a[k+1] * t(nibble >> 2),   t(code) = code - 2,
// i.e. the pair's contribution for each of the 16 possible code pairs. A 32-bit word of codes (16 columns) from
// each of 16 output rows fills one register; shifting it right by 4s puts the code pair s of every row in the low
// 4 bits, which VPERMPS uses to look up the 16 rows' contributions at once. Three instructions per 32 weights
// instead of four per 16, which matters where 512-bit operations run at half rate. The decode kernel above is kept
// for many activation rows, where one decoded trit vector serves several rows.
constexpr int64_t kLutTileRows = 4;   // activation rows sharing one pass over the codes
constexpr int64_t kLutColumns = 16;   // output columns per lookup register

bool lut_applies(const GemmProblem& p) {
  return (p.scale_kind != ScaleKind::kGroup || p.group_size % 16 == 0) && p.K >= 16 && p.N >= kLutColumns &&
         p.row_bytes <= (int64_t{1} << 26);
}

// one table of 16 floats per pair of input columns, for each activation row: [M][K / 16][8][16]
// From this many activation rows the float path multiplies decoded weight panels instead (further below)
constexpr int64_t kPanelMinRows = 16;
bool panel_applies(const GemmProblem& p) { return p.M >= kPanelMinRows && lut_applies(p); }

int64_t lut_workspace(const GemmProblem& p) {
  return lut_applies(p) && !panel_applies(p) ? p.M * (p.K / 16) * 8 * 16 : 0;
}

BITCONV_AVX512 void lut_prepare(const GemmProblem& p, float* tables) {
  const __m512 t_lo = _mm512_setr_ps(-2, -1, 0, 1, -2, -1, 0, 1, -2, -1, 0, 1, -2, -1, 0, 1);
  const __m512 t_hi = _mm512_setr_ps(-2, -2, -2, -2, -1, -1, -1, -1, 0, 0, 0, 0, 1, 1, 1, 1);
  const int64_t pairs = (p.K / 16) * 8;
  for (int64_t m = 0; m < p.M; ++m) {
    const float* a = p.a + m * p.K;
    float* t = tables + m * pairs * 16;
    for (int64_t j = 0; j < pairs; ++j) {
      // a * t_lo is exact (t is a small integer); the FMA rounds once
      const __m512 v = _mm512_fmadd_ps(_mm512_set1_ps(a[2 * j + 1]), t_hi, _mm512_mul_ps(_mm512_set1_ps(a[2 * j]), t_lo));
      _mm512_storeu_ps(t + 16 * j, v);
    }
  }
}

// Input columns per pass of the lookup kernels: the tables of one pass (512 bytes per 16 columns and activation
// row) stay in the L1 cache while every row block of the task reads them, instead of streaming all K / 2 tables
// (128 KB per activation row at K = 4096) from L2 once per 16 output columns.
constexpr int64_t kLutPassBytes = 16 * 1024;

int64_t lut_pass_columns(const GemmProblem& p, int64_t rows) {
  int64_t columns = std::max<int64_t>(16, kLutPassBytes / (rows * 512) * 16);
  if (p.scale_kind == ScaleKind::kGroup)  // a pass holds whole groups, so each group's sum is scaled once
    columns = std::max<int64_t>(1, columns / p.group_size) * p.group_size;
  return columns;
}

// The scales of output rows n0 .. n0+16 for group g (g = 0 unless grouped).
BITCONV_AVX512 inline __m512 scales16(const GemmProblem& p, int64_t n0, int64_t g) {
  switch (p.scale_kind) {
    case ScaleKind::kTensor: return _mm512_set1_ps(p.scale[0]);
    case ScaleKind::kChannel: return _mm512_loadu_ps(p.scale + n0);
    default: {
      const __m512i rows = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
      return _mm512_i32gather_ps(_mm512_mullo_epi32(rows, _mm512_set1_epi32(static_cast<int>(p.n_groups))),
                                 p.scale + n0 * p.n_groups + g, 4);
    }
  }
}

// Y[m0 .. m0+MB, n0 .. n0+16) += the contribution of input columns [k_begin, k_end) (whole groups when grouped),
// from the interleaved code words of this row block (`words`); `first` starts Y from zero.
template <int MB>
BITCONV_AVX512 void lut_tile(const GemmProblem& p, const uint32_t* words, int64_t m0, int64_t n0, int64_t k_begin,
                             int64_t k_end, bool first) {
  const int64_t pairs = (p.K / 16) * 8;
  const uint8_t* block = p.codes + n0 * p.row_bytes;
  __m512 y[MB];
  for (int r = 0; r < MB; ++r) y[r] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(p.y + (m0 + r) * p.N + n0);
  const bool grouped = p.scale_kind == ScaleKind::kGroup;
  for (int64_t g0 = k_begin; g0 < k_end;) {
    const int64_t g = grouped ? g0 / p.group_size : 0;
    const int64_t g1 = grouped ? std::min(g0 + p.group_size, k_end) : k_end;
    const int64_t lut_end = g0 + ((g1 - g0) / 16) * 16;  // g0 is a multiple of 16 here
    // independent accumulators per row, enough to hide the add latency when few rows share a pass
    constexpr int A = MB == 1 ? 8 : MB == 2 ? 4 : 2;
    __m512 acc[MB][A];
    for (int r = 0; r < MB; ++r)
      for (int j = 0; j < A; ++j) acc[r][j] = _mm512_setzero_ps();
    for (int64_t k = g0; k < lut_end; k += 16) {
      const __m512i w = _mm512_loadu_si512(words + k);  // (k / 16) * 16 words
      __m512i idx[8];
      for (int s = 0; s < 8; ++s) idx[s] = _mm512_srli_epi32(w, 4 * s);
      for (int r = 0; r < MB; ++r) {
        const float* t = p.a_tables + (m0 + r) * pairs * 16 + (k / 2) * 16;
        for (int s = 0; s < 8; ++s)
          acc[r][s % A] = _mm512_add_ps(acc[r][s % A], _mm512_permutexvar_ps(idx[s], _mm512_loadu_ps(t + 16 * s)));
      }
    }
    const __m512 s = scales16(p, n0, g);
    for (int r = 0; r < MB; ++r) {
      for (int j = A / 2; j > 0; j /= 2)
        for (int i = 0; i < j; ++i) acc[r][i] = _mm512_add_ps(acc[r][i], acc[r][i + j]);
      __m512 sum = acc[r][0];
      if (lut_end < g1) {  // a group (or K) that ends off a 16-column boundary: its tail per output row
        alignas(64) float tail[16];
        const float* a = p.a + (m0 + r) * p.K;
        for (int i = 0; i < 16; ++i) tail[i] = dot_float_scalar(block + i * p.row_bytes, a, lut_end, g1);
        sum = _mm512_add_ps(sum, _mm512_load_ps(tail));
      }
      y[r] = _mm512_fmadd_ps(s, sum, y[r]);
    }
    g0 = g1;
  }
  for (int r = 0; r < MB; ++r) _mm512_storeu_ps(p.y + (m0 + r) * p.N + n0, y[r]);
}

// Row blocks [n0, n1) (multiples of 16) for activation rows [m0, m0 + MB), pass by pass over K.
template <int MB>
BITCONV_AVX512 void lut_rows(const GemmProblem& p, const uint32_t* const* words, int64_t m0, int64_t n0, int64_t n1) {
  const int64_t pass = lut_pass_columns(p, MB);
  for (int64_t k = 0; k < p.K; k += pass) {
    const int64_t k_end = std::min(p.K, k + pass);
    for (int64_t n = n0; n < n1; n += kLutColumns)
      lut_tile<MB>(p, words[(n - n0) / kLutColumns], m0, n, k, k_end, k == 0);
  }
}

BITCONV_AVX512 void lut_columns(const GemmProblem& p, const uint32_t* const* words, int64_t n0, int64_t n1) {
  int64_t m = 0;
  for (; m + kLutTileRows <= p.M; m += kLutTileRows) lut_rows<4>(p, words, m, n0, n1);
  switch (p.M - m) {
    case 3: lut_rows<3>(p, words, m, n0, n1); break;
    case 2: lut_rows<2>(p, words, m, n0, n1); break;
    case 1: lut_rows<1>(p, words, m, n0, n1); break;
    default: break;
  }
}

// ---- float activations, many rows: decoded weight panels and a register-blocked multiply ---------------------
//
// With many activation rows (prompt processing) the lookup tables cost as much per row as the weights themselves,
// and the work is a plain float GEMM: decode a panel of weights once -- 32 output columns x kPanelK input columns,
// trit x scale as float, laid out [k][column] -- and let every group of kPanelRows activation rows multiply it from
// the L1 cache with broadcast-FMAs (12 accumulators, 2 weight loads and 6 broadcasts per 12 FMAs). The interleaved
// code words decode straight into that layout: a shift puts code k of 16 rows in the low bits of 16 lanes, and a
// permute against the trit table turns them into floats. The scale is folded into the panel, so every granularity
// takes the same path.
constexpr int64_t kPanelRows = 6;  // activation rows per register block
constexpr int64_t kPanelK = 128;   // input columns per panel: 128 x 32 floats = 16 KB

// panel[k - k0][16 * b + i] = t(row n0 + 16 b + i, k) * scale, for k in [k0, k1) and NB blocks of 16 rows
template <int NB>
BITCONV_AVX512 void decode_panel(const GemmProblem& p, const uint32_t* const* words, int64_t n0, int64_t k0,
                                 int64_t k1, float* panel) {
  const __m512 table = _mm512_setr_ps(-2, -1, 0, 1, -2, -1, 0, 1, -2, -1, 0, 1, -2, -1, 0, 1);
  const int64_t k16_end = std::min(k1, p.K / 16 * 16);  // interleaved words cover whole runs of 16 columns
  for (int b = 0; b < NB; ++b) {
    const int64_t nb = n0 + 16 * b;
    int64_t group = -1;
    __m512 s = _mm512_setzero_ps();
    for (int64_t k = k0; k < k16_end; k += 16) {
      const int64_t g = p.scale_kind == ScaleKind::kGroup ? k / p.group_size : 0;  // groups hold whole runs
      if (g != group) {
        group = g;
        s = scales16(p, nb, g);
      }
      const __m512i w = _mm512_loadu_si512(words[b] + k);  // (k / 16) * 16 words: this run's 16 rows
      float* dst = panel + (k - k0) * 16 * NB + 16 * b;
      for (int c = 0; c < 16; ++c) {
        const __m512 t = _mm512_permutexvar_ps(_mm512_srli_epi32(w, 2 * c), table);
        _mm512_storeu_ps(dst + c * 16 * NB, _mm512_mul_ps(t, s));
      }
    }
    for (int64_t k = k16_end; k < k1; ++k)  // K's last columns off a 16-column boundary
      for (int i = 0; i < 16; ++i) {
        const int64_t n = nb + i;
        const float t = static_cast<float>(code_at(p.codes + n * p.row_bytes, k) - 2);
        panel[(k - k0) * 16 * NB + 16 * b + i] = t * scale_at(p, n, k / p.group_size);
      }
  }
}

// Y[m0 .. m0+MR, n0 .. n0+16 NB) += A[m0 .. m0+MR, k0 .. k1) x panel (or = when `first`)
template <int MR, int NB>
BITCONV_AVX512 void panel_multiply(const GemmProblem& p, const float* panel, int64_t m0, int64_t n0, int64_t k0,
                                   int64_t k1, bool first) {
  __m512 acc[MR][NB];
  for (int r = 0; r < MR; ++r)
    for (int b = 0; b < NB; ++b)
      acc[r][b] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(p.y + (m0 + r) * p.N + n0 + 16 * b);
  const float* a = p.a + m0 * p.K;
  for (int64_t k = k0; k < k1; ++k) {
    __m512 w[NB];
    for (int b = 0; b < NB; ++b) w[b] = _mm512_loadu_ps(panel + (k - k0) * 16 * NB + 16 * b);
    for (int r = 0; r < MR; ++r) {
      const __m512 x = _mm512_set1_ps(a[r * p.K + k]);
      for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_fmadd_ps(x, w[b], acc[r][b]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int b = 0; b < NB; ++b) _mm512_storeu_ps(p.y + (m0 + r) * p.N + n0 + 16 * b, acc[r][b]);
}

template <int NB>
BITCONV_AVX512 void panel_rows(const GemmProblem& p, const float* panel, int64_t n0, int64_t k0, int64_t k1) {
  const bool first = k0 == 0;
  int64_t m = 0;
  for (; m + kPanelRows <= p.M; m += kPanelRows) panel_multiply<kPanelRows, NB>(p, panel, m, n0, k0, k1, first);
  switch (p.M - m) {
    case 5: panel_multiply<5, NB>(p, panel, m, n0, k0, k1, first); break;
    case 4: panel_multiply<4, NB>(p, panel, m, n0, k0, k1, first); break;
    case 3: panel_multiply<3, NB>(p, panel, m, n0, k0, k1, first); break;
    case 2: panel_multiply<2, NB>(p, panel, m, n0, k0, k1, first); break;
    case 1: panel_multiply<1, NB>(p, panel, m, n0, k0, k1, first); break;
    default: break;
  }
}

// Row blocks [n0, n1) (multiples of 16), every activation row: two blocks (32 columns) per panel where possible.
BITCONV_AVX512 void panel_columns(const GemmProblem& p, const uint32_t* const* words, int64_t n0, int64_t n1) {
  alignas(64) float panel[kPanelK * 32];
  for (int64_t n = n0; n < n1;) {
    const uint32_t* const* w = words + (n - n0) / 16;
    const bool two = n + 32 <= n1;
    for (int64_t k = 0; k < p.K; k += kPanelK) {
      const int64_t k_end = std::min(p.K, k + kPanelK);
      if (two) {
        decode_panel<2>(p, w, n, k, k_end, panel);
        panel_rows<2>(p, panel, n, k, k_end);
      } else {
        decode_panel<1>(p, w, n, k, k_end, panel);
        panel_rows<1>(p, panel, n, k, k_end);
      }
    }
    n += two ? 32 : 16;
  }
}

BITCONV_AVX512 void gemm_float(const GemmProblem& p, int64_t n0, int64_t n1) {
  const bool panels = panel_applies(p);
  if (!panels && (!p.a_tables || !lut_applies(p))) {
    gemm_float_decode(p, n0, n1);
    return;
  }
  // row blocks start at multiples of 16 so they line up with the interleaved codes
  int64_t n = n0;
  if (n % kLutColumns) {
    const int64_t first = std::min(n1, (n / kLutColumns + 1) * kLutColumns);
    gemm_float_decode(p, n, first);
    n = first;
  }
  const int64_t blocks_end = n + (n1 - n) / kLutColumns * kLutColumns;
  const int64_t block_words = (p.K / 16) * 16;
  std::vector<const uint32_t*> words;
  std::vector<uint32_t> local;  // a weight that is not a constant initializer is regrouped here
  if (!p.interleaved) local.resize(static_cast<size_t>((blocks_end - n) / kLutColumns * block_words));
  for (int64_t b = n; b < blocks_end; b += kLutColumns) {
    if (p.interleaved) {
      words.push_back(p.interleaved + (b / kLutColumns) * block_words);
    } else {
      uint32_t* dst = local.data() + (b - n) / kLutColumns * block_words;
      interleave_block(p.codes, p.row_bytes, p.K, b, dst);
      words.push_back(dst);
    }
  }
  if (blocks_end > n) {
    if (panels)
      panel_columns(p, words.data(), n, blocks_end);
    else
      lut_columns(p, words.data(), n, blocks_end);
  }
  if (blocks_end < n1) gemm_float_decode(p, blocks_end, n1);
}

// The activations are permuted so that one load of code bytes serves a whole chunk: groups run in chunks of 256
// (one 64-byte load of codes, four shifts) and then of 64 (a 16-byte load broadcast to the four 128-bit lanes).
constexpr int64_t kChunk = 64;
constexpr int64_t kWideChunk = 256;

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
      const int64_t chunked = chunked_length(g0, g1, kChunk);
      const int64_t chunked_end = g0 + chunked, wide_end = g0 + wide_length(chunked, kWideChunk);
      __m512i acc[MB][2];
      for (int r = 0; r < MB; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_si512();
      int64_t k = g0;
      for (; k < wide_end; k += kWideChunk) {
        // 256 codes in one load: shifting by 2s and masking leaves, in byte b, the code of k + 4b + s
        const __m512i w = _mm512_loadu_si512(row + (k >> 2));
        for (int s = 0; s < 4; ++s) {
          const __m512i c = _mm512_and_si512(s ? _mm512_srli_epi64(w, 2 * s) : w, low2);
          for (int r = 0; r < MB; ++r)
            acc[r][s & 1] = _mm512_dpbusd_epi32(acc[r][s & 1], c, _mm512_loadu_si512(q[r] + k + 64 * s));
        }
      }
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

// Float16 weights: 16 halves -> 16 floats per VCVTPH2PS, then FMA; MB activation rows share each conversion. W is
// read one row after the other with one accumulator per activation row: on the EPYC of docs/benchmarks/gemv.md
// that ran the GPT-2 lm_head (50257 x 768) in 2.4 ms, against 3.2 ms with two accumulators, 5.2 ms with four, and
// about 7 ms reading 4 to 16 rows of W side by side (to save horizontal sums) -- one-off measurements while
// writing this, not a benchmark in the repository.
template <int MB>
BITCONV_AVX512 void half_rows(const HalfProblem& p, int64_t m0, int64_t n0, int64_t n1) {
  const float* a[MB];
  for (int r = 0; r < MB; ++r) a[r] = p.a + (m0 + r) * p.K;
  for (int64_t n = n0; n < n1; ++n) {
    const uint16_t* w = p.w + n * p.K;
    __m512 acc[MB];
    for (int r = 0; r < MB; ++r) acc[r] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= p.K; k += 16) {
      const __m512 wf = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k)));
      for (int r = 0; r < MB; ++r) acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(a[r] + k), wf, acc[r]);
    }
    for (int r = 0; r < MB; ++r) {
      float y = _mm512_reduce_add_ps(acc[r]);
      for (int64_t kk = k; kk < p.K; ++kk) y += a[r][kk] * half_to_float(w[kk]);
      p.y[(m0 + r) * p.N + n] = y;
    }
  }
}

BITCONV_AVX512 void gemm_half(const HalfProblem& p, int64_t n0, int64_t n1) {
  int64_t m = 0;
  for (; m + 4 <= p.M; m += 4) half_rows<4>(p, m, n0, n1);
  for (; m < p.M; ++m) half_rows<1>(p, m, n0, n1);
}

}  // namespace

KernelSet avx512_kernels() {
  KernelSet k{"avx512", gemm_float, gemm_int8, kChunk, lut_workspace, lut_prepare, kWideChunk};
  k.gemm_half = gemm_half;
  return k;
}

}  // namespace bitconv

#else  // not x86: no avx512 code; the dispatcher never selects it
namespace bitconv {
KernelSet avx512_kernels() { return scalar_kernels(); }
}  // namespace bitconv
#endif
