// Threaded drivers over the CPU kernels: pack the columns once, then reduce any set of rows against them.
//
// Used by the torch ops in pairwise_cpu.cpp and, later, by whole-algorithm C++ loops (the Sinkhorn ε loop),
// which pack each point cloud once and only change the biases between passes.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels.h"

namespace lvf {
namespace cpu {

template <typename T>
const KernelTable<T>& kernels();
template <>
inline const KernelTable<float>& kernels<float>() {
  return kernels_f32();
}
template <>
inline const KernelTable<double>& kernels<double>() {
  return kernels_f64();
}

constexpr double kLog2e = 1.4426950408889634;
constexpr double kLn2 = 0.6931471805599453;

// A point cloud z (m x d) centred on `center` and packed for the micro-kernel, with per-column bias and weight.
template <typename T>
class PackedColumns {
 public:
  // center == nullptr: the mean of z (any shared centre is exact; the mean keeps fp32 dot products small)
  PackedColumns(const T* z, int64_t m, int64_t d, const T* center, bool with_rows)
      : table_(kernels<T>()), m_(m), d_(d) {
    const int nr = table_.panel_width;
    n_panels_ = (m + nr - 1) / nr;
    m_pad_ = n_panels_ * nr;
    const int w = 64 / int(sizeof(T));
    d_pad_ = with_rows ? ((d + w - 1) / w) * w : 0;
    center_.assign(d, T(0));
    if (center != nullptr) {
      std::copy(center, center + d, center_.begin());
    } else {
      std::vector<double> mean(d, 0.0);
      for (int64_t j = 0; j < m; ++j)
        for (int64_t k = 0; k < d; ++k) mean[k] += z[j * d + k];
      for (int64_t k = 0; k < d; ++k) center_[k] = T(mean[k] / double(std::max<int64_t>(m, 1)));
    }
    panels_.assign(n_panels_ * std::max<int64_t>(d, 1) * nr, T(0));
    if (with_rows) rows_.assign(m_pad_ * d_pad_, T(0));
    table_.pack_columns(z, m, d, center_.data(), panels_.data(), with_rows ? rows_.data() : nullptr, d_pad_);
    half_norm_.assign(m, T(0));
    for (int64_t j = 0; j < m; ++j) {
      double s = 0;
      for (int64_t k = 0; k < d; ++k) {
        const double v = double(z[j * d + k] - center_[k]);
        s += v * v;
      }
      half_norm_[j] = T(0.5 * s);
    }
    bias_.assign(m_pad_, -std::numeric_limits<T>::infinity());
  }

  // bias_j = f(j) - offset in log2 units for the m real columns (padding stays -inf), f evaluated in double.
  // The offset is the largest finite bias: huge common parts (e.g. every point masked with -1e5) cancel in
  // double instead of in the kernel's float32. Callers add bias_offset() back to the reduced log2 sums.
  template <typename F>
  void set_bias(F f) {
    scratch_.resize(m_);
    double offset = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < m_; ++j) {
      scratch_[j] = double(f(j));
      if (std::isfinite(scratch_[j])) offset = std::max(offset, scratch_[j]);
    }
    bias_offset_ = std::isfinite(offset) ? offset : 0.0;
    for (int64_t j = 0; j < m_; ++j) bias_[j] = T(scratch_[j] - bias_offset_);
  }
  double bias_offset() const { return bias_offset_; }
  void set_weight(const T* w) {
    if (w == nullptr) {
      weight_.clear();
      return;
    }
    weight_.assign(m_pad_, T(0));
    std::copy(w, w + m_, weight_.begin());
  }

  Columns<T> view() const {
    Columns<T> c;
    c.panels = panels_.data();
    c.rows = rows_.empty() ? nullptr : rows_.data();
    c.bias = bias_.data();
    c.weight = weight_.empty() ? nullptr : weight_.data();
    c.m = m_;
    c.m_pad = m_pad_;
    c.d = d_;
    c.d_pad = d_pad_;
    return c;
  }
  const T* center() const { return center_.data(); }
  const std::vector<T>& half_norm() const { return half_norm_; }
  int64_t m() const { return m_; }
  int64_t d() const { return d_; }
  int64_t d_pad() const { return d_pad_; }
  int64_t n_panels() const { return n_panels_; }
  const KernelTable<T>& table() const { return table_; }

