// AVX-512 kernels (F + BW + VL + DQ + VNNI). Compiled with a function-level target attribute, so the rest of the
// library keeps the baseline ISA and this code only runs after the run-time CPU check in op_support.cc.
//
// Float activations: 16 codes (one 32-bit word) are broadcast to the 16 lanes, lane i shifted right by 2i, and
// a permute against a 16-entry table turns the low 4 bits (this code plus the next code's low bit) into the trit
// t = code - 2 as a float; then one FMA per activation row. No branches, no masks to build. (And, further below,
// lookup tables for few activation rows and decoded weight panels for many.)
// Int8 activations: VPDPBUSD over the tile layout of kernels.h, 16 output rows per 64-byte tile (below).
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

// ---- int8 activations: VPDPBUSD over the tile layout (kernels.h, tile_codes) ----------------------------------
//
// A 64-byte tile holds 16 output rows x 16 input columns; lane i of the accumulators is output row i, so no
// horizontal sums are needed. Per tile: four ANDs with 0x03, 0x0C, 0x30, 0xC0 leave code * 4^s for the columns
// 16c + 4s .. +3 (no shifts: the weight of each accumulator is folded out at the end with an exact arithmetic shift),
// four 32-bit broadcasts of those activations, and four VPDPBUSD (unsigned code x signed activation, four
// products a lane). The codes are t + 2, so 2 * sum(q) of the group comes off at the end.

// keeps the compiler from fusing a product into the following add (kernels.h: every set rounds both)
BITCONV_AVX512 inline __m512 rounded(__m512 v) {
  asm("" : "+v"(v));
  return v;
}

// The scales of the `valid` output rows from n0 for group g (g = 0 unless grouped); lanes past `valid` read nothing.
BITCONV_AVX512 inline __m512 scales16_masked(const GemmProblem& p, int64_t n0, int64_t g, int64_t valid) {
  const __mmask16 mask = valid >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << valid) - 1);
  switch (p.scale_kind) {
    case ScaleKind::kTensor: return _mm512_set1_ps(p.scale[0]);
    case ScaleKind::kChannel: return _mm512_maskz_loadu_ps(mask, p.scale + n0);
    default: {
      const __m512i rows = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
      return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mask,
                                      _mm512_mullo_epi32(rows, _mm512_set1_epi32(static_cast<int>(p.n_groups))),
                                      p.scale + n0 * p.n_groups + g, 4);
    }
  }
}

// acc += codes (unsigned bytes) x the four signed bytes at q broadcast to every lane, four products a lane:
// VPDPBUSD with an embedded broadcast of its memory operand (one fused instruction, no separate broadcast), and in
// asm because GCC 12 copies the accumulator of the _mm512_dpbusd_epi32 intrinsic in and out of a second register.
BITCONV_AVX512 inline __attribute__((always_inline)) __m512i dpbusd_bcast(__m512i acc, __m512i codes,
                                                                          const int8_t* q) {
  asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(codes), "m"(*reinterpret_cast<const int32_t*>(q)));
  return acc;
}

// The four accumulators of a row (field s holds code * 4^s products: exact multiples of 4^s, so the arithmetic
// shifts are exact divisions) as one exact sum.
BITCONV_AVX512 inline __m512i fold_fields(__m512i a0, __m512i a1, __m512i a2, __m512i a3) {
  return _mm512_add_epi32(_mm512_add_epi32(a0, _mm512_srai_epi32(a1, 2)),
                          _mm512_add_epi32(_mm512_srai_epi32(a2, 4), _mm512_srai_epi32(a3, 6)));
}

// Tiles are read in one stream (a row block's runs, then the next block's); asking for the tile this many bytes
// ahead into L1 kept more memory requests in flight than the hardware prefetcher alone: about 10% less time per
// GEMV with the weights coming from memory on the machine of docs/benchmarks/ternary_gemv.md. Never past the end of
// the thread-pool task's tiles: the next task may run on another core, which would fetch them again.
constexpr int64_t kTilePrefetch = 4096;

