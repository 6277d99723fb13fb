// Pieces shared by the CUDA kernel files: launch planning and workspace carving (host), warp and vector helpers
// (device), the per-point prepass (norms and log2 biases) and the combine step of split-M partial results.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "pairwise_math.cuh"

namespace lvf {
namespace cuda {
namespace detail {

constexpr int kThreads = 256;       // threads per block of every kernel here
constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = kThreads / kWarp;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr size_t kAlignBytes = 256;  // every workspace sub-buffer starts on its own 256-byte boundary

// ---------------------------------------------------------------------------------------------- host: planning
__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline size_t align_up(size_t bytes) { return (bytes + kAlignBytes - 1) / kAlignBytes * kAlignBytes; }

// SM count of the current device. The workspace size depends on it, so sizing and launching must agree: both
// ask here, on the same current device. A failed query (no device) falls back to an H100's 132 and clears the
// error; the launch that follows reports the real problem.
inline int device_sm_count() {
  int device = 0, count = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || count <= 0) {
    (void)cudaGetLastError();
    return 132;
  }
  return count;
}

// Carves typed sub-buffers out of one workspace. With base == nullptr it only adds up the size, so the sizing
// function and the launch function run the same code and cannot disagree.
struct Carver {
  unsigned char* base;
  size_t offset = 0;
  explicit Carver(void* workspace) : base(static_cast<unsigned char*>(workspace)) {}
  template <typename U>
  U* take(int64_t count) {
    U* p = base != nullptr ? reinterpret_cast<U*>(base + offset) : nullptr;
    offset += align_up(size_t(count > 0 ? count : 0) * sizeof(U));
    return p;
  }
};

// Split the columns (j) over blocks when the rows alone cannot fill the GPU: e.g. 32 rows against 100,000
// columns. Each split gets whole tiles; its partial (max, sum[, vector sums]) per row go to the workspace and a
// combine kernel merges them. Depends only on the shape and the SM count, so the workspace size is stable.
struct SplitPlan {
  int64_t row_blocks = 0, col_tiles = 0, tiles_per_split = 1;
  int splits = 1;
};

inline SplitPlan plan_splits(int64_t rows, int64_t cols, int64_t block_rows, int64_t block_cols,
                             int64_t min_tiles_per_split, int64_t target_blocks) {
  SplitPlan p;
  p.row_blocks = ceil_div(rows, block_rows);
  p.col_tiles = ceil_div(cols, block_cols);
  int64_t splits = 1;
  // worth a combine launch only if each split still has a few tiles of work
  if (p.row_blocks > 0 && p.row_blocks < target_blocks && p.col_tiles >= 4 * min_tiles_per_split) {
    splits = ceil_div(target_blocks, p.row_blocks);
    if (splits > p.col_tiles / min_tiles_per_split) splits = p.col_tiles / min_tiles_per_split;
    if (splits > 65535) splits = 65535;  // gridDim.y
  }
  if (splits < 1) splits = 1;
  p.tiles_per_split = p.col_tiles > 0 ? ceil_div(p.col_tiles, splits) : 1;
  p.splits = p.col_tiles > 0 ? int(ceil_div(p.col_tiles, p.tiles_per_split)) : 1;  // no empty split
  return p;
}

// Opt in to more than 48 KB of dynamic shared memory (needed once per kernel and device; cheap to repeat).
template <typename K>
cudaError_t allow_shared_memory(K* kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
}

// Blocks for a grid-stride loop over `work` items: as many as can be resident at once, at most `work`.
template <typename K>
int resident_grid(K* kernel, size_t smem_bytes, int64_t work) {
  const int64_t sms = device_sm_count();
  if (work <= sms) return int(work);  // fits at one block per SM: skip the occupancy query (small, launch-bound calls)
  int per_sm = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem_bytes) != cudaSuccess ||
      per_sm < 1) {
    (void)cudaGetLastError();
    per_sm = 1;
  }
  const int64_t resident = int64_t(per_sm) * sms;
  return int(work < resident ? work : resident);
}

// ---------------------------------------------------------------------------------------------- device helpers
__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

__device__ __forceinline__ float shfl_xor(float v, int lane_mask) { return __shfl_xor_sync(kFullMask, v, lane_mask); }
__device__ __forceinline__ double shfl_xor(double v, int lane_mask) {
  return __shfl_xor_sync(kFullMask, v, lane_mask);
}
__device__ __forceinline__ int shfl_xor(int v, int lane_mask) { return __shfl_xor_sync(kFullMask, v, lane_mask); }

