// Fused weighted losses of LossVal (schemas in csrc/ops.cpp): loss = sum_i w_i l_i, with the per-row losses l_i
// and the gradient factor G = w_i dl_i/d input formed in the same pass over the rows, so that backward is two
// scalings (d/d input = g G, d/d weight = g l).
//
// These ops run once per LossVal step on a 32-row minibatch: the per-call overhead is what matters, hence
// (1) plain scalar loops in double, threads only above a size threshold, (2) autograd registered here in C++
// (a Python autograd kernel costs ~10 us per call), (3) validation fused into the one pass.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/log.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/mul.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

namespace lvf {
namespace cpu {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();
// below this many elements one thread does the whole op: a thread-pool hand-off costs more than the work
constexpr int64_t kParallelElements = 1 << 16;
// rows per block: the loss is summed per block and the blocks in order, so the result does not depend on the
// number of threads
constexpr int64_t kBlockElements = 1 << 14;

struct Problem {
  int64_t n = 0, c = 0;
  bool index = false;  // target holds class indices (int64) rather than a distribution
};

void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
                    " must be float32 or float64, got ", t.scalar_type());
}

void check_weight(const at::Tensor& weight, const at::Tensor& input, const char* input_name) {
  TORCH_CHECK_VALUE(weight.device().is_cpu(), "weight must be a CPU tensor, got ", weight.device());
  TORCH_CHECK_VALUE(weight.dim() == 1 && weight.size(0) == input.size(0), "weight must have shape (",
                    input.size(0), ",) (one weight per row of ", input_name, "), got ", weight.sizes());
  TORCH_CHECK_VALUE(weight.scalar_type() == input.scalar_type(), "weight must have dtype ", input.scalar_type(),
                    " like ", input_name, ", got ", weight.scalar_type());
}

Problem check_cross_entropy(const at::Tensor& input, const at::Tensor& target, const at::Tensor& weight,
                            double eps) {
  check_floating(input, "input");
  TORCH_CHECK_VALUE(input.dim() == 2, "input must be 2-D (rows x classes), got shape ", input.sizes());
  TORCH_CHECK_VALUE(input.size(0) > 0 && input.size(1) > 0,
                    "input must have at least one row and one class, got shape ", input.sizes());
  TORCH_CHECK_VALUE(target.device().is_cpu(), "target must be a CPU tensor, got ", target.device());
  Problem p{input.size(0), input.size(1), target.scalar_type() == at::kLong};
  if (p.index) {
    TORCH_CHECK_VALUE(target.dim() == 1 && target.size(0) == p.n, "target of class indices must have shape (", p.n,
                      ",), got ", target.sizes());
  } else {
    TORCH_CHECK_VALUE(target.scalar_type() == input.scalar_type(), "target must be int64 class indices or a ",
                      input.scalar_type(), " distribution like input, got ", target.scalar_type());
    TORCH_CHECK_VALUE(target.sizes() == input.sizes(), "target distribution must have the shape of input ",
                      input.sizes(), ", got ", target.sizes());
  }
  check_weight(weight, input, "input");
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, "eps must be a finite number >= 0, got ", eps);
  return p;
}

// Runs body(row_begin, row_end) -> partial loss over fixed row blocks; returns the loss summed in block order.
template <typename Body>
double over_rows(const Problem& p, const Body& body) {
  const int64_t block = std::max<int64_t>(1, kBlockElements / p.c);
  const int64_t blocks = (p.n + block - 1) / block;
  if (blocks == 1 || p.n * p.c < kParallelElements) return body(0, p.n);
  std::vector<double> partial(blocks);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) partial[b] = body(b * block, std::min(p.n, (b + 1) * block));
  });
  double total = 0;
  for (double v : partial) total += v;
  return total;
}

