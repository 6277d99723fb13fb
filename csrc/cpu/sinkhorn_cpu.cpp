// The whole Sinkhorn ε loop of geomloss (docs/algorithms.md §2) in one C++ call on CPU.
//
// Four softmin engines (x←y, y←x, x←x, y←y) are built once per call: online (points packed for the micro-kernel,
// no N x M matrix) or stored (each cost built once with one GEMM, then passes only read it). The potentials are
// kept in double; each pass runs in the kernel's precision. Small problems run serially (a fork/join per pass
// would cost more than the pass), batches run in parallel over problems, large problems in parallel per pass.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <cmath>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <vector>

#include "kernels.h"
#include "pairwise.h"
#include "scratch.h"
#include "sinkhorn.h"

namespace lvf {
namespace cpu {
namespace {

constexpr double kMaskedLog = -100000.0;  // geomloss' log-weight of points with weight <= 0

// softmin_i = -eps log sum_j exp(h_j - C_ij / eps) of the rows of one cloud against the columns of another
// (optionally with the barycentre sum_j P_ij z_j).
template <typename T>
class SoftminEngine {
 public:
  SoftminEngine(const T* rows, int64_t n, const T* cols, int64_t m, int64_t d, bool stored, bool barycenters,
                bool serial)
      : rows_(rows), n_(n), m_(m), d_(d), serial_(serial) {
    if (stored) {
      build_cost(cols, barycenters);
    } else {
      packed_ = std::make_unique<PackedColumns<T>>(cols, m, d, nullptr, barycenters);
    }
    hb_.assign(stored ? ld_ : m, T(0));
    ha_.assign(n, T(0));
    rowmax_.resize(n);
    rowsum_.resize(n);
    half_norm_.resize(n);
  }

  // out_i (double) for h_j (double, natural-log units); bary (n x d) when not null (online pass)
  void softmin(const double* h, double eps, double* out, T* bary = nullptr) {
    const double s = kLog2e / eps;
    if (!cost_.empty()) {
      // stored: t_ij = L h_j - s C_ij, with the largest finite L h_j subtracted in double (added back below)
      const double offset = shifted_bias(h, m_, hb_);
      const T* c = cost_.data();
      const auto& table = kernels<T>();
      if (serial_) {
        table.stored_rows(c, m_, ld_, hb_.data(), T(s), 0, n_, rowmax_.data(), rowsum_.data());
      } else {
        at::parallel_for(0, n_, 16, [&](int64_t i0, int64_t i1) {
          table.stored_rows(c, m_, ld_, hb_.data(), T(s), i0, i1, rowmax_.data(), rowsum_.data());
        });
      }
      for (int64_t i = 0; i < n_; ++i)
        out[i] = -eps * kLn2 * (offset + double(rowmax_[i]) + std::log2(double(rowsum_[i])));
      if (bary != nullptr) {  // second sweep of the stored cost with the maxima known: P·z for each row
        acc_.resize(n_ * d_pad_);
        auto sums = [&](int64_t i0, int64_t i1) {
          table.stored_weighted_rows(c, m_, ld_, hb_.data(), T(s), rowmax_.data(), zrows_.data(), d_pad_, i0, i1,
                                     acc_.data());
        };
        if (serial_) sums(0, n_);
        else at::parallel_for(0, n_, 16, sums);
        for (int64_t i = 0; i < n_; ++i)
          for (int64_t k = 0; k < d_; ++k) bary[i * d_ + k] = T(acc_[i * d_pad_ + k] / rowsum_[i] + center_[k]);
      }
      return;
    }
    const auto& hn = packed_->half_norm();
    packed_->set_bias([&](int64_t j) { return kLog2e * h[j] - s * double(hn[j]); });
    const int64_t dp = packed_->d_pad();
    if (bary != nullptr) acc_.resize(n_ * dp);
    reduce_rows<T>(rows_, n_, *packed_, T(s), Reduction::Online, rowmax_.data(), rowsum_.data(),
                   bary != nullptr ? acc_.data() : nullptr, half_norm_.data(), serial_);
    const double offset = packed_->bias_offset();
    for (int64_t i = 0; i < n_; ++i)
      out[i] = double(half_norm_[i]) - eps * kLn2 * (offset + double(rowmax_[i]) + std::log2(double(rowsum_[i])));
    if (bary != nullptr) {
      const T* c = packed_->center();
      for (int64_t i = 0; i < n_; ++i)
        for (int64_t k = 0; k < d_; ++k) bary[i * d_ + k] = acc_[i * dp + k] / rowsum_[i] + c[k];
    }
  }

