// One whole LossVal training step for an MLP model (Linear layers with ReLU or Tanh between them, an optional
// softmax head) in one C++ call on CPU: forward, the fused weighted loss, the Sinkhorn divergence with its
// per-batch diameter and ε schedule, the backward pass written out by hand, and the fused Adam update.
//
// Why: a LossVal step is ~70 tiny ops (32 x 100 layers). Through Python, nn.Module calls and the autograd engine,
// each costs 5-10 µs of bookkeeping around ~1 µs of arithmetic; here each is one ATen call without autograd.
// The arithmetic is the generic path's (same ATen kernels, the same weighted-loss and Sinkhorn kernels), so the
// two agree to rounding; lossval_fast/valuation/lossval/steps.py falls back to the generic path for any other model.
//
//   loss = L_w · S²,  L_w = Σ_i w_i l_i,  S = S(a, x_b; b, y_val) with a = w_b (or w_b / Σ w_b when normalised)
//   d loss / dθ   = S² dL_w/dθ                          (backprop of S² · w_i dl_i/d output)
//   d loss / dw_i = S² l_i + 2 L_w S dS/dw_i            (dS/da = F - FA by the envelope theorem)
#include <ATen/Dispatch.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/_fused_adam.h>
#include <ATen/ops/_softmax_backward_data.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/gelu_backward.h>
#include <ATen/ops/leaky_relu.h>
#include <ATen/ops/leaky_relu_backward.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/sigmoid_backward.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/tanh.h>
#include <ATen/ops/tanh_backward.h>
#include <ATen/ops/threshold_backward.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "lazy_adam.h"
#include "sinkhorn.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

namespace lvf {
namespace cpu {
namespace {

// the activations between the linear layers (their ATen forward and the backward autograd would call)
enum Activation : int64_t {
  kRelu = 0, kTanh = 1, kSigmoid = 2, kLeakyRelu = 3, kGelu = 4, kGeluTanh = 5, kIdentity = 6, kActivations = 7
};

at::Tensor activate(int64_t kind, double param, const at::Tensor& z) {
  switch (kind) {
    case kRelu: return at::relu(z);
    case kTanh: return at::tanh(z);
    case kSigmoid: return at::sigmoid(z);
    case kLeakyRelu: return at::leaky_relu(z, param);
    case kGelu: return at::gelu(z, "none");
    case kGeluTanh: return at::gelu(z, "tanh");
    default: return z;
  }
}

// d loss / d z from d loss / d h, with z the input and h the output of the activation
at::Tensor activation_backward(int64_t kind, double param, const at::Tensor& gh, const at::Tensor& z,
                               const at::Tensor& h) {
  switch (kind) {
    case kRelu: return at::threshold_backward(gh, h, 0);
    case kTanh: return at::tanh_backward(gh, h);
    case kSigmoid: return at::sigmoid_backward(gh, h);
    case kLeakyRelu: return at::leaky_relu_backward(gh, z, param, false);
    case kGelu: return at::gelu_backward(gh, z, "none");
    case kGeluTanh: return at::gelu_backward(gh, z, "tanh");
    default: return gh;
  }
}
enum Head : int64_t { kProbabilities = 0, kLogits = 1, kRegression = 2 };

using Triple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
const c10::DispatchKeySet kCpuKeys(c10::DispatchKey::CPU);

Triple weighted_cross_entropy(const at::Tensor& input, const at::Tensor& target, const at::Tensor& weight,
                              bool from_logits) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("lossval_fast::weighted_cross_entropy", "")
                             .typed<Triple(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, double,
                                           bool, bool)>();
  return op.redispatch(kCpuKeys, input, target, weight, from_logits, 1e-8, false, true);
}

Triple weighted_mse(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& weight) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("lossval_fast::weighted_mse", "")
                             .typed<Triple(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, bool)>();
  return op.redispatch(kCpuKeys, pred, target, weight, false, true);
}

// The faithful per-batch diameter, 1.1 · max_ij |x_i - y_j| (what torch.cdist(x, y).max().item() * 1.1 gives),
// from one GEMM: |x_i - y_j|² = |x_i|² + |y_j|² - 2 x_i·y_j, the norms in double.
template <typename T>
double batch_diameter(const at::Tensor& x, const at::Tensor& y) {
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1);
  const at::Tensor dots = at::mm(x, y.t());
  const T* xp = x.data_ptr<T>();
  const T* yp = y.data_ptr<T>();
  const T* dp = dots.data_ptr<T>();
  std::vector<double> yn(m, 0.0);
  for (int64_t j = 0; j < m; ++j)
    for (int64_t k = 0; k < d; ++k) yn[j] += double(yp[j * d + k]) * double(yp[j * d + k]);
  double best = 0;
  for (int64_t i = 0; i < n; ++i) {
    double xn = 0;
    for (int64_t k = 0; k < d; ++k) xn += double(xp[i * d + k]) * double(xp[i * d + k]);
    for (int64_t j = 0; j < m; ++j) best = std::max(best, xn + yn[j] - 2.0 * double(dp[i * m + j]));
  }
  return double(T(std::sqrt(best))) * 1.1;  // rounded to the working dtype like the .item() of a T tensor
}

