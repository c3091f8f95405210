// 32-byte vectors of float / double (GCC / Clang vector extension) for register-blocked
// loops, and the unaligned loads and stores that fill them.
#pragma once

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

}  // namespace cpu
}  // namespace snnopt
