// softmin_i = -eps log sum_j exp(h_j - ½|x_i - y_j|² / eps), and with it the barycentre sum_j P_ij y_j.
//
// Launches: prepass (log2 bias of every column of y, ½|x'_i|² of every row of x), the tiled online kernel,
// and, when the rows alone cannot fill the GPU, a combine kernel over the split-M partial (max, sum, vector).
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

// Register tiles (TM rows x TN columns per thread). float: 8 x 8 (128 x 128 per block, 4 FMAs per shared-memory
// load); a 2 x 8 tile (32 x 128) for short problems such as a 32-point minibatch. double (tests, references):
// 4 x 4, half the registers per element.
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
constexpr int64_t kShortRows = 96;  // up to here the wide tile would leave a quarter or more of its rows empty
constexpr int64_t kMinTilesPerSplit = 2;

template <typename T>
struct Layout {
  bool short_rows = false;
  SplitPlan plan;
  double* col_bias = nullptr;      // m: log2(e) h_j - s ½|y'_j|²
  double* col_bias_max = nullptr;  // per prepass block: largest finite bias (for the offset)
  double* row_norm = nullptr;      // n: ½|x'_i|²
  double* offset = nullptr;        // 1: the bias offset, for the combine
  T* part_max = nullptr;           // splits x n
  T* part_sum = nullptr;           // splits x n
  T* part_vec = nullptr;           // splits x n x d (barycentre only)
  size_t bytes = 0;
};

template <typename T>
Layout<T> layout(int64_t n, int64_t m, int64_t d, bool barycenter, void* workspace) {
  Layout<T> l;
  l.short_rows = n <= kShortRows;
  const int64_t bm = l.short_rows ? TileGeometry<T, Tiles<T>::kShortTM, Tiles<T>::kShortTN>::BM
                                  : TileGeometry<T, Tiles<T>::TM, Tiles<T>::TN>::BM;
  const int64_t bn = l.short_rows ? TileGeometry<T, Tiles<T>::kShortTM, Tiles<T>::kShortTN>::BN
                                  : TileGeometry<T, Tiles<T>::TM, Tiles<T>::TN>::BN;
  l.plan = plan_splits(n, m, bm, bn, kMinTilesPerSplit, 2 * int64_t(device_sm_count()));
  Carver c(workspace);
  l.col_bias = c.take<double>(m);
  l.col_bias_max = c.take<double>(prepare_blocks(m));
  l.row_norm = c.take<double>(n);
  l.offset = c.take<double>(1);
  const int64_t parts = l.plan.splits > 1 ? int64_t(l.plan.splits) * n : 0;
  l.part_max = c.take<T>(parts);
  l.part_sum = c.take<T>(parts);
  l.part_vec = c.take<T>(barycenter ? parts * d : 0);
  l.bytes = c.offset;
  return l;
}

template <typename T, int TM, int TN>
cudaError_t launch_main(const PairwiseParams<T>& p, const SplitPlan& plan, bool barycenter, cudaStream_t stream) {
  using G = TileGeometry<T, TM, TN>;
  if (barycenter)
    return launch_pairwise<T, TM, TN, Mode::OnlineAcc>(p, plan, G::smem_bytes(Mode::OnlineAcc, 0, 0), stream);
  return launch_pairwise<T, TM, TN, Mode::Online>(p, plan, G::smem_bytes(Mode::Online, 0, 0), stream);
}

}  // namespace

template <typename T>
size_t softmin_workspace_bytes(int64_t n, int64_t m, int64_t d, bool barycenter) {
  return layout<T>(n, m, d, barycenter, nullptr).bytes;
}

template <typename T>
cudaError_t softmin(const T* x, const T* y, const T* h, const T* center, int64_t n, int64_t m, int64_t d,
                    double eps, T* out, T* barycenter, void* workspace, size_t workspace_bytes,
                    cudaStream_t stream) {
  if (n < 0 || m < 0 || d < 0 || !(eps > 0.0)) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  const bool with_bary = barycenter != nullptr;
  const Layout<T> l = layout<T>(n, m, d, with_bary, workspace);
  if (workspace == nullptr || workspace_bytes < l.bytes) return cudaErrorInvalidValue;

  PrepareJob<T> columns, rows;
  columns.z = y;
  columns.v = h;
  columns.out = l.col_bias;
  columns.block_max = l.col_bias_max;
  columns.rows = m;
  columns.affine = math::softmin_column_bias(eps);
  rows.z = x;
  rows.out = l.row_norm;
  rows.rows = n;
  rows.affine = math::half_norm_only();
  cudaError_t err = launch_prepare(columns, rows, center, d, stream);
  if (err != cudaSuccess) return err;

  PairwiseParams<T> p;
  p.rows = x;
  p.cols = y;
  p.center = center;
  p.col_bias = l.col_bias;
  p.col_bias_max = l.col_bias_max;
  p.bias_blocks = prepare_blocks(m);
  p.row_norm = l.row_norm;
  p.offset_out = l.offset;
  p.n_rows = n;
  p.n_cols = m;
  p.d = d;
  p.scale = T(math::kLog2e / eps);
  p.eps = eps;
  p.tiles_per_split = l.plan.tiles_per_split;
  p.splits = l.plan.splits;
  p.value = out;
  p.vec = barycenter;
  p.part_max = l.part_max;
  p.part_sum = l.part_sum;
  p.part_vec = l.part_vec;
  err = l.short_rows ? launch_main<T, Tiles<T>::kShortTM, Tiles<T>::kShortTN>(p, l.plan, with_bary, stream)
                     : launch_main<T, Tiles<T>::TM, Tiles<T>::TN>(p, l.plan, with_bary, stream);
  if (err != cudaSuccess || l.plan.splits == 1) return err;

  CombineParams<T> c;
  c.part_max = l.part_max;
  c.part_sum = l.part_sum;
  c.part_vec = l.part_vec;
  c.splits = l.plan.splits;
  c.rows = n;
  c.d = d;
  c.row_norm = l.row_norm;
  c.offset = l.offset;
  c.center = center;
  c.eps = eps;
  c.value = out;
  c.vec = barycenter;
  return with_bary ? launch_combine<T, Combine::OnlineVec>(c, stream) : launch_combine<T, Combine::Online>(c, stream);
}

template size_t softmin_workspace_bytes<float>(int64_t, int64_t, int64_t, bool);
template size_t softmin_workspace_bytes<double>(int64_t, int64_t, int64_t, bool);
template cudaError_t softmin<float>(const float*, const float*, const float*, const float*, int64_t, int64_t,
                                    int64_t, double, float*, float*, void*, size_t, cudaStream_t);
template cudaError_t softmin<double>(const double*, const double*, const double*, const double*, int64_t, int64_t,
                                     int64_t, double, double*, double*, void*, size_t, cudaStream_t);

}  // namespace cuda
}  // namespace lvf
