// The tiled pairwise kernel behind softmin, softmin+barycentre, plan_colsum and nearest.
//
// A block of 256 threads (16 x 16) owns BM = 16 TM rows of the kernel's rows r and walks over tiles of BN = 16 TN
// of its columns c (a grid-stride loop over row blocks; blockIdx.y picks a split of the column tiles). Per tile:
//   1. dot products: the features go through shared memory in chunks of 16 (rows and columns centred on the
//      way in, stored feature-major and double-buffered: global loads of chunk k+1 overlap the FMAs of chunk k);
//      thread (ty, tx) holds a TM x TN register tile: rows ty*TM.., columns tx*TN.., exact fp32 FMA;
//   2. t = bias_c + scale * dot (log2 units), then one of
//      Online     a running (max, sum) per thread and row, merged over the 16 lanes of a row at the end;
//      OnlineAcc  the max shared by the row's 16 lanes (butterfly max per tile) so the probabilities
//                 P = 2^(t - max) can go to shared memory, then a second pass over the same column tile forms
//                 P . (y - c) chunk by chunk, each thread owning one feature of each chunk for its TM rows;
//      FixedAcc   the same with a known max per row (plan column sums, signed weights);
//      Argmax     best t and its first column index per row (nearest; k-means sums added at the end).
// The vector accumulator lives in global memory (the output itself, or the split's partial buffer): each
// element is read and written by one thread only, once per tile, so no synchronisation is needed and any d fits.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"
#include "pairwise_math.cuh"

namespace lvf {
namespace cuda {
namespace detail {

enum class Mode : int { Online = 0, OnlineAcc = 1, FixedAcc = 2, Argmax = 3 };

constexpr int kThreadsX = 16;  // lanes along the columns of a tile: a row's lanes are one half-warp
constexpr int kThreadsY = kThreads / kThreadsX;
constexpr int kChunk = 16;  // features per shared-memory stage; = kThreadsX, one feature per lane in the P.y pass
static_assert(kChunk == kThreadsX, "the P.y pass gives each lane one feature of a chunk");

template <typename T, int TM, int TN>
struct TileGeometry {
  static constexpr int BM = TM * kThreadsY;  // rows per block
  static constexpr int BN = TN * kThreadsX;  // columns per tile
  // 16 bytes of padding per feature row: rows stay 16-byte aligned for vector loads, and the transposed stores
  // of the loaders spread over the banks (2-way at worst instead of 16-way)
  static constexpr int kPad = 16 / int(sizeof(T));
  static constexpr int LDX = BM + kPad, LDY = BN + kPad, LDP = BN + kPad;
  static constexpr int kStage = kChunk * (LDX + LDY);  // elements of one pipeline stage (row and column chunks)
  static_assert((BM * kChunk) % kThreads == 0 && (BN * kChunk) % kThreads == 0, "whole chunks per thread");

