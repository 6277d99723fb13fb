// Lazy Adam over LossVal's weight vector: see lazy_adam.h. Compiled with -ffp-contract=off (CMakeLists.txt), so
// that an entry's arithmetic is the same whichever loop (scalar, vectorised, inlined) runs it.
#include "lazy_adam.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

namespace lvf {
namespace cpu {
namespace {

// Adam's per-step constants, lr_t = lr / (1 - b1^t) and c2_t = sqrt(1 - b2^t) (torch's bias corrections), for
// t = 0 .. size - 1; past the table both are constant in double (b^t < 2^-60). Built once per (lr, b1, b2).
struct StepConstants {
  std::vector<double> lr_t, c2_t;
  double lr, beta1, beta2;
  bool complete;  // past the table, 1 - b^t == 1 in double: lr_t = lr and c2_t = 1 exactly

  double rate(int64_t t) const {
    if (t < int64_t(lr_t.size())) return lr_t[t];
    return complete ? lr : lr / (1 - std::pow(beta1, double(t)));
  }
  double correction(int64_t t) const {
    if (t < int64_t(c2_t.size())) return c2_t[t];
    return complete ? 1.0 : std::sqrt(1 - std::pow(beta2, double(t)));
  }
};

const StepConstants& step_constants(double lr, double beta1, double beta2) {
  static std::mutex mutex;
  static std::map<std::tuple<double, double, double>, std::unique_ptr<StepConstants>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = cache[{lr, beta1, beta2}];
  if (!slot) {
    slot = std::make_unique<StepConstants>();
    slot->lr = lr, slot->beta1 = beta1, slot->beta2 = beta2;
    const double beta = std::max(beta1, beta2);
    int64_t size = beta > 0 && beta < 1 ? int64_t(std::ceil(60 * std::log(2.0) / -std::log(beta))) + 2 : 2;
    slot->complete = size <= (int64_t(1) << 22);
    size = std::min<int64_t>(size, int64_t(1) << 22);
    slot->lr_t.resize(size);
    slot->c2_t.resize(size);
    for (int64_t t = 0; t < size; ++t) {
      slot->lr_t[t] = lr / (1 - std::pow(beta1, double(t)));
      slot->c2_t[t] = std::sqrt(1 - std::pow(beta2, double(t)));
    }
  }
  return *slot;
}

// How many zero-gradient updates can still move w: r^K < 2^-(digits + 12) / 250 with r = b1 / sqrt(b2) (the
// factor 250 bounds the bias corrections' growth, 10 the geometric tail); every update when r >= 1.
int64_t moving_steps(double beta1, double beta2, int digits) {
  if (beta1 <= 0) return 1;
  const double r = beta1 / std::sqrt(beta2);
  if (!(r < 1)) return std::numeric_limits<int64_t>::max();
  return int64_t(std::ceil((std::log(250.0) + (digits + 12) * std::log(2.0)) / -std::log(r)));
}

template <typename T>
struct Entry {
  const StepConstants& k;
  T b1, b2, c1, c2g, eps;
  double beta1, beta2;
  int64_t moving;

  // (w, m, v) from step t0 to t1 with zero gradients
  void advance(T& w, T& m, T& v, int64_t t0, int64_t t1) const {
    int64_t rest = t1 - t0;
    if (rest <= 0) return;
    if (m != T(0)) {
      const int64_t n = std::min(rest, moving);
      for (int64_t j = 1; j <= n; ++j) {
        const int64_t t = t0 + j;
        m = b1 * m;
        v = b2 * v;
        const T denom = std::sqrt(v) / T(k.correction(t)) + eps;
        w = w - T(k.rate(t)) * m / denom;
      }
      rest -= n;
    }
    if (rest > 0) {  // w no longer moves: the remaining decay of m and v in one rounding each
      m = T(double(m) * std::pow(beta1, double(rest)));
      v = T(double(v) * std::pow(beta2, double(rest)));
    }
  }

