// CPU implementations of the lossval_fast pairwise ops (schemas in csrc/ops.cpp).
//
// Conventions: C_ij = ½|x_i - y_j|², softmin_i = -eps log sum_j exp(h_j - C_ij / eps). Every kernel works in
// log2 units: with s = log2(e) / eps, h_j - C_ij / eps = log2(e) h_j - s ½|y'_j|² - s ½|x'_i|² + s x'_i.y'_j,
// where x' and y' are centred on the same point; the ½|x'_i|² term stays outside the log-sum-exp.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kernels.h"
#include "pairwise.h"

namespace lvf {
namespace cpu {

#define LVF_DECLARE_PROBES(ns)                                                  \
  namespace ns {                                                                \
  double plain_expf_sum(const float* buffer, int64_t n, int64_t repeats);       \
  double read_sum(const float* buffer, int64_t n);                              \
  }
LVF_DECLARE_PROBES(probe_avx2)
LVF_DECLARE_PROBES(probe_avx512)
#undef LVF_DECLARE_PROBES

namespace {

void check_points(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.dim() == 2, name, " must be 2-D (points x features), got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", t.scalar_type());
}

void check_vector(const at::Tensor& t, const char* name, int64_t n, at::ScalarType dtype) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, name, " must have shape (", n, ",), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
}

void check_pair(const at::Tensor& x, const at::Tensor& y) {
  check_points(x, "x");
  check_points(y, "y");
  TORCH_CHECK(x.size(1) == y.size(1), "x and y must have the same number of features, got ", x.size(1), " and ",
              y.size(1));
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "x and y must have the same dtype, got ", x.scalar_type(), " and ",
              y.scalar_type());
}

void check_eps(double eps) {
  TORCH_CHECK(std::isfinite(eps) && eps > 0, "eps must be a finite positive number, got ", eps);
}

// softmin (and optionally the barycentre sum_j P_ij y_j) of the rows of x against y with bias h.
template <typename T>
void softmin_impl(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h, double eps, at::Tensor& out,
                  at::Tensor* barycenter) {
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1);
  PackedColumns<T> cols(y.data_ptr<T>(), m, d, nullptr, barycenter != nullptr);
  const double s = kLog2e / eps;
  const T* hp = h.data_ptr<T>();
  const auto& hn = cols.half_norm();
  cols.set_bias([&](int64_t j) { return kLog2e * double(hp[j]) - s * double(hn[j]); });
  std::vector<T> rowmax(n), rowsum(n), half_norm(n), acc(barycenter != nullptr ? n * cols.d_pad() : 0);
  reduce_rows<T>(x.data_ptr<T>(), n, cols, T(s), Reduction::Online, rowmax.data(), rowsum.data(),
                 barycenter != nullptr ? acc.data() : nullptr, half_norm.data());
  T* o = out.data_ptr<T>();
  for (int64_t i = 0; i < n; ++i)
    o[i] = T(double(half_norm[i]) -
             eps * kLn2 * (cols.bias_offset() + double(rowmax[i]) + std::log2(double(rowsum[i]))));
  if (barycenter != nullptr) {
    T* b = barycenter->data_ptr<T>();
    const T* c = cols.center();
    const int64_t dp = cols.d_pad();
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < d; ++k) b[i * d + k] = acc[i * dp + k] / rowsum[i] + c[k];
  }
}

