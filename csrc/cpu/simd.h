// Portable SIMD vectors on GCC/Clang vector extensions.
//
// The same source is compiled once per instruction set (generic SSE2, AVX2+FMA, AVX-512) with different
// -m flags; LVF_VECTOR_BYTES picks the register width. No intrinsics: the compiler maps `a * b + c` to FMA
// (-ffp-contract=fast) and `cond ? a : b` to blends. Torch-free on purpose: these files compile in seconds.
#pragma once

#include <immintrin.h>

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
  // max/min through intrinsics: GCC lowers `a > b ? a : b` to compare + blend when one side is a constant
  static inline v max(v a, v b);
  static inline v min(v a, v b);
  // horizontal max / sum: shuffle trees through intrinsics (a scalar loop over 16 lanes costs ~4x more)
  static inline T hmax(v a);
  static inline T hsum(v a);
  // does any lane of a exceed b? (one compare and one mask test on x86)
  static inline bool any_greater(v a, v b);
};

#if LVF_VECTOR_BYTES == 64
#define LVF_PS(op) _mm512_##op##_ps
#define LVF_PD(op) _mm512_##op##_pd
#define LVF_FT __m512
#define LVF_DT __m512d
#elif LVF_VECTOR_BYTES == 32
#define LVF_PS(op) _mm256_##op##_ps
#define LVF_PD(op) _mm256_##op##_pd
#define LVF_FT __m256
#define LVF_DT __m256d
#else
#define LVF_PS(op) _mm_##op##_ps
#define LVF_PD(op) _mm_##op##_pd
#define LVF_FT __m128
#define LVF_DT __m128d
#endif
template <>
inline Vec<float>::v Vec<float>::max(v a, v b) {
  return (v)LVF_PS(max)(LVF_FT(a), LVF_FT(b));
}
template <>
inline Vec<float>::v Vec<float>::min(v a, v b) {
  return (v)LVF_PS(min)(LVF_FT(a), LVF_FT(b));
}
template <>
inline Vec<double>::v Vec<double>::max(v a, v b) {
  return (v)LVF_PD(max)(LVF_DT(a), LVF_DT(b));
}
template <>
inline Vec<double>::v Vec<double>::min(v a, v b) {
  return (v)LVF_PD(min)(LVF_DT(a), LVF_DT(b));
}
#undef LVF_PS
#undef LVF_PD
#undef LVF_FT
#undef LVF_DT

#if LVF_VECTOR_BYTES == 64
template <>
inline float Vec<float>::hmax(v a) { return _mm512_reduce_max_ps(__m512(a)); }
template <>
inline float Vec<float>::hsum(v a) { return _mm512_reduce_add_ps(__m512(a)); }
template <>
inline double Vec<double>::hmax(v a) { return _mm512_reduce_max_pd(__m512d(a)); }
template <>
inline double Vec<double>::hsum(v a) { return _mm512_reduce_add_pd(__m512d(a)); }
#elif LVF_VECTOR_BYTES == 32
template <>
inline float Vec<float>::hmax(v a) {
  __m128 r = _mm_max_ps(_mm256_castps256_ps128(__m256(a)), _mm256_extractf128_ps(__m256(a), 1));
  r = _mm_max_ps(r, _mm_movehl_ps(r, r));
  return _mm_cvtss_f32(_mm_max_ss(r, _mm_movehdup_ps(r)));
}
template <>
inline float Vec<float>::hsum(v a) {
  __m128 r = _mm_add_ps(_mm256_castps256_ps128(__m256(a)), _mm256_extractf128_ps(__m256(a), 1));
  r = _mm_add_ps(r, _mm_movehl_ps(r, r));
  return _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r)));
}
template <>
inline double Vec<double>::hmax(v a) {
  __m128d r = _mm_max_pd(_mm256_castpd256_pd128(__m256d(a)), _mm256_extractf128_pd(__m256d(a), 1));
  return _mm_cvtsd_f64(_mm_max_sd(r, _mm_unpackhi_pd(r, r)));
}
template <>
inline double Vec<double>::hsum(v a) {
  __m128d r = _mm_add_pd(_mm256_castpd256_pd128(__m256d(a)), _mm256_extractf128_pd(__m256d(a), 1));
  return _mm_cvtsd_f64(_mm_add_sd(r, _mm_unpackhi_pd(r, r)));
}
#else
template <>
inline float Vec<float>::hmax(v a) {
  __m128 r = _mm_max_ps(__m128(a), _mm_movehl_ps(__m128(a), __m128(a)));
  return _mm_cvtss_f32(_mm_max_ss(r, _mm_shuffle_ps(r, r, 1)));
}
template <>
inline float Vec<float>::hsum(v a) {
  __m128 r = _mm_add_ps(__m128(a), _mm_movehl_ps(__m128(a), __m128(a)));
  return _mm_cvtss_f32(_mm_add_ss(r, _mm_shuffle_ps(r, r, 1)));
}
template <>
inline double Vec<double>::hmax(v a) {
  return _mm_cvtsd_f64(_mm_max_sd(__m128d(a), _mm_unpackhi_pd(__m128d(a), __m128d(a))));
}
template <>
inline double Vec<double>::hsum(v a) {
  return _mm_cvtsd_f64(_mm_add_sd(__m128d(a), _mm_unpackhi_pd(__m128d(a), __m128d(a))));
}
#endif

