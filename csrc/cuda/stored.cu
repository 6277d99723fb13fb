// softmin over a stored cost: softmin_i = -eps log sum_j exp(h_j - cost_ij / eps), cost row-major (n x m).
//
// Bandwidth-bound (4 bytes per pair): one warp per row, lanes read consecutive columns (coalesced), kUnroll
// loads in flight per lane, a running (max, sum) per lane merged over the warp at the end. Wide rows are split
// over blockIdx.y and combined like the pairwise kernels' partials.
#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"
#include "pairwise.cuh"
#include "pairwise_math.cuh"

namespace lvf {
namespace cuda {
namespace {

using namespace detail;

constexpr int kUnroll = 4;
constexpr int64_t kColsPerStep = int64_t(kWarp) * kUnroll;  // columns a warp covers per step
constexpr int64_t kMinStepsPerSplit = 8;                     // >= 1024 columns per split

template <typename T>
struct StoredParams {
  const T* cost = nullptr;
  const T* h = nullptr;
  int64_t n = 0, m = 0;
  T scale = T(1);  // s = log2(e) / eps
  double eps = 1.0;
  int64_t cols_per_split = 0;
  int splits = 1;
  T* out = nullptr;
  T* part_max = nullptr;
  T* part_sum = nullptr;
};

template <typename T>
__global__ void __launch_bounds__(kThreads) stored_kernel(const StoredParams<T> p) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (row >= p.n) return;  // whole warps leave together
  const int split = blockIdx.y;
  const int64_t j0 = int64_t(split) * p.cols_per_split;
  const int64_t j1 = min64(p.m, j0 + p.cols_per_split);
  const T* __restrict__ crow = p.cost + row * p.m;
  const T log2e = T(math::kLog2e);  // log2(e) h_j in T (the CPU rounds it from double: within an ulp)
  T max = math::neg_inf<T>(), sum = T(0);
  for (int64_t jb = j0; jb < j1; jb += kColsPerStep) {
    T t[kUnroll];
    T block_max = math::neg_inf<T>();
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = jb + u * kWarp + lane;
      t[u] = j < j1 ? math::fma_(-p.scale, crow[j], log2e * __ldg(p.h + j)) : math::neg_inf<T>();
      block_max = math::max_(block_max, t[u]);
    }
    math::online_raise_max(max, sum, block_max);
    sum += math::online_block_sum(t, max);
  }
#pragma unroll
  for (int off = kWarp / 2; off > 0; off /= 2) {
    const T om = shfl_xor(max, off), os = shfl_xor(sum, off);
    math::online_merge(max, sum, om, os);
  }
  if (lane != 0) return;
  if (p.splits == 1) {
    p.out[row] = math::softmin_value(0.0, max, sum, p.eps, 0.0);
  } else {
    p.part_max[int64_t(split) * p.n + row] = max;
    p.part_sum[int64_t(split) * p.n + row] = sum;
  }
}

template <typename T>
struct Layout {
  SplitPlan plan;
  T* part_max = nullptr;
  T* part_sum = nullptr;
  size_t bytes = 0;
};

template <typename T>
Layout<T> layout(int64_t n, int64_t m, void* workspace) {
  Layout<T> l;
  // a bandwidth-bound kernel wants many warps in flight: aim at 8 blocks (64 warps) per SM
  l.plan = plan_splits(n, m, kWarpsPerBlock, kColsPerStep, kMinStepsPerSplit, 8 * int64_t(device_sm_count()));
  Carver c(workspace);
  const int64_t parts = l.plan.splits > 1 ? int64_t(l.plan.splits) * n : 0;
  l.part_max = c.take<T>(parts);
  l.part_sum = c.take<T>(parts);
  l.bytes = c.offset;
  return l;
}

}  // namespace

template <typename T>
size_t softmin_stored_workspace_bytes(int64_t n, int64_t m) {
  return layout<T>(n, m, nullptr).bytes;
}

template <typename T>
cudaError_t softmin_stored(const T* cost, const T* h, int64_t n, int64_t m, double eps, T* out, void* workspace,
                           size_t workspace_bytes, cudaStream_t stream) {
  if (n < 0 || m < 0 || !(eps > 0.0)) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  const Layout<T> l = layout<T>(n, m, workspace);
  if (workspace_bytes < l.bytes || (l.bytes > 0 && workspace == nullptr)) return cudaErrorInvalidValue;

  StoredParams<T> p;
  p.cost = cost;
  p.h = h;
  p.n = n;
  p.m = m;
  p.scale = T(math::kLog2e / eps);
  p.eps = eps;
  p.cols_per_split = l.plan.tiles_per_split * kColsPerStep;
  p.splits = l.plan.splits;
  p.out = out;
  p.part_max = l.part_max;
  p.part_sum = l.part_sum;
  stored_kernel<T><<<dim3(unsigned(l.plan.row_blocks), unsigned(l.plan.splits)), kThreads, 0, stream>>>(p);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || l.plan.splits == 1) return err;

  CombineParams<T> c;  // row_norm stays null: no ½|x'|² term over a stored cost
  c.part_max = l.part_max;
  c.part_sum = l.part_sum;
  c.splits = l.plan.splits;
  c.rows = n;
  c.eps = eps;
  c.value = out;
  return launch_combine<T, Combine::Online>(c, stream);
}

template size_t softmin_stored_workspace_bytes<float>(int64_t, int64_t);
template size_t softmin_stored_workspace_bytes<double>(int64_t, int64_t);
template cudaError_t softmin_stored<float>(const float*, const float*, int64_t, int64_t, double, float*, void*,
                                           size_t, cudaStream_t);
template cudaError_t softmin_stored<double>(const double*, const double*, int64_t, int64_t, double, double*, void*,
                                            size_t, cudaStream_t);

}  // namespace cuda
}  // namespace lvf