 private:
  const KernelTable<T>& table_;
  int64_t m_, d_, n_panels_ = 0, m_pad_ = 0, d_pad_ = 0;
  double bias_offset_ = 0.0;
  std::vector<T> center_, panels_, rows_, bias_, weight_, half_norm_;
  std::vector<double> scratch_;
};

// Split n rows x n_panels panels into tasks: row chunks first; columns too when there are too few rows to keep
// every thread busy (e.g. a 32-point minibatch against a 100,000-point validation set).
struct TaskGrid {
  int64_t rows_per_task = 1, n_row_tasks = 1, panels_per_task = 1, n_col_tasks = 1;
  TaskGrid(int64_t n, int64_t n_panels, int64_t row_block) {
    const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
    const int64_t n_blocks = std::max<int64_t>(1, (n + row_block - 1) / row_block);
    const int64_t row_tasks = std::min(n_blocks, 4 * threads);
    rows_per_task = ((n_blocks + row_tasks - 1) / row_tasks) * row_block;
    n_row_tasks = std::max<int64_t>(1, (n + rows_per_task - 1) / rows_per_task);
    int64_t splits = 1;
    if (n_row_tasks < 2 * threads) splits = std::min((4 * threads + n_row_tasks - 1) / n_row_tasks, n_panels / 8);
    splits = std::max<int64_t>(1, splits);
    panels_per_task = (n_panels + splits - 1) / splits;
    n_col_tasks = std::max<int64_t>(1, (n_panels + panels_per_task - 1) / panels_per_task);
  }
};

// Online or fixed reduction of rows x (n x d, raw) against packed columns, over all threads.
// Online: rowmax out. Fixed: rowmax in. rowsum out; acc (n x d_pad, centred weighted sums) out when not null;
// half_norm (½|x_i - center|²) out when not null.
// serial = true runs in the calling thread: small problems (a LossVal minibatch) pay more for a fork/join than
// for the work, and batched callers parallelise over problems instead.
template <typename T>
void reduce_rows(const T* x, int64_t n, const PackedColumns<T>& cols, T scale, Reduction mode, T* rowmax, T* rowsum,
                 T* acc, T* half_norm, bool serial = false) {
  if (n == 0) return;
  const KernelTable<T>& table = cols.table();
  Rows<T> rows;
  rows.x = x;
  rows.center = cols.center();
  rows.n = n;
  rows.d = cols.d();
  const Columns<T> c = cols.view();
  if (serial) {
    table.reduce(rows, c, scale, mode, 0, n, 0, cols.n_panels(), rowmax, rowsum, acc, half_norm);
    return;
  }
  const TaskGrid grid(n, cols.n_panels(), table.row_block);
  const int64_t dp = cols.d_pad();
  if (grid.n_col_tasks == 1) {
    at::parallel_for(0, grid.n_row_tasks, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r0 = t * grid.rows_per_task, r1 = std::min(n, r0 + grid.rows_per_task);
        table.reduce(rows, c, scale, mode, r0, r1, 0, cols.n_panels(), rowmax, rowsum, acc, half_norm);
      }
    });
    return;
  }
  // Column-split: partial (max, sum, acc) per column task, combined with the online-softmax rule.
  const int64_t k = grid.n_col_tasks;
  std::vector<T> pmax(k * n), psum(k * n), pacc(acc != nullptr ? k * n * dp : 0);
  if (mode == Reduction::Fixed)
    for (int64_t s = 0; s < k; ++s) std::copy(rowmax, rowmax + n, pmax.begin() + s * n);
  at::parallel_for(0, grid.n_row_tasks * k, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t rt = t / k, s = t % k;
      const int64_t r0 = rt * grid.rows_per_task, r1 = std::min(n, r0 + grid.rows_per_task);
      const int64_t p0 = s * grid.panels_per_task, p1 = std::min(cols.n_panels(), p0 + grid.panels_per_task);
      // partial buffers are indexed by global row so each task writes only its own rows
      table.reduce(rows, c, scale, mode, r0, r1, p0, p1, pmax.data() + s * n, psum.data() + s * n,
                   acc != nullptr ? pacc.data() + s * n * dp : nullptr, s == 0 ? half_norm : nullptr);
    }
  });
  at::parallel_for(0, n, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      T m = mode == Reduction::Online ? -std::numeric_limits<T>::infinity() : rowmax[i];
      if (mode == Reduction::Online)
        for (int64_t s = 0; s < k; ++s) m = std::max(m, pmax[s * n + i]);
      T sum = 0;
      if (acc != nullptr) std::fill(acc + i * dp, acc + (i + 1) * dp, T(0));
      for (int64_t s = 0; s < k; ++s) {
        if (mode == Reduction::Online && pmax[s * n + i] == -std::numeric_limits<T>::infinity()) continue;
        const T f = mode == Reduction::Online ? std::exp2(pmax[s * n + i] - m) : T(1);
        sum += f * psum[s * n + i];
        if (acc != nullptr)
          for (int64_t q = 0; q < dp; ++q) acc[i * dp + q] += f * pacc[(s * n + i) * dp + q];
      }
      if (mode == Reduction::Online) rowmax[i] = m;
      rowsum[i] = sum;
    }
  });
}

// Per-thread cluster partials (sums in double, m x d per thread; counts, m per thread) merged in thread order into
// sums (T) and counts: the k-means passes (nearest with accumulate, the bounded step) share it, so that the same
// rows give the same bits.
template <typename T>
void merge_cluster_partials(const std::vector<double>& thread_sums, const std::vector<int64_t>& thread_counts,
                            int threads, int64_t m, int64_t d, T* sums, int64_t* counts) {
  for (int64_t j = 0; j < m; ++j) {
    int64_t cnt = 0;
    for (int t = 0; t < threads; ++t) cnt += thread_counts[size_t(t) * m + j];
    counts[j] = cnt;
    for (int64_t k = 0; k < d; ++k) {
      double acc = 0;
      for (int t = 0; t < threads; ++t) acc += thread_sums[(size_t(t) * m + j) * d + k];
      sums[j * d + k] = T(acc);
    }
  }
}

}  // namespace cpu
}  // namespace lvf