BITCONV_AVX512 inline __attribute__((always_inline)) void prefetch_ahead(const uint8_t* at, const uint8_t* end) {
  const uint8_t* ahead = at + kTilePrefetch;
  if (ahead < end) _mm_prefetch(reinterpret_cast<const char*>(ahead), _MM_HINT_T0);
}

// One tile (run `c`) against MB activation rows, into acc[r][s].
template <int MB>
BITCONV_AVX512 inline __attribute__((always_inline)) void tile_step(const uint8_t* t, const int8_t* const* q,
                                                                    int64_t c, __m512i (*acc)[4],
                                                                    const uint8_t* end) {
  prefetch_ahead(t + c * kTileBytes, end);
  const __m512i w = _mm512_load_si512(t + c * kTileBytes);
  const __m512i x0 = _mm512_and_si512(w, _mm512_set1_epi8(0x03)), x1 = _mm512_and_si512(w, _mm512_set1_epi8(0x0C)),
                x2 = _mm512_and_si512(w, _mm512_set1_epi8(0x30)),
                x3 = _mm512_and_si512(w, _mm512_set1_epi8(static_cast<char>(0xC0)));
  for (int r = 0; r < MB; ++r) {
    const int8_t* qr = q[r] + c * kTileColumns;
    acc[r][0] = dpbusd_bcast(acc[r][0], x0, qr);
    acc[r][1] = dpbusd_bcast(acc[r][1], x1, qr + 4);
    acc[r][2] = dpbusd_bcast(acc[r][2], x2, qr + 8);
    acc[r][3] = dpbusd_bcast(acc[r][3], x3, qr + 12);
  }
}

// Runs [c0, c1) of one row block (tiles `t`) against MB activation rows: the exact sums of q * code per output row
// (before the 2 * sum(q) correction), in 32-bit lanes; each accumulator folds into `out` every kTileMaxRuns runs.
template <int MB>
BITCONV_AVX512 void tile_sums(const uint8_t* t, const int8_t* const* q, int64_t c0, int64_t c1, __m512i* out,
                              const uint8_t* end) {
  for (int r = 0; r < MB; ++r) out[r] = _mm512_setzero_si512();
  for (int64_t s0 = c0; s0 < c1; s0 += kTileMaxRuns) {
    const int64_t s1 = s0 + kTileMaxRuns < c1 ? s0 + kTileMaxRuns : c1;
    __m512i acc[MB][4];
    for (int r = 0; r < MB; ++r)
      for (int s = 0; s < 4; ++s) acc[r][s] = _mm512_setzero_si512();
    for (int64_t c = s0; c < s1; ++c) tile_step<MB>(t, q, c, acc, end);
    for (int r = 0; r < MB; ++r) out[r] = _mm512_add_epi32(out[r], fold_fields(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));
  }
}

