// CUDA implementations of the lossval_fast ops (schemas in csrc/ops.cpp), on the torch-free kernels of
// csrc/cuda/*.cu. Argument checks, output shapes and dtypes are those of csrc/cpu/pairwise_cpu.cpp, plus one
// device check (every tensor on x's GPU). Kernels run on the current stream of x's device; scratch memory
// (the centre, the prepass results, split partials) comes from the caching allocator on that stream.
//
// Built only when the installed torch has CUDA (CMakeLists.txt); the CPU torch lacks the generated c10/cuda headers.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>

#include "cuda/pairwise.cuh"

namespace lvf {
namespace cuda {
namespace {

void check_points(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cuda(), name, " must be a CUDA tensor, got ", t.device());
  TORCH_CHECK(t.dim() == 2, name, " must be 2-D (points x features), got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", t.scalar_type());
}

void check_vector(const at::Tensor& t, const char* name, int64_t n, at::ScalarType dtype, const at::Device& device) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, name, " must have shape (", n, ",), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == device, name, " must be on the same device as x (", device, "), got ", t.device());
}

void check_pair(const at::Tensor& x, const at::Tensor& y) {
  check_points(x, "x");
  check_points(y, "y");
  TORCH_CHECK(x.size(1) == y.size(1), "x and y must have the same number of features, got ", x.size(1), " and ",
              y.size(1));
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "x and y must have the same dtype, got ", x.scalar_type(), " and ",
              y.scalar_type());
  TORCH_CHECK(x.device() == y.device(), "x and y must be on the same device, got ", x.device(), " and ", y.device());
}