  // dynamic shared memory: two stages, the probability tile (vector modes), the argmax scratch
  static size_t smem_bytes(Mode mode, int64_t partial_sums, int64_t partial_counts) {
    size_t bytes = sizeof(T) * 2 * kStage;
    if (mode == Mode::OnlineAcc || mode == Mode::FixedAcc) bytes += sizeof(T) * BM * LDP;
    if (mode == Mode::Argmax)
      bytes += sizeof(int64_t) * BM + sizeof(T) * size_t(partial_sums) + sizeof(unsigned) * size_t(partial_counts);
    return bytes;
  }
};

template <typename T>
struct PairwiseParams {
  const T* rows = nullptr;                // n_rows x d, raw
  const T* cols = nullptr;                // n_cols x d, raw
  const T* center = nullptr;              // d: both clouds are centred on it
  const double* col_bias = nullptr;       // n_cols, log2 units (argmax: -½|y'|²), before the offset
  const double* col_bias_max = nullptr;   // bias_blocks: largest finite bias per prepass block
  int64_t bias_blocks = 0;
  const T* col_weight = nullptr;          // n_cols or null (= 1); FixedAcc only
  const double* row_fixed_max = nullptr;  // n_rows, before the offset; FixedAcc only
  const double* row_norm = nullptr;       // n_rows: ½|x'|² (softmin) or |x'|² (argmax)
  double* offset_out = nullptr;           // the bias offset, for the combine kernel (written by block (0, 0))
  int64_t n_rows = 0, n_cols = 0, d = 0;
  T scale = T(1);
  double eps = 1.0;
  int64_t tiles_per_split = 1;
  int splits = 1;
  // results (splits == 1)
  T* value = nullptr;        // softmin / colsum / sqdist (n_rows)
  T* vec = nullptr;          // barycentre / weighted sums (n_rows x d), also the running accumulator
  int64_t* index = nullptr;  // argmax
  // partial results (splits > 1), split-major
  T* part_max = nullptr;
  T* part_sum = nullptr;
  T* part_vec = nullptr;  // also the running accumulator of its split
  int64_t* part_index = nullptr;
  // argmax accumulation (splits == 1) when counts is not null: sums (n_cols x d, null allowed when d = 0) and
  // counts (n_cols) of the rows assigned to each column
  T* sums = nullptr;
  int64_t* counts = nullptr;
  int smem_partials = 0;  // 1: per-block partial sums in shared memory, flushed once per block
};

// One chunk (R rows x kChunk features) of a point cloud, centred, in registers between its global load and its
// (transposed) shared-memory store. Element e = tid + kThreads q is feature e % kChunk of row e / kChunk: a warp
// reads 2 rows x 16 consecutive features. Rows past the end and features past d read as 0 (adds nothing).
template <typename T, int R>
struct ChunkRegs {
  static constexpr int kPer = R * kChunk / kThreads;
  static constexpr int kRowStep = kThreads / kChunk;
  T v[kPer];
  const T* base;   // this thread's first row, at its feature lane
  int64_t stride;  // kRowStep rows
  int rows;        // rows of this thread's slots that exist (slot q is row q * kRowStep)
  int lane;        // feature within the chunk

