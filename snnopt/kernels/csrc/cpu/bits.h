// Reading bit-packed spikes (bit k & 7 of byte k >> 3 holds flat element k): walking the set
// bits, or taking 64 of them at once.
#pragma once

#include <cstdint>
#include <cstring>

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

// The 64 bits from bit `begin` on (bit k of the result = flat element begin + k), zeros past
// the nbytes bytes of the packed bits.
inline uint64_t bits64(const uint8_t* bits, int64_t nbytes, int64_t begin) {
  const int64_t byte = begin >> 3;
  const int shift = static_cast<int>(begin & 7);
  uint64_t word = 0;
  if (byte + 9 <= nbytes) {
    std::memcpy(&word, bits + byte, 8);
    return shift ? (word >> shift) | (uint64_t(bits[byte + 8]) << (64 - shift)) : word;
  }
  for (int64_t k = byte; k < nbytes && k < byte + 8; ++k) word |= uint64_t(bits[k]) << (8 * (k - byte));
  return (word >> shift) | (shift && byte + 8 < nbytes ? uint64_t(bits[byte + 8]) << (64 - shift) : 0);
}

}  // namespace cpu
}  // namespace snnopt
