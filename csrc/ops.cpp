// The lossval_fast operator library: schemas here, kernels per dispatch key in csrc/cpu and csrc/cuda.
// Autograd formulas and fake (meta) kernels are registered from Python (lossval_fast/ops/_library.py).
//
// The module `lossval_fast._C` is an empty abi3 Python module: importing it runs the static registrations.
#include <Python.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <string>

#include "cpu/kernels.h"

namespace {

std::string set_cpu_capability(const std::string& name) {
  try {
    return lvf::cpu::set_capability(name.c_str());
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
}
std::string cpu_capability() { return lvf::cpu::capability(); }
std::string best_cpu_capability() { return lvf::cpu::best_capability(); }
// How many distinct threads at::parallel_for hands work to: the kernels split their rows with it, and it runs
// serially (silently) when the extension is compiled without OpenMP.
int64_t parallel_threads(int64_t tasks) {
  std::atomic<uint64_t> seen{0};
  at::parallel_for(0, std::max<int64_t>(tasks, 1), 1, [&](int64_t, int64_t) {
    seen.fetch_or(uint64_t(1) << (at::get_thread_num() % 64));
  });
  return __builtin_popcountll(seen.load());
}
bool has_cuda_kernels() {
#ifdef LVF_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

TORCH_LIBRARY(lossval_fast, m) {
  // softmin_i = -eps log sum_j exp(h_j - ½|x_i - y_j|² / eps)
  m.def("softmin(Tensor x, Tensor y, Tensor h, float eps) -> Tensor");
  // (softmin, barycentre sum_j P_ij y_j) with P_ij = exp(h_j - C_ij/eps + softmin_i/eps), rows of P sum to 1
  m.def("softmin_barycenter(Tensor x, Tensor y, Tensor h, float eps) -> (Tensor, Tensor)");
  // column sums of a known plan: s_j = sum_i w_i P_ij, sx_j = sum_i w_i P_ij x_i, P_ij = exp(h_j + f_i/eps - C_ij/eps)
  m.def("plan_colsum(Tensor x, Tensor y, Tensor h, Tensor f, Tensor weight, float eps) -> (Tensor, Tensor)");
  // (index, squared distance) of the nearest row of y; with accumulate, per-row-of-y sums of x and counts
  m.def("nearest(Tensor x, Tensor y, bool accumulate) -> (Tensor, Tensor, Tensor, Tensor)");
  // one Lloyd iteration with Hamerly's bounds (csrc/cpu/kmeans_cpu.cpp): labels, upper, lower (float64) are updated
  // in place (reset: recompute every row); returns (sums, counts) of x per centroid, rows recomputed, labels changed
  m.def("kmeans_bounded_step(Tensor x, Tensor centroids, Tensor previous, Tensor(a!) labels, Tensor(b!) upper, "
        "Tensor(c!) lower, bool reset) -> (Tensor, Tensor, int, int)");
  // softmin over a stored cost matrix (n x m)
  m.def("softmin_stored(Tensor cost, Tensor h, float eps) -> Tensor");
  // the Sinkhorn ε loop of geomloss on batched clouds a (B,N), x (B,N,d), b (B,M), y (B,M,d):
  // (S, dF = F - FA, dG = G - GB, GB, barycentres xy, yx, xx, yy [with barycenters]);
  // cost_mode 0 = online, 1 = stored; gb = cached GB (skips the y-y passes); threads: how many threads a small
  // problem may use (its y-y loop next to the rest), -1 = torch's intra-op setting
  m.def("sinkhorn_potentials(Tensor a, Tensor x, Tensor b, Tensor y, float[] eps_list, bool debias, "
        "bool barycenters, int cost_mode, Tensor? gb, int threads=-1) -> Tensor[]");
  // finiteness checks (ValueError naming the argument) and the bounding-box diameter of x and y, in one pass
  m.def("sinkhorn_prepare(Tensor a, Tensor x, Tensor b, Tensor y, bool check_finite) -> float");
  // machine-floor probes used by the benchmarks: kind = "exp2" | "expf" | "read", one buffer row per thread
  m.def("machine_probe(Tensor buffer, int repeats, str kind) -> float");
  m.def("set_cpu_capability(str name) -> str", &set_cpu_capability);
  m.def("cpu_capability() -> str", &cpu_capability);
  m.def("best_cpu_capability() -> str", &best_cpu_capability);
  m.def("has_cuda_kernels() -> bool", &has_cuda_kernels);
  m.def("parallel_threads(int tasks) -> int", &parallel_threads);
  // fused weighted losses (LossVal): (loss = sum_i w_i l_i, per-row losses l, G = w_i dl_i/d input or (0,) without
  // need_grad); target: int64 class indices (N,) or a distribution like input; validate: reject non-finite weights
  m.def("weighted_cross_entropy(Tensor input, Tensor target, Tensor weight, bool from_logits, float eps, "
        "bool validate, bool need_grad) -> (Tensor, Tensor, Tensor)");
  m.def("weighted_mse(Tensor pred, Tensor target, Tensor weight, bool validate, bool need_grad) "
        "-> (Tensor, Tensor, Tensor)");
  // one LossVal step of an MLP (csrc/cpu/lossval_step_cpu.cpp): forward, weighted loss, Sinkhorn divergence,
  // backward and Adam; params = [weights, W_1, b_1, ...] are updated in place; returns the step's loss.
  // activations: one code per hidden layer (0 ReLU, 1 Tanh, 2 Sigmoid, 3 LeakyReLU(param), 4 GELU, 5 GELU tanh,
  // 6 identity); head 0 = softmax probabilities, 1 = logits, 2 = regression; eps_list empty =
  // the per-batch diameter and its schedule; weight_grad: a zero buffer shaped like the weights (left zero);
  // weight_last given: the weights' Adam is lazy (lazy_adam.h), only the batch's entries are touched
  m.def("lossval_mlp_step(Tensor(a!)[] params, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
        "Tensor(d!)[] steps, Tensor(e!) weight_grad, float lr, float beta1, float beta2, float adam_eps, "
        "int[] activations, float[] activation_params, int head, Tensor x, Tensor target, Tensor idx, "
        "Tensor y_val, Tensor b, float[] eps_list, float blur, float scaling, bool normalize, int cost_mode, "
        "Tensor? gb, int threads, Tensor(f!)? weight_last=None) -> Tensor");
  // the same step given its divergence (S, dS = dS/dw_b, computed ahead): wb the batch's weights; params[0] is a
  // weight shard whose entries own_local are the batch rows own_pos
  m.def("lossval_mlp_model_step(Tensor(a!)[] params, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
        "Tensor(d!)[] steps, Tensor(e!) weight_grad, float lr, float beta1, float beta2, float adam_eps, "
        "int[] activations, float[] activation_params, int head, Tensor x, Tensor target, Tensor wb, Tensor S, "
        "Tensor dS, Tensor own_pos, Tensor own_local, Tensor(f!)? weight_last=None) -> Tensor");
  // Adam over the weight vector applied lazily (csrc/cpu/lazy_adam.h): rows idx of (w, exp_avg, exp_avg_sq),
  // current at step last[idx], brought to step target (with grad: the gradient update of step target); write
  // stores the state, else only w at the targets is returned
  m.def("lazy_adam(Tensor(a!) w, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, Tensor(d!) last, Tensor idx, "
        "Tensor target, Tensor? grad, float lr, float beta1, float beta2, float eps, bool write) -> Tensor");
}

extern "C" {
// An empty module: the library registers itself when the shared object is loaded.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
}
