// Nearest row of y for every row of x (first on ties) and its squared distance; with accumulate, the k-means
// update in the same pass: per-cluster sums of the rows of x and their counts.
//
// argmax_j (<x'_i, y'_j> - ½|y'_j|²) on the tiled kernel (Argmax mode, scale 1). The sums are added with atomics
// after each row block: into per-block partial sums in shared memory when m x d is small and each block sees many
// rows (flushed once per block), straight into global memory otherwise.
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

// float: 8 x 8 (128 x 128 per block), or 8 x 2 (128 x 32) when there are few clusters; double: 4 x 4
template <typename T>
struct Tiles;
template <>
struct Tiles<float> {
  static constexpr int TM = 8, TN = 8, kNarrowTM = 8, kNarrowTN = 2;
};
template <>
struct Tiles<double> {
  static constexpr int TM = 4, TN = 4, kNarrowTM = 4, kNarrowTN = 4;
};
constexpr int64_t kNarrowCols = 32;
constexpr int64_t kMinTilesPerSplit = 2;
constexpr size_t kPartialBytes = 48 * 1024;  // shared memory allowed for per-block k-means partial sums

template <typename T>
struct Layout {
  bool narrow = false;
  SplitPlan plan;
  double* col_bias = nullptr;      // m: -½|y'_j|²
  double* col_bias_max = nullptr;  // per prepass block: largest finite bias (for the offset)
  double* row_norm = nullptr;      // n: |x'_i|²
  double* offset = nullptr;        // 1: the bias offset, for the combine
  T* part_best = nullptr;          // splits x n, relative to the offset
  int64_t* part_index = nullptr;   // splits x n
  size_t bytes = 0;
};

template <typename T>
Layout<T> layout(int64_t n, int64_t m, int64_t d, void* workspace) {
  (void)d;
  Layout<T> l;
  l.narrow = m <= kNarrowCols;
  const int64_t bm = l.narrow ? TileGeometry<T, Tiles<T>::kNarrowTM, Tiles<T>::kNarrowTN>::BM
                              : TileGeometry<T, Tiles<T>::TM, Tiles<T>::TN>::BM;
  const int64_t bn = l.narrow ? TileGeometry<T, Tiles<T>::kNarrowTM, Tiles<T>::kNarrowTN>::BN
                              : TileGeometry<T, Tiles<T>::TM, Tiles<T>::TN>::BN;
  l.plan = plan_splits(n, m, bm, bn, kMinTilesPerSplit, 2 * int64_t(device_sm_count()));
  Carver c(workspace);
  l.col_bias = c.take<double>(m);
  l.col_bias_max = c.take<double>(prepare_blocks(m));
  l.row_norm = c.take<double>(n);
  l.offset = c.take<double>(1);
  const int64_t parts = l.plan.splits > 1 ? int64_t(l.plan.splits) * n : 0;
  l.part_best = c.take<T>(parts);
  l.part_index = c.take<int64_t>(parts);
  l.bytes = c.offset;
  return l;
}

template <typename T, int TM, int TN>
cudaError_t launch_main(PairwiseParams<T>& p, const SplitPlan& plan, cudaStream_t stream) {
  using G = TileGeometry<T, TM, TN>;
  const size_t partial_bytes = sizeof(T) * size_t(p.n_cols * p.d) + sizeof(unsigned) * size_t(p.n_cols);
  // partial sums pay off when a block sees more rows than there are clusters (its flush costs m x d atomics)
  p.smem_partials = p.counts != nullptr && plan.splits == 1 && partial_bytes <= kPartialBytes &&
                    p.n_rows >= 2 * int64_t(device_sm_count()) * p.n_cols;
  const size_t smem = G::smem_bytes(Mode::Argmax, p.smem_partials ? p.n_cols * p.d : 0,
                                    p.smem_partials ? p.n_cols : 0);
  return launch_pairwise<T, TM, TN, Mode::Argmax>(p, plan, smem, stream);
}

}  // namespace

template <typename T>
size_t nearest_workspace_bytes(int64_t n, int64_t m, int64_t d) {
  return layout<T>(n, m, d, nullptr).bytes;
}

template <typename T>
cudaError_t nearest(const T* x, const T* y, const T* center, int64_t n, int64_t m, int64_t d, int64_t* index,
                    T* sqdist, T* sums, int64_t* counts, void* workspace, size_t workspace_bytes,
                    cudaStream_t stream) {
  if (n < 0 || m < 0 || d < 0 || (counts != nullptr && sums == nullptr && d > 0)) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (m == 0 || m > INT32_MAX) return cudaErrorInvalidValue;  // no row of y to be nearest to; 32-bit indices
  const Layout<T> l = layout<T>(n, m, d, workspace);
  if (workspace == nullptr || workspace_bytes < l.bytes) return cudaErrorInvalidValue;

  PrepareJob<T> columns, rows;
  columns.z = y;
  columns.out = l.col_bias;
  columns.block_max = l.col_bias_max;
  columns.rows = m;
  columns.affine = math::nearest_column_bias();
  rows.z = x;
  rows.out = l.row_norm;
  rows.rows = n;
  rows.affine = math::nearest_row_norm();
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
  p.scale = T(1);
  p.tiles_per_split = l.plan.tiles_per_split;
  p.splits = l.plan.splits;
  p.value = sqdist;
  p.index = index;
  p.part_max = l.part_best;
  p.part_index = l.part_index;
  p.sums = sums;
  p.counts = counts;
  err = l.narrow ? launch_main<T, Tiles<T>::kNarrowTM, Tiles<T>::kNarrowTN>(p, l.plan, stream)
                 : launch_main<T, Tiles<T>::TM, Tiles<T>::TN>(p, l.plan, stream);
  if (err != cudaSuccess || l.plan.splits == 1) return err;

  CombineParams<T> c;  // few rows: the combine also adds each row to its cluster (global atomics)
  c.part_max = l.part_best;
  c.part_index = l.part_index;
  c.splits = l.plan.splits;
  c.rows = n;
  c.d = d;
  c.row_norm = l.row_norm;
  c.offset = l.offset;
  c.value = sqdist;
  c.index = index;
  c.points = x;
  c.sums = sums;
  c.counts = counts;
  return launch_combine<T, Combine::Argmax>(c, stream);
}

template size_t nearest_workspace_bytes<float>(int64_t, int64_t, int64_t);
template size_t nearest_workspace_bytes<double>(int64_t, int64_t, int64_t);
template cudaError_t nearest<float>(const float*, const float*, const float*, int64_t, int64_t, int64_t, int64_t*,
                                    float*, float*, int64_t*, void*, size_t, cudaStream_t);
template cudaError_t nearest<double>(const double*, const double*, const double*, int64_t, int64_t, int64_t,
                                     int64_t*, double*, double*, int64_t*, void*, size_t, cudaStream_t);

}  // namespace cuda
}  // namespace lvf
