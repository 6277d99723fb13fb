// The scalar math of the CUDA kernels, as __host__ __device__ functions so a host program can check it against a
// plain double computation. Formulas and names mirror the CPU kernels (csrc/cpu/pairwise_cpu.cpp, pairwise.h,
// kernels_impl.cpp):
//
//   t_ij = bias_j - offset + scale * <x'_i, y'_j>                           log2 units, scale = s = log2(e) / eps
//   softmin:  bias_j = log2(e) h_j - s ½|y'_j|²,   softmin_i = ½|x'_i|² - eps ln2 (offset + m_i + log2 S_i)
//   plan:     bias_i = s (f_i - ½|x'_i|²) over the columns x, fixed row max m_j = s ½|y'_j|² - log2(e) h_j - offset
//   nearest:  bias_j = -½|y'_j|², scale 1, sqdist_i = max(0, |x'_i|² - 2 (offset + max_j t_ij))
// with S_i = sum_j w_j 2^(t_ij - m_i): an online running max m_i (FlashAttention-style) or a fixed one. Biases,
// norms and the offset (the largest finite bias) are computed in double; t, the sums and the dot products in T.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#define LVF_HD __host__ __device__ __forceinline__

namespace lvf {
namespace cuda {
namespace math {

constexpr double kLog2e = 1.4426950408889634;
constexpr double kLn2 = 0.6931471805599453;

template <typename T>
LVF_HD T neg_inf() {
  return T(-INFINITY);
}
template <typename T>
LVF_HD T pos_inf() {
  return T(INFINITY);
}

// exp2 in the working precision (with --use_fast_math the float one is the hardware ex2.approx: 2^-22 relative)
LVF_HD float exp2_(float v) { return exp2f(v); }
LVF_HD double exp2_(double v) { return exp2(v); }
LVF_HD float fma_(float a, float b, float c) { return fmaf(a, b, c); }
LVF_HD double fma_(double a, double b, double c) { return fma(a, b, c); }
template <typename T>
LVF_HD T max_(T a, T b) {
  return a > b ? a : b;
}

// out_r = alpha v_r + beta ½|z'_r|², in double like the CPU's set_bias lambdas. One prepass per point cloud
// evaluates it (v is h or f, or absent: then alpha is unused, so a masked -inf never meets a zero alpha).
struct Affine {
  double alpha, beta;
};
LVF_HD Affine softmin_column_bias(double eps) { return {kLog2e, -kLog2e / eps}; }  // log2(e) h_j - s ½|y'_j|²
LVF_HD Affine half_norm_only() { return {0.0, 1.0}; }                              // ½|x'_i|² (softmin rows)
LVF_HD Affine plan_column_bias(double eps) { return {kLog2e / eps, -kLog2e / eps}; }  // s (f_i - ½|x'_i|²)
LVF_HD Affine plan_row_max(double eps) { return {-kLog2e, kLog2e / eps}; }  // s ½|y'_j|² - log2(e) h_j
LVF_HD Affine nearest_column_bias() { return {0.0, -1.0}; }                 // -½|y'_j|²
LVF_HD Affine nearest_row_norm() { return {0.0, 2.0}; }                     // |x'_i|²

LVF_HD double apply_affine(Affine a, bool has_v, double v, double half_norm) {
  const double r = a.beta * half_norm;
  return has_v ? a.alpha * v + r : r;
}

// ---------------------------------------------------------------------------------------------- bias offset
// As the CPU's PackedColumns::set_bias: the largest finite column bias (offset) is subtracted from every bias, in
// double, before it is rounded to T, so a huge common part (every point masked with -1e5; f_i ~ 1e5 eps in a
// plan) cancels in double instead of in float32. The offset goes back in when the log2 sums are finished.
LVF_HD bool finite(double v) { return v > -INFINITY && v < INFINITY; }  // false for NaN too
// running max over the finite values only (-inf while there is none)
LVF_HD double finite_max(double acc, double v) { return finite(v) && v > acc ? v : acc; }
// the offset from that max: 0 when no bias is finite (every column masked with -inf)
LVF_HD double bias_offset(double max_finite) { return finite(max_finite) ? max_finite : 0.0; }
// a bias (or a plan's fixed row max) in the kernel's working precision, relative to the offset
template <typename T>
LVF_HD T relative_bias(double bias, double offset) {
  return T(bias - offset);
}

// log2 exponent of one pair: bias + scale * dot (one FMA, as the CPU micro-kernel with -ffp-contract=fast)
template <typename T>
LVF_HD T log2_exponent(T bias, T scale, T dot) {
  return fma_(scale, dot, bias);
}

// ---------------------------------------------------------------------------------------------- online max/sum
// Factor that rescales sums taken at max old_max to max new_max (new_max >= old_max). Nothing was accumulated
// while old_max is -inf, so return 0 there instead of 2^(-inf - -inf) = NaN.
template <typename T>
LVF_HD T rescale_factor(T old_max, T new_max) {
  return old_max == neg_inf<T>() ? T(0) : exp2_(old_max - new_max);
}

// One term 2^(t - max) of the running sum; 0 while every column so far is masked with -inf (max = -inf).
template <typename T>
LVF_HD T online_term(T t, T max) {
  return max == neg_inf<T>() ? T(0) : exp2_(t - max);
}

// sum_b 2^(t_b - max) over a block of exponents already covered by max; 0 while max is -inf
template <typename T, int N>
LVF_HD T online_block_sum(const T (&t)[N], T max) {
  if (max == neg_inf<T>()) return T(0);
  T s = T(0);
#if defined(__CUDA_ARCH__)  // host compilers warn on the pragma
#pragma unroll
#endif
  for (int b = 0; b < N; ++b) s += exp2_(t[b] - max);
  return s;
}

// Raise the running max to cover a block of exponents whose largest is block_max, rescaling the running sum.
// Returns the factor applied (1 when the max did not move) so vector sums kept beside it can follow.
template <typename T>
LVF_HD T online_raise_max(T& max, T& sum, T block_max) {
  if (block_max > max) {
    const T f = rescale_factor(max, block_max);
    sum *= f;
    max = block_max;
    return f;
  }
  return T(1);
}

// Merge partial (max, sum) pairs over disjoint column sets: the cross-thread reduction and the split combine.
// Symmetric to the bit (the two products are added in either order) so every lane of a shuffle tree agrees.
template <typename T>
LVF_HD void online_merge(T& max, T& sum, T other_max, T other_sum) {
  const T m = max_(max, other_max);
  sum = sum * rescale_factor(max, m) + other_sum * rescale_factor(other_max, m);
  max = m;
}

// softmin_i from the reduction: ½|x'_i|² - eps ln2 (offset + max + log2 sum), in double as on the CPU. An empty
// or all -inf row has max = -inf and sum = 0: -inf + -inf gives +inf, as -eps * torch.logsumexp does; never NaN.
template <typename T>
LVF_HD T softmin_value(double half_norm, T max, T sum, double eps, double offset) {
  return T(half_norm - eps * kLn2 * (offset + double(max) + log2(double(sum))));
}

// barycentre coordinate from the centred weighted sum: acc / sum + c (sum = 0 gives NaN, like torch.softmax)
template <typename T>
LVF_HD T barycenter_value(T acc, T sum, T center) {
  return acc / sum + center;
}

// ---------------------------------------------------------------------------------------------- fixed max (plan)
// w 2^(t - fixed_max): the plan entry times the weight. A row with h_j = -inf has fixed_max = +inf and no mass;
// test it so a +inf exponent (f_i = +inf) cannot make inf - inf = NaN.
template <typename T>
LVF_HD T fixed_term(T t, T fixed_max, T weight) {
  return fixed_max == pos_inf<T>() ? T(0) : weight * exp2_(t - fixed_max);
}

// weighted_x_j = acc_j + colsum_j c (the sums were taken over centred points)
template <typename T>
LVF_HD T uncentre_sum(T acc, T sum, T center) {
  return acc + sum * center;
}

// ---------------------------------------------------------------------------------------------- argmax
// Keep the first maximum: a strictly larger value wins, an equal one only with a smaller index (partials over
// disjoint column sets can then be merged in any order and still give the first argmax).
template <typename T, typename I>
LVF_HD void argmax_merge(T& best, I& index, T other_best, I other_index) {
  if (other_best > best || (other_best == best && other_index < index)) {
    best = other_best;
    index = other_index;
  }
}

// |x_i - y_j|² = |x'_i|² - 2 (<x'_i, y'_j> - ½|y'_j|²), the best t taken relative to the offset; clamped at 0
// like the CPU kernel
template <typename T>
LVF_HD T nearest_sqdist(double norm, T best, double offset) {
  const double v = norm - 2.0 * (double(best) + offset);
  return T(v > 0.0 ? v : 0.0);
}

}  // namespace math
}  // namespace cuda
}  // namespace lvf