// tile_sums for one activation row, two tiles a step into separate accumulators (eight VPDPBUSD chains, enough
// to hide its latency), written out so the compiler keeps every accumulator in its register.
BITCONV_AVX512 void tile_sums_1(const uint8_t* t, const int8_t* q, int64_t c0, int64_t c1, __m512i* out,
                                const uint8_t* end) {
  const __m512i m0 = _mm512_set1_epi8(0x03), m1 = _mm512_set1_epi8(0x0C), m2 = _mm512_set1_epi8(0x30),
                m3 = _mm512_set1_epi8(static_cast<char>(0xC0));
  *out = _mm512_setzero_si512();
  for (int64_t s0 = c0; s0 < c1; s0 += kTileMaxRuns) {
    const int64_t s1 = s0 + kTileMaxRuns < c1 ? s0 + kTileMaxRuns : c1;
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    const uint8_t* w = t + s0 * kTileBytes;
    const int8_t* x = q + s0 * kTileColumns;
    int64_t c = s0;
    for (; c + 2 <= s1; c += 2, w += 2 * kTileBytes, x += 2 * kTileColumns) {
      prefetch_ahead(w, end);
      prefetch_ahead(w + kTileBytes, end);
      const __m512i w0 = _mm512_load_si512(w), w1 = _mm512_load_si512(w + kTileBytes);
      a0 = dpbusd_bcast(a0, _mm512_and_si512(w0, m0), x);
      a1 = dpbusd_bcast(a1, _mm512_and_si512(w0, m1), x + 4);
      a2 = dpbusd_bcast(a2, _mm512_and_si512(w0, m2), x + 8);
      a3 = dpbusd_bcast(a3, _mm512_and_si512(w0, m3), x + 12);
      b0 = dpbusd_bcast(b0, _mm512_and_si512(w1, m0), x + 16);
      b1 = dpbusd_bcast(b1, _mm512_and_si512(w1, m1), x + 20);
      b2 = dpbusd_bcast(b2, _mm512_and_si512(w1, m2), x + 24);
      b3 = dpbusd_bcast(b3, _mm512_and_si512(w1, m3), x + 28);
    }
    if (c < s1) {
      const __m512i w0 = _mm512_load_si512(w);
      a0 = dpbusd_bcast(a0, _mm512_and_si512(w0, m0), x);
      a1 = dpbusd_bcast(a1, _mm512_and_si512(w0, m1), x + 4);
      a2 = dpbusd_bcast(a2, _mm512_and_si512(w0, m2), x + 8);
      a3 = dpbusd_bcast(a3, _mm512_and_si512(w0, m3), x + 12);
    }
    *out = _mm512_add_epi32(*out, fold_fields(_mm512_add_epi32(a0, b0), _mm512_add_epi32(a1, b1),
                                              _mm512_add_epi32(a2, b2), _mm512_add_epi32(a3, b3)));
  }
}

// Output rows [n0, n0 + 16) (one tile row block; fewer at the end of N) for activation rows [m0, m0 + MB).
template <int MB>
BITCONV_AVX512 void tile_block(const GemmProblem& p, int64_t m0, int64_t n0, const uint8_t* end) {
  const int64_t runs = tile_runs(p.K);
  const uint8_t* t = p.tiles + (n0 / kTileRows) * runs * kTileBytes;
  const int64_t valid = p.N - n0 < kTileRows ? p.N - n0 : kTileRows;
  const int8_t* q[MB];
  for (int r = 0; r < MB; ++r) q[r] = p.q + (m0 + r) * p.q_stride;
  __m512 y[MB];
  for (int r = 0; r < MB; ++r) y[r] = _mm512_setzero_ps();
  const int64_t group_runs = p.scale_kind == ScaleKind::kGroup ? p.group_size / kTileColumns : runs;
  for (int64_t g = 0, c0 = 0; c0 < runs; ++g, c0 += group_runs) {
    const int64_t c1 = c0 + group_runs < runs ? c0 + group_runs : runs;
    __m512i isum[MB];
    if constexpr (MB == 1)
      tile_sums_1(t, q[0], c0, c1, isum, end);
    else
      tile_sums<MB>(t, q, c0, c1, isum, end);
    const __m512 s = scales16_masked(p, n0, g, valid);
    for (int r = 0; r < MB; ++r) {
      const __m512i exact = _mm512_sub_epi32(isum[r], _mm512_set1_epi32(2 * p.q_group_sum[(m0 + r) * p.n_groups + g]));
      y[r] = _mm512_add_ps(y[r], rounded(_mm512_mul_ps(s, _mm512_cvtepi32_ps(exact))));
    }
  }
  const __mmask16 mask = valid >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << valid) - 1);
  for (int r = 0; r < MB; ++r)
    _mm512_mask_storeu_ps(p.y + (m0 + r) * p.N + n0, mask,
                          _mm512_div_ps(y[r], _mm512_set1_ps(p.q_row_scale[m0 + r])));
}

