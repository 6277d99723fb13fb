// One Lloyd iteration that skips the rows whose nearest centroid provably did not change (Hamerly's bounds), with
// the centroid sums and counts of every row in the same pass over x (schema in csrc/ops.cpp).
//
// Per row: u ≥ |x - c_label| + m and l ≤ min over the other centroids of |x - c_j| - m, where m = sqrt(E) and E bounds
// the float error of the nearest kernel's squared distances. When the centroids move by δ_j, u grows by δ_label and l
// shrinks by the largest other δ (triangle inequality). A row is skipped when u ≤ max(l, s_label), s_a being half
// the distance from c_a to its closest other centroid: then the exact distances differ by at least 2m, so
// d_j² - d_a² ≥ 4m² = 4E and the kernel, each of whose values is within E, would pick the same label. The labels
// are therefore those of the plain pass (`nearest`) every iteration; only the work differs. The other rows of a
// block of 256 are gathered and run through the same argmax kernel (with the second-best value for the new l).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "kernels.h"
#include "pairwise.h"

namespace lvf {
namespace cpu {
namespace {

// sums[k] += x[k] in double (element by element: the order of a plain loop, so the same bits)
template <typename T>
inline void add_row_plain(double* __restrict sums, const T* __restrict x, int64_t d) {
  for (int64_t k = 0; k < d; ++k) sums[k] += double(x[k]);
}
#if defined(__x86_64__)
__attribute__((target("avx2"))) inline void add_row_avx2(double* __restrict sums, const float* __restrict x,
                                                           int64_t d) {
  int64_t k = 0;
  for (; k + 8 <= d; k += 8) {
    const __m256 a = _mm256_loadu_ps(x + k);
    _mm256_storeu_pd(sums + k, _mm256_add_pd(_mm256_loadu_pd(sums + k), _mm256_cvtps_pd(_mm256_castps256_ps128(a))));
    _mm256_storeu_pd(sums + k + 4,
                     _mm256_add_pd(_mm256_loadu_pd(sums + k + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1))));
  }
  for (; k < d; ++k) sums[k] += double(x[k]);
}
#endif
#if defined(__x86_64__)
__attribute__((target("avx2"))) void add_rows_avx2(double* __restrict sums, const float* __restrict x,
                                                   const int64_t* __restrict labels, int64_t rows, int64_t d,
                                                   int64_t* __restrict counts) {
  for (int64_t i = 0; i < rows; ++i) {
    add_row_avx2(sums + labels[i] * d, x + i * d, d);
    counts[labels[i]] += 1;
  }
}
#endif
// the rows' sums per label (double) and counts
template <typename T>
void add_rows(double* sums, const T* x, const int64_t* labels, int64_t rows, int64_t d, int64_t* counts, bool wide) {
#if defined(__x86_64__)
  if constexpr (std::is_same_v<T, float>) {
    if (wide) return add_rows_avx2(sums, x, labels, rows, d, counts);
  }
#endif
  for (int64_t i = 0; i < rows; ++i) {
    add_row_plain(sums + labels[i] * d, x + i * d, d);
    counts[labels[i]] += 1;
  }
}

// (|x - a|², |x - b|²) of one row, float32 in AVX2 registers (8 lanes, FMA), float64 plainly; the float error
// (relative, ~(d + 2) ulp) is far inside the margin of the bounds
template <typename T>
inline void two_sqdists_plain(const T* __restrict x, const T* __restrict a, const T* __restrict b, int64_t d,
                              double& da, double& db) {
  double sa[4] = {0, 0, 0, 0}, sb[4] = {0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 4 <= d; k += 4)
    for (int u = 0; u < 4; ++u) {
      const double va = double(x[k + u]) - double(a[k + u]), vb = double(x[k + u]) - double(b[k + u]);
      sa[u] += va * va;
      sb[u] += vb * vb;
    }
  for (; k < d; ++k) {
    const double va = double(x[k]) - double(a[k]), vb = double(x[k]) - double(b[k]);
    sa[0] += va * va;
    sb[0] += vb * vb;
  }
  da = (sa[0] + sa[1]) + (sa[2] + sa[3]);
  db = (sb[0] + sb[1]) + (sb[2] + sb[3]);
}
#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) inline void two_sqdists_avx2(const float* __restrict x, const float* __restrict a,
                                                                 const float* __restrict b, int64_t d, double& da,
                                                                 double& db) {
  __m256 sa = _mm256_setzero_ps(), sb = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= d; k += 8) {
    const __m256 xv = _mm256_loadu_ps(x + k);
    const __m256 va = _mm256_sub_ps(xv, _mm256_loadu_ps(a + k)), vb = _mm256_sub_ps(xv, _mm256_loadu_ps(b + k));
    sa = _mm256_fmadd_ps(va, va, sa);
    sb = _mm256_fmadd_ps(vb, vb, sb);
  }
  // horizontal sums of both accumulators at once: [Σa, Σb, Σa, Σb] in the low half
  const __m256 h = _mm256_hadd_ps(sa, sb);
  const __m256 hh = _mm256_hadd_ps(h, h);
  const __m128 t = _mm_add_ps(_mm256_castps256_ps128(hh), _mm256_extractf128_ps(hh, 1));
  double ta = _mm_cvtss_f32(t), tb = _mm_cvtss_f32(_mm_shuffle_ps(t, t, 1));
  for (; k < d; ++k) {
    const double va = double(x[k]) - double(a[k]), vb = double(x[k]) - double(b[k]);
    ta += va * va;
    tb += vb * vb;
  }
  da = ta * (1 + 1e-5);  // covers the float rounding of the sum (upper bounds are what the callers need)
  db = tb * (1 + 1e-5);
}
#endif
template <typename T>
inline void two_sqdists(const T* x, const T* a, const T* b, int64_t d, bool wide, double& da, double& db) {
#if defined(__x86_64__)
  if constexpr (std::is_same_v<T, float>) {
    if (wide) return two_sqdists_avx2(x, a, b, d, da, db);
  }
#endif
  two_sqdists_plain(x, a, b, d, da, db);
}