  bool stored() const { return !cost_.empty(); }

  // Online mode: both half-steps of a symmetric update from one computation of each tile of dot products (the
  // column problem x <- y needs the same dots): rows_out_i = softmin over j with h_cols, cols_out_j = softmin
  // over i with h_rows. Row blocks are split over threads; each thread folds its rows into its own column partials.
  void softmin_both_online(const double* h_cols, const double* h_rows, double eps, double* rows_out,
                           double* cols_out) {
    const double s = kLog2e / eps;
    const auto& hn = packed_->half_norm();
    packed_->set_bias([&](int64_t j) { return kLog2e * h_cols[j] - s * double(hn[j]); });
    const double offset_b = packed_->bias_offset();
    const double offset_a = shifted_bias(h_rows, n_, ha_);
    const auto& table = packed_->table();
    const Columns<T> c = packed_->view();
    Rows<T> rows;
    rows.x = rows_;
    rows.center = packed_->center();
    rows.n = n_;
    rows.d = d_;
    const int64_t ld = c.m_pad;
    const int64_t block = table.row_block;
    const int64_t n_blocks = (n_ + block - 1) / block;
    const int threads = serial_ ? 1 : std::max(1, at::get_num_threads());
    colmax_.assign(size_t(threads) * ld, column_empty<T>());
    colsum_.assign(size_t(threads) * ld, T(0));
    auto run = [&](int64_t b0, int64_t b1) {
      const int tid = serial_ ? 0 : at::get_thread_num();
      table.reduce_both(rows, c, T(s), ha_.data(), b0 * block, std::min(n_, b1 * block), rowmax_.data(),
                        rowsum_.data(), half_norm_.data(), colmax_.data() + size_t(tid) * ld,
                        colsum_.data() + size_t(tid) * ld);
    };
    if (serial_) run(0, n_blocks);
    else at::parallel_for(0, n_blocks, 1, run);
    for (int64_t i = 0; i < n_; ++i)
      rows_out[i] = double(half_norm_[i]) -
                    eps * kLn2 * (offset_b + double(rowmax_[i]) + std::log2(double(rowsum_[i])));
    merge_columns(threads, ld, eps, offset_a, hn.data(), cols_out);
  }

  // Both half-steps of a symmetric update from ONE sweep of the stored cost (the column problem's cost is the
  // transpose): rows_out_i = softmin over j with h_cols, cols_out_j = softmin over i with h_rows. Each tile of rows
  // is reduced along its rows and then, while it is still in cache, along its columns into per-thread partials.
  void softmin_both(const double* h_cols, const double* h_rows, double eps, double* rows_out, double* cols_out) {
    const double s = kLog2e / eps;
    const double offset_b = shifted_bias(h_cols, m_, hb_);
    const double offset_a = shifted_bias(h_rows, n_, ha_);
    const T* c = cost_.data();
    const auto& table = kernels<T>();
    const int threads = serial_ ? 1 : std::max(1, at::get_num_threads());
    colmax_.assign(size_t(threads) * ld_, column_empty<T>());
    colsum_.assign(size_t(threads) * ld_, T(0));
    constexpr int64_t kTile = 32;  // rows per tile: 32 x ld stays in L2 between the row and the column sweep
    auto tiles = [&](int64_t t0, int64_t t1) {
      const int tid = serial_ ? 0 : at::get_thread_num();
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r0 = t * kTile, r1 = std::min(n_, r0 + kTile);
        table.stored_rows(c, m_, ld_, hb_.data(), T(s), r0, r1, rowmax_.data(), rowsum_.data());
        table.stored_cols(c, ld_, ha_.data(), T(s), r0, r1, colmax_.data() + size_t(tid) * ld_,
                          colsum_.data() + size_t(tid) * ld_);
      }
    };
    const int64_t n_tiles = (n_ + kTile - 1) / kTile;
    if (serial_) tiles(0, n_tiles);
    else at::parallel_for(0, n_tiles, 1, tiles);
    for (int64_t i = 0; i < n_; ++i)
      rows_out[i] = -eps * kLn2 * (offset_b + double(rowmax_[i]) + std::log2(double(rowsum_[i])));
    merge_columns(threads, ld_, eps, offset_a, nullptr, cols_out);
  }

