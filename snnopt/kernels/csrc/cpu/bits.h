// Reading bit-packed spikes (bit k & 7 of byte k >> 3 holds flat element k): walking the set
// bits, or taking 64 of them at once.
#pragma once

#include <cstdint>
#include <cstring>

namespace snnopt {
namespace cpu {

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

// Calls f(i) for every set bit i in [begin, end) of the nbytes bytes of packed bits, i
// relative to begin, in increasing order; 64 bits at a time.
template <class F>
inline void for_each_bit(const uint8_t* bits, int64_t nbytes, int64_t begin, int64_t end, F&& f) {
  for (int64_t k = begin; k < end; k += 64) {
    uint64_t word = bits64(bits, nbytes, k);
    if (end - k < 64) word &= (uint64_t(1) << (end - k)) - 1;
    while (word) {
      f(k - begin + __builtin_ctzll(word));
      word &= word - 1;
    }
  }
}

}  // namespace cpu
}  // namespace snnopt