at::Tensor softmin_cpu(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& h_in, double eps) {
  check_pair(x_in, y_in);
  TORCH_CHECK(y_in.size(0) > 0, "y must have at least one row");
  check_vector(h_in, "h", y_in.size(0), x_in.scalar_type());
  check_eps(eps);
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous(), h = h_in.contiguous();
  at::Tensor out = at::empty({x.size(0)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "softmin_cpu",
                             [&] { softmin_impl<scalar_t>(x, y, h, eps, out, nullptr); });
  return out;
}

std::tuple<at::Tensor, at::Tensor> softmin_barycenter_cpu(const at::Tensor& x_in, const at::Tensor& y_in,
                                                          const at::Tensor& h_in, double eps) {
  check_pair(x_in, y_in);
  TORCH_CHECK(y_in.size(0) > 0, "y must have at least one row");
  check_vector(h_in, "h", y_in.size(0), x_in.scalar_type());
  check_eps(eps);
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous(), h = h_in.contiguous();
  at::Tensor out = at::empty({x.size(0)}, x.options());
  at::Tensor bary = at::empty({x.size(0), x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "softmin_barycenter_cpu",
                             [&] { softmin_impl<scalar_t>(x, y, h, eps, out, &bary); });
  return {out, bary};
}

// For each j: s_j = sum_i w_i P_ij and sx_j = sum_i w_i P_ij x_i with P_ij = exp(h_j + f_i/eps - C_ij/eps),
// the plan of a softmin whose result f is known (so no running max is needed). Rows of the kernel are y.
template <typename T>
void plan_colsum_impl(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h, const at::Tensor& f,
                      const at::Tensor& w, double eps, at::Tensor& s_out, at::Tensor& sx_out) {
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1);
  PackedColumns<T> cols(x.data_ptr<T>(), n, d, nullptr, true);
  const double s = kLog2e / eps;
  const T* fp = f.data_ptr<T>();
  const auto& hx = cols.half_norm();
  cols.set_bias([&](int64_t i) { return s * (double(fp[i]) - double(hx[i])); });
  cols.set_weight(w.data_ptr<T>());
  const T* yp = y.data_ptr<T>();
  const T* hp = h.data_ptr<T>();
  const T* c = cols.center();
  std::vector<T> rowmax(m), rowsum(m), acc(m * cols.d_pad());
  for (int64_t j = 0; j < m; ++j) {
    double hn = 0;
    for (int64_t k = 0; k < d; ++k) {
      const double v = double(yp[j * d + k]) - double(c[k]);
      hn += v * v;
    }
    rowmax[j] = T(s * 0.5 * hn - kLog2e * double(hp[j]) - cols.bias_offset());
  }
  reduce_rows<T>(yp, m, cols, T(s), Reduction::Fixed, rowmax.data(), rowsum.data(), acc.data(), nullptr);
  T* so = s_out.data_ptr<T>();
  T* sxo = sx_out.data_ptr<T>();
  const int64_t dp = cols.d_pad();
  for (int64_t j = 0; j < m; ++j) {
    so[j] = rowsum[j];
    for (int64_t k = 0; k < d; ++k) sxo[j * d + k] = acc[j * dp + k] + rowsum[j] * c[k];
  }
}

std::tuple<at::Tensor, at::Tensor> plan_colsum_cpu(const at::Tensor& x_in, const at::Tensor& y_in,
                                                   const at::Tensor& h_in, const at::Tensor& f_in,
                                                   const at::Tensor& w_in, double eps) {
  check_pair(x_in, y_in);
  TORCH_CHECK(x_in.size(0) > 0, "x must have at least one row");
  check_vector(h_in, "h", y_in.size(0), x_in.scalar_type());
  check_vector(f_in, "f", x_in.size(0), x_in.scalar_type());
  check_vector(w_in, "weight", x_in.size(0), x_in.scalar_type());
  check_eps(eps);
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous(), h = h_in.contiguous(), f = f_in.contiguous(),
                   w = w_in.contiguous();
  at::Tensor s = at::empty({y.size(0)}, y.options());
  at::Tensor sx = at::empty({y.size(0), y.size(1)}, y.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "plan_colsum_cpu",
                             [&] { plan_colsum_impl<scalar_t>(x, y, h, f, w, eps, s, sx); });
  return {s, sx};
}

// Nearest row of y for every row of x; with accumulate, also per-cluster sums of x and counts (k-means step).
template <typename T>
void nearest_impl(const at::Tensor& x, const at::Tensor& y, bool accumulate, at::Tensor& index, at::Tensor& sqdist,
                  at::Tensor& sums, at::Tensor& counts) {
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1);
  PackedColumns<T> cols(y.data_ptr<T>(), m, d, nullptr, false);
  const auto& hn = cols.half_norm();
  cols.set_bias([&](int64_t j) { return -double(hn[j]); });
  const KernelTable<T>& table = cols.table();
  Rows<T> rows;
  rows.x = x.data_ptr<T>();
  rows.center = cols.center();
  rows.n = n;
  rows.d = d;
  const Columns<T> c = cols.view();
  int64_t* idx = index.data_ptr<int64_t>();
  T* dist = sqdist.data_ptr<T>();
  const double offset = cols.bias_offset();
  const int threads = std::max(1, at::get_num_threads());
  std::vector<double> thread_sums(accumulate ? size_t(threads) * m * d : 0);
  std::vector<int64_t> thread_counts(accumulate ? size_t(threads) * m : 0);
  // Blocks of 256 rows (a multiple of every kernel's row block): the epilogue reads the rows that the argmax
  // kernel has just brought into L1/L2 instead of streaming x from memory a second time.
  constexpr int64_t kBlock = 256;
  const int64_t n_blocks = (n + kBlock - 1) / kBlock;
  // Per-row work after the argmax kernel: squared distance |x - center|² - 2 (best + offset), the norm summed in
  // double from exact double differences (each x_k converted once, shared with the sums), then the per-thread
  // cluster sums (double) and counts.
  std::vector<double> center_d(rows.center, rows.center + d);
  // Plain loops over independent accumulators, which the compiler vectorises for the baseline ISA (this file is
  // compiled without -m flags); also the AVX2 path for float64.
  auto epilogue = []<bool ACC>(std::bool_constant<ACC>, const T* __restrict xs, const double* __restrict cd,
                               int64_t d_, int64_t r0, int64_t r1, const T* __restrict best, double offset_,
                               const int64_t* __restrict idx_, T* __restrict dist_, double* __restrict tsums,
                               int64_t* __restrict tcounts) __attribute__((always_inline)) {
    for (int64_t i = r0; i < r1; ++i) {
      const T* xi = xs + i * d_;
      double* sj = ACC ? tsums + idx_[i] * d_ : nullptr;
      double h[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t k = 0;
      for (; k + 8 <= d_; k += 8)
#pragma GCC unroll 8
        for (int u = 0; u < 8; ++u) {
          const double xd = double(xi[k + u]), v = xd - cd[k + u];
          h[u] += v * v;
          if (ACC) sj[k + u] += xd;
        }
      double hx = ((h[0] + h[4]) + (h[2] + h[6])) + ((h[1] + h[5]) + (h[3] + h[7]));
      for (; k < d_; ++k) {
        const double xd = double(xi[k]), v = xd - cd[k];
        hx += v * v;
        if (ACC) sj[k] += xd;
      }
      dist_[i] = T(std::max(0.0, hx - 2.0 * (double(best[i - r0]) + offset_)));
      if (ACC) tcounts[idx_[i]] += 1;
    }
  };
  auto epilogue_baseline = [&](auto... args) { epilogue(args...); };
#if (defined(__x86_64__) || defined(__i386__)) && (defined(_IMMINTRIN_H_INCLUDED) || defined(__IMMINTRIN_H))
  // AVX2 copy, used whenever the kernel table in use is AVX2 or AVX-512 (set_cpu_capability("generic") still
  // runs baseline code only). float32 is written with intrinsics (<immintrin.h> comes in through the ATen
  // headers; without it this path is compiled out): 8 floats -> two 4-double vectors, with one horizontal sum per
  // row, about 40% fewer instructions than the compiler's version of the loop above.
  auto epilogue_avx2 = [&]<bool ACC>(std::bool_constant<ACC> acc, const T* __restrict xs,
                                     const double* __restrict cd, int64_t d_, int64_t r0, int64_t r1,
                                     const T* __restrict best, double offset_, const int64_t* __restrict idx_,
                                     T* __restrict dist_, double* __restrict tsums, int64_t* __restrict tcounts)
      __attribute__((target("avx2,fma"))) {
    if constexpr (std::is_same_v<T, float>) {
      for (int64_t i = r0; i < r1; ++i) {
        const float* xi = xs + i * d_;
        double* sj = ACC ? tsums + idx_[i] * d_ : nullptr;
        __m256d h0 = _mm256_setzero_pd(), h1 = _mm256_setzero_pd();
        int64_t k = 0;
        for (; k + 8 <= d_; k += 8) {
          const __m256 a = _mm256_loadu_ps(xi + k);
          const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(a));
          const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1));
          const __m256d ulo = _mm256_sub_pd(lo, _mm256_loadu_pd(cd + k));
          const __m256d uhi = _mm256_sub_pd(hi, _mm256_loadu_pd(cd + k + 4));
          h0 = _mm256_fmadd_pd(ulo, ulo, h0);
          h1 = _mm256_fmadd_pd(uhi, uhi, h1);
          if (ACC) {
            _mm256_storeu_pd(sj + k, _mm256_add_pd(_mm256_loadu_pd(sj + k), lo));
            _mm256_storeu_pd(sj + k + 4, _mm256_add_pd(_mm256_loadu_pd(sj + k + 4), hi));
          }
        }
        const __m256d hs = _mm256_add_pd(h0, h1);
        const __m128d q = _mm_add_pd(_mm256_castpd256_pd128(hs), _mm256_extractf128_pd(hs, 1));
        double hx = _mm_cvtsd_f64(_mm_add_sd(q, _mm_unpackhi_pd(q, q)));
        for (; k < d_; ++k) {
          const double xd = double(xi[k]), v = xd - cd[k];
          hx += v * v;
          if (ACC) sj[k] += xd;
        }
        dist_[i] = float(std::max(0.0, hx - 2.0 * (double(best[i - r0]) + offset_)));
        if (ACC) tcounts[idx_[i]] += 1;
      }
    } else {
      epilogue(acc, xs, cd, d_, r0, r1, best, offset_, idx_, dist_, tsums, tcounts);
    }
  };
  const bool wide = __builtin_strcmp(table.name, "generic") != 0;