 private:
  // cols_out_j = half_norm_j - eps ln2 (offset + log2 sum_t colsum_tj 2^(colmax_tj - max_t colmax_tj)): the threads'
  // per-column (max, sum) partials (stride ld) merged; +inf for a column that saw no finite term
  void merge_columns(int threads, int64_t ld, double eps, double offset, const T* half_norm, double* cols_out) {
    totals_.resize(m_);
    logs_.resize(m_);
    double* best = cols_out;  // the column maxima, until the last loop turns them into the outputs
    if (threads == 1) {  // one partial per column: its own maximum and sum
      for (int64_t j = 0; j < m_; ++j) {
        best[j] = double(colmax_[j]);
        totals_[j] = double(colsum_[j]);
      }
    } else {
      for (int64_t j = 0; j < m_; ++j) {
        double top = double(column_empty<T>());
        for (int t = 0; t < threads; ++t) top = std::max(top, double(colmax_[size_t(t) * ld + j]));
        double total = 0;
        for (int t = 0; t < threads; ++t)
          total += double(colsum_[size_t(t) * ld + j]) * std::exp2(double(colmax_[size_t(t) * ld + j]) - top);
        best[j] = top;
        totals_[j] = total;
      }
    }
    kernels<T>().log2_batch(totals_.data(), m_, logs_.data());
    for (int64_t j = 0; j < m_; ++j) {
      const double base = half_norm != nullptr ? double(half_norm[j]) : 0.0;
      cols_out[j] = best[j] < 0.5 * double(column_empty<T>()) ? std::numeric_limits<double>::infinity()
                                               : base - eps * kLn2 * (offset + best[j] + logs_[j]);
    }
  }

  // out_j = T(log2(e) h_j - offset) with offset the largest finite log2(e) h_j (subtracted in double); padding 0
  static double shifted_bias(const double* h, int64_t count, std::vector<T>& out) {
    // the largest finite value, four running maxima in registers (a max is exact in any order): std::max's
    // reference kept one in memory, and that store-and-reload chain was ~8 % of a 32 x 10,000 divergence
    constexpr double kInf = std::numeric_limits<double>::infinity();
    double m0 = -kInf, m1 = -kInf, m2 = -kInf, m3 = -kInf;
    auto fold = [](double best, double v) { return v > best && v < kInf ? v : best; };  // NaN and +inf skipped
    int64_t j = 0;
    for (; j + 4 <= count; j += 4) {
      m0 = fold(m0, kLog2e * h[j]);
      m1 = fold(m1, kLog2e * h[j + 1]);
      m2 = fold(m2, kLog2e * h[j + 2]);
      m3 = fold(m3, kLog2e * h[j + 3]);
    }
    for (; j < count; ++j) m0 = fold(m0, kLog2e * h[j]);
    double offset = std::max(std::max(m0, m1), std::max(m2, m3));
    if (!std::isfinite(offset)) offset = 0;
    for (int64_t j = 0; j < count; ++j) out[j] = T(kLog2e * h[j] - offset);
    return offset;
  }