void check_eps(double eps) {
  TORCH_CHECK(std::isfinite(eps) && eps > 0, "eps must be a finite positive number, got ", eps);
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// Scratch bytes on the caching allocator. Freed when the tensor goes out of scope: the allocator is
// stream-ordered, so the kernels already enqueued on this stream finish before the block is reused.
at::Tensor workspace(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

// The shared centre of both clouds: the mean of the rows of z (the CPU kernels use the mean of their columns).
template <typename T>
at::Tensor column_mean_of(const at::Tensor& z, cudaStream_t stream) {
  const int64_t m = z.size(0), d = z.size(1);
  at::Tensor center = at::empty({d}, z.options());
  const size_t bytes = column_mean_workspace_bytes<T>(m, d);
  at::Tensor ws = workspace(bytes, z);
  C10_CUDA_CHECK(column_mean<T>(z.data_ptr<T>(), m, d, center.data_ptr<T>(), ws.data_ptr(), bytes, stream));
  return center;
}

// ---------------------------------------------------------------------------------------------- softmin
template <typename T>
void softmin_run(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h, double eps, at::Tensor& out,
                 at::Tensor* barycenter) {
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1);
  if (n == 0) return;
  const cudaStream_t stream = current_stream();
  const at::Tensor center = column_mean_of<T>(y, stream);
  const size_t bytes = softmin_workspace_bytes<T>(n, m, d, barycenter != nullptr);
  at::Tensor ws = workspace(bytes, x);
  C10_CUDA_CHECK(softmin<T>(x.data_ptr<T>(), y.data_ptr<T>(), h.data_ptr<T>(), center.data_ptr<T>(), n, m, d, eps,
                            out.data_ptr<T>(), barycenter != nullptr ? barycenter->data_ptr<T>() : nullptr,
                            ws.data_ptr(), bytes, stream));
}

at::Tensor softmin_cuda(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& h_in, double eps) {
  check_pair(x_in, y_in);
  check_vector(h_in, "h", y_in.size(0), x_in.scalar_type(), x_in.device());
  check_eps(eps);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous(), h = h_in.contiguous();
  at::Tensor out = at::empty({x.size(0)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "softmin_cuda",
                             [&] { softmin_run<scalar_t>(x, y, h, eps, out, nullptr); });
  return out;
}

std::tuple<at::Tensor, at::Tensor> softmin_barycenter_cuda(const at::Tensor& x_in, const at::Tensor& y_in,
                                                           const at::Tensor& h_in, double eps) {
  check_pair(x_in, y_in);
  check_vector(h_in, "h", y_in.size(0), x_in.scalar_type(), x_in.device());
  check_eps(eps);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous(), h = h_in.contiguous();
  at::Tensor out = at::empty({x.size(0)}, x.options());
  at::Tensor bary = at::empty({x.size(0), x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "softmin_barycenter_cuda",
                             [&] { softmin_run<scalar_t>(x, y, h, eps, out, &bary); });
  return {out, bary};
}

// ---------------------------------------------------------------------------------------------- plan_colsum
template <typename T>
void plan_colsum_run(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h, const at::Tensor& f,
                     const at::Tensor& w, double eps, at::Tensor& s, at::Tensor& sx) {
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1);
  if (m == 0) return;
  const cudaStream_t stream = current_stream();
  const at::Tensor center = column_mean_of<T>(x, stream);  // the plan's columns are the points x, as on the CPU
  const size_t bytes = plan_colsum_workspace_bytes<T>(n, m, d);
  at::Tensor ws = workspace(bytes, x);
  C10_CUDA_CHECK(plan_colsum<T>(x.data_ptr<T>(), y.data_ptr<T>(), h.data_ptr<T>(), f.data_ptr<T>(), w.data_ptr<T>(),
                                center.data_ptr<T>(), n, m, d, eps, s.data_ptr<T>(), sx.data_ptr<T>(), ws.data_ptr(),
                                bytes, stream));
}

std::tuple<at::Tensor, at::Tensor> plan_colsum_cuda(const at::Tensor& x_in, const at::Tensor& y_in,
                                                    const at::Tensor& h_in, const at::Tensor& f_in,
                                                    const at::Tensor& w_in, double eps) {
  check_pair(x_in, y_in);
  check_vector(h_in, "h", y_in.size(0), x_in.scalar_type(), x_in.device());
  check_vector(f_in, "f", x_in.size(0), x_in.scalar_type(), x_in.device());
  check_vector(w_in, "weight", x_in.size(0), x_in.scalar_type(), x_in.device());
  check_eps(eps);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous(), h = h_in.contiguous(), f = f_in.contiguous(),
                   w = w_in.contiguous();
  at::Tensor s = at::empty({y.size(0)}, y.options());
  at::Tensor sx = at::empty({y.size(0), y.size(1)}, y.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "plan_colsum_cuda",
                             [&] { plan_colsum_run<scalar_t>(x, y, h, f, w, eps, s, sx); });
  return {s, sx};
}

// ---------------------------------------------------------------------------------------------- nearest
template <typename T>
void nearest_run(const at::Tensor& x, const at::Tensor& y, bool accumulate, at::Tensor& index, at::Tensor& sqdist,
                 at::Tensor& sums, at::Tensor& counts) {
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1);
  if (n == 0) return;
  const cudaStream_t stream = current_stream();
  const at::Tensor center = column_mean_of<T>(y, stream);
  const size_t bytes = nearest_workspace_bytes<T>(n, m, d);
  at::Tensor ws = workspace(bytes, x);
  // sums and counts are zeros of shape (m, d) and (m,) when accumulating (the kernels add into them)
  C10_CUDA_CHECK(nearest<T>(x.data_ptr<T>(), y.data_ptr<T>(), center.data_ptr<T>(), n, m, d,
                            index.data_ptr<int64_t>(), sqdist.data_ptr<T>(), accumulate ? sums.data_ptr<T>() : nullptr,
                            accumulate ? counts.data_ptr<int64_t>() : nullptr, ws.data_ptr(), bytes, stream));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> nearest_cuda(const at::Tensor& x_in,
                                                                        const at::Tensor& y_in, bool accumulate) {
  check_pair(x_in, y_in);
  TORCH_CHECK(y_in.size(0) > 0, "y must have at least one row");
  TORCH_CHECK(y_in.size(0) <= std::numeric_limits<int32_t>::max(), "y must have fewer than 2^31 rows on CUDA, got ",
              y_in.size(0));
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous();
  at::Tensor index = at::empty({x.size(0)}, x.options().dtype(at::kLong));
  at::Tensor sqdist = at::empty({x.size(0)}, x.options());
  at::Tensor sums = at::zeros({accumulate ? y.size(0) : 0, y.size(1)}, y.options());
  at::Tensor counts = at::zeros({accumulate ? y.size(0) : 0}, y.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nearest_cuda",
                             [&] { nearest_run<scalar_t>(x, y, accumulate, index, sqdist, sums, counts); });
  return {index, sqdist, sums, counts};
}

// ---------------------------------------------------------------------------------------------- stored cost
template <typename T>
void softmin_stored_run(const at::Tensor& cost, const at::Tensor& h, double eps, at::Tensor& out) {
  const int64_t n = cost.size(0), m = cost.size(1);
  if (n == 0) return;
  const cudaStream_t stream = current_stream();
  const size_t bytes = softmin_stored_workspace_bytes<T>(n, m);
  at::Tensor ws = workspace(bytes, cost);
  C10_CUDA_CHECK(softmin_stored<T>(cost.data_ptr<T>(), h.data_ptr<T>(), n, m, eps, out.data_ptr<T>(), ws.data_ptr(),
                                   bytes, stream));
}

at::Tensor softmin_stored_cuda(const at::Tensor& cost_in, const at::Tensor& h_in, double eps) {
  check_points(cost_in, "cost");
  check_vector(h_in, "h", cost_in.size(1), cost_in.scalar_type(), cost_in.device());
  check_eps(eps);
  const c10::cuda::CUDAGuard guard(cost_in.device());
  const at::Tensor cost = cost_in.contiguous(), h = h_in.contiguous();
  at::Tensor out = at::empty({cost.size(0)}, cost.options());
  AT_DISPATCH_FLOATING_TYPES(cost.scalar_type(), "softmin_stored_cuda",
                             [&] { softmin_stored_run<scalar_t>(cost, h, eps, out); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lossval_fast, CUDA, m) {
  m.impl("softmin", &softmin_cuda);
  m.impl("softmin_barycenter", &softmin_barycenter_cuda);
  m.impl("plan_colsum", &plan_colsum_cuda);
  m.impl("nearest", &nearest_cuda);
  m.impl("softmin_stored", &softmin_stored_cuda);
}

}  // namespace cuda
}  // namespace lvf