// geomloss' ε schedule (lossval_fast.ops.sinkhorn.epsilon_schedule, p = 2), numpy.arange's rule included
std::vector<double> epsilon_schedule(double diameter, double blur, double scaling) {
  const double start = 2 * std::log(diameter), stop = 2 * std::log(blur), step = 2 * std::log(scaling);
  const int64_t count = std::max<int64_t>(0, int64_t(std::ceil((stop - start) / step)));
  const double delta = (start + step) - start;
  std::vector<double> out{diameter * diameter};
  for (int64_t i = 0; i < count; ++i) out.push_back(std::exp(start + double(i) * delta));
  out.push_back(blur * blur);
  return out;
}

// The model's part of a step, shared by the whole step and by the step given its divergence: forward, weighted
// loss, backward, the weight gradient and the fused Adam update over [weights, W_1, b_1, ...].
struct MlpStep {
  at::TensorList params, exp_avgs, exp_avg_sqs, steps;
  const at::Tensor& weight_grad;
  double lr, beta1, beta2, adam_eps;
  at::IntArrayRef activations;
  at::ArrayRef<double> activation_params;
  int64_t head, layers;
  at::Tensor x;
  const at::Tensor& target;
  const std::optional<at::Tensor>& weight_last;  // given: the weights' Adam is lazy (lazy_adam.h)
  at::Tensor wb;
  // h[l] is the input of layer l, zs[l] its output before the activation; rows = l_i, G = w_i dl_i / d out
  std::vector<at::Tensor> h, zs;
  at::Tensor out, train_loss, rows, G;

  MlpStep(at::TensorList params, at::TensorList exp_avgs, at::TensorList exp_avg_sqs, at::TensorList steps,
          const at::Tensor& weight_grad, double lr, double beta1, double beta2, double adam_eps,
          at::IntArrayRef activations, at::ArrayRef<double> activation_params, int64_t head, const at::Tensor& x_in,
          const at::Tensor& target, const std::optional<at::Tensor>& weight_last)
      : params(params), exp_avgs(exp_avgs), exp_avg_sqs(exp_avg_sqs), steps(steps), weight_grad(weight_grad),
        lr(lr), beta1(beta1), beta2(beta2), adam_eps(adam_eps), activations(activations),
        activation_params(activation_params), head(head), layers((int64_t(params.size()) - 1) / 2),
        x(x_in.contiguous()), target(target), weight_last(weight_last) {
    TORCH_CHECK(layers >= 1 && int64_t(params.size()) == 2 * layers + 1,
                "params must be [weights, W_1, b_1, ..., W_L, b_L]");
    TORCH_CHECK(exp_avgs.size() == params.size() && exp_avg_sqs.size() == params.size() &&
                    steps.size() == params.size(),
                "the Adam state lists must match params");
    TORCH_CHECK(int64_t(activations.size()) == layers - 1 && activation_params.size() == activations.size(),
                "activations and activation_params need one entry per hidden layer (", layers - 1, ")");
    for (int64_t a : activations) TORCH_CHECK(a >= 0 && a < kActivations, "unknown activation code ", a);
    TORCH_CHECK(head == kProbabilities || head == kLogits || head == kRegression, "head must be 0, 1 or 2");
    TORCH_CHECK(x.dim() == 2, "x must be (B, d)");
    h.push_back(x);
  }

  static at::Tensor step_tensor(int64_t t) {
    at::Tensor out = at::empty({1}, at::kLong);
    *out.data_ptr<int64_t>() = t;
    return out;
  }

  // the weights' step count (Adam's step counter of params[0]: float32, exact up to 2^24 steps)
  int64_t weight_step() const { return int64_t(std::llround(*steps[0].data_ptr<float>())); }