  void build_cost(const T* cols, bool barycenters) {
    // C = ½|r'|² + ½|z'|² - r'.z' with both clouds centred on the mean of the columns: one GEMM (torch's BLAS)
    std::vector<double> center(d_, 0.0);
    for (int64_t j = 0; j < m_; ++j)
      for (int64_t k = 0; k < d_; ++k) center[k] += cols[j * d_ + k];
    for (auto& c : center) c /= double(m_);
    center_.assign(center.begin(), center.end());
    auto centred = [&](const T* p, int64_t count, Scratch<T>& out, std::vector<double>& half_norm) {
      out.resize(count * d_);
      half_norm.resize(count);
      for (int64_t i = 0; i < count; ++i) {
        const T* src = p + i * d_;
        T* dst = out.data() + i * d_;
        // four running sums: one sum's chain of dependent additions was half of building a 32 x 10,000 cost
        double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        auto term = [&](int64_t k) {
          const T v = T(double(src[k]) - center[k]);
          dst[k] = v;
          return 0.5 * double(v) * double(v);
        };
        int64_t k = 0;
        for (; k + 4 <= d_; k += 4) {
          s0 += term(k);
          s1 += term(k + 1);
          s2 += term(k + 2);
          s3 += term(k + 3);
        }
        for (; k < d_; ++k) s0 += term(k);
        half_norm[i] = (s0 + s1) + (s2 + s3);
      }
    };
    Scratch<T> rc, zc;
    std::vector<double> hr, hz;
    centred(rows_, n_, rc, hr);
    centred(cols, m_, zc, hz);
    // rows padded to whole vectors with +inf (exp gives nothing there), so the pass never runs tail code
    const int64_t block = 64 / int64_t(sizeof(T));
    ld_ = (m_ + block - 1) / block * block;
    cost_.resize(n_ * ld_);
    T* c = cost_.data();
    // the GEMM writes the dot products straight into the padded cost rows (leading dimension ld_)
    auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
    at::Tensor dots = at::from_blob(c, {n_, m_}, {ld_, 1}, opts);
    at::mm_out(dots, at::from_blob(rc.data(), {n_, d_}, opts), at::from_blob(zc.data(), {m_, d_}, opts).t());
    TORCH_INTERNAL_ASSERT(dots.data_ptr<T>() == c, "the GEMM did not write into the cost buffer");
    auto finish = [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        T* row = c + i * ld_;
        for (int64_t j = 0; j < m_; ++j) row[j] = T(hr[i] + hz[j] - double(row[j]));
        for (int64_t j = m_; j < ld_; ++j) row[j] = std::numeric_limits<T>::infinity();
      }
    };
    if (serial_) finish(0, n_);
    else at::parallel_for(0, n_, 64, finish);
    if (barycenters) {  // centred columns, row-major, padded with zero rows to ld and zero lanes to d_pad
      const int64_t w = 64 / int64_t(sizeof(T));
      d_pad_ = (d_ + w - 1) / w * w;
      zrows_.assign(ld_ * d_pad_, T(0));
      for (int64_t j = 0; j < m_; ++j)
        for (int64_t k = 0; k < d_; ++k) zrows_[j * d_pad_ + k] = zc[j * d_ + k];
    }
  }