template <typename T>
void bounded_step_impl(const at::Tensor& x, const at::Tensor& c, const at::Tensor& previous, at::Tensor& labels,
                       at::Tensor& upper, at::Tensor& lower, bool reset, at::Tensor& sums, at::Tensor& counts,
                       int64_t& recomputed, int64_t& changed) {
  const int64_t n = x.size(0), m = c.size(0), d = x.size(1);
  PackedColumns<T> cols(c.data_ptr<T>(), m, d, nullptr, false);
  const auto& hn = cols.half_norm();
  cols.set_bias([&](int64_t j) { return -double(hn[j]); });
  const KernelTable<T>& table = cols.table();
  const Columns<T> view = cols.view();
  const double offset = cols.bias_offset();
  const bool wide = std::string(table.name) != "generic";  // the AVX2 sums when the kernels use AVX2 or AVX-512
  const T* cp = c.data_ptr<T>();
  std::vector<double> center(cols.center(), cols.center() + d);
  const T* center_t = cols.center();

  // centroid geometry in double: shifts δ_j (with the largest two), half separations s_j, max |c_j - center|²
  std::vector<double> shift(m, 0.0), half_sep(m, std::numeric_limits<double>::infinity());
  double cmax2 = 0;
  for (int64_t j = 0; j < m; ++j) {
    double r = 0;
    for (int64_t k = 0; k < d; ++k) r += (double(cp[j * d + k]) - center[k]) * (double(cp[j * d + k]) - center[k]);
    cmax2 = std::max(cmax2, r);
    for (int64_t q = j + 1; q < m; ++q) {
      double s = 0;
      for (int64_t k = 0; k < d; ++k) s += (double(cp[j * d + k]) - cp[q * d + k]) * (double(cp[j * d + k]) - cp[q * d + k]);
      const double half = 0.5 * std::sqrt(s) * (1 - 1e-12);
      half_sep[j] = std::min(half_sep[j], half);
      half_sep[q] = std::min(half_sep[q], half);
    }
  }
  int64_t top = 0;
  double shift1 = 0, shift2 = 0;  // the largest shift (at `top`) and the largest of the others
  if (!reset) {
    const T* pp = previous.data_ptr<T>();
    for (int64_t j = 0; j < m; ++j) {
      double s = 0;
      for (int64_t k = 0; k < d; ++k) s += (double(cp[j * d + k]) - pp[j * d + k]) * (double(cp[j * d + k]) - pp[j * d + k]);
      shift[j] = std::sqrt(s) * (1 + 1e-12);
      if (shift[j] > shift1) {
        shift2 = shift1;
        shift1 = shift[j];
        top = j;
      } else {
        shift2 = std::max(shift2, shift[j]);
      }
    }
  }
  // bound on the kernel's error in a squared distance, relative to |x'|² + max |c'|²: the centring, the bias, the
  // d-term dot product and the final difference give at most 2 (d + 3) u of it (u the unit roundoff, eps / 2);
  // taken as 4 (d + 4) eps, about 4x that
  const double rel_err = 4.0 * (double(d) + 4.0) * double(std::numeric_limits<T>::epsilon());

  const T* xp = x.data_ptr<T>();
  int64_t* lab = labels.data_ptr<int64_t>();
  double* up = upper.data_ptr<double>();
  double* lo = lower.data_ptr<double>();
  const int threads = std::max(1, at::get_num_threads());
  std::vector<double> thread_sums(size_t(threads) * m * d, 0.0);
  std::vector<int64_t> thread_counts(size_t(threads) * m, 0), thread_recomputed(threads, 0), thread_changed(threads, 0);
  constexpr int64_t kBlock = 256;
  const int64_t n_blocks = (n + kBlock - 1) / kBlock;
  at::parallel_for(0, n_blocks, 1, [&](int64_t b0, int64_t b1) {
    const int tid = at::get_thread_num();
    double* tsums = thread_sums.data() + size_t(tid) * m * d;
    int64_t* tcounts = thread_counts.data() + size_t(tid) * m;
    std::vector<T> gathered(kBlock * d);
    std::vector<int64_t> rows_of(kBlock), index(kBlock);
    std::vector<T> best(kBlock), second(kBlock);
    Rows<T> rows;
    rows.x = gathered.data();
    rows.center = cols.center();
    rows.d = d;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * kBlock, r1 = std::min(n, r0 + kBlock);
      // the rows of the next block, fetched ahead: skipped rows leave gaps in the reads of x that the hardware
      // prefetcher does not follow, and each first touch would otherwise wait for memory
      if (b + 1 < b1) {
        const char* next = reinterpret_cast<const char*>(xp + r1 * d);
        const char* end = reinterpret_cast<const char*>(xp + std::min(n, r1 + kBlock) * d);
        for (; next < end; next += 64) __builtin_prefetch(next);
      }
      int64_t count = 0;
      for (int64_t i = r0; i < r1; ++i) {
        const int64_t a = lab[i];
        if (!reset && a >= 0 && a < m) {  // (a label out of range, e.g. never set, is measured again)
          double u = up[i] + shift[a];
          const double l = lo[i] - (a == top ? shift2 : shift1);
          const double bound = std::max(l, half_sep[a]);
          if (u > bound) {  // tighten u to the distance to c_a itself before the full pass
            double e, hx;
            two_sqdists(xp + i * d, cp + a * d, center_t, d, wide, e, hx);
            u = std::sqrt(e) * (1 + 1e-12) + std::sqrt(rel_err * (hx + cmax2));
          }
          if (u <= bound) {
            up[i] = u;
            lo[i] = l;
            continue;
          }
        }
        std::copy(xp + i * d, xp + (i + 1) * d, gathered.data() + count * d);
        rows_of[count++] = i;
      }
      if (count > 0) {
        rows.n = count;
        table.argmax(rows, view, 0, count, best.data(), index.data(), second.data());
        for (int64_t r = 0; r < count; ++r) {
          const int64_t i = rows_of[r];
          double hx, unused;
          two_sqdists(xp + i * d, center_t, center_t, d, wide, hx, unused);
          const double margin = 2 * std::sqrt(rel_err * (hx + cmax2));
          up[i] = std::sqrt(std::max(0.0, hx - 2.0 * (double(best[r]) + offset))) + margin;
          lo[i] = std::isfinite(double(second[r]))
                      ? std::sqrt(std::max(0.0, hx - 2.0 * (double(second[r]) + offset))) - margin
                      : std::numeric_limits<double>::infinity();  // a single centroid: nothing to compete with
          thread_changed[tid] += index[r] != lab[i];
          lab[i] = index[r];
        }
        thread_recomputed[tid] += count;
      }
      add_rows(tsums, xp + r0 * d, lab + r0, r1 - r0, d, tcounts, wide);
    }
  });
  merge_cluster_partials(thread_sums, thread_counts, threads, m, d, sums.data_ptr<T>(), counts.data_ptr<int64_t>());
  recomputed = changed = 0;
  for (int t = 0; t < threads; ++t) {
    recomputed += thread_recomputed[t];
    changed += thread_changed[t];
  }
}