  // The batch's weights (rows idx of the vector) as the step sees them: with lazy Adam, the pending zero-gradient
  // updates up to the current step are applied to these rows first
  at::Tensor batch_weights(const at::Tensor& idx) {
    if (!weight_last) return params[0].index_select(0, idx);
    return lazy_adam_rows(params[0], exp_avgs[0], exp_avg_sqs[0], *weight_last, idx.contiguous(),
                          step_tensor(weight_step()), std::nullopt, {lr, beta1, beta2, adam_eps}, true);
  }

  void forward() {
    at::Tensor z;
    for (int64_t l = 0; l < layers; ++l) {
      z = at::linear(h.back(), params[1 + 2 * l], params[2 + 2 * l]);
      if (l + 1 < layers) {
        zs.push_back(z);
        h.push_back(activate(activations[l], activation_params[l], z));
      }
    }
    out = head == kProbabilities ? at::softmax(z, -1) : z;
    if (head == kRegression) {
      std::tie(train_loss, rows, G) = weighted_mse(out.reshape(target.sizes()), target, wb);
      G = G.reshape(out.sizes());
    } else {
      std::tie(train_loss, rows, G) = weighted_cross_entropy(out, target, wb, head == kLogits);
    }
  }

  // Given S and dS/dw_b: the backward pass of loss = L_w · S², the weight gradient added at `local` (of the rows
  // `pos` of the batch, or of every row), Adam; returns the loss
  at::Tensor finish(const at::Tensor& S, const at::Tensor& dS, const at::Tensor& local,
                    const std::optional<at::Tensor>& pos) {
    const at::Tensor S2 = S * S;
    const at::Tensor loss = train_loss * S2;
    std::vector<at::Tensor> grads(params.size());
    at::Tensor gz = G * S2;
    if (head == kProbabilities) gz = at::_softmax_backward_data(gz, out, 1, out.scalar_type());
    for (int64_t l = layers - 1; l >= 0; --l) {
      grads[1 + 2 * l] = at::mm(gz.t(), h[l]);
      grads[2 + 2 * l] = gz.sum(0);
      if (l == 0) break;
      const at::Tensor gh = at::mm(gz, params[1 + 2 * l]);
      gz = activation_backward(activations[l - 1], activation_params[l - 1], gh, zs[l - 1], h[l]);
    }
    const at::Tensor wgrad = rows * S2 + (train_loss * 2 * S) * dS;
    // the step counters are 0-d float32 CPU tensors (fused Adam's format): bump them in place (_foreach_add_
    // would take its slow per-tensor path for 0-d tensors, ~40 µs)
    for (const at::Tensor& step : steps) {
      TORCH_CHECK(step.scalar_type() == at::kFloat && step.numel() == 1 && step.is_cpu(),
                  "Adam step counters must be float32 CPU scalars");
      *step.data_ptr<float>() += 1.0f;
    }
    if (weight_last) {  // the model's Adam; the weights' at the batch's entries only (lazily)
      at::_fused_adam_(params.slice(1), at::TensorList(grads).slice(1), exp_avgs.slice(1), exp_avg_sqs.slice(1), {},
                       steps.slice(1), lr, beta1, beta2, 0.0, adam_eps, false, false, std::nullopt, std::nullopt);
      const at::Tensor g = (pos ? wgrad.index_select(0, *pos) : wgrad).to(params[0].scalar_type()).contiguous();
      lazy_adam_rows(params[0], exp_avgs[0], exp_avg_sqs[0], *weight_last, local.contiguous(),
                     step_tensor(weight_step()), g, {lr, beta1, beta2, adam_eps}, true);
      return loss;
    }
    // dense: the weight vector's gradient is zero outside the batch: a persistent zero buffer, touched at local only
    weight_grad.index_add_(0, local, pos ? wgrad.index_select(0, *pos) : wgrad);
    grads[0] = weight_grad;
    at::_fused_adam_(params, grads, exp_avgs, exp_avg_sqs, {}, steps, lr, beta1, beta2, 0.0, adam_eps, false, false,
                     std::nullopt, std::nullopt);
    weight_grad.index_fill_(0, local, 0);
    return loss;
  }
};

