// Walking the set bits of bit-packed spikes (bit k & 7 of byte k >> 3 holds flat element k).
#pragma once

#include <cstdint>

namespace snnopt {
namespace cpu {

// Calls f(i) for every set bit i in [begin, end) of the packed bits, i relative to begin.
template <class F>
inline void for_each_bit(const uint8_t* bits, int64_t begin, int64_t end, F&& f) {
  for (int64_t byte = begin >> 3; byte <= (end - 1) >> 3 && begin < end; ++byte) {
    unsigned v = bits[byte];
    if (!v) continue;
    const int64_t base = byte << 3;
    if (base < begin) v &= ~0u << (begin - base);
    if (base + 8 > end) v &= (1u << (end - base)) - 1u;
    while (v) {
      const int bit = __builtin_ctz(v);
      f(base + bit - begin);
      v &= v - 1;
    }
  }
}

}  // namespace cpu
}  // namespace snnopt