#endif
  at::parallel_for(0, n_blocks, 1, [&](int64_t b0, int64_t b1) {
    const int tid = at::get_thread_num();
    double* const tsums = accumulate ? thread_sums.data() + size_t(tid) * m * d : nullptr;
    int64_t* const tcounts = accumulate ? thread_counts.data() + size_t(tid) * m : nullptr;
    const double* cd = center_d.data();
    T best[kBlock];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * kBlock, r1 = std::min(n, r0 + kBlock);
      table.argmax(rows, c, r0, r1, best - r0, idx, nullptr);
#if (defined(__x86_64__) || defined(__i386__)) && (defined(_IMMINTRIN_H_INCLUDED) || defined(__IMMINTRIN_H))
      if (wide) {
        if (accumulate)
          epilogue_avx2(std::true_type{}, rows.x, cd, d, r0, r1, best, offset, idx, dist, tsums, tcounts);
        else
          epilogue_avx2(std::false_type{}, rows.x, cd, d, r0, r1, best, offset, idx, dist, tsums, tcounts);
        continue;
      }
#endif
      if (accumulate)
        epilogue_baseline(std::true_type{}, rows.x, cd, d, r0, r1, best, offset, idx, dist, tsums, tcounts);
      else
        epilogue_baseline(std::false_type{}, rows.x, cd, d, r0, r1, best, offset, idx, dist, tsums, tcounts);
    }
  });
  if (accumulate)
    merge_cluster_partials(thread_sums, thread_counts, threads, m, d, sums.data_ptr<T>(), counts.data_ptr<int64_t>());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> nearest_cpu(const at::Tensor& x_in, const at::Tensor& y_in,
                                                                       bool accumulate) {
  check_pair(x_in, y_in);
  TORCH_CHECK(y_in.size(0) > 0, "y must have at least one row");
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous();
  at::Tensor index = at::empty({x.size(0)}, x.options().dtype(at::kLong));
  at::Tensor sqdist = at::empty({x.size(0)}, x.options());
  at::Tensor sums = at::zeros({accumulate ? y.size(0) : 0, y.size(1)}, y.options());
  at::Tensor counts = at::zeros({accumulate ? y.size(0) : 0}, y.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nearest_cpu",
                             [&] { nearest_impl<scalar_t>(x, y, accumulate, index, sqdist, sums, counts); });
  return {index, sqdist, sums, counts};
}