  // per tile: row r0 of src (n_src x d) is the tile's first row
  __device__ __forceinline__ void init(const T* src, int64_t n_src, int64_t r0, int64_t d, int tid) {
    lane = tid % kChunk;
    const int64_t first = r0 + tid / kChunk;
    const int64_t left = n_src - first;
    rows = left <= 0 ? 0 : (left >= int64_t(kPer) * kRowStep ? kPer * kRowStep : int(left));
    base = src + (left > 0 ? first * d : 0) + lane;
    stride = int64_t(kRowStep) * d;
  }
  __device__ __forceinline__ void load(const T* __restrict__ center, int64_t d, int64_t k0) {
    const bool k_ok = k0 + lane < d;
    const T c = k_ok ? center[k0 + lane] : T(0);
#pragma unroll
    for (int q = 0; q < kPer; ++q) v[q] = (k_ok && q * kRowStep < rows) ? base[q * stride + k0] - c : T(0);
  }
  __device__ __forceinline__ void store(T* buf, int ld, int tid) const {
    T* b = buf + (tid % kChunk) * ld + tid / kChunk;
#pragma unroll
    for (int q = 0; q < kPer; ++q) b[q * kRowStep] = v[q];
  }
};

// dots[a][b] = <x'_(row0 + ty TM + a), y'_(col0 + tx TN + b)>, accumulated feature by feature in order.
template <typename T, int TM, int TN>
__device__ __forceinline__ void dot_tile(const PairwiseParams<T>& p, int64_t row0, int64_t col0, int64_t n_chunks,
                                         T* stage, int tid, int tx, int ty, T (&dots)[TM][TN]) {
  using G = TileGeometry<T, TM, TN>;
#pragma unroll
  for (int a = 0; a < TM; ++a)
#pragma unroll
    for (int b = 0; b < TN; ++b) dots[a][b] = T(0);
  if (n_chunks == 0) return;
  ChunkRegs<T, G::BM> xr;
  ChunkRegs<T, G::BN> yr;
  xr.init(p.rows, p.n_rows, row0, p.d, tid);
  yr.init(p.cols, p.n_cols, col0, p.d, tid);
  xr.load(p.center, p.d, 0);
  yr.load(p.center, p.d, 0);
  xr.store(stage, G::LDX, tid);
  yr.store(stage + kChunk * G::LDX, G::LDY, tid);
  __syncthreads();
  for (int64_t kc = 0; kc < n_chunks; ++kc) {
    const T* xs = stage + (kc & 1) * G::kStage;
    const T* ys = xs + kChunk * G::LDX;
    const bool more = kc + 1 < n_chunks;
    if (more) {
      xr.load(p.center, p.d, (kc + 1) * kChunk);
      yr.load(p.center, p.d, (kc + 1) * kChunk);
    }
#pragma unroll
    for (int kk = 0; kk < kChunk; ++kk) {
      T xf[TM], yf[TN];
      load_vec(xs + kk * G::LDX + ty * TM, xf);
      load_vec(ys + kk * G::LDY + tx * TN, yf);
#pragma unroll
      for (int a = 0; a < TM; ++a)
#pragma unroll
        for (int b = 0; b < TN; ++b) dots[a][b] = math::fma_(xf[a], yf[b], dots[a][b]);
    }
    if (more) {
      T* next = stage + ((kc + 1) & 1) * G::kStage;
      xr.store(next, G::LDX, tid);
      yr.store(next + kChunk * G::LDX, G::LDY, tid);
    }
    __syncthreads();  // chunk kc fully read before it is overwritten; chunk kc + 1 visible
  }
}

// acc[r][k] = factor_r acc[r][k] + sum_c P[r][c] y'[col0 + c][k] for the block's rows, P (BM x BN) in shared
// memory. Lane tx owns feature kc*16 + tx of every chunk for the thread's TM rows.
template <typename T, int TM, int TN>
__device__ __forceinline__ void weighted_sum_tile(const PairwiseParams<T>& p, int64_t col0, int64_t n_chunks,
                                                  T* stage, const T* ptile, T* acc, int64_t my_row0,
                                                  const T (&factor)[TM], int tid, int tx, int ty) {
  using G = TileGeometry<T, TM, TN>;
  constexpr int V = 16 / int(sizeof(T));  // elements per 16-byte shared-memory load
  if (n_chunks == 0) return;
  ChunkRegs<T, G::BN> yr;
  yr.init(p.cols, p.n_cols, col0, p.d, tid);
  yr.load(p.center, p.d, 0);
  yr.store(stage + kChunk * G::LDX, G::LDY, tid);
  __syncthreads();  // also publishes the P tile
  for (int64_t kc = 0; kc < n_chunks; ++kc) {
    const T* zs = stage + (kc & 1) * G::kStage + kChunk * G::LDX;
    const bool more = kc + 1 < n_chunks;
    if (more) yr.load(p.center, p.d, (kc + 1) * kChunk);
    T r[TM];
#pragma unroll
    for (int a = 0; a < TM; ++a) r[a] = T(0);
    const T* zrow = zs + tx * G::LDY;  // feature tx of this chunk, all BN columns of the tile
#pragma unroll 4
    for (int c = 0; c < G::BN; c += V) {
      T z[V];
      load_vec(zrow + c, z);
#pragma unroll
      for (int a = 0; a < TM; ++a) {
        T pv[V];
        load_vec(ptile + (ty * TM + a) * G::LDP + c, pv);
#pragma unroll
        for (int v = 0; v < V; ++v) r[a] = math::fma_(pv[v], z[v], r[a]);
      }
    }
    const int64_t k = kc * kChunk + tx;
    if (k < p.d) {
#pragma unroll
      for (int a = 0; a < TM; ++a) {
        const int64_t row = my_row0 + a;
        if (row < p.n_rows) {
          T* q = acc + row * p.d + k;
          *q = math::fma_(*q, factor[a], r[a]);
        }
      }
    }
    if (more) yr.store(stage + ((kc + 1) & 1) * G::kStage + kChunk * G::LDX, G::LDY, tid);
    __syncthreads();
  }
}

// max over the 16 lanes of a row group (exact, so every lane gets the same value)
template <typename T>
__device__ __forceinline__ T group_max(T v) {
#pragma unroll
  for (int off = kThreadsX / 2; off > 0; off /= 2) v = math::max_(v, shfl_xor(v, off));
  return v;
}
// sum over the 16 lanes of a row group (butterfly: a + b in one lane, b + a in the other, so all lanes agree)
template <typename T>
__device__ __forceinline__ T group_sum(T v) {
#pragma unroll
  for (int off = kThreadsX / 2; off > 0; off /= 2) v += shfl_xor(v, off);
  return v;
}

// Small register tiles fit two blocks per SM in 128 registers without spills; the 8 x 8 float tile needs ~180
// (64 accumulators, two prefetched chunks, fragments) and runs one block of 8 warps per SM: capping it at 128
// registers spills 150-400 bytes per thread (ptxas -v, sm_90).
template <typename T, int TM, int TN>
constexpr int min_blocks_per_sm() {
  return TM * TN * int(sizeof(T)) <= 64 ? 2 : 1;
}

template <typename T, int TM, int TN, Mode MODE>
__global__ void __launch_bounds__(kThreads, (min_blocks_per_sm<T, TM, TN>()))
    pairwise_kernel(const PairwiseParams<T> p) {
  using G = TileGeometry<T, TM, TN>;
  constexpr bool kAcc = MODE == Mode::OnlineAcc || MODE == Mode::FixedAcc;
  extern __shared__ __align__(16) unsigned char lvf_smem[];
  T* const stage = reinterpret_cast<T*>(lvf_smem);
  T* const extra = stage + 2 * G::kStage;  // P tile (vector modes) or argmax scratch

  const int tid = threadIdx.x, tx = tid % kThreadsX, ty = tid / kThreadsX;
  const int split = blockIdx.y;
  const int64_t tile_begin = int64_t(split) * p.tiles_per_split;
  const int64_t tile_end = min64(ceil_div(p.n_cols, G::BN), tile_begin + p.tiles_per_split);
  const int64_t row_blocks = ceil_div(p.n_rows, G::BM);
  const int64_t n_chunks = ceil_div(p.d, kChunk);

  // The bias offset (largest finite column bias, CPU's set_bias): every block reduces the prepass's per-block
  // maxima (n_cols / 256 values: 4 KB at 131,072 columns) the same way, so all blocks agree without a launch more.
  double offset;
  {
    double* const scratch = reinterpret_cast<double*>(lvf_smem);  // before the pipeline stages are used
    double mx = -INFINITY;
    for (int64_t e = tid; e < p.bias_blocks; e += kThreads) mx = math::finite_max(mx, p.col_bias_max[e]);
#pragma unroll
    for (int off = kWarp / 2; off > 0; off /= 2) mx = math::max_(mx, shfl_xor(mx, off));
    if (tid % kWarp == 0) scratch[tid / kWarp] = mx;
    __syncthreads();
    mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarpsPerBlock; ++w) mx = math::max_(mx, scratch[w]);
    offset = math::bias_offset(mx);
    __syncthreads();  // scratch is reused by the pipeline
    if (p.offset_out != nullptr && blockIdx.x == 0 && blockIdx.y == 0 && tid == 0) *p.offset_out = offset;
  }

