// The CPU pairwise-reduction kernels, written once and compiled once per instruction set.
//
// CMake compiles this file three times (generic / avx2 / avx512) with LVF_CAP_NS, LVF_CAP_NAME, LVF_VECTOR_BYTES
// and LVF_ROW_BLOCK set; dispatch.cpp picks one table at run time. Structure of every row block:
//   1. copy MR rows, centred and transposed (xt: d x MR), so the micro-kernel broadcasts one contiguous scalar;
//   2. for each packed panel of NR columns: an MR x NR register tile of dot products (d FMAs per vector);
//   3. turn it into log2 exponents t = bias_j + scale * dot and reduce (online max + sum, fixed sum, or argmax).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels.h"
#include "simd.h"

#if !defined(LVF_CAP_NS) || !defined(LVF_CAP_NAME) || !defined(LVF_ROW_BLOCK)
#error "LVF_CAP_NS, LVF_CAP_NAME and LVF_ROW_BLOCK must be defined"
#endif

#define LVF_INLINE inline __attribute__((always_inline))

namespace lvf {
namespace cpu {
namespace LVF_CAP_NS {

// Columns per exp pass: a multiple of every panel width, small enough that the exponent tile stays in L1.
constexpr int64_t kChunk = 256;

template <typename T>
struct Micro {
  using V = simd::Vec<T>;
  using v = typename V::v;
  static constexpr int W = V::W;
  static constexpr int NV = 2;  // vectors per row of the register tile
  static constexpr int NR = NV * W;
  static constexpr int MR = LVF_ROW_BLOCK;
  static_assert(kChunk % NR == 0, "chunk must hold whole panels");
};

template <typename T>
static constexpr T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

// ---------------------------------------------------------------------------------------------- packing
template <typename T>
void pack_columns(const T* z, int64_t m, int64_t d, const T* center, T* panels, T* rows_out, int64_t d_pad) {
  constexpr int NR = Micro<T>::NR;
  const int64_t n_panels = (m + NR - 1) / NR;
  for (int64_t p = 0; p < n_panels; ++p) {
    T* panel = panels + p * d * NR;
    for (int c = 0; c < NR; ++c) {
      const int64_t j = p * NR + c;
      for (int64_t k = 0; k < d; ++k) panel[k * NR + c] = j < m ? z[j * d + k] - center[k] : T(0);
    }
  }
  if (rows_out != nullptr) {
    for (int64_t j = 0; j < n_panels * NR; ++j)
      for (int64_t k = 0; k < d_pad; ++k)
        rows_out[j * d_pad + k] = (j < m && k < d) ? z[j * d + k] - center[k] : T(0);
  }
}

// Copy rows [rb, rb + nr) centred and transposed into xt (d x MR); missing rows are zero.
template <typename T>
static LVF_INLINE void load_row_block(const Rows<T>& r, int64_t rb, int64_t nr, T* xt, T* half_norm) {
  constexpr int MR = Micro<T>::MR;
  const int64_t d = r.d;
  for (int rr = 0; rr < MR; ++rr) {
    double norm = 0;  // in double: ½|x'|² sits outside the log-sum-exp and sets the result's absolute error
    for (int64_t k = 0; k < d; ++k) {
      const T v = rr < nr ? r.x[(rb + rr) * d + k] - r.center[k] : T(0);
      xt[k * MR + rr] = v;
      norm += double(v) * double(v);
    }
    if (half_norm != nullptr && rr < nr) half_norm[rb + rr] = T(0.5 * norm);
  }
}

// MR x NR tile of dot products between the row block and one packed panel.
template <typename T>
static LVF_INLINE void dot_tile(const T* __restrict xt, const T* __restrict panel, int64_t d,
                                typename Micro<T>::v (&acc)[Micro<T>::MR][Micro<T>::NV]) {
  using M = Micro<T>;
  using V = typename M::V;
#pragma GCC unroll 16
  for (int rr = 0; rr < M::MR; ++rr)
#pragma GCC unroll 4
    for (int v = 0; v < M::NV; ++v) acc[rr][v] = V::set1(T(0));
  for (int64_t k = 0; k < d; ++k) {
    typename M::v z[M::NV];
#pragma GCC unroll 4
    for (int v = 0; v < M::NV; ++v) z[v] = V::load(panel + k * M::NR + v * M::W);
    const T* xk = xt + k * M::MR;
#pragma GCC unroll 16
    for (int rr = 0; rr < M::MR; ++rr) {
      const T s = xk[rr];
#pragma GCC unroll 4
      for (int v = 0; v < M::NV; ++v) acc[rr][v] += s * z[v];
    }
  }
}

// out[0:NVD*W] += sum_c e[c] * rows[c * d_pad + 0:NVD*W]  (one row of the weighted-sum GEMM, in registers)
template <typename T, int NVD>
static LVF_INLINE void axpy_block(const T* __restrict e, const T* __restrict rows, int64_t ncols, int64_t d_pad,
                                  T* __restrict out) {
  using V = simd::Vec<T>;
  typename V::v a[NVD];
#pragma GCC unroll 4
  for (int v = 0; v < NVD; ++v) a[v] = V::load(out + v * V::W);
  for (int64_t c = 0; c < ncols; ++c) {
    const T s = e[c];
    const T* zr = rows + c * d_pad;
#pragma GCC unroll 4
    for (int v = 0; v < NVD; ++v) a[v] += s * V::load(zr + v * V::W);
  }
#pragma GCC unroll 4
  for (int v = 0; v < NVD; ++v) V::store(out + v * V::W, a[v]);
}

template <typename T>
static void weighted_rows_sum(const T* e, const T* rows, int64_t ncols, int64_t d_pad, T* out) {
  constexpr int W = simd::Vec<T>::W;
  int64_t k = 0;
  for (; k + 4 * W <= d_pad; k += 4 * W) axpy_block<T, 4>(e, rows + k, ncols, d_pad, out + k);
  switch ((d_pad - k) / W) {
    case 3: axpy_block<T, 3>(e, rows + k, ncols, d_pad, out + k); break;
    case 2: axpy_block<T, 2>(e, rows + k, ncols, d_pad, out + k); break;
    case 1: axpy_block<T, 1>(e, rows + k, ncols, d_pad, out + k); break;
    default: break;
  }
}

// ---------------------------------------------------------------------------------------------- reduce
template <typename T, bool ONLINE, bool ACC, bool WEIGHTED>
static void reduce_impl(const Rows<T>& r, const Columns<T>& c, T scale, int64_t row_begin, int64_t row_end,
                        int64_t panel_begin, int64_t panel_end, T* rowmax, T* rowsum, T* acc_out, T* half_norm) {
  using M = Micro<T>;
  using V = typename M::V;
  constexpr int MR = M::MR, NR = M::NR, NV = M::NV, W = M::W;
  const int64_t d = r.d, d_pad = c.d_pad;
  // scratch reused across calls: a LossVal step makes hundreds of tiny calls
  thread_local std::vector<T> xt, acc;
  xt.resize(std::max<int64_t>(d, 1) * MR);
  if (ACC) acc.resize(MR * d_pad);
  alignas(64) T tile[MR * kChunk];
  const typename M::v vscale = V::set1(scale);

  for (int64_t rb = row_begin; rb < row_end; rb += MR) {
    const int64_t nr = std::min<int64_t>(MR, row_end - rb);
    load_row_block(r, rb, nr, xt.data(), half_norm);
    T m[MR], S[MR];
    for (int rr = 0; rr < MR; ++rr) {
      m[rr] = (ONLINE || rr >= nr) ? neg_inf<T>() : rowmax[rb + rr];
      S[rr] = T(0);
    }
    if (ACC) std::fill(acc.begin(), acc.begin() + MR * d_pad, T(0));

    for (int64_t pc = panel_begin; pc < panel_end; pc += kChunk / NR) {
      const int64_t np = std::min<int64_t>(kChunk / NR, panel_end - pc);
      const int64_t ncols = np * NR;
      for (int64_t q = 0; q < np; ++q) {
        typename M::v dots[MR][NV];
        dot_tile<T>(xt.data(), c.panels + (pc + q) * d * NR, d, dots);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
          const typename M::v b = V::load(c.bias + (pc + q) * NR + v * W);
#pragma GCC unroll 16
          for (int rr = 0; rr < MR; ++rr) V::store(tile + rr * kChunk + q * NR + v * W, b + vscale * dots[rr][v]);
        }
      }
      for (int64_t rr = 0; rr < nr; ++rr) {
        T* t = tile + rr * kChunk;
        if (ONLINE) {
          typename M::v mv = V::load(t);
          for (int64_t cc = W; cc < ncols; cc += W) mv = V::max(mv, V::load(t + cc));
          const T cm = V::hmax(mv);
          if (cm > m[rr]) {
            if (m[rr] != neg_inf<T>()) {
              const T f = std::exp2(m[rr] - cm);
              S[rr] *= f;
              if (ACC)
                for (int64_t k = 0; k < d_pad; ++k) acc[rr * d_pad + k] *= f;
            }
            m[rr] = cm;
          }
          if (m[rr] == neg_inf<T>()) {  // every column so far is masked with -inf: nothing to add
            if (ACC) std::fill(t, t + ncols, T(0));
            continue;
          }
        }
        const typename M::v mm = V::set1(m[rr]);
        typename M::v s0 = V::set1(T(0)), s1 = V::set1(T(0));
        const T* w = WEIGHTED ? c.weight + pc * NR : nullptr;
        for (int64_t cc = 0; cc < ncols; cc += 2 * W) {
          // online: t <= the exact running max; fixed: t - m <= ~0 up to rounding, keep the upper clamp
          typename M::v e0 = simd::exp2<!ONLINE>(V::load(t + cc) - mm);
          typename M::v e1 = simd::exp2<!ONLINE>(V::load(t + cc + W) - mm);
          if (WEIGHTED) {
            e0 *= V::load(w + cc);
            e1 *= V::load(w + cc + W);
          }
          s0 += e0;
          s1 += e1;
          if (ACC) {
            V::store(t + cc, e0);
            V::store(t + cc + W, e1);
          }
        }
        S[rr] += V::hsum(s0 + s1);
      }
      if (ACC)
        for (int64_t rr = 0; rr < nr; ++rr)
          weighted_rows_sum<T>(tile + rr * kChunk, c.rows + pc * NR * d_pad, ncols, d_pad, acc.data() + rr * d_pad);
    }
    for (int64_t rr = 0; rr < nr; ++rr) {
      if (ONLINE) rowmax[rb + rr] = m[rr];
      rowsum[rb + rr] = S[rr];
      if (ACC) std::copy(acc.begin() + rr * d_pad, acc.begin() + (rr + 1) * d_pad, acc_out + (rb + rr) * d_pad);
    }
  }
}

// Both half-steps of a symmetric Sinkhorn update from ONE computation of each tile of dot products (online mode):
// the row reduction of reduce(ONLINE) with t_ij = bias_j + scale dot_ij, and the column reduction with
// u_ij = ha_i - scale ½|x'_i|² + scale dot_ij into the caller's running per-column (max, sum) partials colmax /
// colsum (m_pad entries; start at column_empty<T>() / 0). Padding columns (zero panels) only touch their own partials.
template <typename T>
void reduce_both(const Rows<T>& r, const Columns<T>& c, T scale, const T* ha, int64_t row_begin, int64_t row_end,
                 T* rowmax, T* rowsum, T* half_norm, T* colmax, T* colsum) {
  using M = Micro<T>;
  using V = typename M::V;
  using v = typename M::v;
  constexpr int MR = M::MR, NR = M::NR, NV = M::NV, W = M::W;
  const int64_t d = r.d;
  const int64_t n_panels = c.m_pad / NR;
  thread_local std::vector<T> xt;
  xt.resize(std::max<int64_t>(d, 1) * MR);
  alignas(64) T tile[MR * kChunk];  // raw dot products: both passes form their exponents with one FMA each
  const v vscale = V::set1(scale);
  for (int64_t rb = row_begin; rb < row_end; rb += MR) {
    const int64_t nr = std::min<int64_t>(MR, row_end - rb);
    load_row_block(r, rb, nr, xt.data(), half_norm);
    T m[MR], S[MR], arow[MR];
    for (int rr = 0; rr < MR; ++rr) {
      m[rr] = neg_inf<T>();
      S[rr] = T(0);
      arow[rr] = rr < nr ? T(ha[rb + rr] - scale * half_norm[rb + rr]) : T(0);
    }
    for (int64_t pc = 0; pc < n_panels; pc += kChunk / NR) {
      const int64_t np = std::min<int64_t>(kChunk / NR, n_panels - pc);
      const int64_t ncols = np * NR;
      const T* bias = c.bias + pc * NR;
      for (int64_t q = 0; q < np; ++q) {
        v dots[MR][NV];
        dot_tile<T>(xt.data(), c.panels + (pc + q) * d * NR, d, dots);
#pragma GCC unroll 4
        for (int vv = 0; vv < NV; ++vv)
#pragma GCC unroll 16
          for (int rr = 0; rr < MR; ++rr) V::store(tile + rr * kChunk + q * NR + vv * W, dots[rr][vv]);
      }
      // rows: online max and sum, as reduce(ONLINE)
      for (int64_t rr = 0; rr < nr; ++rr) {
        const T* t = tile + rr * kChunk;
        v mv = V::load(bias) + vscale * V::load(t);
        for (int64_t cc = W; cc < ncols; cc += W) mv = V::max(mv, V::load(bias + cc) + vscale * V::load(t + cc));
        const T cm = V::hmax(mv);
        if (cm > m[rr]) {
          if (m[rr] != neg_inf<T>()) S[rr] *= std::exp2(m[rr] - cm);
          m[rr] = cm;
        }
        if (m[rr] == neg_inf<T>()) continue;
        const v mm = V::set1(m[rr]);
        v s0 = V::set1(T(0)), s1 = V::set1(T(0));
        int64_t cc = 0;
        for (; cc + 2 * W <= ncols; cc += 2 * W) {
          s0 += simd::exp2<false>(V::load(bias + cc) + vscale * V::load(t + cc) - mm);
          s1 += simd::exp2<false>(V::load(bias + cc + W) + vscale * V::load(t + cc + W) - mm);
        }
        for (; cc < ncols; cc += W) s0 += simd::exp2<false>(V::load(bias + cc) + vscale * V::load(t + cc) - mm);
        S[rr] += V::hsum(s0 + s1);
      }
      // columns: this block's rows folded into the running (max, sum) of every column
      for (int64_t cc = 0; cc < ncols; cc += W) {
        v top = V::set1(neg_inf<T>());
        for (int64_t rr = 0; rr < nr; ++rr)
          top = V::max(top, V::set1(arow[rr]) + vscale * V::load(tile + rr * kChunk + cc));
        T* cmx = colmax + pc * NR + cc;
        T* csm = colsum + pc * NR + cc;
        const v old = V::load(cmx);
        const v nm = V::max(old, top);
        v sum = V::load(csm) * simd::exp2<false>(old - nm);
        for (int64_t rr = 0; rr < nr; ++rr)
          sum += simd::exp2<false>(V::set1(arow[rr]) + vscale * V::load(tile + rr * kChunk + cc) - nm);
        V::store(cmx, nm);
        V::store(csm, sum);
      }
    }
    for (int64_t rr = 0; rr < nr; ++rr) {
      rowmax[rb + rr] = m[rr];
      rowsum[rb + rr] = S[rr];
    }
  }
}

template <typename T>
void reduce(const Rows<T>& r, const Columns<T>& c, T scale, Reduction mode, int64_t row_begin, int64_t row_end,
            int64_t panel_begin, int64_t panel_end, T* rowmax, T* rowsum, T* acc, T* half_norm) {
  const bool online = mode == Reduction::Online, with_acc = acc != nullptr, weighted = c.weight != nullptr;
#define LVF_REDUCE(O, A, WT) \
  return reduce_impl<T, O, A, WT>(r, c, scale, row_begin, row_end, panel_begin, panel_end, rowmax, rowsum, acc, half_norm)
  if (online) {
    if (with_acc) {
      if (weighted) LVF_REDUCE(true, true, true);
      LVF_REDUCE(true, true, false);
    }
    if (weighted) LVF_REDUCE(true, false, true);
    LVF_REDUCE(true, false, false);
  }
  if (with_acc) {
    if (weighted) LVF_REDUCE(false, true, true);
    LVF_REDUCE(false, true, false);
  }
  if (weighted) LVF_REDUCE(false, false, true);
  LVF_REDUCE(false, false, false);
#undef LVF_REDUCE
}

// ---------------------------------------------------------------------------------------------- argmax
// SECOND: also the second-largest t_ij of each row (-inf with one column), for the bounds of a k-means step
template <typename T, bool SECOND>
void argmax_impl(const Rows<T>& r, const Columns<T>& c, int64_t row_begin, int64_t row_end, T* best_out,
                 int64_t* index_out, T* second_out) {
  // Rows in the vector lanes, columns broadcast: a block of RB = RV * W rows is transposed once (xt: d x RB), then
  // every column tile is RV x NC register accumulators, and the running maximum over columns is a vertical
  // compare-and-blend per row vector. No horizontal reduction over lanes, and no work on padding columns.
  // 256-bit vectors in the AVX-512 build too (with its 32 registers and mask blends): on cores that split 512-bit
  // FMAs in two (AMD Zen 4, this project's CPU machines) they measured 10-15% faster than 512-bit ones here
  constexpr int VB = LVF_VECTOR_BYTES == 64 ? 32 : LVF_VECTOR_BYTES;
  using I = typename simd::IntOf<T>::type;
  typedef T v __attribute__((vector_size(VB)));
  typedef I vi __attribute__((vector_size(VB)));
  constexpr int W = VB / int(sizeof(T));
  struct V {
    static v load(const T* p) { v a; __builtin_memcpy(&a, p, sizeof a); return a; }
    static void store(T* p, v a) { __builtin_memcpy(p, &a, sizeof a); }
    static void storei(I* p, vi a) { __builtin_memcpy(p, &a, sizeof a); }
    static v set1(T s) { return v{} + s; }
    static vi set1i(I s) { return vi{} + s; }
  };
  constexpr int NR = Micro<T>::NR;  // width of the packed panels the columns live in
  constexpr int RV = 2;             // row vectors per block
  constexpr int RB = RV * W;
  constexpr int NC = LVF_VECTOR_BYTES == 64 ? 8 : 4;  // RV * NC accumulators: 16 of 32 registers, or 8 of 16
  static_assert(NR % NC == 0, "column tiles must not straddle panels");
  const int64_t d = r.d, m = c.m;
  thread_local std::vector<T> xt_buffer;
  xt_buffer.resize(std::max<int64_t>(d, 1) * RB + W);
  // align xt to a vector so the loads in the inner loop never split a cache line
  T* xt = xt_buffer.data();
  while (reinterpret_cast<uintptr_t>(xt) % VB != 0) ++xt;
  // one stage of the in-register transpose: swaps bit h of the row index with bit h of the lane index, so the
  // stages for h = W/2, ..., 1 together turn W row vectors into W column vectors
  auto transpose_stage = []<int h>(v (&t)[W]) {
    vi lo, hi;
    for (int l = 0; l < W; ++l) {
      lo[l] = I((l & h) ? W + l - h : l);
      hi[l] = I((l & h) ? W + l : l + h);
    }
#pragma GCC unroll 16
    for (int i = 0; i < W; ++i)
      if ((i & h) == 0) {
        const v a = t[i], b = t[i + h];
        t[i] = __builtin_shuffle(a, b, lo);
        t[i + h] = __builtin_shuffle(a, b, hi);
      }
  };
  alignas(64) T best_lane[RB];
  alignas(64) T second_lane[RB];
  alignas(64) I index_lane[RB];

  for (int64_t rb = row_begin; rb < row_end; rb += RB) {
    const int64_t nr = std::min<int64_t>(RB, row_end - rb);
    const T* xb = r.x + rb * d;
    for (int q = 0; q < RV; ++q) {
      const int64_t g0 = int64_t(q) * W;  // first row of this group of W rows
      const int64_t valid = std::min<int64_t>(W, std::max<int64_t>(0, nr - g0));
      int64_t k0 = 0;
      if (valid == W) {
        // W x W tiles (W rows, W features) transposed in registers: W log2(W) two-source shuffles
        for (; k0 + W <= d; k0 += W) {
          v t[W];
          const v cv = V::load(r.center + k0);
#pragma GCC unroll 16
          for (int i = 0; i < W; ++i) t[i] = V::load(xb + (g0 + i) * d + k0) - cv;
          if constexpr (W >= 16) transpose_stage.template operator()<8>(t);
          if constexpr (W >= 8) transpose_stage.template operator()<4>(t);
          if constexpr (W >= 4) transpose_stage.template operator()<2>(t);
          transpose_stage.template operator()<1>(t);
#pragma GCC unroll 16
          for (int i = 0; i < W; ++i) V::store(xt + (k0 + i) * RB + g0, t[i]);
        }
      }
      // features left over (d not a multiple of W), and the rows past the end of the range (zeros)
      if (k0 < d)
        for (int64_t i = 0; i < W; ++i)
          for (int64_t k = k0; k < d; ++k)
            xt[k * RB + g0 + i] = i < valid ? xb[(g0 + i) * d + k] - r.center[k] : T(0);
    }
    v best[RV], second[RV];
    vi index[RV];
#pragma GCC unroll 4
    for (int q = 0; q < RV; ++q) {
      best[q] = V::set1(neg_inf<T>());
      if constexpr (SECOND) second[q] = V::set1(neg_inf<T>());
      index[q] = V::set1i(I(0));
    }
    // NCC columns starting at j0 (NCC < NC only for the last tile): dot products, then fold them into the
    // running maximum in increasing column order with a strict compare, so the first maximum wins
    auto tile = [&]<int NCC>(int64_t j0) {
      const T* z = c.panels + (j0 / NR) * d * NR + (j0 % NR);
      v acc[RV][NCC];
#pragma GCC unroll 16
      for (int cc = 0; cc < NCC; ++cc)
#pragma GCC unroll 4
        for (int q = 0; q < RV; ++q) acc[q][cc] = V::set1(T(0));
#pragma GCC unroll 2
      for (int64_t k = 0; k < d; ++k) {
        v xv[RV];
#pragma GCC unroll 4
        for (int q = 0; q < RV; ++q) xv[q] = V::load(xt + k * RB + q * W);
        const T* zk = z + k * NR;
#pragma GCC unroll 16
        for (int cc = 0; cc < NCC; ++cc) {
          const T s = zk[cc];
#pragma GCC unroll 4
          for (int q = 0; q < RV; ++q) acc[q][cc] += xv[q] * s;
        }
      }
#pragma GCC unroll 16
      for (int cc = 0; cc < NCC; ++cc) {
        const v b = V::set1(c.bias[j0 + cc]);
        const vi col = V::set1i(I(j0 + cc));
#pragma GCC unroll 4
        for (int q = 0; q < RV; ++q) {
          const v t = b + acc[q][cc];
          const vi better = t > best[q];
          if constexpr (SECOND) second[q] = better ? best[q] : (t > second[q] ? t : second[q]);
          best[q] = better ? t : best[q];
          index[q] = better ? col : index[q];
        }
      }
    };
    int64_t j0 = 0;
    for (; j0 + NC <= m; j0 += NC) tile.template operator()<NC>(j0);
    switch (m - j0) {
      case 7: if constexpr (NC > 7) tile.template operator()<7>(j0); break;
      case 6: if constexpr (NC > 6) tile.template operator()<6>(j0); break;
      case 5: if constexpr (NC > 5) tile.template operator()<5>(j0); break;
      case 4: if constexpr (NC > 4) tile.template operator()<4>(j0); break;
      case 3: tile.template operator()<3>(j0); break;
      case 2: tile.template operator()<2>(j0); break;
      case 1: tile.template operator()<1>(j0); break;
      default: break;
    }
#pragma GCC unroll 4
    for (int q = 0; q < RV; ++q) {
      V::store(best_lane + q * W, best[q]);
      if constexpr (SECOND) V::store(second_lane + q * W, second[q]);
      V::storei(index_lane + q * W, index[q]);
    }
    for (int64_t rr = 0; rr < nr; ++rr) {
      best_out[rb + rr] = best_lane[rr];
      index_out[rb + rr] = index_lane[rr];
      if constexpr (SECOND) second_out[rb + rr] = second_lane[rr];
    }
  }
}

template <typename T>
void argmax(const Rows<T>& r, const Columns<T>& c, int64_t row_begin, int64_t row_end, T* best_out,
            int64_t* index_out, T* second_out) {
  if (second_out != nullptr) argmax_impl<T, true>(r, c, row_begin, row_end, best_out, index_out, second_out);
  else argmax_impl<T, false>(r, c, row_begin, row_end, best_out, index_out, nullptr);
}

// ---------------------------------------------------------------------------------------------- stored cost
// One sweep per row with a lagging maximum: blocks of 4 vectors are exponentiated against the running max m of
// the blocks before them; only when a block exceeds m + 32 (rare after the first block) is m raised and the sum
// rescaled. Terms stay <= 2^32, so nothing overflows, and no second pass or exact per-block max is needed.
// Rows up to kShortRow entries (a LossVal minibatch against ~100 validation points) are swept twice from L1:
// exact max, then exponentials. Longer rows take one sweep with a lagging maximum: blocks of 4 vectors are
// exponentiated against the running max m of the blocks before them; only when a block exceeds m + 32 (rare after
// the first block) is m raised and the sum rescaled. Terms stay <= 2^32, so nothing overflows.
// Rows whose stride ld is a whole number of vectors (padding +inf, i.e. t = -inf) never run scalar tail code.
template <typename T>
void stored_rows(const T* cost, int64_t m, int64_t ld, const T* hb, T scale, int64_t row_begin, int64_t row_end,
                 T* rowmax, T* rowsum) {
  using V = simd::Vec<T>;
  using v = typename V::v;
  constexpr int W = V::W;
  constexpr int B = 4 * W;
  constexpr int64_t kShortRow = 1024 / int64_t(sizeof(T));
  constexpr T kHeadroom = 32;
  const v vs = V::set1(scale);
  const bool padded = ld % W == 0 && ld >= m;
  const int64_t m_vec = padded ? ld : m - m % W;  // columns covered by whole vectors
  alignas(64) T tail_cost[W], tail_hb[W];
  alignas(64) T tbuf[kShortRow];
  auto tail = [&](const T* row, v& t) {  // the last m - m_vec < W columns, padded with t = -inf
    for (int l = 0; l < W; ++l) {
      const bool in = m_vec + l < m;
      tail_cost[l] = in ? row[m_vec + l] : std::numeric_limits<T>::infinity();
      tail_hb[l] = in ? hb[m_vec + l] : T(0);
    }
    t = V::load(tail_hb) - vs * V::load(tail_cost);
  };
  const bool has_tail = m_vec < m;
  if (m_vec + (has_tail ? W : 0) <= kShortRow) {
    const int64_t nv = m_vec / W + (has_tail ? 1 : 0);
    for (int64_t i = row_begin; i < row_end; ++i) {
      const T* row = cost + i * ld;
      v top = V::set1(neg_inf<T>());
      for (int64_t q = 0; q < m_vec / W; ++q) {
        const v t = V::load(hb + q * W) - vs * V::load(row + q * W);
        V::store(tbuf + q * W, t);
        top = V::max(top, t);
      }
      if (has_tail) {
        v t;
        tail(row, t);
        V::store(tbuf + (nv - 1) * W, t);
        top = V::max(top, t);
      }
      const T mm = V::hmax(top);
      rowmax[i] = mm;
      if (mm == neg_inf<T>()) {
        rowsum[i] = T(0);
        continue;
      }
      const v vm = V::set1(mm);
      v s0 = V::set1(T(0)), s1 = s0;
      int64_t q = 0;
      for (; q + 1 < nv; q += 2) {
        s0 += simd::exp2<false>(V::load(tbuf + q * W) - vm);
        s1 += simd::exp2<false>(V::load(tbuf + (q + 1) * W) - vm);
      }
      if (q < nv) s0 += simd::exp2<false>(V::load(tbuf + q * W) - vm);
      rowsum[i] = V::hsum(s0 + s1);
    }
    return;
  }
  const int64_t m_blocks = m_vec - m_vec % B;
  for (int64_t i = row_begin; i < row_end; ++i) {
    const T* row = cost + i * ld;
    T mm = neg_inf<T>();
    v vm = V::set1(mm), limit = vm;  // exponents are taken against vm; a block above limit raises it
    v s0 = V::set1(T(0)), s1 = s0, s2 = s0, s3 = s0;
    auto raise = [&](v top) {
      const T bm = V::hmax(top);
      const v f = mm == neg_inf<T>() ? V::set1(T(0)) : simd::exp2(V::set1(mm - bm));
      s0 *= f;
      s1 *= f;
      s2 *= f;
      s3 *= f;
      mm = bm;
      vm = V::set1(mm);
      limit = V::set1(mm + kHeadroom);
    };
    for (int64_t j = 0; j < m_blocks; j += B) {
      // the exp work per byte is high, so the core's own prefetcher falls behind: ask 1 KiB ahead
      __builtin_prefetch(row + j + 1024 / sizeof(T), 0, 0);
      __builtin_prefetch(row + j + 1024 / sizeof(T) + 64 / sizeof(T), 0, 0);
      __builtin_prefetch(row + j + 1024 / sizeof(T) + 128 / sizeof(T), 0, 0);
      __builtin_prefetch(row + j + 1024 / sizeof(T) + 192 / sizeof(T), 0, 0);
      const v t0 = V::load(hb + j) - vs * V::load(row + j);
      const v t1 = V::load(hb + j + W) - vs * V::load(row + j + W);
      const v t2 = V::load(hb + j + 2 * W) - vs * V::load(row + j + 2 * W);
      const v t3 = V::load(hb + j + 3 * W) - vs * V::load(row + j + 3 * W);
      const v top = V::max(V::max(t0, t1), V::max(t2, t3));
      if (__builtin_expect(V::any_greater(top, limit), 0)) raise(top);
      if (mm == neg_inf<T>()) continue;  // every column so far is masked
      s0 += simd::exp2<false>(t0 - vm);
      s1 += simd::exp2<false>(t1 - vm);
      s2 += simd::exp2<false>(t2 - vm);
      s3 += simd::exp2<false>(t3 - vm);
    }
    auto single = [&](v t) {  // leftover whole vectors and the padded tail, one vector at a time
      if (V::any_greater(t, limit)) raise(t);
      if (mm != neg_inf<T>()) s0 += simd::exp2<false>(t - vm);
    };
    for (int64_t j = m_blocks; j < m_vec; j += W) single(V::load(hb + j) - vs * V::load(row + j));
    if (has_tail) {
      v t;
      tail(row, t);
      single(t);
    }
    rowmax[i] = mm;
    rowsum[i] = mm == neg_inf<T>() ? T(0) : V::hsum((s0 + s1) + (s2 + s3));
  }
}

template <typename T>
void stored_weighted_rows(const T* cost, int64_t m, int64_t ld, const T* hb, T scale, const T* rowmax, const T* z,
                          int64_t d_pad, int64_t row_begin, int64_t row_end, T* acc) {
  using V = simd::Vec<T>;
  constexpr int W = V::W;
  alignas(64) T e[kChunk];
  const typename V::v vs = V::set1(scale);
  const int64_t cols = (ld % W == 0) ? ld : m;  // padded rows end in +inf: exp gives ~0 against zero rows of z
  for (int64_t i = row_begin; i < row_end; ++i) {
    const T* row = cost + i * ld;
    T* out = acc + i * d_pad;
    std::fill(out, out + d_pad, T(0));
    const typename V::v vm = V::set1(rowmax[i]);
    for (int64_t j0 = 0; j0 < cols; j0 += kChunk) {
      const int64_t n = std::min<int64_t>(kChunk, cols - j0), nv = n - n % W;
      for (int64_t j = 0; j < nv; j += W)
        V::store(e + j, simd::exp2(V::load(hb + j0 + j) - vs * V::load(row + j0 + j) - vm));
      for (int64_t j = nv; j < n; ++j) e[j] = std::exp2(hb[j0 + j] - scale * row[j0 + j] - rowmax[i]);
      weighted_rows_sum<T>(e, z + j0 * d_pad, n, d_pad, out);
    }
  }
}

// Per-lane lagging maxima: each column vector keeps its own running max; a tile of rows raises it (lane-wise, with
// a vector exp2 rescale) only when some lane exceeds it by more than 32, so no horizontal work is ever needed.
template <typename T>
void stored_cols(const T* cost, int64_t ld, const T* ha, T scale, int64_t row_begin, int64_t row_end, T* colmax,
                 T* colsum) {
  using V = simd::Vec<T>;
  using v = typename V::v;
  constexpr int W = V::W;
  constexpr int64_t kRows = 8;
  const v vs = V::set1(scale), headroom = V::set1(T(32));
  const int64_t nv = ld - ld % W;
  for (int64_t r0 = row_begin; r0 < row_end; r0 += kRows) {
    const int64_t nr = std::min(kRows, row_end - r0);
    v hr[kRows];
    for (int64_t r = 0; r < kRows; ++r) hr[r] = V::set1(r < nr ? ha[r0 + r] : neg_inf<T>());
    for (int64_t j = 0; j < nv; j += W) {
      v t[kRows];
      v top = V::set1(neg_inf<T>());
      for (int64_t r = 0; r < nr; ++r) {
        t[r] = hr[r] - vs * V::load(cost + (r0 + r) * ld + j);
        top = V::max(top, t[r]);
      }
      v cm = V::load(colmax + j), cs = V::load(colsum + j);
      if (__builtin_expect(V::any_greater(top, cm + headroom), 0)) {
        const v raised = V::max(cm, top);
        cs *= simd::exp2(cm - raised);
        cm = raised;
        V::store(colmax + j, cm);
      }
      v acc = V::set1(T(0));
      for (int64_t r = 0; r < nr; ++r) acc += simd::exp2(t[r] - cm);
      V::store(colsum + j, cs + acc);
    }
    for (int64_t j = nv; j < ld; ++j) {  // columns past the last whole vector (unpadded callers only)
      for (int64_t r = 0; r < nr; ++r) {
        const T t = ha[r0 + r] - scale * cost[(r0 + r) * ld + j];
        if (t > colmax[j] + T(32)) {
          colsum[j] *= std::exp2(colmax[j] - t);
          colmax[j] = t;
        }
        colsum[j] += std::exp2(std::max(t - colmax[j], T(-125)));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------- probes
template <typename T>
double exp2_sum(const T* buffer, int64_t n, int64_t repeats) {
  using V = simd::Vec<T>;
  constexpr int W = V::W;
  typename V::v s0 = V::set1(T(0)), s1 = s0, s2 = s0, s3 = s0;
  const int64_t nv = n - n % (4 * W);
  for (int64_t rep = 0; rep < repeats; ++rep)
    for (int64_t j = 0; j < nv; j += 4 * W) {
      s0 += simd::exp2(V::load(buffer + j));
      s1 += simd::exp2(V::load(buffer + j + W));
      s2 += simd::exp2(V::load(buffer + j + 2 * W));
      s3 += simd::exp2(V::load(buffer + j + 3 * W));
    }
  return double(V::hsum(s0 + s1 + s2 + s3));
}

// ------------------------------------------------------------------------------------------------ log2
// x = 2^e m with m in [√½, √2): log2 x = e + (2 / ln 2) atanh(t), t = (m - 1) / (m + 1), |t| <= 0.1716, whose odd
// series to t^21 is exact to ~1e-17 relative. Branch-free so the loop vectorises; zero, subnormal, negative, inf
// and NaN inputs are redone by std::log2 afterwards.
void log2_batch(const double* in, int64_t n, double* out) {
  constexpr double kTwoOverLn2 = 2.8853900817779268;  // 2 / ln 2
  constexpr uint64_t kMantissa = 0x000fffffffffffffULL, kOne = 0x3ff0000000000000ULL;
  for (int64_t i = 0; i < n; ++i) {
    uint64_t bits;
    std::memcpy(&bits, &in[i], sizeof bits);
    const uint64_t mant_bits = (bits & kMantissa) | kOne;  // m in [1, 2)
    double m;
    std::memcpy(&m, &mant_bits, sizeof m);
    double e = double(int64_t((bits >> 52) & 0x7ff) - 1023);
    const bool high = m > 1.4142135623730951;
    m = high ? 0.5 * m : m;
    e = high ? e + 1.0 : e;
    const double t = (m - 1.0) / (m + 1.0), t2 = t * t;
    double p = 1.0 / 21;
    p = p * t2 + 1.0 / 19;
    p = p * t2 + 1.0 / 17;
    p = p * t2 + 1.0 / 15;
    p = p * t2 + 1.0 / 13;
    p = p * t2 + 1.0 / 11;
    p = p * t2 + 1.0 / 9;
    p = p * t2 + 1.0 / 7;
    p = p * t2 + 1.0 / 5;
    p = p * t2 + 1.0 / 3;
    p = p * t2 + 1.0;
    out[i] = e + kTwoOverLn2 * t * p;
  }
  for (int64_t i = 0; i < n; ++i)
    if (!(in[i] >= 2.2250738585072014e-308 && in[i] <= 1.7976931348623157e308)) out[i] = std::log2(in[i]);
}

template <typename T>
static KernelTable<T> make_table() {
  return KernelTable<T>{LVF_CAP_NAME,    Micro<T>::NR, Micro<T>::MR,    &pack_columns<T>,
                        &reduce<T>,      &argmax<T>,   &stored_rows<T>, &stored_weighted_rows<T>,
                        &stored_cols<T>, &exp2_sum<T>, &reduce_both<T>, &log2_batch};
}

const KernelTable<float>& table_f32() {
  static const KernelTable<float> table = make_table<float>();
  return table;
}
const KernelTable<double>& table_f64() {
  static const KernelTable<double> table = make_table<double>();
  return table;
}

}  // namespace LVF_CAP_NS
}  // namespace cpu
}  // namespace lvf