  const T* rows_;
  int64_t n_, m_, d_;
  bool serial_;
  std::unique_ptr<PackedColumns<T>> packed_;
  Scratch<T> cost_;  // n x ld_, padded with +inf
  int64_t ld_ = 0, d_pad_ = 0;
  std::vector<T> zrows_;      // centred columns for the barycentre sweep
  std::vector<double> center_;
  std::vector<T> hb_, ha_, rowmax_, rowsum_, half_norm_, acc_, colmax_, colsum_;
  std::vector<double> totals_, logs_;  // merge_columns' per-column sums and their log2
};

void log_weights(const double* w, int64_t n, double* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = w[i] > 0 ? std::log(w[i]) : kMaskedLog;
}

struct Problem {
  int64_t n, m, d;
  bool debias, barycenters, stored, serial, cached_gb;
  bool concurrent_yy;  // run the y-y problem on a second thread next to the x-y and x-x ones
};

// One problem: after the ε loop and the final extrapolation, S = <a, F - FA> + <b, G - GB> (without debiasing
// <a, F> + <b, G>), dF = F - FA, dG = G - GB (the gradients with respect to a and b), GB, and the barycentres.
// When GB is given (cached), the y-y passes are skipped. The y-y potential depends only on (b, y, schedule), so
// its whole loop can run on its own thread while the x-y and x-x loops run on this one: for a small problem
// (a LossVal step, 32 x 100 against 100 x 100) that is most of the work, and a fork per pass would cost more.
// `alongside` (may be empty) runs on the calling thread after the x-y loop, while the y-y loop may still be running
// on the second one: the caller's own independent work (the LossVal step's forward pass).
template <typename T>
void sinkhorn_one(const Problem& p, const T* a, const T* x, const T* b, const T* y, const std::vector<double>& eps_list,
                  T* S, T* dF, T* dG, T* GB, T* bxy, T* byx, T* bxx, T* byy, const std::function<void()>& alongside) {
  const int64_t n = p.n, m = p.m;
  std::vector<double> a_log(n), b_log(m);
  {
    std::vector<double> wa(a, a + n), wb(b, b + m);
    log_weights(wa.data(), n, a_log.data());
    log_weights(wb.data(), m, b_log.data());
  }
  auto bias = [](const std::vector<double>& log_w, const std::vector<double>& pot, double eps,
                 std::vector<double>& out) {
    const double inv = 1.0 / eps;
    for (size_t j = 0; j < out.size(); ++j) out[j] = log_w[j] + pot[j] * inv;
  };
  const double eps_first = eps_list.front(), eps_last = eps_list.back();
  const bool run_yy = p.debias && !p.cached_gb;

  // GB: first pass, symmetric (here: self) updates, final extrapolation
  auto solve_yy = [&]() {
    SoftminEngine<T> yy(y, m, y, m, p.d, p.stored, p.barycenters, p.serial);
    std::vector<double> g_bb(m), gt_bb(m), h(m);
    yy.softmin(b_log.data(), eps_first, g_bb.data());
    for (double e : eps_list) {
      bias(b_log, g_bb, e, h);
      yy.softmin(h.data(), e, gt_bb.data());
      for (int64_t j = 0; j < m; ++j) g_bb[j] = 0.5 * (g_bb[j] + gt_bb[j]);
    }
    bias(b_log, g_bb, eps_last, h);
    yy.softmin(h.data(), eps_last, gt_bb.data(), byy);
    for (int64_t j = 0; j < m; ++j) GB[j] = T(gt_bb[j]);
  };

  // F, G (x-y, both directions) and FA (x-x)
  std::vector<double> ft_ba(n), gt_ab(m), ft_aa(p.debias ? n : 0);
  auto finish = [&]() {  // S and the gradients with respect to a and b
    double total = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double df = ft_ba[i] - (p.debias ? ft_aa[i] : 0.0);
      dF[i] = T(df);
      total += double(a[i]) * df;
    }
    for (int64_t j = 0; j < m; ++j) {
      const double dg = gt_ab[j] - (p.debias ? double(GB[j]) : 0.0);
      dG[j] = T(dg);
      total += double(b[j]) * dg;
    }
    *S = T(total);
  };
  auto solve_xy = [&]() {
    // stored: one matrix C_xy serves both directions (fused sweeps); the y <- x barycentre of the final pass, if
    // wanted, comes from an online engine (packed x)
    SoftminEngine<T> xy(x, n, y, m, p.d, p.stored, p.barycenters, p.serial);
    std::unique_ptr<SoftminEngine<T>> yx_online, xx;
    if (p.barycenters)  // the y <- x barycentres of the final pass
      yx_online = std::make_unique<SoftminEngine<T>>(y, m, x, n, p.d, false, p.barycenters, p.serial);
    if (p.debias) xx = std::make_unique<SoftminEngine<T>>(x, n, x, n, p.d, p.stored, p.barycenters, p.serial);
    auto both = [&](const double* h_cols, const double* h_rows, double eps, double* f, double* g) {
      if (p.stored) xy.softmin_both(h_cols, h_rows, eps, f, g);
      else xy.softmin_both_online(h_cols, h_rows, eps, f, g);
    };
    std::vector<double> f_ba(n), g_ab(m), f_aa(p.debias ? n : 0), hn(n), hm(m);
    both(b_log.data(), a_log.data(), eps_first, f_ba.data(), g_ab.data());
    if (p.debias) xx->softmin(a_log.data(), eps_first, f_aa.data());
    for (double e : eps_list) {  // symmetric updates, both from the old potentials, then averaged
      bias(b_log, g_ab, e, hm);
      bias(a_log, f_ba, e, hn);
      both(hm.data(), hn.data(), e, ft_ba.data(), gt_ab.data());
      if (p.debias) {
        bias(a_log, f_aa, e, hn);
        xx->softmin(hn.data(), e, ft_aa.data());
      }
      for (int64_t i = 0; i < n; ++i) f_ba[i] = 0.5 * (f_ba[i] + ft_ba[i]);
      for (int64_t j = 0; j < m; ++j) g_ab[j] = 0.5 * (g_ab[j] + gt_ab[j]);
      for (size_t i = 0; i < f_aa.size(); ++i) f_aa[i] = 0.5 * (f_aa[i] + ft_aa[i]);
    }
    // final extrapolation at eps = blur^p, again from the old potentials
    bias(b_log, g_ab, eps_last, hm);
    bias(a_log, f_ba, eps_last, hn);
    if (p.barycenters) {
      xy.softmin(hm.data(), eps_last, ft_ba.data(), bxy);
      yx_online->softmin(hn.data(), eps_last, gt_ab.data(), byx);
    } else {
      both(hm.data(), hn.data(), eps_last, ft_ba.data(), gt_ab.data());
    }
    if (p.debias) {
      bias(a_log, f_aa, eps_last, hn);
      xx->softmin(hn.data(), eps_last, ft_aa.data(), bxx);
    }
  };

#ifdef _OPENMP
  if (run_yy && p.concurrent_yy) {
    // thread 0 is the caller (its ATen state is the caller's: `alongside` may call torch ops); a team of one
    // (no thread to spare) does everything in order
    std::exception_ptr errors[2];  // an exception must not leave an OpenMP region: carried out and rethrown
#pragma omp parallel num_threads(2)
    {
      const int thread = omp_get_thread_num();
      try {
        if (thread == 0) {
          solve_xy();
          if (alongside) alongside();
          if (omp_get_num_threads() == 1) solve_yy();
        } else if (thread == 1) {
          solve_yy();
        }
      } catch (...) {
        if (thread < 2) errors[thread] = std::current_exception();
      }
    }
    for (const auto& error : errors)
      if (error) std::rethrow_exception(error);
    return finish();
  }
#endif
  solve_xy();
  if (run_yy) solve_yy();
  if (alongside) alongside();
  finish();
}

}  // namespace

