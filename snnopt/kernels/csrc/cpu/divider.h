// Division of 32-bit indices by a divisor fixed for a loop, without a divide instruction.
#pragma once

#include <cstdint>

namespace snnopt {
namespace cpu {

// n / d for 32-bit n and a fixed d > 0, by one 64 x 64 -> 128-bit multiply (Lemire, Kaser
// and Kurz 2019: exact for every 32-bit n).
class Divider {
 public:
  explicit Divider(uint32_t d) : magic_(d <= 1 ? 0 : UINT64_MAX / d + 1) {}  // (d = 0: no division to do)
  uint32_t operator()(uint32_t n) const {
    return magic_ ? static_cast<uint32_t>((static_cast<unsigned __int128>(magic_) * n) >> 64) : n;
  }

 private:
  uint64_t magic_;
};

}  // namespace cpu
}  // namespace snnopt