BITCONV_AVX512 void gemm_int8(const GemmProblem& p, int64_t n0, int64_t n1) {
  if (!p.tiles || !tiles_apply(p) || n0 % kTileRows) {
    gemm_int8_reference(p, n0, n1);
    return;
  }
  // this task's tiles, the first kTilePrefetch bytes asked for at once (prefetch_ahead takes over from there)
  const int64_t block_bytes = tile_runs(p.K) * kTileBytes;
  const uint8_t* begin = p.tiles + (n0 / kTileRows) * block_bytes;
  const uint8_t* end = p.tiles + tile_blocks(n1) * block_bytes;
  for (const uint8_t* at = begin; at < end && at < begin + kTilePrefetch; at += 64)
    _mm_prefetch(reinterpret_cast<const char*>(at), _MM_HINT_T0);
  for (int64_t n = n0; n < n1; n += kTileRows) {
    int64_t m = 0;
    for (; m + 4 <= p.M; m += 4) tile_block<4>(p, m, n, end);
    switch (p.M - m) {
      case 3: tile_block<2>(p, m, n, end); tile_block<1>(p, m + 2, n, end); break;
      case 2: tile_block<2>(p, m, n, end); break;
      case 1: tile_block<1>(p, m, n, end); break;
      default: break;
    }
  }
}

// quantize_int8_reference, 16 values at a time: the same float operations (|x|, max, 127 / max(amax, 1e-5),
// x * s), VCVTPS2DQ rounding half to even (the default MXCSR mode, as nearbyint) and VPMOVSDB saturating to
// [-128, 127]; a NaN converts to INT_MIN, which saturates to -128 as the reference's fmax/fmin make it.
BITCONV_AVX512 void quantize_int8(const GemmProblem& p, const float* a, int8_t* q, int32_t* group_sum,
                                  float* row_scale) {
  const __m512 sign = _mm512_set1_ps(-0.0f);
  for (int64_t m = 0; m < p.M; ++m) {
    const float* x = a + m * p.K;
    int8_t* qm = q + m * p.q_stride;
    __m512 vmax = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= p.K; k += 16)  // MAXPS returns its second operand when either is NaN: NaNs are skipped
      vmax = _mm512_max_ps(_mm512_andnot_ps(sign, _mm512_loadu_ps(x + k)), vmax);
    if (k < p.K) {
      const __mmask16 tail = static_cast<__mmask16>((1u << (p.K - k)) - 1);
      vmax = _mm512_max_ps(_mm512_andnot_ps(sign, _mm512_maskz_loadu_ps(tail, x + k)), vmax);
    }
    const float amax = _mm512_reduce_max_ps(vmax);
    const float s = 127.0f / (amax > 1e-5f ? amax : 1e-5f);
    row_scale[m] = s;
    const __m512 vs = _mm512_set1_ps(s);
    for (k = 0; k < p.q_stride; k += 16) {
      const __mmask16 in = p.K - k >= 16 ? static_cast<__mmask16>(0xFFFF)
                           : p.K > k    ? static_cast<__mmask16>((1u << (p.K - k)) - 1)
                                        : static_cast<__mmask16>(0);
      const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(in, x + k), vs));
      _mm_store_si128(reinterpret_cast<__m128i*>(qm + k), _mm512_maskz_cvtsepi32_epi8(in, v));
    }
    // group sums: bytes biased to unsigned, summed by VPSADBW against zero
    for (int64_t g = 0, g0 = 0; g < p.n_groups; ++g, g0 += p.group_size) {
      const int64_t g1 = g0 + p.group_size < p.K ? g0 + p.group_size : p.K;
      int64_t j = g0;
      __m512i acc = _mm512_setzero_si512();
      const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
      for (; j + 64 <= g1; j += 64)
        acc = _mm512_add_epi64(acc, _mm512_sad_epu8(_mm512_xor_si512(_mm512_loadu_si512(qm + j), bias),
                                                    _mm512_setzero_si512()));
      int64_t sum = _mm512_reduce_add_epi64(acc) - 128 * (j - g0);
      for (; j < g1; ++j) sum += qm[j];
      group_sum[m * p.n_groups + g] = static_cast<int32_t>(sum);
    }
  }
}

