// How fast can the float-activation lookup loop of TernaryMatMul's AVX-512 kernel go on this CPU?
//
// The kernel's inner step (formats/ort_op/kernels_avx512.cc, lut_tile) handles 16 output rows x 2 input columns
// (32 weights) with one shift, one 16-lane permute (VPERMPS) and one add. This program times only that step, with
// the tables and code words in L1/L2 and eight independent accumulators, to set beside the op's M = 1 median in
// docs/benchmarks/gemv.md: on the AMD EPYC there the step alone took 0.33 ms per 4096 x 4096 weights against the
// op's 0.38 ms, so the float path is bound by this instruction mix, not by memory. It also times the three-column
// variant (base-3 index of 5 bits, VPERMI2PS over a 32-entry table), the only denser lookup AVX-512 offers for
// float tables: slower than VPERMPS on that AMD EPYC, faster on an Intel Xeon (docs/benchmarks/gemv-xeon.md). It is
// a probe of one instruction mix, not a bound for every CPU: on that Xeon the whole op ran faster than this loop.
//
//     g++ -O3 -std=c++17 docs/benchmarks/lut_loop.cc -o /tmp/lut_loop && /tmp/lut_loop
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define AVX512 __attribute__((target("avx512f"), noinline))

constexpr long kWords = 1024;  // 64 KB of code words, reused: the loop is compute-bound by construction

AVX512 float pairs(const uint32_t* words, const float* tables, long steps) {
  __m512 acc[8];
  for (auto& a : acc) a = _mm512_setzero_ps();
  for (long i = 0; i < steps; ++i) {
    const __m512i w = _mm512_load_si512(words + 16 * (i % kWords));
    const float* t = tables + (i % 64) * 128;
    for (int s = 0; s < 8; ++s)
      acc[s] = _mm512_add_ps(acc[s], _mm512_permutexvar_ps(_mm512_srli_epi32(w, 4 * s), _mm512_load_ps(t + 16 * s)));
  }
  for (int s = 1; s < 8; ++s) acc[0] = _mm512_add_ps(acc[0], acc[s]);
  return _mm512_reduce_add_ps(acc[0]);
}

AVX512 float triples(const uint32_t* words, const float* tables, long steps) {
  __m512 acc[6];
  for (auto& a : acc) a = _mm512_setzero_ps();
  for (long i = 0; i < steps; ++i) {
    const __m512i w = _mm512_load_si512(words + 16 * (i % kWords));
    const float* t = tables + (i % 64) * 192;
    for (int s = 0; s < 6; ++s)
      acc[s] = _mm512_add_ps(acc[s], _mm512_permutex2var_ps(_mm512_load_ps(t + 32 * s), _mm512_srli_epi32(w, 5 * s),
                                                            _mm512_load_ps(t + 32 * s + 16)));
  }
  for (int s = 1; s < 6; ++s) acc[0] = _mm512_add_ps(acc[0], acc[s]);
  return _mm512_reduce_add_ps(acc[0]);
}

template <typename F>
double median_ms(F run, int repeats = 15) {
  std::vector<double> ms;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    run(r);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

int main() {
  if (!__builtin_cpu_supports("avx512f")) {
    std::puts("this CPU has no AVX-512; the op uses its AVX2 kernels here");
    return 1;
  }
  auto* words = static_cast<uint32_t*>(std::aligned_alloc(64, (kWords + 2) * 64));
  auto* tables = static_cast<float*>(std::aligned_alloc(64, 64 * 192 * sizeof(float)));
  for (long i = 0; i < (kWords + 2) * 16; ++i) words[i] = static_cast<uint32_t>(std::rand());
  for (int i = 0; i < 64 * 192; ++i) tables[i] = static_cast<float>(i % 97) * 0.01f;
  const double weights = 4096.0 * 4096.0;
  volatile float sink = 0;
  // a different start word per repeat, so the compiler cannot merge the calls
  const long pair_steps = static_cast<long>(weights / 256);  // 16 rows x 16 columns per step
  const long triple_steps = static_cast<long>(weights / 288);  // 16 rows x 18 columns per step
  const double p = median_ms([&](int r) { sink = sink + pairs(words + 16 * (r & 1), tables, pair_steps); });
  const double t = median_ms([&](int r) { sink = sink + triples(words + 16 * (r & 1), tables, triple_steps); });
  std::printf("lookup loop floor per 4096 x 4096 weights, one thread (median of 15):\n");
  std::printf("  2 columns per 4-bit index (VPERMPS, what the op uses): %.3f ms\n", p);
  std::printf("  3 columns per 5-bit index (VPERMI2PS):                 %.3f ms\n", t);
  std::free(words);
  std::free(tables);
  return 0;
}