  // argmax scratch: the block's assignments, then the optional per-block partial sums and counts (the pointers
  // are re-derived where used, which keeps them out of the registers of the main loop)
  auto row_index = [&] { return reinterpret_cast<int64_t*>(stage + 2 * G::kStage); };
  auto block_sums = [&] { return reinterpret_cast<T*>(row_index() + G::BM); };
  auto block_counts = [&] { return reinterpret_cast<unsigned*>(block_sums() + p.n_cols * p.d); };
  if constexpr (MODE == Mode::Argmax) {
    if (p.smem_partials) {
      for (int64_t e = tid; e < p.n_cols * p.d; e += kThreads) block_sums()[e] = T(0);
      for (int64_t e = tid; e < p.n_cols; e += kThreads) block_counts()[e] = 0u;
      __syncthreads();
    }
  }

  for (int64_t rb = blockIdx.x; rb < row_blocks; rb += gridDim.x) {
    const int64_t row0 = rb * G::BM;
    const int64_t my_row0 = row0 + ty * TM;
    T run_max[TM], run_sum[TM], fixed_max[TM];
    int best_index[TM];  // column index within n_cols (< 2^31): 32 bits save registers
#pragma unroll
    for (int a = 0; a < TM; ++a) {
      run_max[a] = math::neg_inf<T>();  // argmax: the best t so far
      run_sum[a] = T(0);
      best_index[a] = 0;
      fixed_max[a] = T(0);
      if constexpr (MODE == Mode::FixedAcc)
        fixed_max[a] = my_row0 + a < p.n_rows ? math::relative_bias<T>(p.row_fixed_max[my_row0 + a], offset)
                                              : math::pos_inf<T>();
    }
    T* acc = nullptr;
    if constexpr (kAcc) {
      acc = p.splits == 1 ? p.vec : p.part_vec + int64_t(split) * p.n_rows * p.d;
      for (int64_t k = tx; k < p.d; k += kThreadsX)
#pragma unroll
        for (int a = 0; a < TM; ++a)
          if (my_row0 + a < p.n_rows) acc[(my_row0 + a) * p.d + k] = T(0);
    }

    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
      const int64_t col0 = tile * G::BN;
      T dots[TM][TN];
      dot_tile<T, TM, TN>(p, row0, col0, n_chunks, stage, tid, tx, ty, dots);

      const int64_t jb = col0 + tx * TN;
      T bias[TN];
#pragma unroll
      for (int b = 0; b < TN; ++b)
        bias[b] = jb + b < p.n_cols ? math::relative_bias<T>(__ldg(p.col_bias + jb + b), offset) : math::neg_inf<T>();

      if constexpr (MODE == Mode::Online) {
#pragma unroll
        for (int a = 0; a < TM; ++a) {
          T t[TN];
          T block_max = math::neg_inf<T>();
#pragma unroll
          for (int b = 0; b < TN; ++b) {
            t[b] = math::log2_exponent(bias[b], p.scale, dots[a][b]);
            block_max = math::max_(block_max, t[b]);
          }
          math::online_raise_max(run_max[a], run_sum[a], block_max);
          run_sum[a] += math::online_block_sum(t, run_max[a]);
        }
      } else if constexpr (MODE == Mode::Argmax) {
#pragma unroll
        for (int a = 0; a < TM; ++a)
#pragma unroll
          for (int b = 0; b < TN; ++b) {
            const T t = math::log2_exponent(bias[b], p.scale, dots[a][b]);
            if (t > run_max[a]) {  // strict: the first maximum in column order is kept
              run_max[a] = t;
              best_index[a] = int(jb + b);
            }
          }
      } else {
        T factor[TM];
        if constexpr (MODE == Mode::OnlineAcc) {
#pragma unroll
          for (int a = 0; a < TM; ++a) {
            T t[TN];
            T block_max = math::neg_inf<T>();
#pragma unroll
            for (int b = 0; b < TN; ++b) {
              t[b] = math::log2_exponent(bias[b], p.scale, dots[a][b]);
              block_max = math::max_(block_max, t[b]);
            }
            factor[a] = math::online_raise_max(run_max[a], run_sum[a], group_max(block_max));
            T s = T(0);
#pragma unroll
            for (int b = 0; b < TN; ++b) {
              dots[a][b] = math::online_term(t[b], run_max[a]);  // dots now hold P
              s += dots[a][b];
            }
            run_sum[a] += s;
          }
        } else {  // FixedAcc
          T weight[TN];
#pragma unroll
          for (int b = 0; b < TN; ++b)
            weight[b] = jb + b < p.n_cols ? (p.col_weight != nullptr ? __ldg(p.col_weight + jb + b) : T(1)) : T(0);
#pragma unroll
          for (int a = 0; a < TM; ++a) {
            factor[a] = T(1);
            T s = T(0);
#pragma unroll
            for (int b = 0; b < TN; ++b) {
              const T t = math::log2_exponent(bias[b], p.scale, dots[a][b]);
              dots[a][b] = jb + b < p.n_cols ? math::fixed_term(t, fixed_max[a], weight[b]) : T(0);
              s += dots[a][b];
            }
            run_sum[a] += s;
          }
        }
        // the previous tile's P.y pass ended with a barrier, so the P tile is free
#pragma unroll
        for (int a = 0; a < TM; ++a) store_vec(extra + (ty * TM + a) * G::LDP + tx * TN, dots[a]);
        weighted_sum_tile<T, TM, TN>(p, col0, n_chunks, stage, extra, acc, my_row0, factor, tid, tx, ty);
      }
    }