  // the update of step t with gradient g
  void step(T& w, T& m, T& v, int64_t t, T g) const {
    m = b1 * m + c1 * g;
    v = b2 * v + c2g * g * g;
    const T denom = std::sqrt(v) / T(k.correction(t)) + eps;
    w = w - T(k.rate(t)) * m / denom;
  }
};

template <typename T>
void run(const at::Tensor& w, const at::Tensor& m, const at::Tensor& v, const at::Tensor& last,
         const at::Tensor& idx, const at::Tensor& target, const std::optional<at::Tensor>& grad,
         const AdamHyper& hyper, bool write, const at::Tensor& out) {
  const Entry<T> entry{step_constants(hyper.lr, hyper.beta1, hyper.beta2),
                       T(hyper.beta1), T(hyper.beta2), T(1 - hyper.beta1), T(1 - hyper.beta2), T(hyper.eps),
                       hyper.beta1, hyper.beta2,
                       moving_steps(hyper.beta1, hyper.beta2, std::numeric_limits<T>::digits)};
  T* wp = w.data_ptr<T>();
  T* mp = m.data_ptr<T>();
  T* vp = v.data_ptr<T>();
  int64_t* lp = last.data_ptr<int64_t>();
  const int64_t* ip = idx.data_ptr<int64_t>();
  const int64_t* tp = target.data_ptr<int64_t>();
  const bool one_target = target.numel() == 1;
  const T* gp = grad ? grad->data_ptr<T>() : nullptr;
  T* op = out.data_ptr<T>();
  const int64_t rows = idx.numel(), n = w.numel();
  at::parallel_for(0, rows, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = ip[r];
      TORCH_CHECK(i >= 0 && i < n, "lazy_adam: idx holds ", i, ", outside the ", n, " entries");
      const int64_t t1 = tp[one_target ? 0 : r];
      TORCH_CHECK(t1 >= lp[i] + (gp ? 1 : 0), "lazy_adam: entry ", i, " is at step ", lp[i],
                  " and cannot be brought to step ", t1, gp ? " with a gradient" : "");
      T wi = wp[i], mi = mp[i], vi = vp[i];
      entry.advance(wi, mi, vi, lp[i], gp ? t1 - 1 : t1);
      if (gp) entry.step(wi, mi, vi, t1, gp[r]);
      op[r] = wi;
      if (write) {
        wp[i] = wi, mp[i] = mi, vp[i] = vi;
        lp[i] = t1;
      }
    }
  });
}

}  // namespace

at::Tensor lazy_adam_rows(const at::Tensor& w, const at::Tensor& m, const at::Tensor& v, const at::Tensor& last,
                          const at::Tensor& idx, const at::Tensor& target, const std::optional<at::Tensor>& grad,
                          const AdamHyper& hyper, bool write) {
  TORCH_CHECK(w.dim() == 1 && w.is_contiguous() && w.is_cpu(), "lazy_adam: w must be a contiguous 1-D CPU tensor");
  TORCH_CHECK(w.scalar_type() == at::kFloat || w.scalar_type() == at::kDouble,
              "lazy_adam: w must be float32 or float64, got ", w.scalar_type());
  for (const at::Tensor* t : {&m, &v})
    TORCH_CHECK(t->sizes() == w.sizes() && t->scalar_type() == w.scalar_type() && t->is_contiguous(),
                "lazy_adam: exp_avg and exp_avg_sq must be contiguous and shaped like w");
  TORCH_CHECK(last.sizes() == w.sizes() && last.scalar_type() == at::kLong && last.is_contiguous(),
              "lazy_adam: last must be an int64 vector shaped like w, got ", last.scalar_type(), " ", last.sizes());
  TORCH_CHECK(idx.scalar_type() == at::kLong && idx.dim() == 1 && idx.is_contiguous(),
              "lazy_adam: idx must be a contiguous int64 vector");
  TORCH_CHECK(target.scalar_type() == at::kLong && target.is_contiguous() &&
                  (target.numel() == 1 || target.numel() == idx.numel()),
              "lazy_adam: target must be int64 with one entry or one per row of idx");
  if (grad)
    TORCH_CHECK(grad->dim() == 1 && grad->numel() == idx.numel() && grad->scalar_type() == w.scalar_type() &&
                    grad->is_contiguous(),
                "lazy_adam: grad must hold one value per row of idx, in w's dtype");
  const at::Tensor out = at::empty({idx.numel()}, w.options());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "lazy_adam",
                             [&] { run<scalar_t>(w, m, v, last, idx, target, grad, hyper, write, out); });
  return out;
}

namespace {
at::Tensor lazy_adam_cpu(const at::Tensor& w, const at::Tensor& m, const at::Tensor& v, const at::Tensor& last,
                         const at::Tensor& idx, const at::Tensor& target, const std::optional<at::Tensor>& grad,
                         double lr, double beta1, double beta2, double eps, bool write) {
  std::optional<at::Tensor> g;
  if (grad) g = grad->contiguous();
  return lazy_adam_rows(w, m, v, last, idx.contiguous(), target.contiguous(), g, AdamHyper{lr, beta1, beta2, eps},
                        write);
}
}  // namespace

TORCH_LIBRARY_IMPL(lossval_fast, CPU, m) { m.impl("lazy_adam", &lazy_adam_cpu); }

}  // namespace cpu
}  // namespace lvf
