// Column sums of a known plan: colsum_j = sum_i w_i P_ij, weighted_x_j = sum_i w_i P_ij x_i with
// P_ij = exp(h_j + f_i / eps - C_ij / eps) (gradient of the divergence with respect to the points).
//
// The kernel's rows are the points y_j and its columns the points x_i; the max of each row is known,
// m_j = s ½|y'_j|² - log2(e) h_j, so no running max is needed (FixedAcc). Weights are signed.
#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"
#include "pairwise.cuh"
#include "pairwise_kernel.cuh"
#include "pairwise_math.cuh"

namespace lvf {
namespace cuda {
namespace {

using namespace detail;

template <typename T>
struct Tiles;
template <>
struct Tiles<float> {
  static constexpr int TM = 8, TN = 8, kShortTM = 2, kShortTN = 8;
};
template <>
struct Tiles<double> {
  static constexpr int TM = 4, TN = 4, kShortTM = 4, kShortTN = 4;
};
constexpr int64_t kShortRows = 96;
constexpr int64_t kMinTilesPerSplit = 2;

template <typename T>
struct Layout {
  bool short_rows = false;
  SplitPlan plan;
  double* col_bias = nullptr;      // n (columns are x): s (f_i - ½|x'_i|²)
  double* col_bias_max = nullptr;  // per prepass block: largest finite bias (for the offset)
  double* row_max = nullptr;       // m (rows are y): s ½|y'_j|² - log2(e) h_j
  T* part_sum = nullptr;           // splits x m
  T* part_vec = nullptr;           // splits x m x d
  size_t bytes = 0;
};

template <typename T>
Layout<T> layout(int64_t n, int64_t m, int64_t d, void* workspace) {
  Layout<T> l;
  l.short_rows = m <= kShortRows;
  const int64_t bm = l.short_rows ? TileGeometry<T, Tiles<T>::kShortTM, Tiles<T>::kShortTN>::BM
                                  : TileGeometry<T, Tiles<T>::TM, Tiles<T>::TN>::BM;
  const int64_t bn = l.short_rows ? TileGeometry<T, Tiles<T>::kShortTM, Tiles<T>::kShortTN>::BN
                                  : TileGeometry<T, Tiles<T>::TM, Tiles<T>::TN>::BN;
  l.plan = plan_splits(m, n, bm, bn, kMinTilesPerSplit, 2 * int64_t(device_sm_count()));
  Carver c(workspace);
  l.col_bias = c.take<double>(n);
  l.col_bias_max = c.take<double>(prepare_blocks(n));
  l.row_max = c.take<double>(m);
  const int64_t parts = l.plan.splits > 1 ? int64_t(l.plan.splits) * m : 0;
  l.part_sum = c.take<T>(parts);
  l.part_vec = c.take<T>(parts * d);
  l.bytes = c.offset;
  return l;
}

template <typename T, int TM, int TN>
cudaError_t launch_main(const PairwiseParams<T>& p, const SplitPlan& plan, cudaStream_t stream) {
  using G = TileGeometry<T, TM, TN>;
  return launch_pairwise<T, TM, TN, Mode::FixedAcc>(p, plan, G::smem_bytes(Mode::FixedAcc, 0, 0), stream);
}

}  // namespace

template <typename T>
size_t plan_colsum_workspace_bytes(int64_t n, int64_t m, int64_t d) {
  return layout<T>(n, m, d, nullptr).bytes;
}

template <typename T>
cudaError_t plan_colsum(const T* x, const T* y, const T* h, const T* f, const T* weight, const T* center, int64_t n,
                        int64_t m, int64_t d, double eps, T* colsum, T* weighted_x, void* workspace,
                        size_t workspace_bytes, cudaStream_t stream) {
  if (n < 0 || m < 0 || d < 0 || !(eps > 0.0)) return cudaErrorInvalidValue;
  if (m == 0) return cudaSuccess;
  const Layout<T> l = layout<T>(n, m, d, workspace);
  if (workspace == nullptr || workspace_bytes < l.bytes) return cudaErrorInvalidValue;

  PrepareJob<T> columns, rows;
  columns.z = x;
  columns.v = f;
  columns.out = l.col_bias;
  columns.block_max = l.col_bias_max;
  columns.rows = n;
  columns.affine = math::plan_column_bias(eps);
  rows.z = y;
  rows.v = h;
  rows.out = l.row_max;
  rows.rows = m;
  rows.affine = math::plan_row_max(eps);
  cudaError_t err = launch_prepare(columns, rows, center, d, stream);
  if (err != cudaSuccess) return err;

  PairwiseParams<T> p;
  p.rows = y;
  p.cols = x;
  p.center = center;
  p.col_bias = l.col_bias;
  p.col_bias_max = l.col_bias_max;
  p.bias_blocks = prepare_blocks(n);
  p.col_weight = weight;
  p.row_fixed_max = l.row_max;
  p.n_rows = m;
  p.n_cols = n;
  p.d = d;
  p.scale = T(math::kLog2e / eps);
  p.eps = eps;
  p.tiles_per_split = l.plan.tiles_per_split;
  p.splits = l.plan.splits;
  p.value = colsum;
  p.vec = weighted_x;
  p.part_sum = l.part_sum;
  p.part_vec = l.part_vec;
  err = l.short_rows ? launch_main<T, Tiles<T>::kShortTM, Tiles<T>::kShortTN>(p, l.plan, stream)
                     : launch_main<T, Tiles<T>::TM, Tiles<T>::TN>(p, l.plan, stream);
  if (err != cudaSuccess || l.plan.splits == 1) return err;

  CombineParams<T> c;
  c.part_sum = l.part_sum;
  c.part_vec = l.part_vec;
  c.splits = l.plan.splits;
  c.rows = m;
  c.d = d;
  c.center = center;
  c.eps = eps;
  c.value = colsum;
  c.vec = weighted_x;
  return launch_combine<T, Combine::FixedVec>(c, stream);
}

template size_t plan_colsum_workspace_bytes<float>(int64_t, int64_t, int64_t);
template size_t plan_colsum_workspace_bytes<double>(int64_t, int64_t, int64_t);
template cudaError_t plan_colsum<float>(const float*, const float*, const float*, const float*, const float*,
                                        const float*, int64_t, int64_t, int64_t, double, float*, float*, void*,
                                        size_t, cudaStream_t);
template cudaError_t plan_colsum<double>(const double*, const double*, const double*, const double*, const double*,
                                         const double*, int64_t, int64_t, int64_t, double, double*, double*, void*,
                                         size_t, cudaStream_t);

}  // namespace cuda
}  // namespace lvf
