// Portable kernels: the reference the SIMD sets must agree with, and the path on CPUs without AVX2.
#include <array>

#include "kernels.h"

namespace bitconv {
namespace {

// The four trits of every code byte, so the inner loop does one table read per four weights.
struct TritTable {
  std::array<std::array<float, 4>, 256> trits;
  TritTable() {
    for (int b = 0; b < 256; ++b)
      for (int i = 0; i < 4; ++i) trits[b][i] = static_cast<float>(((b >> (2 * i)) & 3) - 2);
  }
};
const TritTable& trit_table() {
  static const TritTable table;
  return table;
}

float dot_float_bytes(const uint8_t* codes_row, const float* a_row, int64_t k0, int64_t k1) {
  if ((k0 & 3) != 0) return dot_float_scalar(codes_row, a_row, k0, k1);
  const auto& t = trit_table().trits;
  float acc0 = 0.f, acc1 = 0.f, acc2 = 0.f, acc3 = 0.f;
  int64_t k = k0;
  for (; k + 4 <= k1; k += 4) {
    const auto& w = t[codes_row[k >> 2]];
    acc0 += a_row[k] * w[0];
    acc1 += a_row[k + 1] * w[1];
    acc2 += a_row[k + 2] * w[2];
    acc3 += a_row[k + 3] * w[3];
  }
  return (acc0 + acc1) + (acc2 + acc3) + dot_float_scalar(codes_row, a_row, k, k1);
}

void gemm_float(const GemmProblem& p, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = p.codes + n * p.row_bytes;
    for (int64_t m = 0; m < p.M; ++m) {
      const float* a = p.a + m * p.K;
      float y = 0.f;
      for (int64_t g = 0, g0 = 0; g0 < p.K; ++g, g0 += p.group_size) {
        const int64_t g1 = g0 + p.group_size < p.K ? g0 + p.group_size : p.K;
        y += scale_at(p, n, g) * dot_float_bytes(row, a, g0, g1);
      }
      p.y[m * p.N + n] = y;
    }
  }
}

void gemm_half(const HalfProblem& p, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint16_t* w = p.w + n * p.K;
    for (int64_t m = 0; m < p.M; ++m) {
      const float* a = p.a + m * p.K;
      float acc0 = 0.f, acc1 = 0.f, acc2 = 0.f, acc3 = 0.f;
      int64_t k = 0;
      for (; k + 4 <= p.K; k += 4) {
        acc0 += a[k] * half_to_float(w[k]);
        acc1 += a[k + 1] * half_to_float(w[k + 1]);
        acc2 += a[k + 2] * half_to_float(w[k + 2]);
        acc3 += a[k + 3] * half_to_float(w[k + 3]);
      }
      for (; k < p.K; ++k) acc0 += a[k] * half_to_float(w[k]);
      p.y[m * p.N + n] = (acc0 + acc1) + (acc2 + acc3);
    }
  }
}

}  // namespace

void quantize_int8_reference(const GemmProblem& p, const float* a, int8_t* q, int32_t* group_sum, float* row_scale) {
  for (int64_t m = 0; m < p.M; ++m) {
    const float* x = a + m * p.K;
    int8_t* qm = q + m * p.q_stride;
    float amax = 0.f;
    for (int64_t k = 0; k < p.K; ++k) amax = std::fabs(x[k]) > amax ? std::fabs(x[k]) : amax;
    const float s = 127.0f / (amax > 1e-5f ? amax : 1e-5f);
    row_scale[m] = s;
    for (int64_t k = 0; k < p.K; ++k) {
      // nearbyint rounds half to even in the default rounding mode; fmin/fmax also map NaN into range
      const float v = std::fmin(std::fmax(std::nearbyint(x[k] * s), -128.f), 127.f);
      qm[k] = static_cast<int8_t>(v);
    }
    for (int64_t k = p.K; k < p.q_stride; ++k) qm[k] = 0;
    for (int64_t g = 0, g0 = 0; g < p.n_groups; ++g, g0 += p.group_size) {
      const int64_t g1 = g0 + p.group_size < p.K ? g0 + p.group_size : p.K;
      int32_t sum = 0;
      for (int64_t k = g0; k < g1; ++k) sum += qm[k];
      group_sum[m * p.n_groups + g] = sum;
    }
  }
}

void gemm_int8_reference(const GemmProblem& p, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = p.codes + n * p.row_bytes;
    for (int64_t m = 0; m < p.M; ++m) {
      const int8_t* q = p.q + m * p.q_stride;
      float y = 0.f;
      for (int64_t g = 0, g0 = 0; g0 < p.K; ++g, g0 += p.group_size) {
        const int64_t g1 = g0 + p.group_size < p.K ? g0 + p.group_size : p.K;
        const float prod = scale_at(p, n, g) * static_cast<float>(dot_int8_scalar(row, q, g0, g1));
        y = y + prod;
      }
      p.y[m * p.N + n] = y / p.q_row_scale[m];
    }
  }
}

KernelSet scalar_kernels() {
  KernelSet k{"scalar", gemm_float, gemm_int8_reference, quantize_int8_reference};
  k.gemm_half = gemm_half;
  return k;
}

}  // namespace bitconv