// Batched entry point: a (B, N), x (B, N, d), b (B, M), y (B, M, d); cost_mode 0 = online, 1 = stored.
// gb (B, M) when given is the cached final GB (it depends only on b, y and the schedule): the y-y passes are skipped.
std::vector<at::Tensor> sinkhorn_potentials_with(const at::Tensor& a_in, const at::Tensor& x_in,
                                                 const at::Tensor& b_in, const at::Tensor& y_in,
                                                 at::ArrayRef<double> eps_list, bool debias, bool barycenters,
                                                 int64_t cost_mode, const std::optional<at::Tensor>& gb_in,
                                                 int64_t threads, const std::function<void()>& alongside) {
  TORCH_CHECK(x_in.dim() == 3 && y_in.dim() == 3, "x and y must be (B, N, d) and (B, M, d)");
  TORCH_CHECK(a_in.dim() == 2 && b_in.dim() == 2, "a and b must be (B, N) and (B, M)");
  const int64_t B = x_in.size(0), n = x_in.size(1), m = y_in.size(1), d = x_in.size(2);
  TORCH_CHECK(y_in.size(0) == B && a_in.size(0) == B && b_in.size(0) == B, "batch sizes differ");
  TORCH_CHECK(a_in.size(1) == n && b_in.size(1) == m && y_in.size(2) == d, "shapes of a, x, b, y do not match");
  TORCH_CHECK(!eps_list.empty(), "eps_list must not be empty");
  for (double e : eps_list) TORCH_CHECK(std::isfinite(e) && e > 0, "eps_list values must be finite and > 0");
  TORCH_CHECK(cost_mode == 0 || cost_mode == 1, "cost_mode must be 0 (online) or 1 (stored)");
  TORCH_CHECK(x_in.scalar_type() == y_in.scalar_type() && x_in.scalar_type() == a_in.scalar_type() &&
                  x_in.scalar_type() == b_in.scalar_type(),
              "a, x, b, y must share one dtype");
  const at::Tensor a = a_in.contiguous(), x = x_in.contiguous(), b = b_in.contiguous(), y = y_in.contiguous();
  const bool cached = gb_in.has_value() && gb_in->defined();
  if (cached) TORCH_CHECK(gb_in->sizes() == b.sizes(), "gb must have the shape of b");
  auto opts = x.options();
  at::Tensor S = at::empty({B}, opts), dF = at::empty({B, n}, opts), dG = at::empty({B, m}, opts);
  at::Tensor GB = cached ? gb_in->to(x.scalar_type()).contiguous().clone() : at::empty({debias ? B : 0, m}, opts);
  const int64_t bn = barycenters ? B : 0;
  at::Tensor bxy = at::empty({bn, n, d}, opts), byx = at::empty({bn, m, d}, opts);
  at::Tensor bxx = at::empty({debias ? bn : 0, n, d}, opts), byy = at::empty({debias && !cached ? bn : 0, m, d}, opts);
  const std::vector<double> schedule(eps_list.begin(), eps_list.end());
  // pairs per ε step; below ~1e6 a pass is a few microseconds and must not fork
  const double work = double(n) * m * 2 + (debias ? double(n) * n + double(m) * m : 0.0);
  const bool small = work < 1e6;
  // a small single problem may still use a second thread for its y-y loop (threads < 0: torch's setting)
  const int64_t allowed = threads < 0 ? at::get_num_threads() : threads;
  const bool concurrent = small && B == 1 && debias && !cached && allowed >= 2 && !at::in_parallel_region();
  Problem p{n, m, d, debias, barycenters, cost_mode == 1, small || B > 1, cached, concurrent};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sinkhorn_potentials_cpu", [&] {
    using T = scalar_t;
    auto one = [&](int64_t k) {
      auto ptr = [](at::Tensor& t, int64_t k, int64_t stride) -> T* {
        return t.numel() ? t.data_ptr<T>() + k * stride : nullptr;
      };
      sinkhorn_one<T>(p, a.data_ptr<T>() + k * n, x.data_ptr<T>() + k * n * d, b.data_ptr<T>() + k * m,
                      y.data_ptr<T>() + k * m * d, schedule, S.data_ptr<T>() + k, dF.data_ptr<T>() + k * n,
                      dG.data_ptr<T>() + k * m, ptr(GB, k, m), ptr(bxy, k, n * d), ptr(byx, k, m * d),
                      ptr(bxx, k, n * d), ptr(byy, k, m * d), B == 1 ? alongside : std::function<void()>());
    };
    if (B > 1) {
      at::parallel_for(0, B, 1, [&](int64_t k0, int64_t k1) {
        for (int64_t k = k0; k < k1; ++k) one(k);
      });
      if (alongside) alongside();
    } else {
      one(0);
    }
  });
  return {S, dF, dG, GB, bxy, byx, bxx, byy};
}

