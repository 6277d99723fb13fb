// Portable SIMD vectors on GCC/Clang vector extensions.
//
// The same source is compiled once per instruction set (generic SSE2, AVX2+FMA, AVX-512) with different
// -m flags; LVF_VECTOR_BYTES picks the register width. No intrinsics: the compiler maps `a * b + c` to FMA
// (-ffp-contract=fast) and `cond ? a : b` to blends. Torch-free on purpose: these files compile in seconds.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#ifndef LVF_VECTOR_BYTES
#error "LVF_VECTOR_BYTES must be defined (16, 32 or 64)"
#endif

namespace lvf {
namespace simd {

template <typename T>
struct IntOf;
template <>
struct IntOf<float> {
  using type = int32_t;
};
template <>
struct IntOf<double> {
  using type = int64_t;
};

template <typename T>
struct Vec {
  static constexpr int W = LVF_VECTOR_BYTES / sizeof(T);
  using I = typename IntOf<T>::type;
  // `u` types have element alignment: loads and stores through them may be unaligned.
  typedef T v __attribute__((vector_size(LVF_VECTOR_BYTES)));
  typedef T vu __attribute__((vector_size(LVF_VECTOR_BYTES), aligned(sizeof(T))));
  typedef I vi __attribute__((vector_size(LVF_VECTOR_BYTES)));
  typedef I viu __attribute__((vector_size(LVF_VECTOR_BYTES), aligned(sizeof(I))));

  static inline v load(const T* p) { return *reinterpret_cast<const vu*>(p); }
  static inline void store(T* p, v a) { *reinterpret_cast<vu*>(p) = a; }
  static inline vi loadi(const I* p) { return *reinterpret_cast<const viu*>(p); }
  static inline void storei(I* p, vi a) { *reinterpret_cast<viu*>(p) = a; }
  static inline v set1(T s) { return v{} + s; }
  static inline vi set1i(I s) { return vi{} + s; }
  static inline vi iota() {
    vi r;
    for (int i = 0; i < W; ++i) r[i] = I(i);
    return r;
  }
  static inline v max(v a, v b) { return a > b ? a : b; }
  static inline v min(v a, v b) { return a < b ? a : b; }
  static inline T hmax(v a) {
    T r = a[0];
    for (int i = 1; i < W; ++i) r = a[i] > r ? a[i] : r;
    return r;
  }
  static inline T hsum(v a) {
    T r = a[0];
    for (int i = 1; i < W; ++i) r += a[i];
    return r;
  }
};

// 2^x for a vector, flushing to exactly 0 below the smallest normal exponent (masked points must add nothing).
// float: Cephes exp2f polynomial on [-0.5, 0.5] (about 1 ulp); double: degree-12 Taylor series (< 2e-16).
inline Vec<float>::v exp2(Vec<float>::v x) {
  using V = Vec<float>;
  const V::v lo = V::set1(-126.0f), hi = V::set1(127.0f);
  V::v xc = V::min(V::max(x, lo), hi);
  // round to nearest integer: adding and subtracting 1.5 * 2^23 (no -ffast-math, so this is kept)
  const V::v magic = V::set1(12582912.0f);
  V::v n = (xc + magic) - magic;
  V::v f = xc - n;
  V::v p = V::set1(1.535336188319500e-4f);
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  V::vi e = __builtin_convertvector(n, V::vi) << 23;
  V::v r = (V::v)((V::vi)p + e);
  return x < lo ? V::set1(0.0f) : r;
}

inline Vec<double>::v exp2(Vec<double>::v x) {
  using V = Vec<double>;
  const V::v lo = V::set1(-1022.0), hi = V::set1(1023.0);
  V::v xc = V::min(V::max(x, lo), hi);
  const V::v magic = V::set1(6755399441055744.0);
  V::v n = (xc + magic) - magic;
  V::v f = (xc - n) * 0.6931471805599453094;  // e^f with f in [-ln2/2, ln2/2]
  V::v p = V::set1(1.0 / 479001600.0);        // 1/12!
  p = p * f + 1.0 / 39916800.0;
  p = p * f + 1.0 / 3628800.0;
  p = p * f + 1.0 / 362880.0;
  p = p * f + 1.0 / 40320.0;
  p = p * f + 1.0 / 5040.0;
  p = p * f + 1.0 / 720.0;
  p = p * f + 1.0 / 120.0;
  p = p * f + 1.0 / 24.0;
  p = p * f + 1.0 / 6.0;
  p = p * f + 0.5;
  p = p * f + 1.0;
  p = p * f + 1.0;
  V::vi e = __builtin_convertvector(n, V::vi) << 52;
  V::v r = (V::v)((V::vi)p + e);
  return x < lo ? V::set1(0.0) : r;
}

}  // namespace simd
}  // namespace lvf