template <>
inline bool Vec<float>::any_greater(v a, v b) {
#if LVF_VECTOR_BYTES == 64
  return _mm512_cmp_ps_mask(__m512(a), __m512(b), _CMP_GT_OQ) != 0;
#elif LVF_VECTOR_BYTES == 32
  return _mm256_movemask_ps(_mm256_cmp_ps(__m256(a), __m256(b), _CMP_GT_OQ)) != 0;
#else
  return _mm_movemask_ps(_mm_cmpgt_ps(__m128(a), __m128(b))) != 0;
#endif
}

template <>
inline bool Vec<double>::any_greater(v a, v b) {
#if LVF_VECTOR_BYTES == 64
  return _mm512_cmp_pd_mask(__m512d(a), __m512d(b), _CMP_GT_OQ) != 0;
#elif LVF_VECTOR_BYTES == 32
  return _mm256_movemask_pd(_mm256_cmp_pd(__m256d(a), __m256d(b), _CMP_GT_OQ)) != 0;
#else
  return _mm_movemask_pd(_mm_cmpgt_pd(__m128d(a), __m128d(b))) != 0;
#endif
}

// 2^x for a vector. Inputs below -125 are clamped: the result is a tiny normal number (< 2^-124), which adds
// nothing visible to a sum whose largest term is >= 1 (every use here) and is never a denormal.
// 2^x = 2^n * 2^f with n = round(x), f in [-1/2, 1/2]: Cephes exp2f polynomial for 2^f (about 1 ulp).
// Without AVX-512, rounding is the 1.5 * 2^23 trick, whose low mantissa bits already hold n, so n << 23 comes
// from them directly; HI_CLAMP = false skips the clamp at 127 for callers that guarantee x <= 32.
template <bool HI_CLAMP = true>
inline Vec<float>::v exp2(Vec<float>::v x) {
  using V = Vec<float>;
#if LVF_VECTOR_BYTES == 64
  // AVX-512: round with vrndscaleps and put the exponent back with vscalefps (no clamp needed above: vscalef
  // saturates to inf like a true exp2)
  const __m512 xc = _mm512_max_ps(__m512(x), _mm512_set1_ps(-125.0f));
  const __m512 n = _mm512_roundscale_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const V::v f = V::v(_mm512_sub_ps(xc, n));
#else
  V::v xc = V::max(x, V::set1(-125.0f));
  if (HI_CLAMP) xc = V::min(xc, V::set1(127.0f));
  const V::v magic = V::set1(12582912.0f);
  const V::v k = xc + magic;
  const V::v f = xc - (k - magic);
#endif
  V::v p = V::set1(1.535336188319500e-4f);
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
#if LVF_VECTOR_BYTES == 64
  return V::v(_mm512_scalef_ps(__m512(p), n));
#else
  return (V::v)((V::vi)p + ((V::vi)k << 23));
#endif
}

// double: same scheme with 1.5 * 2^52 and a degree-12 Taylor series of e^(f ln 2) (< 2e-16 relative).
template <bool HI_CLAMP = true>
inline Vec<double>::v exp2(Vec<double>::v x) {
  using V = Vec<double>;
#if LVF_VECTOR_BYTES == 64
  const __m512d xc = _mm512_max_pd(__m512d(x), _mm512_set1_pd(-1021.0));
  const __m512d n = _mm512_roundscale_pd(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const V::v f = V::v(_mm512_sub_pd(xc, n)) * 0.6931471805599453094;  // e^(f ln 2), f in [-1/2, 1/2]
#else
  V::v xc = V::max(x, V::set1(-1021.0));
  if (HI_CLAMP) xc = V::min(xc, V::set1(1023.0));
  const V::v magic = V::set1(6755399441055744.0);
  const V::v k = xc + magic;
  const V::v f = (xc - (k - magic)) * 0.6931471805599453094;  // e^(f ln 2), f in [-1/2, 1/2]
#endif
  V::v p = V::set1(1.0 / 479001600.0);  // 1/12!
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
#if LVF_VECTOR_BYTES == 64
  return V::v(_mm512_scalef_pd(__m512d(p), n));
#else
  return (V::v)((V::vi)p + ((V::vi)k << 52));
#endif
}

}  // namespace simd
}  // namespace lvf