// r[0:N] = p[0:N] from shared memory with 16-byte (or 8-byte) loads; p must be aligned to match
template <typename T, int N>
__device__ __forceinline__ void load_vec(const T* p, T (&r)[N]) {
  if constexpr (sizeof(T) == 4 && N % 4 == 0) {
#pragma unroll
    for (int q = 0; q < N / 4; ++q) {
      const float4 v = reinterpret_cast<const float4*>(p)[q];
      r[4 * q] = v.x;
      r[4 * q + 1] = v.y;
      r[4 * q + 2] = v.z;
      r[4 * q + 3] = v.w;
    }
  } else if constexpr (sizeof(T) == 4 && N % 2 == 0) {
#pragma unroll
    for (int q = 0; q < N / 2; ++q) {
      const float2 v = reinterpret_cast<const float2*>(p)[q];
      r[2 * q] = v.x;
      r[2 * q + 1] = v.y;
    }
  } else if constexpr (sizeof(T) == 8 && N % 2 == 0) {
#pragma unroll
    for (int q = 0; q < N / 2; ++q) {
      const double2 v = reinterpret_cast<const double2*>(p)[q];
      r[2 * q] = v.x;
      r[2 * q + 1] = v.y;
    }
  } else {
#pragma unroll
    for (int q = 0; q < N; ++q) r[q] = p[q];
  }
}

template <typename T, int N>
__device__ __forceinline__ void store_vec(T* p, const T (&r)[N]) {
  if constexpr (sizeof(T) == 4 && N % 4 == 0) {
#pragma unroll
    for (int q = 0; q < N / 4; ++q)
      reinterpret_cast<float4*>(p)[q] = make_float4(r[4 * q], r[4 * q + 1], r[4 * q + 2], r[4 * q + 3]);
  } else if constexpr (sizeof(T) == 4 && N % 2 == 0) {
#pragma unroll
    for (int q = 0; q < N / 2; ++q) reinterpret_cast<float2*>(p)[q] = make_float2(r[2 * q], r[2 * q + 1]);
  } else if constexpr (sizeof(T) == 8 && N % 2 == 0) {
#pragma unroll
    for (int q = 0; q < N / 2; ++q) reinterpret_cast<double2*>(p)[q] = make_double2(r[2 * q], r[2 * q + 1]);
  } else {
#pragma unroll
    for (int q = 0; q < N; ++q) p[q] = r[q];
  }
}

// ---------------------------------------------------------------------------------------------- prepass
// out_r = alpha v_r + beta ½|z_r - c|² in double for the rows of one point cloud (math::Affine names the
// op-specific alpha and beta); with block_max, also the largest finite out_r of each block of kPrepareRows rows,
// from which every block of the pairwise kernel reduces the bias offset. One launch serves two clouds: blocks
// [0, blocks_a) take job a, the rest job b.
constexpr int kPrepareRows = 256;  // rows per prepass block: 32 per warp
template <typename T>
struct PrepareJob {
  const T* z = nullptr;         // rows x d, raw
  const T* v = nullptr;         // rows, or null
  double* out = nullptr;        // rows
  double* block_max = nullptr;  // ceil(rows / kPrepareRows), or null
  int64_t rows = 0;
  math::Affine affine{0.0, 0.0};
};

inline int64_t prepare_blocks(int64_t rows) { return ceil_div(rows, kPrepareRows); }

// One warp per row, lanes striding over the features, a butterfly sum; norms in double like the CPU's.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    prepare_kernel(const PrepareJob<T> a, const PrepareJob<T> b, const T* __restrict__ center, int64_t d,
                   int64_t blocks_a) {
  __shared__ double warp_max[kWarpsPerBlock];
  // pick the job field by field: a reference to either parameter would force a copy to local memory
  const bool first = int64_t(blockIdx.x) < blocks_a;
  const int64_t block = first ? int64_t(blockIdx.x) : int64_t(blockIdx.x) - blocks_a;
  const int64_t rows = first ? a.rows : b.rows;
  const T* const z = first ? a.z : b.z;
  const T* const v = first ? a.v : b.v;
  double* const out = first ? a.out : b.out;
  const math::Affine affine = first ? a.affine : b.affine;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  double local_max = -INFINITY;
  const int64_t row0 = block * kPrepareRows + warp * (kPrepareRows / kWarpsPerBlock);
  for (int r = 0; r < kPrepareRows / kWarpsPerBlock; ++r) {
    const int64_t row = row0 + r;
    if (row >= rows) break;  // uniform over the warp
    const T* zr = z + row * d;
    double s = 0.0;
    for (int64_t k = lane; k < d; k += kWarp) {
      const double diff = double(zr[k] - center[k]);  // the difference in T, as the CPU packs it
      s = fma(diff, diff, s);
    }
#pragma unroll
    for (int off = kWarp / 2; off > 0; off /= 2) s += shfl_xor(s, off);
    const double value = math::apply_affine(affine, v != nullptr, v != nullptr ? double(v[row]) : 0.0, 0.5 * s);
    if (lane == 0) out[row] = value;
    local_max = math::finite_max(local_max, value);
  }
  double* const block_max = first ? a.block_max : b.block_max;
  if (block_max == nullptr) return;  // uniform over the block
  if (lane == 0) warp_max[warp] = local_max;
  __syncthreads();
  if (threadIdx.x == 0) {
    double m = -INFINITY;
    for (int w = 0; w < kWarpsPerBlock; ++w) m = math::finite_max(m, warp_max[w]);
    block_max[block] = m;
  }
}