at::Tensor lossval_mlp_step_cpu(at::TensorList params, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                                at::TensorList steps, const at::Tensor& weight_grad, double lr, double beta1,
                                double beta2, double adam_eps, at::IntArrayRef activations,
                                at::ArrayRef<double> activation_params, int64_t head, const at::Tensor& x_in,
                                const at::Tensor& target, const at::Tensor& idx, const at::Tensor& y_val_in,
                                const at::Tensor& b, at::ArrayRef<double> eps_list, double blur, double scaling,
                                bool normalize, int64_t cost_mode, const std::optional<at::Tensor>& gb,
                                int64_t threads, const std::optional<at::Tensor>& weight_last) {
  MlpStep step(params, exp_avgs, exp_avg_sqs, steps, weight_grad, lr, beta1, beta2, adam_eps, activations,
               activation_params, head, x_in, target, weight_last);
  const at::Tensor& x = step.x;
  const at::Tensor y_val = y_val_in.contiguous();
  TORCH_CHECK(y_val.dim() == 2 && x.size(1) == y_val.size(1), "x and y_val must be (B, d), (M, d)");
  TORCH_CHECK(idx.dim() == 1 && idx.size(0) == x.size(0), "idx must hold one index per row of x");
  step.wb = step.batch_weights(idx);
  const at::Tensor& wb = step.wb;

  // the divergence's schedule (faithful: from this batch's diameter)
  const at::Tensor a = normalize ? wb / wb.sum() : wb;
  std::vector<double> schedule(eps_list.begin(), eps_list.end());
  if (schedule.empty()) {
    double diameter = 0;
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lossval_mlp_step_diameter",
                               [&] { diameter = batch_diameter<scalar_t>(x, y_val); });
    schedule = epsilon_schedule(diameter > 0 ? diameter : blur, blur, scaling);
  }
  // the divergence of the weighted batch and the validation set, with dS/da; the forward pass and the weighted
  // training loss run alongside the divergence's validation-side loop
  const auto potentials = sinkhorn_potentials_with(a.unsqueeze(0), x.unsqueeze(0), b.unsqueeze(0),
                                                   y_val.unsqueeze(0), schedule, true, false, cost_mode, gb, threads,
                                                   [&] { step.forward(); });
  const at::Tensor S = potentials[0][0];
  at::Tensor dS = potentials[1][0];
  if (normalize) dS = (dS - (a * dS).sum()) / wb.sum();  // through a = w / Σ w
  return step.finish(S, dS, idx, std::nullopt);
}

// The model's part of a step whose divergence was computed elsewhere (a data-parallel fit computes the
// divergences of many steps ahead, spread over the ranks): wb the batch's weights, S and dS = dS/dw_b given;
// params[0] holds this rank's weight shard, rows own_pos of the batch are its entries own_local.
at::Tensor lossval_mlp_model_step_cpu(at::TensorList params, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                                      at::TensorList steps, const at::Tensor& weight_grad, double lr, double beta1,
                                      double beta2, double adam_eps, at::IntArrayRef activations,
                                      at::ArrayRef<double> activation_params, int64_t head, const at::Tensor& x,
                                      const at::Tensor& target, const at::Tensor& wb, const at::Tensor& S,
                                      const at::Tensor& dS, const at::Tensor& own_pos, const at::Tensor& own_local,
                                      const std::optional<at::Tensor>& weight_last) {
  MlpStep step(params, exp_avgs, exp_avg_sqs, steps, weight_grad, lr, beta1, beta2, adam_eps, activations,
               activation_params, head, x, target, weight_last);
  const int64_t B = step.x.size(0);
  TORCH_CHECK(wb.dim() == 1 && wb.size(0) == B && dS.dim() == 1 && dS.size(0) == B,
              "wb and dS must hold one value per row of x");
  TORCH_CHECK(S.numel() == 1, "S must be one value");
  TORCH_CHECK(own_pos.dim() == 1 && own_local.dim() == 1 && own_pos.size(0) == own_local.size(0),
              "own_pos and own_local must be index vectors of one length");
  step.wb = wb.to(step.x.scalar_type());
  step.forward();
  return step.finish(S.reshape({}).to(step.x.scalar_type()), dS.to(step.x.scalar_type()), own_local, own_pos);
}

}  // namespace

TORCH_LIBRARY_IMPL(lossval_fast, CPU, m) {
  m.impl("lossval_mlp_step", &lossval_mlp_step_cpu);
  m.impl("lossval_mlp_model_step", &lossval_mlp_model_step_cpu);
}

}  // namespace cpu
}  // namespace lvf