// Bad entries found by a pass; the first row of each kind is reported after the pass (threads may find them in
// any order, the minimum row is deterministic).
struct Faults {
  std::atomic<int64_t> bad_index{std::numeric_limits<int64_t>::max()};
  std::atomic<int64_t> bad_weight{std::numeric_limits<int64_t>::max()};
  static void note(std::atomic<int64_t>& slot, int64_t row) {
    int64_t seen = slot.load(std::memory_order_relaxed);
    while (row < seen && !slot.compare_exchange_weak(seen, row, std::memory_order_relaxed)) {
    }
  }
};

void raise_faults(const Faults& faults, const at::Tensor& target, const at::Tensor& weight, int64_t c) {
  const int64_t bi = faults.bad_index.load(), bw = faults.bad_weight.load();
  TORCH_CHECK_VALUE(bi == std::numeric_limits<int64_t>::max(), "target holds class index ",
                    target.data_ptr<int64_t>()[bi], " at row ", bi, ", outside [0, ", c, ") (input has ", c,
                    " classes)");
  if (bw != std::numeric_limits<int64_t>::max()) {
    const double value = weight.scalar_type() == at::kFloat ? double(weight.data_ptr<float>()[bw])
                                                            : weight.data_ptr<double>()[bw];
    TORCH_CHECK_VALUE(false, "weight must be finite, got ", value, " at row ", bw);
  }
}

// One row of cross-entropy. Writes the row loss and, with g != nullptr, the row of G; returns l_i.
template <typename T>
double cross_entropy_row(const T* z, const T* t, int64_t cls, int64_t c, bool logits, double eps, double w,
                         T* g) {
  if (logits) {
    // l = -sum_k t_k logp_k with logp_k = (z_k - m) - log s, as torch's log_softmax forms it
    double m = -kInf;
    for (int64_t k = 0; k < c; ++k) m = (double(z[k]) > m || std::isnan(double(z[k]))) ? double(z[k]) : m;
    double s = 0;
    for (int64_t k = 0; k < c; ++k) s += std::exp(double(z[k]) - m);
    const double log_s = std::log(s);
    double l = 0;
    if (t == nullptr) {
      l = -((double(z[cls]) - m) - log_s);
      if (g != nullptr) {
        // dl/dz_k = softmax_k - [k = cls]
        const double inv_s = 1.0 / s;
        for (int64_t k = 0; k < c; ++k) g[k] = T(w * (std::exp(double(z[k]) - m) * inv_s - (k == cls ? 1.0 : 0.0)));
      }
      return l;
    }
    double mass = 0;
    for (int64_t k = 0; k < c; ++k) {
      l -= double(t[k]) * ((double(z[k]) - m) - log_s);
      mass += double(t[k]);
    }
    if (g != nullptr) {
      // dl/dz_k = (sum_j t_j) softmax_k - t_k
      const double inv_s = 1.0 / s;
      for (int64_t k = 0; k < c; ++k) g[k] = T(w * (mass * std::exp(double(z[k]) - m) * inv_s - double(t[k])));
    }
    return l;
  }
  // probabilities: l = -sum_k t_k log(p_k + eps), dl/dp_k = -t_k / (p_k + eps)
  if (t == nullptr) {
    const double q = double(z[cls]) + eps;
    if (g != nullptr) {
      std::fill(g, g + c, T(0));
      g[cls] = T(-w / q);
    }
    return -std::log(q);
  }
  double l = 0;
  for (int64_t k = 0; k < c; ++k) {
    const double q = double(z[k]) + eps, tk = double(t[k]);
    // a zero target skips the log (one-hot targets: one log per row), but 0 * log(q) is NaN for q outside
    // (0, inf) in the plain formula and stays NaN here
    if (tk != 0) {
      l -= tk * std::log(q);
    } else if (!(q > 0 && q < kInf)) {
      l = kNaN;
    }
    if (g != nullptr) g[k] = T(-(w * tk) / q);
  }
  return l;
}

