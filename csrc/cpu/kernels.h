// Torch-free interface of the CPU pairwise-reduction kernels.
//
// One problem: rows x_i (N x d, raw) against columns z_j that were centred and packed once (pack_columns).
// For each row the kernels look at t_ij = bias_j + scale * <x_i - center, z_j - center> (log2 units) and reduce
// over j in one of three ways:
//   ONLINE  running max m_i and S_i = sum_j w_j 2^(t_ij - m_i)     (softmin; FlashAttention-style online softmax)
//   FIXED   S_i = sum_j w_j 2^(t_ij - m_i) with m_i given          (plan sums when the normaliser is known)
//   ARGMAX  max_j t_ij and its first index                          (nearest centroid)
// optionally with A_i = sum_j w_j 2^(t_ij - m_i) (z_j - center)     (barycentres, gradients w.r.t. the points).
// Every function handles a block of rows [row_begin, row_end) against whole panels [panel_begin, panel_end), so
// the caller can split both axes over threads and combine partial (m, S, A) triples.
#pragma once

#include <cstdint>
#include <limits>

namespace lvf {
namespace cpu {

enum class Reduction : int { Online = 0, Fixed = 1 };

template <typename T>
struct Columns {
  const T* panels = nullptr;  // n_panels x d x panel_width, centred, zero padded
  const T* rows = nullptr;    // m_pad x d_pad row-major centred copy (only for the weighted sum), zero padded
  const T* bias = nullptr;    // m_pad, log2 units; padding columns are -inf
  const T* weight = nullptr;  // m_pad or null (= 1); padding columns are 0
  int64_t m = 0, m_pad = 0, d = 0, d_pad = 0;
};

template <typename T>
struct Rows {
  const T* x = nullptr;       // n x d row-major, raw
  const T* center = nullptr;  // d, subtracted from every row (translation invariance: better fp32 dot products)
  int64_t n = 0, d = 0;
};

template <typename T>
struct KernelTable {
  const char* name;
  int panel_width;  // columns per packed panel (the micro-kernel width)
  int row_block;    // rows per micro-kernel
  // pack z (m x d raw) minus center into panels (and into row-major rows when rows_out is not null)
  void (*pack_columns)(const T* z, int64_t m, int64_t d, const T* center, T* panels, T* rows_out, int64_t d_pad);
  // rowmax / rowsum: (n) in and out (Fixed: rowmax holds m_i); acc: n x d_pad or null; half_norm: n or null
  void (*reduce)(const Rows<T>& r, const Columns<T>& c, T scale, Reduction mode, int64_t row_begin,
                 int64_t row_end, int64_t panel_begin, int64_t panel_end, T* rowmax, T* rowsum, T* acc,
                 T* half_norm);
  // best_j t_ij (scale 1) and the first j reaching it; second (may be null): the second-largest t_ij
  void (*argmax)(const Rows<T>& r, const Columns<T>& c, int64_t row_begin, int64_t row_end, T* best,
                 int64_t* index, T* second);
  // stored cost: t_ij = hb_j - scale * cost_ij over a row-major cost (m columns, row stride ld >= m), rows
  // [row_begin, row_end). When ld is a multiple of 4 vectors and the padding holds +inf, no tail code runs.
  void (*stored_rows)(const T* cost, int64_t m, int64_t ld, const T* hb, T scale, int64_t row_begin,
                      int64_t row_end, T* rowmax, T* rowsum);
  // barycentre sums over a stored cost for rows whose max m_i (from stored_rows) is known:
  // acc_i (d_pad) = sum_j 2^(hb_j - scale * cost_ij - m_i) z_j, z row-major (ld x d_pad), zero-padded
  void (*stored_weighted_rows)(const T* cost, int64_t m, int64_t ld, const T* hb, T scale, const T* rowmax,
                               const T* z, int64_t d_pad, int64_t row_begin, int64_t row_end, T* acc);
  // column reduction of a stored cost over rows [row_begin, row_end) (the other half-step of a symmetric Sinkhorn
  // update, from the same sweep of the matrix): t_ij = ha_i - scale * cost_ij; per-column running (max, sum) in
  // colmax / colsum (ld entries, the caller's own partials: start at column_empty<T>() / 0, combine across callers)
  void (*stored_cols)(const T* cost, int64_t ld, const T* ha, T scale, int64_t row_begin, int64_t row_end,
                      T* colmax, T* colsum);
  // throughput probe for the benchmarks: sum of 2^buffer over `repeats` sweeps of an in-cache buffer
  double (*exp2_sum)(const T* buffer, int64_t n, int64_t repeats);
  // online mode, both half-steps of a symmetric update from one computation of each dot-product tile: the row
  // reduction of `reduce` (Online) and, with row biases ha (log2 units, the caller's shift applied), the column
  // reduction t'_ij = ha_i - scale ½|x'_i|² + scale <x'_i, z'_j> into running per-column (max, sum) partials
  // (m_pad entries each, starting at column_empty<T>() / 0); half_norm (n) receives ½|x'_i|²
  void (*reduce_both)(const Rows<T>& r, const Columns<T>& c, T scale, const T* ha, int64_t row_begin,
                      int64_t row_end, T* rowmax, T* rowsum, T* half_norm, T* colmax, T* colsum);
  // out_i = log2(in_i) to double precision (~1 ulp), vectorised: the -eps log Σ of each output of a pass, where
  // libm's scalar log2 cost ~40 % of the O(M) work of a 32 x 10,000 Sinkhorn step
  void (*log2_batch)(const double* in, int64_t n, double* out);
};

// Start value of a column's running max in stored_cols: finite, so that an all-masked column (t = -inf) never
// computes -inf - (-inf); anything below half of it at the end means the column saw no finite term. A quarter of
// the type's range, not a round -1e30: float64 exponents reach -6e29 legitimately (points at 3e13, blur 0.05), and
// such a column taken for empty made the potential +inf and the divergence NaN.
template <typename T>
constexpr T column_empty() {
  return T(-0.25) * std::numeric_limits<T>::max();
}

const KernelTable<float>& kernels_f32();
const KernelTable<double>& kernels_f64();
// "auto" picks the widest instruction set this CPU supports; returns the name now in use
const char* set_capability(const char* name);
const char* capability();
const char* best_capability();

}  // namespace cpu
}  // namespace lvf
