// Column mean of a point cloud: the shared centre c of x' = x - c, y' = y - c (any shared centre is exact; the
// mean keeps the fp32 dot products and norms small). Two deterministic steps, no atomics: per-split column sums
// in double, then one thread per column adds the splits (skipped when one split covers every row).
#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"
#include "pairwise.cuh"

namespace lvf {
namespace cuda {
namespace {

using detail::ceil_div;
using detail::kThreads;

constexpr int kMeanCols = 32;                     // columns per block: one per lane, coalesced rows
constexpr int kMeanRows = kThreads / kMeanCols;   // rows in flight per block
constexpr int64_t kRowsPerSplit = 4096;           // work per split before another split is added
constexpr int64_t kMaxSplits = 1024;

int64_t mean_splits(int64_t m) {
  const int64_t s = ceil_div(m, kRowsPerSplit);
  return s < 1 ? 1 : (s > kMaxSplits ? kMaxSplits : s);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    column_sum_kernel(const T* __restrict__ z, int64_t m, int64_t d, int splits, double* __restrict__ partial,
                      T* __restrict__ center) {
  __shared__ double part[kMeanRows][kMeanCols + 1];
  const int lane = threadIdx.x % kMeanCols, group = threadIdx.x / kMeanCols;
  const int64_t k = int64_t(blockIdx.x) * kMeanCols + lane;
  double s = 0.0;
  if (k < d)
    for (int64_t r = int64_t(blockIdx.y) * kMeanRows + group; r < m; r += int64_t(splits) * kMeanRows)
      s += double(z[r * d + k]);
  part[group][lane] = s;
  __syncthreads();
  if (group == 0 && k < d) {
    double t = 0.0;
#pragma unroll
    for (int q = 0; q < kMeanRows; ++q) t += part[q][lane];
    if (splits == 1)
      center[k] = T(m > 0 ? t / double(m) : 0.0);
    else
      partial[int64_t(blockIdx.y) * d + k] = t;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    column_mean_finish_kernel(const double* __restrict__ partial, int splits, int64_t m, int64_t d,
                              T* __restrict__ center) {
  const int64_t k = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (k >= d) return;
  double t = 0.0;
  for (int s = 0; s < splits; ++s) t += partial[int64_t(s) * d + k];
  center[k] = T(t / double(m));
}

}  // namespace

template <typename T>
size_t column_mean_workspace_bytes(int64_t m, int64_t d) {
  const int64_t splits = mean_splits(m);
  detail::Carver c(nullptr);
  c.take<double>(splits > 1 ? splits * d : 0);
  return c.offset;
}

template <typename T>
cudaError_t column_mean(const T* z, int64_t m, int64_t d, T* center, void* workspace, size_t workspace_bytes,
                        cudaStream_t stream) {
  if (m < 0 || d < 0) return cudaErrorInvalidValue;
  if (d == 0) return cudaSuccess;
  const int64_t splits = mean_splits(m);
  detail::Carver c(workspace);
  double* partial = c.take<double>(splits > 1 ? splits * d : 0);
  if (workspace_bytes < c.offset || (c.offset > 0 && workspace == nullptr)) return cudaErrorInvalidValue;
  const dim3 grid(unsigned(ceil_div(d, kMeanCols)), unsigned(splits));
  column_sum_kernel<T><<<grid, kThreads, 0, stream>>>(z, m, d, int(splits), partial, center);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || splits == 1) return err;
  const dim3 finish_grid(unsigned(ceil_div(d, kThreads)));
  column_mean_finish_kernel<T><<<finish_grid, kThreads, 0, stream>>>(partial, int(splits), m, d, center);
  return cudaGetLastError();
}

template size_t column_mean_workspace_bytes<float>(int64_t, int64_t);
template size_t column_mean_workspace_bytes<double>(int64_t, int64_t);
template cudaError_t column_mean<float>(const float*, int64_t, int64_t, float*, void*, size_t, cudaStream_t);
template cudaError_t column_mean<double>(const double*, int64_t, int64_t, double*, void*, size_t, cudaStream_t);

}  // namespace cuda
}  // namespace lvf