namespace {

std::vector<at::Tensor> sinkhorn_potentials_cpu(const at::Tensor& a, const at::Tensor& x, const at::Tensor& b,
                                                const at::Tensor& y, at::ArrayRef<double> eps_list, bool debias,
                                                bool barycenters, int64_t cost_mode,
                                                const std::optional<at::Tensor>& gb, int64_t threads) {
  return sinkhorn_potentials_with(a, x, b, y, eps_list, debias, barycenters, cost_mode, gb, threads, {});
}

// Input checks and geomloss' default diameter in one pass over the data (instead of a dozen small torch ops on
// every LossVal step): NaN/inf are reported by argument; returns the bounding-box diagonal of x and y.
double sinkhorn_prepare_cpu(const at::Tensor& a_in, const at::Tensor& x_in, const at::Tensor& b_in,
                            const at::Tensor& y_in, bool check_finite) {
  const at::Tensor a = a_in.contiguous(), x = x_in.contiguous(), b = b_in.contiguous(), y = y_in.contiguous();
  const int64_t d = x.size(-1);
  TORCH_CHECK(y.size(-1) == d, "x and y must have the same number of features");
  std::vector<double> lo(d, std::numeric_limits<double>::infinity()), hi(d, -std::numeric_limits<double>::infinity());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sinkhorn_prepare_cpu", [&] {
    auto count_bad = [](const at::Tensor& t) {
      const scalar_t* p = t.data_ptr<scalar_t>();
      int64_t bad = 0;
      for (int64_t i = 0; i < t.numel(); ++i) bad += !std::isfinite(p[i]);
      return bad;
    };
    if (check_finite) {
      const std::pair<const at::Tensor*, const char*> inputs[] = {{&a, "a"}, {&x, "x"}, {&b, "b"}, {&y, "y"}};
      for (const auto& [t, name] : inputs) {
        const int64_t bad = count_bad(*t);
        TORCH_CHECK_VALUE(bad == 0, name, " contains ", bad, " NaN or inf value(s); expected finite numbers");
      }
    }
    for (const at::Tensor* t : {&x, &y}) {
      const scalar_t* p = t->data_ptr<scalar_t>();
      const int64_t rows = t->numel() / d;
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t k = 0; k < d; ++k) {
          lo[k] = std::min(lo[k], double(p[i * d + k]));
          hi[k] = std::max(hi[k], double(p[i * d + k]));
        }
    }
  });
  double diag = 0;
  for (int64_t k = 0; k < d; ++k) diag += (hi[k] - lo[k]) * (hi[k] - lo[k]);
  return std::sqrt(diag);
}

}  // namespace

TORCH_LIBRARY_IMPL(lossval_fast, CPU, m) {
  m.impl("sinkhorn_potentials", &sinkhorn_potentials_cpu);
  m.impl("sinkhorn_prepare", &sinkhorn_prepare_cpu);
}

}  // namespace cpu
}  // namespace lvf