// Float16 weights: 16 halves -> 16 floats per VCVTPH2PS, then FMA. One routine computes a block of MB activation
// rows by R rows of W, so every output is summed in the same order whatever the batch or the thread split (decode
// and prefill, 1 or N threads, give the same bits): the even 16-element blocks of each 32 into one accumulator, the
// odd ones into a second, a last block of 16 into the first, then the horizontal sum of both and the scalar tail.
// Batches of activation rows share each conversion (MB = 4, R = 1). A lone activation row (decode, where the
// lm_head's read of W is the whole cost) takes two rows of W at a time (MB = 1, R = 2) and prefetches the rows four
// ahead: on the Ice Lake VM of docs/benchmarks/peer_decode.md (1 thread, GPT-2's 50257 x 768 head, the two builds
// timed alternately, 2026-12-01) that read W at about 11 GB/s (7.0 ms a call) against 7.2-8.9 GB/s (8.7-10.7 ms)
// for one row of W and one dependent FMA chain: more independent loads in flight.
template <int MB, int R>
BITCONV_AVX512 void half_block(const HalfProblem& p, int64_t m0, int64_t n) {
  const float* a[MB];
  const uint16_t* w[R];
  __m512 c[MB][R], d[MB][R];
  for (int i = 0; i < MB; ++i) a[i] = p.a + (m0 + i) * p.K;
  for (int r = 0; r < R; ++r) w[r] = p.w + (n + r) * p.K;
  for (int i = 0; i < MB; ++i)
    for (int r = 0; r < R; ++r) c[i][r] = d[i][r] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= p.K; k += 32)
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(w[r] + 4 * p.K + k), _MM_HINT_T0);
      const __m512 w0 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[r] + k)));
      const __m512 w1 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[r] + k + 16)));
      for (int i = 0; i < MB; ++i) {
        c[i][r] = _mm512_fmadd_ps(_mm512_loadu_ps(a[i] + k), w0, c[i][r]);
        d[i][r] = _mm512_fmadd_ps(_mm512_loadu_ps(a[i] + k + 16), w1, d[i][r]);
      }
    }
  if (k + 16 <= p.K) {
    for (int r = 0; r < R; ++r) {
      const __m512 w0 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[r] + k)));
      for (int i = 0; i < MB; ++i) c[i][r] = _mm512_fmadd_ps(_mm512_loadu_ps(a[i] + k), w0, c[i][r]);
    }
    k += 16;
  }
  for (int i = 0; i < MB; ++i)
    for (int r = 0; r < R; ++r) {
      float y = _mm512_reduce_add_ps(_mm512_add_ps(c[i][r], d[i][r]));
      for (int64_t kk = k; kk < p.K; ++kk) y += a[i][kk] * half_to_float(w[r][kk]);
      p.y[(m0 + i) * p.N + n + r] = y;
    }
}

BITCONV_AVX512 void gemm_half(const HalfProblem& p, int64_t n0, int64_t n1) {
  int64_t m = 0;
  for (; m + 4 <= p.M; m += 4)
    for (int64_t n = n0; n < n1; ++n) half_block<4, 1>(p, m, n);
  for (; m < p.M; ++m) {
    int64_t n = n0;
    for (; n + 2 <= n1; n += 2) half_block<1, 2>(p, m, n);
    if (n < n1) half_block<1, 1>(p, m, n);
  }
}

}  // namespace

KernelSet avx512_kernels() {
  KernelSet k{"avx512", gemm_float, gemm_int8, quantize_int8, true, lut_workspace, lut_prepare};
  k.gemm_half = gemm_half;
  return k;
}

}  // namespace bitconv

#else  // not x86: no avx512 code; the dispatcher never selects it
namespace bitconv {
KernelSet avx512_kernels() { return scalar_kernels(); }
}  // namespace bitconv
#endif
