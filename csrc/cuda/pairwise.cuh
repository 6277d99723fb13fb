// Torch-free interface of the CUDA pairwise-reduction kernels (host declarations only: safe to include from a
// plain C++ translation unit such as bindings.cpp).
//
// Conventions are those of the CPU kernels (csrc/cpu/pairwise_cpu.cpp): C_ij = ½|x_i - y_j|², row-major
// (rows x d) point clouds, every reduction in log2 units with s = log2(e) / eps, both clouds centred on the same
// caller-given point c (x' = x - c, y' = y - c: any shared centre is exact, the mean keeps fp32 dot products
// small), and ½|x'_i|² kept outside the log-sum-exp.
//
// Every function takes device pointers, enqueues its kernels on `stream` and returns the first launch error
// (cudaSuccess otherwise); nothing synchronises. Scratch memory comes from the caller: ask *_workspace_bytes for
// the size (it depends on the problem and on the current device's SM count, so call it on the device that will
// run the op), pass at least that many bytes; a smaller workspace gives cudaErrorInvalidValue. Outputs never
// alias inputs. Sizes are element counts; n, m, d may be 0.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace lvf {
namespace cuda {

// center (d) = mean of the rows of z (m x d); 0 when m = 0. Deterministic (no atomics).
template <typename T>
size_t column_mean_workspace_bytes(int64_t m, int64_t d);
template <typename T>
cudaError_t column_mean(const T* z, int64_t m, int64_t d, T* center, void* workspace, size_t workspace_bytes,
                        cudaStream_t stream);

// softmin_i = -eps log sum_j exp(h_j - C_ij / eps)  (out: n). An empty or all -inf row gives +inf.
// With barycenter != nullptr also barycenter_i = sum_j P_ij y_j (n x d), P_ij = softmax_j(h_j - C_ij / eps)
// (NaN for a row with no mass, as torch.softmax gives).
template <typename T>
size_t softmin_workspace_bytes(int64_t n, int64_t m, int64_t d, bool barycenter);
template <typename T>
cudaError_t softmin(const T* x, const T* y, const T* h, const T* center, int64_t n, int64_t m, int64_t d,
                    double eps, T* out, T* barycenter, void* workspace, size_t workspace_bytes,
                    cudaStream_t stream);

// Column sums of a known plan P_ij = exp(h_j + f_i / eps - C_ij / eps) with signed weights w (n):
// colsum_j = sum_i w_i P_ij (m), weighted_x_j = sum_i w_i P_ij x_i (m x d). h (m), f (n).
template <typename T>
size_t plan_colsum_workspace_bytes(int64_t n, int64_t m, int64_t d);
template <typename T>
cudaError_t plan_colsum(const T* x, const T* y, const T* h, const T* f, const T* weight, const T* center, int64_t n,
                        int64_t m, int64_t d, double eps, T* colsum, T* weighted_x, void* workspace,
                        size_t workspace_bytes, cudaStream_t stream);

// index_i = the first argmin_j |x_i - y_j|² (n, int64), sqdist_i = that squared distance (n, clamped at 0).
// With counts != nullptr, also ADDS the rows of x assigned to each row of y into sums (m x d; may be null only
// when d = 0) and their number into counts (m): zero both first for a plain k-means update.
template <typename T>
size_t nearest_workspace_bytes(int64_t n, int64_t m, int64_t d);
template <typename T>
cudaError_t nearest(const T* x, const T* y, const T* center, int64_t n, int64_t m, int64_t d, int64_t* index,
                    T* sqdist, T* sums, int64_t* counts, void* workspace, size_t workspace_bytes,
                    cudaStream_t stream);

// softmin_i = -eps log sum_j exp(h_j - cost_ij / eps) over a stored row-major cost (n x m).
template <typename T>
size_t softmin_stored_workspace_bytes(int64_t n, int64_t m);
template <typename T>
cudaError_t softmin_stored(const T* cost, const T* h, int64_t n, int64_t m, double eps, T* out, void* workspace,
                           size_t workspace_bytes, cudaStream_t stream);

}  // namespace cuda
}  // namespace lvf