template <typename T>
cudaError_t launch_prepare(const PrepareJob<T>& a, const PrepareJob<T>& b, const T* center, int64_t d,
                           cudaStream_t stream) {
  const int64_t blocks_a = prepare_blocks(a.rows), blocks_b = prepare_blocks(b.rows);
  if (blocks_a + blocks_b == 0) return cudaSuccess;
  prepare_kernel<T><<<dim3(unsigned(blocks_a + blocks_b)), kThreads, 0, stream>>>(a, b, center, d, blocks_a);
  return cudaGetLastError();
}

// ---------------------------------------------------------------------------------------------- split combine
enum class Combine : int { Online = 0, OnlineVec = 1, FixedVec = 2, Argmax = 3 };

// Partials are split-major: entry (s, r) at s * rows + r, vectors at (s * rows + r) * d.
template <typename T>
struct CombineParams {
  const T* part_max = nullptr;  // Online*: running max; Argmax: best value
  const T* part_sum = nullptr;
  const T* part_vec = nullptr;
  const int64_t* part_index = nullptr;
  int splits = 1;
  int64_t rows = 0, d = 0;
  const double* row_norm = nullptr;  // ½|x'|² (softmin, null = 0 for a stored cost) or |x'|² (argmax)
  const double* offset = nullptr;    // the bias offset the pairwise kernel used (null = 0)
  const T* center = nullptr;
  double eps = 1.0;
  T* value = nullptr;  // softmin / colsum / sqdist
  T* vec = nullptr;    // barycentre / weighted sums
  int64_t* index = nullptr;
  const T* points = nullptr;  // argmax accumulation: raw rows (rows x d)
  T* sums = nullptr;
  int64_t* counts = nullptr;
};

// One warp per row. Every lane merges the splits in the same order (deterministic, and the same result in every
// lane); the lanes then share the d coordinates of the vector sums.
template <typename T, Combine MODE>
__global__ void __launch_bounds__(kThreads) combine_kernel(const CombineParams<T> p) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (row >= p.rows) return;
  const double offset = p.offset != nullptr ? *p.offset : 0.0;
  if constexpr (MODE == Combine::Argmax) {
    T best = math::neg_inf<T>();
    int64_t index = 0;
    for (int s = 0; s < p.splits; ++s)
      math::argmax_merge(best, index, p.part_max[s * p.rows + row], p.part_index[s * p.rows + row]);
    if (lane == 0) {
      p.index[row] = index;
      p.value[row] = math::nearest_sqdist(p.row_norm[row], best, offset);
    }
    if (p.counts != nullptr) {
      for (int64_t k = lane; k < p.d; k += kWarp) atomicAdd(p.sums + index * p.d + k, p.points[row * p.d + k]);
      if (lane == 0) atomicAdd(reinterpret_cast<unsigned long long*>(p.counts + index), 1ull);
    }
  } else if constexpr (MODE == Combine::FixedVec) {
    T sum = T(0);
    for (int s = 0; s < p.splits; ++s) sum += p.part_sum[s * p.rows + row];
    if (lane == 0) p.value[row] = sum;
    for (int64_t k = lane; k < p.d; k += kWarp) {
      T acc = T(0);
      for (int s = 0; s < p.splits; ++s) acc += p.part_vec[(s * p.rows + row) * p.d + k];
      p.vec[row * p.d + k] = math::uncentre_sum(acc, sum, p.center[k]);
    }
  } else {
    T max = math::neg_inf<T>(), sum = T(0);
    for (int s = 0; s < p.splits; ++s)
      math::online_merge(max, sum, p.part_max[s * p.rows + row], p.part_sum[s * p.rows + row]);
    if (lane == 0)
      p.value[row] = math::softmin_value(p.row_norm != nullptr ? p.row_norm[row] : 0.0, max, sum, p.eps, offset);
    if constexpr (MODE == Combine::OnlineVec) {
      for (int64_t k = lane; k < p.d; k += kWarp) {
        T acc = T(0);
        for (int s = 0; s < p.splits; ++s)
          acc = math::fma_(math::rescale_factor(p.part_max[s * p.rows + row], max),
                           p.part_vec[(s * p.rows + row) * p.d + k], acc);
        p.vec[row * p.d + k] = math::barycenter_value(acc, sum, p.center[k]);
      }
    }
  }
}

template <typename T, Combine MODE>
cudaError_t launch_combine(const CombineParams<T>& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  combine_kernel<T, MODE><<<dim3(unsigned(ceil_div(p.rows, kWarpsPerBlock))), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace detail
}  // namespace cuda
}  // namespace lvf