template <typename T>
void cross_entropy_impl(const Problem& p, const at::Tensor& input, const at::Tensor& target,
                        const at::Tensor& weight, bool logits, double eps, bool validate, at::Tensor& loss,
                        at::Tensor& rows, at::Tensor* factor) {
  const T* z = input.data_ptr<T>();
  const T* t = p.index ? nullptr : target.data_ptr<T>();
  const int64_t* cls = p.index ? target.data_ptr<int64_t>() : nullptr;
  const T* w = weight.data_ptr<T>();
  T* l = rows.data_ptr<T>();
  T* g = factor != nullptr ? factor->data_ptr<T>() : nullptr;
  const int64_t c = p.c;
  Faults faults;
  const double total = over_rows(p, [&](int64_t r0, int64_t r1) {
    double acc = 0;
    for (int64_t i = r0; i < r1; ++i) {
      const double wi = double(w[i]);
      if (validate && !std::isfinite(wi)) Faults::note(faults.bad_weight, i);
      int64_t ci = 0;
      if (cls != nullptr) {
        ci = cls[i];
        if (ci < 0 || ci >= c) {  // always checked: an index out of range would read outside the row
          Faults::note(faults.bad_index, i);
          continue;
        }
      }
      const double li = cross_entropy_row<T>(z + i * c, t != nullptr ? t + i * c : nullptr, ci, c, logits, eps, wi,
                                             g != nullptr ? g + i * c : nullptr);
      l[i] = T(li);
      acc += wi * li;
    }
    return acc;
  });
  raise_faults(faults, target, weight, c);
  *loss.data_ptr<T>() = T(total);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> weighted_cross_entropy_cpu(const at::Tensor& input_in,
                                                                          const at::Tensor& target_in,
                                                                          const at::Tensor& weight_in,
                                                                          bool from_logits, double eps,
                                                                          bool validate, bool need_grad) {
  const Problem p = check_cross_entropy(input_in, target_in, weight_in, eps);
  const auto input = input_in.expect_contiguous();
  const auto target = target_in.expect_contiguous();
  const auto weight = weight_in.expect_contiguous();
  at::Tensor loss = at::empty({}, input->options());
  at::Tensor rows = at::empty({p.n}, input->options());
  at::Tensor factor = at::empty(need_grad ? input->sizes() : at::IntArrayRef{0}, input->options());
  AT_DISPATCH_FLOATING_TYPES(input->scalar_type(), "weighted_cross_entropy_cpu", [&] {
    cross_entropy_impl<scalar_t>(p, *input, *target, *weight, from_logits, eps, validate, loss, rows,
                                 need_grad ? &factor : nullptr);
  });
  return {loss, rows, factor};
}

template <typename T>
void mse_impl(const Problem& p, const at::Tensor& pred, const at::Tensor& target, const at::Tensor& weight,
              bool validate, at::Tensor& loss, at::Tensor& rows, at::Tensor* factor) {
  const T* y = pred.data_ptr<T>();
  const T* t = target.data_ptr<T>();
  const T* w = weight.data_ptr<T>();
  T* l = rows.data_ptr<T>();
  T* g = factor != nullptr ? factor->data_ptr<T>() : nullptr;
  const int64_t c = p.c;
  Faults faults;
  const double total = over_rows(p, [&](int64_t r0, int64_t r1) {
    double acc = 0;
    for (int64_t i = r0; i < r1; ++i) {
      const double wi = double(w[i]);
      if (validate && !std::isfinite(wi)) Faults::note(faults.bad_weight, i);
      double li = 0;
      for (int64_t k = 0; k < c; ++k) {
        const double d = double(t[i * c + k]) - double(y[i * c + k]);
        li += d * d;
        if (g != nullptr) g[i * c + k] = T(-(wi * (2.0 * d)));  // d/dy (t - y)^2 = -2 (t - y)
      }
      l[i] = T(li);
      acc += wi * li;
    }
    return acc;
  });
  raise_faults(faults, target, weight, c);
  *loss.data_ptr<T>() = T(total);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> weighted_mse_cpu(const at::Tensor& pred_in,
                                                                const at::Tensor& target_in,
                                                                const at::Tensor& weight_in, bool validate,
                                                                bool need_grad) {
  check_floating(pred_in, "pred");
  TORCH_CHECK_VALUE(pred_in.dim() == 1 || pred_in.dim() == 2, "pred must be 1-D (rows) or 2-D (rows x outputs), "
                    "got shape ", pred_in.sizes());
  TORCH_CHECK_VALUE(pred_in.numel() > 0, "pred must have at least one row and one output, got shape ",
                    pred_in.sizes());
  TORCH_CHECK_VALUE(target_in.device().is_cpu(), "target must be a CPU tensor, got ", target_in.device());
  TORCH_CHECK_VALUE(target_in.sizes() == pred_in.sizes(), "target must have the shape of pred ", pred_in.sizes(),
                    ", got ", target_in.sizes());
  TORCH_CHECK_VALUE(target_in.scalar_type() == pred_in.scalar_type(), "target must have dtype ",
                    pred_in.scalar_type(), " like pred, got ", target_in.scalar_type());
  check_weight(weight_in, pred_in, "pred");
  const Problem p{pred_in.size(0), pred_in.dim() == 2 ? pred_in.size(1) : 1, false};
  const auto pred = pred_in.expect_contiguous();
  const auto target = target_in.expect_contiguous();
  const auto weight = weight_in.expect_contiguous();
  at::Tensor loss = at::empty({}, pred->options());
  at::Tensor rows = at::empty({p.n}, pred->options());
  at::Tensor factor = at::empty(need_grad ? pred->sizes() : at::IntArrayRef{0}, pred->options());
  AT_DISPATCH_FLOATING_TYPES(pred->scalar_type(), "weighted_mse_cpu", [&] {
    mse_impl<scalar_t>(p, *pred, *target, *weight, validate, loss, rows, need_grad ? &factor : nullptr);
  });
  return {loss, rows, factor};
}

// ------------------------------------------------------------------------------------------------ autograd
// Registered at the Autograd key (for every device), so the forward and backward of a step stay in C++. The
// fake kernels are registered from Python (lossval_fast/ops/weighted_loss.py); under torch.compile this kernel
// is traced through like any op with a derivative formula. First-order gradients only: G is a constant of the
// backward graph.
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using Triple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

const c10::TypedOperatorHandle<Triple(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, double, bool,
                                      bool)>&
cross_entropy_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("lossval_fast::weighted_cross_entropy", "")
                             .typed<Triple(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, double,
                                           bool, bool)>();
  return op;
}

const c10::TypedOperatorHandle<Triple(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, bool)>&
mse_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("lossval_fast::weighted_mse", "")
                             .typed<Triple(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, bool)>();
  return op;
}