    // ---- reduce over the 16 lanes of each row, then write results or partials
#pragma unroll
    for (int a = 0; a < TM; ++a) {
      if constexpr (MODE == Mode::Online) {
#pragma unroll
        for (int off = kThreadsX / 2; off > 0; off /= 2) {
          const T om = shfl_xor(run_max[a], off), os = shfl_xor(run_sum[a], off);
          math::online_merge(run_max[a], run_sum[a], om, os);
        }
      } else if constexpr (MODE == Mode::Argmax) {
#pragma unroll
        for (int off = kThreadsX / 2; off > 0; off /= 2) {
          const T ob = shfl_xor(run_max[a], off);
          const int oi = shfl_xor(best_index[a], off);
          math::argmax_merge(run_max[a], best_index[a], ob, oi);
        }
      } else {
        run_sum[a] = group_sum(run_sum[a]);  // the row's lanes already share one max
      }
    }
    if (tx == 0) {
#pragma unroll
      for (int a = 0; a < TM; ++a) {
        const int64_t row = my_row0 + a;
        if (row >= p.n_rows) continue;
        if (p.splits == 1) {
          if constexpr (MODE == Mode::Online || MODE == Mode::OnlineAcc)
            p.value[row] = math::softmin_value(p.row_norm[row], run_max[a], run_sum[a], p.eps, offset);
          if constexpr (MODE == Mode::FixedAcc) p.value[row] = run_sum[a];
          if constexpr (MODE == Mode::Argmax) {
            p.index[row] = best_index[a];
            p.value[row] = math::nearest_sqdist(p.row_norm[row], run_max[a], offset);
          }
        } else {
          const int64_t o = int64_t(split) * p.n_rows + row;
          if constexpr (MODE != Mode::FixedAcc) p.part_max[o] = run_max[a];
          if constexpr (MODE != Mode::Argmax) p.part_sum[o] = run_sum[a];
          if constexpr (MODE == Mode::Argmax) p.part_index[o] = best_index[a];
        }
      }
    }
    if constexpr (kAcc) {
      if (p.splits == 1) {  // finish the accumulator in place: each thread its own elements
        for (int64_t k = tx; k < p.d; k += kThreadsX) {
          const T c = p.center[k];
#pragma unroll
          for (int a = 0; a < TM; ++a) {
            const int64_t row = my_row0 + a;
            if (row >= p.n_rows) continue;
            T* q = acc + row * p.d + k;
            if constexpr (MODE == Mode::OnlineAcc)
              *q = math::barycenter_value(*q, run_sum[a], c);
            else
              *q = math::uncentre_sum(*q, run_sum[a], c);
          }
        }
      }
    }
    if constexpr (MODE == Mode::Argmax) {
      if (p.splits == 1 && p.counts != nullptr) {  // k-means: add each row of x to its cluster
        if (tx == 0)
#pragma unroll
          for (int a = 0; a < TM; ++a) row_index()[ty * TM + a] = best_index[a];
        __syncthreads();
        T* const sums = p.smem_partials ? block_sums() : p.sums;
        const int64_t rows_here = min64(int64_t(G::BM), p.n_rows - row0);
        for (int r = tid / kWarp; r < rows_here; r += kWarpsPerBlock) {  // a warp per row, lanes over features
          const T* xr = p.rows + (row0 + r) * p.d;
          T* target = sums + row_index()[r] * p.d;
          for (int64_t k = tid % kWarp; k < p.d; k += kWarp) atomicAdd(target + k, xr[k]);
        }
        if (tid < rows_here) {
          if (p.smem_partials)
            atomicAdd(block_counts() + row_index()[tid], 1u);
          else
            atomicAdd(reinterpret_cast<unsigned long long*>(p.counts + row_index()[tid]), 1ull);
        }
        __syncthreads();  // row_index is rewritten by the next row block
      }
    }
  }

