// 32-byte vectors of float / double (GCC / Clang vector extension) for register-blocked
// loops, and the unaligned loads and stores that fill them.
#pragma once

#if defined(__FMA__)
#include <immintrin.h>
#endif

#include <cstdint>
#include <cstring>

namespace snnopt {
namespace cpu {

template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(32)));
};
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
constexpr int64_t kLanes = 32 / sizeof(T);

template <typename T>
inline Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void store(T* p, const Vec<T>& v) {
  std::memcpy(p, &v, sizeof(v));
}

// a * b + c for vectors V: one fused multiply-add (one rounding) where the CPU has it,
// else two operations.
template <typename V>
inline V fmadd(const V& a, const V& b, const V& c) {
  return a * b + c;
}
#if defined(__FMA__)
inline Vec<float> fmadd(const Vec<float>& a, const Vec<float>& b, const Vec<float>& c) {
  return Vec<float>(_mm256_fmadd_ps(__m256(a), __m256(b), __m256(c)));
}
inline Vec<double> fmadd(const Vec<double>& a, const Vec<double>& b, const Vec<double>& c) {
  return Vec<double>(_mm256_fmadd_pd(__m256d(a), __m256d(b), __m256d(c)));
}
#endif

}  // namespace cpu
}  // namespace snnopt
