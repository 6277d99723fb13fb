// The Sinkhorn ε loop on CPU (csrc/cpu/sinkhorn_cpu.cpp), for other C++ ops that need it without the dispatcher.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <optional>
#include <vector>

namespace lvf {
namespace cpu {

// The lossval_fast::sinkhorn_potentials op (schema in csrc/ops.cpp): (S, dF, dG, GB, bxy, byx, bxx, byy).
// `alongside` (may be empty) is the caller's independent work, run on the calling thread while a small problem's
// y-y loop runs on a second thread (threads >= 2), or after the loop otherwise.
std::vector<at::Tensor> sinkhorn_potentials_with(const at::Tensor& a, const at::Tensor& x, const at::Tensor& b,
                                                 const at::Tensor& y, at::ArrayRef<double> eps_list, bool debias,
                                                 bool barycenters, int64_t cost_mode,
                                                 const std::optional<at::Tensor>& gb, int64_t threads,
                                                 const std::function<void()>& alongside);

}  // namespace cpu
}  // namespace lvf