  if constexpr (MODE == Mode::Argmax) {
    if (p.smem_partials) {  // flush this block's partial sums: one global atomic per touched element
      __syncthreads();
      const T* const bs = block_sums();
      const unsigned* const bc = block_counts();
      for (int64_t e = tid; e < p.n_cols * p.d; e += kThreads)
        if (bs[e] != T(0)) atomicAdd(p.sums + e, bs[e]);
      for (int64_t e = tid; e < p.n_cols; e += kThreads)
        if (bc[e] != 0u)
          atomicAdd(reinterpret_cast<unsigned long long*>(p.counts + e), static_cast<unsigned long long>(bc[e]));
    }
  }
}

// Launch one instantiation: grid (row blocks or fewer with a grid-stride loop, splits).
template <typename T, int TM, int TN, Mode MODE>
cudaError_t launch_pairwise(const PairwiseParams<T>& p, const SplitPlan& plan, size_t smem_bytes,
                            cudaStream_t stream) {
  if (plan.row_blocks == 0) return cudaSuccess;
  auto* kernel = pairwise_kernel<T, TM, TN, MODE>;
  cudaError_t err = allow_shared_memory(kernel, smem_bytes);
  if (err != cudaSuccess) return err;
  // one split: a resident grid loops over the row blocks (per-block k-means partials are flushed once);
  // several splits: the rows are few, one block per (row block, split)
  const int grid_x = plan.splits > 1 ? int(plan.row_blocks) : resident_grid(kernel, smem_bytes, plan.row_blocks);
  kernel<<<dim3(unsigned(grid_x), unsigned(plan.splits)), kThreads, smem_bytes, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace detail
}  // namespace cuda
}  // namespace lvf