class WeightedCrossEntropy : public torch::autograd::Function<WeightedCrossEntropy> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& target,
                               const at::Tensor& weight, bool from_logits, double eps, bool validate,
                               bool need_grad) {
    at::Tensor loss, rows, factor;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(loss, rows, factor) = cross_entropy_op().call(input, target, weight, from_logits, eps, validate,
                                                              need_grad);
    }
    ctx->mark_non_differentiable({rows, factor});
    ctx->set_materialize_grads(false);  // no zero-filled gradients for the two non-differentiable outputs
    ctx->saved_data["from_logits"] = from_logits;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["need_grad"] = need_grad;  // a flag, not factor.numel(): sizes may be symbolic when traced
    // the inputs are kept only where backward needs more than the factor: a soft target that requires grad, or
    // an input that requires grad although the caller asked for no factor
    const bool keep_inputs = target.requires_grad() || (input.requires_grad() && !need_grad);
    if (keep_inputs) {
      ctx->save_for_backward({rows, factor, input, target, weight});
    } else {
      ctx->save_for_backward({rows, factor});
    }
    return {loss, rows, factor};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& g = grads[0];
    if (!g.defined()) return variable_list(7);
    const variable_list saved = ctx->get_saved_variables();
    const bool from_logits = ctx->saved_data["from_logits"].toBool();
    const double eps = ctx->saved_data["eps"].toDouble();
    at::Tensor g_input, g_target, g_weight;
    if (ctx->needs_input_grad(0)) {
      at::Tensor factor = saved[1];
      if (!ctx->saved_data["need_grad"].toBool()) {  // forward was asked for no factor: form it now
        factor = std::get<2>(cross_entropy_op().call(saved[2], saved[3], saved[4], from_logits, eps, false, true));
      }
      g_input = at::mul(factor, g);
    }
    if (ctx->needs_input_grad(1)) {
      // dl_i/dt_ik = -logp_ik: the plain formula, only for soft targets that require grad
      const at::Tensor& input = saved[2];
      const at::Tensor logp = from_logits ? at::log_softmax(input, 1) : at::log(at::add(input, eps));
      g_target = at::mul(logp, at::mul(saved[4], g).neg().unsqueeze(1));
    }
    if (ctx->needs_input_grad(2)) g_weight = at::mul(saved[0], g);
    return {g_input, g_target, g_weight, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class WeightedMse : public torch::autograd::Function<WeightedMse> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& pred, const at::Tensor& target,
                               const at::Tensor& weight, bool validate, bool need_grad) {
    at::Tensor loss, rows, factor;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(loss, rows, factor) = mse_op().call(pred, target, weight, validate, need_grad);
    }
    ctx->mark_non_differentiable({rows, factor});
    ctx->set_materialize_grads(false);
    ctx->saved_data["need_grad"] = need_grad;
    if ((pred.requires_grad() || target.requires_grad()) && !need_grad) {
      ctx->save_for_backward({rows, factor, pred, target, weight});
    } else {
      ctx->save_for_backward({rows, factor});
    }
    return {loss, rows, factor};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& g = grads[0];
    if (!g.defined()) return variable_list(5);
    const variable_list saved = ctx->get_saved_variables();
    at::Tensor g_pred, g_target, g_weight;
    if (ctx->needs_input_grad(0) || ctx->needs_input_grad(1)) {
      at::Tensor factor = saved[1];
      if (!ctx->saved_data["need_grad"].toBool()) {
        factor = std::get<2>(mse_op().call(saved[2], saved[3], saved[4], false, true));
      }
      const at::Tensor scaled = at::mul(factor, g);
      if (ctx->needs_input_grad(0)) g_pred = scaled;
      if (ctx->needs_input_grad(1)) g_target = scaled.neg();  // l depends on t - y only
    }
    if (ctx->needs_input_grad(2)) g_weight = at::mul(saved[0], g);
    return {g_pred, g_target, g_weight, at::Tensor(), at::Tensor()};
  }
};

Triple weighted_cross_entropy_autograd(const at::Tensor& input, const at::Tensor& target, const at::Tensor& weight,
                                       bool from_logits, double eps, bool validate, bool need_grad) {
  const variable_list out =
      WeightedCrossEntropy::apply(input, target, weight, from_logits, eps, validate, need_grad);
  return {out[0], out[1], out[2]};
}

Triple weighted_mse_autograd(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& weight,
                             bool validate, bool need_grad) {
  const variable_list out = WeightedMse::apply(pred, target, weight, validate, need_grad);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(lossval_fast, CPU, m) {
  m.impl("weighted_cross_entropy", &weighted_cross_entropy_cpu);
  m.impl("weighted_mse", &weighted_mse_cpu);
}

TORCH_LIBRARY_IMPL(lossval_fast, Autograd, m) {
  m.impl("weighted_cross_entropy", &weighted_cross_entropy_autograd);
  m.impl("weighted_mse", &weighted_mse_autograd);
}

}  // namespace cpu
}  // namespace lvf
