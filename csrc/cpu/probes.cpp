// Machine-floor probes for the benchmarks (bench/machine_floor.py), measured in the same run as the kernels:
//   plain_expf_sum: a plain `expf` loop as the compiler vectorises it (glibc libmvec), the reference exp rate;
//   read_sum: a vectorised sum over a buffer, the read bandwidth when the buffer is larger than the caches.
// Compiled with -ffast-math so that the loops vectorise, once for AVX2 and once for AVX-512 (LVF_PROBE_NS);
// nothing else lives in this file.
#include <cmath>
#include <cstdint>

namespace lvf {
namespace cpu {
namespace LVF_PROBE_NS {

double plain_expf_sum(const float* buffer, int64_t n, int64_t repeats) {
  float total = 0;
  for (int64_t r = 0; r < repeats; ++r) {
    float s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; ++i) s += expf(buffer[i]);
    total += s;
  }
  return total;
}

double read_sum(const float* buffer, int64_t n) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += buffer[i];
  return s;
}

}  // namespace LVF_PROBE_NS
}  // namespace cpu
}  // namespace lvf