// softmin over a stored cost matrix: -eps log sum_j exp(h_j - cost_ij / eps)
template <typename T>
void softmin_stored_impl(const at::Tensor& cost, const at::Tensor& h, double eps, at::Tensor& out) {
  const int64_t n = cost.size(0), m = cost.size(1);
  const double s = kLog2e / eps;
  std::vector<T> hb(m), rowmax(n), rowsum(n);
  const T* hp = h.data_ptr<T>();
  for (int64_t j = 0; j < m; ++j) hb[j] = T(kLog2e * double(hp[j]));
  const KernelTable<T>& table = kernels<T>();
  const T* cp = cost.data_ptr<T>();
  at::parallel_for(0, n, 16, [&](int64_t i0, int64_t i1) {
    table.stored_rows(cp, m, m, hb.data(), T(s), i0, i1, rowmax.data(), rowsum.data());
  });
  T* o = out.data_ptr<T>();
  for (int64_t i = 0; i < n; ++i) o[i] = T(-eps * kLn2 * (double(rowmax[i]) + std::log2(double(rowsum[i]))));
}

at::Tensor softmin_stored_cpu(const at::Tensor& cost_in, const at::Tensor& h_in, double eps) {
  check_points(cost_in, "cost");
  check_vector(h_in, "h", cost_in.size(1), cost_in.scalar_type());
  check_eps(eps);
  const at::Tensor cost = cost_in.contiguous(), h = h_in.contiguous();
  at::Tensor out = at::empty({cost.size(0)}, cost.options());
  AT_DISPATCH_FLOATING_TYPES(cost.scalar_type(), "softmin_stored_cpu",
                             [&] { softmin_stored_impl<scalar_t>(cost, h, eps, out); });
  return out;
}