std::tuple<at::Tensor, at::Tensor, int64_t, int64_t> kmeans_bounded_step_cpu(
    const at::Tensor& x_in, const at::Tensor& c_in, const at::Tensor& previous_in, const at::Tensor& labels,
    const at::Tensor& upper, const at::Tensor& lower, bool reset) {
  TORCH_CHECK(x_in.dim() == 2 && c_in.dim() == 2 && x_in.size(1) == c_in.size(1) && c_in.size(0) > 0,
              "x and centroids must be (n, d) and (k, d) with k >= 1");
  TORCH_CHECK(x_in.scalar_type() == c_in.scalar_type() && previous_in.scalar_type() == c_in.scalar_type() &&
                  previous_in.sizes() == c_in.sizes(),
              "centroids and previous must share x's dtype and shape (k, d)");
  const int64_t n = x_in.size(0);
  TORCH_CHECK(labels.scalar_type() == at::kLong && labels.dim() == 1 && labels.size(0) == n && labels.is_contiguous(),
              "labels must be a contiguous int64 vector with one entry per row of x");
  for (const at::Tensor* t : {&upper, &lower})
    TORCH_CHECK(t->scalar_type() == at::kDouble && t->dim() == 1 && t->size(0) == n && t->is_contiguous(),
                "upper and lower must be contiguous float64 vectors with one entry per row of x");
  const at::Tensor x = x_in.contiguous(), c = c_in.contiguous(), previous = previous_in.contiguous();
  at::Tensor sums = at::zeros({c.size(0), c.size(1)}, c.options());
  at::Tensor counts = at::zeros({c.size(0)}, c.options().dtype(at::kLong));
  int64_t recomputed = 0, changed = 0;
  at::Tensor lab = labels, up = upper, lo = lower;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "kmeans_bounded_step_cpu", [&] {
    bounded_step_impl<scalar_t>(x, c, previous, lab, up, lo, reset, sums, counts, recomputed, changed);
  });
  return {sums, counts, recomputed, changed};
}

}  // namespace

TORCH_LIBRARY_IMPL(lossval_fast, CPU, m) { m.impl("kmeans_bounded_step", &kmeans_bounded_step_cpu); }

}  // namespace cpu
}  // namespace lvf