// Machine-floor probes: each row of `buffer` is one thread's work; returns a (meaningless) sum so that the work
// cannot be optimised away. kind: "exp2" (our kernel's exp), "expf" (a plain libm loop), "read" (bandwidth).
double machine_probe_cpu(const at::Tensor& buffer_in, int64_t repeats, c10::string_view kind) {
  TORCH_CHECK(buffer_in.dim() == 2 && buffer_in.scalar_type() == at::kFloat,
              "buffer must be a 2-D float32 tensor (threads x length)");
  TORCH_CHECK(kind == "exp2" || kind == "expf" || kind == "read", "kind must be exp2, expf or read, got ", kind);
  const at::Tensor buffer = buffer_in.contiguous();
  const int64_t rows = buffer.size(0), len = buffer.size(1);
  std::vector<double> partial(rows, 0.0);
  const float* b = buffer.data_ptr<float>();
  const auto& table = kernels<float>();
  const bool avx512 = std::string(capability()) == "avx512";
  TORCH_CHECK(std::string(capability()) != "generic", "the machine probes need AVX2 or AVX-512");
  auto expf_sum = avx512 ? &probe_avx512::plain_expf_sum : &probe_avx2::plain_expf_sum;
  auto plain_sum = avx512 ? &probe_avx512::read_sum : &probe_avx2::read_sum;
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      if (kind == "exp2") {
        partial[r] = table.exp2_sum(b + r * len, len, repeats);
      } else if (kind == "expf") {
        partial[r] = expf_sum(b + r * len, len, repeats);
      } else {
        for (int64_t k = 0; k < repeats; ++k) partial[r] += plain_sum(b + r * len, len);
      }
    }
  });
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

}  // namespace

TORCH_LIBRARY_IMPL(lossval_fast, CPU, m) {
  m.impl("softmin", &softmin_cpu);
  m.impl("softmin_barycenter", &softmin_barycenter_cpu);
  m.impl("plan_colsum", &plan_colsum_cpu);
  m.impl("nearest", &nearest_cpu);
  m.impl("softmin_stored", &softmin_stored_cpu);
  m.impl("machine_probe", &machine_probe_cpu);
}

}  // namespace cpu
}  // namespace lvf
