// CPU kernels of the event-driven synapse: a Linear layer y = x W^T + b whose input x
// ([R, K], R = time x batch rows) is binary and sparse, kept bit-packed (bit k & 7 of
// byte k >> 3 holds the flat element k).
//
//   forward   y[r, :]  = b + sum_{i : x[r, i] = 1} W[:, i]             (one row of W^T per spike)
//   dW        dW[:, i] = sum_{r : x[r, i] = 1} g[r, :]                 (one row of g per spike)
//   dX        dX[r, i] = <g[r, :], W[:, i]>  only at the listed (r, i): zero elsewhere, or
//             one value per listed entry (compact); the caller takes the full dX = g W
//             from a matrix product
//
// so the work is proportional to the number of spikes (and of listed entries), not to
// R x K.  Rows are independent in the forward and in dX; dW is split over the input
// features i, each thread owning a block of rows of dW^T, so no two threads add to the
// same place and the result does not depend on the thread count.
//
// The backward of a Conv2d (groups 1) on a binary x [R, C, H, W] the same way, with
// y[r, o, p, q] = b[o] + sum_{c, i, j} W[o, c, i, j] x[r, c, p s + i d - pad, q s + j d - pad]
// (per axis stride s, dilation d, padding pad):
//
//   dW        dW[:, c, i, j] = sum over the spikes x[r, c, u, v] = 1 of g[r, :, p, q], (p, q)
//             the output the spike reaches through tap (i, j), if any
//   dX        dX[r, c, u, v] = sum_{i, j} <g[r, :, p, q], W[:, c, i, j]> at the listed (r, c, u, v)
//
// sample by sample, with g and W read channels-last (the O values of one position or of
// one tap contiguous), dW summed over fixed chunks of samples in chunk order.
#include <ATen/Parallel.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstring>
#include <functional>
#include <type_traits>

#include "../ops.h"
#include "bits.h"
#include "divider.h"
#include "vec.h"

namespace snnopt {
namespace cpu {
namespace {

// Bits (x[j] == 1) << j of eight values, and `bad` or-ed with a non-zero value where one
// of them is neither 0 nor 1 (NaN included).
template <typename T>
inline unsigned pack8(const T* p, unsigned& bad) {
  unsigned v = 0;
  for (int j = 0; j < 8; ++j) {
    v |= unsigned(p[j] == T(1)) << j;
    bad |= unsigned(p[j] != T(0)) & unsigned(p[j] != T(1));
  }
  return v;
}

#if defined(__AVX2__)
inline unsigned pack8(const float* p, unsigned& bad) {  // two compares and two movemasks
  const __m256 x = _mm256_loadu_ps(p);
  const unsigned one = _mm256_movemask_ps(_mm256_cmp_ps(x, _mm256_set1_ps(1.f), _CMP_EQ_OQ));
  const unsigned zero = _mm256_movemask_ps(_mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_EQ_OQ));
  bad |= (one | zero) ^ 0xFFu;
  return one;
}
#endif

template <typename T>
inline void add_row(T* __restrict__ dst, const T* __restrict__ src, int64_t n) {
  for (int64_t k = 0; k < n; ++k) dst[k] += src[k];
}

constexpr int64_t kVectors = 8;  // vectors of partial sums that sum_rows keeps in registers

// out[:w] = bias[:w] (or 0) + sum_s rows[idx[s] * stride + :w], in the order of idx: with
// w = kVectors vectors, the partial sums in registers; any other w (a last, narrower
// chunk) element by element.
template <typename T>
inline void sum_rows(T* out, const T* bias, const T* rows, int64_t stride, const int32_t* idx, int32_t n, int64_t w) {
  constexpr int64_t L = kLanes<T>;
  static_assert(sizeof(Vec<T>) == L * sizeof(T), "one vector holds kLanes values");
  if (w != kVectors * L) {
    for (int64_t k = 0; k < w; ++k) out[k] = bias ? bias[k] : T(0);
    for (int32_t s = 0; s < n; ++s) add_row(out, rows + idx[s] * stride, w);
    return;
  }
  Vec<T> acc[kVectors];
  for (int64_t v = 0; v < kVectors; ++v) acc[v] = bias ? load(bias + v * L) : Vec<T>{};
  for (int32_t s = 0; s < n; ++s) {
    const T* row = rows + idx[s] * stride;
    for (int64_t v = 0; v < kVectors; ++v) acc[v] += load(row + v * L);
  }
  std::memcpy(out, acc, sizeof(acc));
}

// <a, b> over n values, with eight partial sums (so that it vectorises).
template <typename T>
inline T dot(const T* __restrict__ a, const T* __restrict__ b, int64_t n) {
  T acc[8] = {};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[k + j] * b[k + j];
  for (; k < n; ++k) acc[0] += a[k] * b[k];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

constexpr int64_t kBlock = 32;  // rows and columns of a transposed block

#if defined(__AVX2__)
// An 8 x 8 block of floats (rows ldi apart) written transposed (rows ldo apart): eight
// loads, twelve shuffles, eight stores.
inline void transpose8(const float* in, float* out, int64_t ldi, int64_t ldo) {
  __m256 r[8], t[8], s[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(in + i * ldi);
  for (int i = 0; i < 8; i += 2)
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]), t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  for (int i = 0; i < 8; i += 4)
    for (int j = 0; j < 2; ++j) {
      s[i + 2 * j] = _mm256_shuffle_ps(t[i + j], t[i + j + 2], 0x44);
      s[i + 2 * j + 1] = _mm256_shuffle_ps(t[i + j], t[i + j + 2], 0xEE);
    }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(out + i * ldo, _mm256_permute2f128_ps(s[i], s[i + 4], 0x20));
    _mm256_storeu_ps(out + (i + 4) * ldo, _mm256_permute2f128_ps(s[i], s[i + 4], 0x31));
  }
}
#endif

// out[k * N + n] = in[n * K + k] for the block n in [n0, n1), k in [k0, k1).
template <typename T>
inline void transpose_block(const T* in, T* out, int64_t N, int64_t K, int64_t n0, int64_t n1, int64_t k0, int64_t k1) {
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {
    if (n1 - n0 == kBlock && k1 - k0 == kBlock) {
      for (int64_t n = n0; n < n1; n += 8)
        for (int64_t k = k0; k < k1; k += 8) transpose8(in + n * K + k, out + k * N + n, K, N);
      return;
    }
  }
#endif
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t k = k0; k < k1; ++k) out[k * N + n] = in[n * K + k];
}

// w [N, K] -> w^T [K, N] contiguous, in blocks of 32 x 32 (8 x 8 by vector shuffles where
// the CPU has them): several times faster than a strided copy, which for a weight matrix
// costs as much as the event-driven product itself.
at::Tensor transposed(const at::Tensor& weight) {
  const auto w = weight.contiguous();
  const int64_t N = w.size(0), K = w.size(1);
  auto out = at::empty({K, N}, w.options());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "snnopt_transposed", [&] {
    using T = scalar_t;
    const T* in = w.data_ptr<T>();
    T* o = out.data_ptr<T>();
    at::parallel_for(0, (K + kBlock - 1) / kBlock, 4, [&](int64_t b0, int64_t b1) {
      for (int64_t k0 = b0 * kBlock; k0 < std::min(K, b1 * kBlock); k0 += kBlock)
        for (int64_t n0 = 0; n0 < N; n0 += kBlock)
          transpose_block(in, o, N, K, n0, std::min(N, n0 + kBlock), k0, std::min(K, k0 + kBlock));
    });
  });
  return out;
}

}  // namespace

std::vector<at::Tensor> pack_spikes(const at::Tensor& x) {
  const int64_t n = x.numel();
  auto packed = at::empty({(n + 7) / 8}, x.options().dtype(at::kByte));
  int64_t count = -1;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "snnopt_pack_spikes", [&] {
    using T = scalar_t;
    const T* xp = x.data_ptr<T>();
    uint8_t* pp = packed.data_ptr<uint8_t>();
    const int64_t full = n / 8;
    // Each byte is written by one task (8 elements), so the packing needs no atomics; the
    // reduction counts the ones and the tasks that saw a value neither 0 nor 1 (NaN included).
    using Acc = std::pair<int64_t, int64_t>;  // {ones, tasks with a value not binary}
    const Acc total = at::parallel_reduce(
        0, full, 8192, Acc{0, 0},
        [&](int64_t b0, int64_t b1, Acc acc) {
          unsigned bad = 0;
          for (int64_t byte = b0; byte < b1; ++byte) {
            const unsigned v = pack8(xp + byte * 8, bad);
            pp[byte] = static_cast<uint8_t>(v);
            acc.first += __builtin_popcount(v);
          }
          acc.second += bad != 0;
          return acc;
        },
        [](Acc a, Acc b) { return Acc{a.first + b.first, a.second + b.second}; });
    Acc tail{0, 0};
    if (n % 8) {  // the last, partial byte
      T last[8] = {};
      std::copy(xp + full * 8, xp + n, last);
      unsigned bad = 0;
      const unsigned v = pack8(last, bad);
      pp[full] = static_cast<uint8_t>(v);
      tail = {__builtin_popcount(v), bad != 0};
    }
    if (total.second + tail.second == 0) count = total.first + tail.first;
  });
  if (count < 0) return {x.new_empty({0}, x.options().dtype(at::kByte)), at::scalar_tensor(-1, at::kLong)};
  return {packed, at::scalar_tensor(count, at::kLong)};
}

at::Tensor count_spikes(const at::Tensor& packed) {
  const uint8_t* bits = packed.data_ptr<uint8_t>();
  const int64_t ones = at::parallel_reduce(
      0, packed.numel(), 65536, int64_t(0),
      [&](int64_t b, int64_t e, int64_t acc) {
        for (; b + 8 <= e; b += 8) {  // eight bytes at a time
          uint64_t word;
          std::memcpy(&word, bits + b, 8);
          acc += __builtin_popcountll(word);
        }
        for (; b < e; ++b) acc += __builtin_popcount(bits[b]);
        return acc;
      },
      std::plus<int64_t>());
  return at::scalar_tensor(ones, at::kLong);
}

at::Tensor time_mean_bits(const at::Tensor& packed, int64_t steps, int64_t M, const at::Tensor& like) {
  TORCH_CHECK(steps >= 0 && M >= 0 && packed.numel() * 8 >= steps * M, "snnopt time_mean_bits: ", packed.numel(),
              " packed bytes for ", steps, " x ", M, " inputs");
  auto out = at::empty({M}, like.options());
  AT_DISPATCH_FLOATING_TYPES(like.scalar_type(), "snnopt_time_mean_bits", [&] {
    using T = scalar_t;
    const uint8_t* bits = packed.data_ptr<uint8_t>();
    const int64_t nbytes = packed.numel();
    T* op = out.data_ptr<T>();
    // Each thread counts the ones of a range of elements, walking their bits step by step.
    at::parallel_for(0, M, 4096, [&](int64_t m0, int64_t m1) {
      std::vector<int32_t> count(m1 - m0);
      for (int64_t t = 0; t < steps; ++t)
        for_each_bit(bits, nbytes, t * M + m0, t * M + m1, [&](int64_t j) { ++count[j]; });
      for (int64_t m = m0; m < m1; ++m) op[m] = T(count[m - m0]) / T(steps);  // a sum of ones is exact
    });
  });
  return out;
}

at::Tensor unpack_spikes(const at::Tensor& packed, int64_t n, const at::Tensor& like) {
  auto x = at::empty({n}, like.options());
  AT_DISPATCH_FLOATING_TYPES(like.scalar_type(), "snnopt_unpack_spikes", [&] {
    const uint8_t* pp = packed.data_ptr<uint8_t>();
    scalar_t* xp = x.data_ptr<scalar_t>();
    at::parallel_for(0, n, 32768, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) xp[k] = scalar_t((pp[k >> 3] >> (k & 7)) & 1);
    });
  });
  return x;
}

at::Tensor event_linear(const at::Tensor& packed, int64_t rows, const at::Tensor& weight, const at::Tensor& bias) {
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK(packed.numel() * 8 >= rows * K, "snnopt event_linear: ", packed.numel(), " packed bytes for ", rows,
              " x ", K, " inputs");
  const auto wt = transposed(weight);  // [K, N]: the weights leaving input i, contiguous
  auto y = at::empty({rows, N}, weight.options());
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "snnopt_event_linear", [&] {
    using T = scalar_t;
    const uint8_t* bits = packed.data_ptr<uint8_t>();
    const int64_t nbytes = packed.numel();
    const T *wp = wt.data_ptr<T>(), *bp = bias.numel() ? bias.data_ptr<T>() : nullptr;
    T* yp = y.data_ptr<T>();
    at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
      std::vector<int32_t> spikes(K);
      for (int64_t r = r0; r < r1; ++r) {
        int32_t n = 0;
        for_each_bit(bits, nbytes, r * K, (r + 1) * K, [&](int64_t i) { spikes[n++] = static_cast<int32_t>(i); });
        for (int64_t c0 = 0; c0 < N; c0 += kVectors * kLanes<T>)
          sum_rows(yp + r * N + c0, bp ? bp + c0 : nullptr, wp + c0, N, spikes.data(), n,
                   std::min(kVectors * kLanes<T>, N - c0));
      }
    });
  });
  return y;
}

std::vector<at::Tensor> event_linear_backward(const at::Tensor& g, const at::Tensor& packed, const at::Tensor& weight,
                                              const at::Tensor& x_active, bool compact,
                                              const std::vector<bool>& needs) {
  const int64_t R = g.size(0), N = weight.size(0), K = weight.size(1);
  const bool need_x = needs[0], need_w = needs[1], need_b = needs[2];
  auto empty = g.new_empty({0});
  at::Tensor dX = empty, dW = empty, db = need_b ? g.sum(0) : empty;
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "snnopt_event_linear_backward", [&] {
    using T = scalar_t;
    const T* gp = g.data_ptr<T>();
    if (need_w) {
      TORCH_CHECK(packed.numel() * 8 >= R * K, "snnopt event_linear_backward: ", packed.numel(), " packed bytes for ",
                  R, " x ", K, " inputs");
      auto dwt = at::zeros({K, N}, g.options());
      const uint8_t* bits = packed.data_ptr<uint8_t>();
      const int64_t nbytes = packed.numel();
      T* dp = dwt.data_ptr<T>();
      at::parallel_for(0, K, 8, [&](int64_t i0, int64_t i1) {
        for (int64_t r = 0; r < R; ++r)
          for_each_bit(bits, nbytes, r * K + i0, r * K + i1,
                       [&](int64_t i) { add_row(dp + (i0 + i) * N, gp + r * N, N); });
      });
      dW = transposed(dwt);
    }
    if (need_x) {
      dX = compact ? at::empty({x_active.numel()}, g.options()) : at::zeros({R, K}, g.options());
      const auto wt = transposed(weight);
      const T* wp = wt.data_ptr<T>();
      const int32_t* ap = x_active.data_ptr<int32_t>();
      T* xp = dX.data_ptr<T>();
      const Divider by_k(static_cast<uint32_t>(K));
      at::parallel_for(0, x_active.numel(), 256, [&](int64_t a0, int64_t a1) {
        for (int64_t a = a0; a < a1; ++a) {
          const uint32_t flat = static_cast<uint32_t>(ap[a]), r = by_k(flat), i = flat - r * static_cast<uint32_t>(K);
          xp[compact ? a : flat] = dot(gp + r * N, wp + i * N, N);
        }
      });
    }
  });
  return {dX, dW, db};
}

namespace {

// reach[u * k + i]: the output coordinate that input coordinate u (of n_in) reaches through
// tap i (of k) of a convolution with stride s, padding pad and dilation d (n_out outputs),
// or -1 if none.
std::vector<int32_t> reach_table(int64_t n_in, int64_t k, int64_t s, int64_t pad, int64_t d, int64_t n_out) {
  std::vector<int32_t> reach(n_in * k, -1);
  for (int64_t u = 0; u < n_in; ++u)
    for (int64_t i = 0; i < k; ++i) {
      const int64_t a = u + pad - i * d;
      if (a >= 0 && a % s == 0 && a / s < n_out) reach[u * k + i] = static_cast<int32_t>(a / s);
    }
  return reach;
}

}  // namespace

std::vector<at::Tensor> event_conv2d_backward(const at::Tensor& g, const at::Tensor& packed, const at::Tensor& weight,
                                              int64_t H, int64_t W, const std::vector<int64_t>& stride,
                                              const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation,
                                              const at::Tensor& x_active, bool compact,
                                              const std::vector<bool>& needs) {
  const int64_t R = g.size(0), O = g.size(1), Ho = g.size(2), Wo = g.size(3), P = Ho * Wo;
  const int64_t C = weight.size(1), KH = weight.size(2), KW = weight.size(3), HW = H * W, taps = C * KH * KW;
  TORCH_CHECK(weight.size(0) == O && stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "snnopt event_conv2d_backward: a weight [", O, ", C, kh, kw] and two strides, paddings and dilations");
  const bool need_x = needs[0], need_w = needs[1], need_b = needs[2];
  TORCH_CHECK(!need_w || packed.numel() * 8 >= R * C * HW, "snnopt event_conv2d_backward: ", packed.numel(),
              " packed bytes for ", R, " x ", C, " x ", H, " x ", W, " inputs");
  const auto rows = reach_table(H, KH, stride[0], padding[0], dilation[0], Ho);
  const auto cols = reach_table(W, KW, stride[1], padding[1], dilation[1], Wo);
  // Fixed chunks of samples, each with its own partial dW, summed in chunk order: the
  // result does not depend on the thread count, and each sample's gradient is read once.
  const int64_t chunks = std::min<int64_t>(R, 16);
  auto empty = g.new_empty({0});
  at::Tensor dX = empty, dW = empty, db = need_b ? g.sum({0, 2, 3}) : empty;
  at::Tensor partial = need_w ? at::zeros({chunks, taps, O}, g.options()) : empty;
  if (need_x) dX = compact ? at::empty({x_active.numel()}, g.options()) : at::zeros({R, C, H, W}, g.options());
  // The listed positions grouped by sample (stable counting sort).
  const int64_t n_listed = need_x ? x_active.numel() : 0;
  const int32_t* ap = need_x ? x_active.data_ptr<int32_t>() : nullptr;
  std::vector<int64_t> first(R + 1, 0);
  std::vector<int32_t> order(n_listed);
  const Divider by_sample(static_cast<uint32_t>(C * HW));
  for (int64_t a = 0; a < n_listed; ++a) {
    TORCH_CHECK(ap[a] >= 0 && ap[a] < R * C * HW, "snnopt event_conv2d_backward: listed position ", ap[a],
                " outside the ", R * C * HW, " inputs");
    ++first[by_sample(static_cast<uint32_t>(ap[a])) + 1];
  }
  for (int64_t r = 0; r < R; ++r) first[r + 1] += first[r];
  {
    std::vector<int64_t> next(first.begin(), first.end() - 1);
    for (int64_t a = 0; a < n_listed; ++a)
      order[next[by_sample(static_cast<uint32_t>(ap[a]))]++] = static_cast<int32_t>(a);
  }
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "snnopt_event_conv2d_backward", [&] {
    using T = scalar_t;
    const auto gcont = g.contiguous();
    const T* gp = gcont.data_ptr<T>();
    const auto wt = need_x ? weight.permute({1, 2, 3, 0}).contiguous() : empty;  // [C, KH, KW, O]
    const T* wp = need_x ? wt.data_ptr<T>() : nullptr;
    T* xp = need_x ? dX.data_ptr<T>() : nullptr;
    T* pp = need_w ? partial.data_ptr<T>() : nullptr;
    const uint8_t* bits = packed.data_ptr<uint8_t>();
    const int64_t nbytes = packed.numel();
    const Divider by_w(static_cast<uint32_t>(W)), by_hw(static_cast<uint32_t>(HW));
    at::parallel_for(0, chunks, 1, [&](int64_t k0, int64_t k1) {
      std::vector<T> gt(P * O);  // one sample's gradient, channels-last: [Ho Wo, O]
      for (int64_t k = k0; k < k1; ++k) {
        T* dwt = need_w ? pp + k * taps * O : nullptr;  // [C, KH, KW, O]
        for (int64_t r = R * k / chunks; r < R * (k + 1) / chunks; ++r) {
          const T* gr = gp + r * O * P;
          for (int64_t o = 0; o < O; ++o)
            for (int64_t q = 0; q < P; ++q) gt[q * O + o] = gr[o * P + q];
          auto g_at = [&](int64_t p, int64_t q) { return gt.data() + (p * Wo + q) * O; };
          if (need_w)
            for (int64_t c = 0; c < C; ++c)
              for_each_bit(bits, nbytes, (r * C + c) * HW, (r * C + c + 1) * HW, [&](int64_t f) {
                const int64_t u = by_w(static_cast<uint32_t>(f)), v = f - u * W;
                for (int64_t i = 0; i < KH; ++i) {
                  const int64_t p = rows[u * KH + i];
                  if (p < 0) continue;
                  T* tap_row = dwt + (c * KH + i) * KW * O;
                  for (int64_t j = 0; j < KW; ++j) {
                    const int64_t q = cols[v * KW + j];
                    if (q >= 0) add_row(tap_row + j * O, g_at(p, q), O);
                  }
                }
              });
          for (int64_t s = first[r]; s < first[r + 1]; ++s) {
            const int64_t a = order[s], f = ap[a] - r * C * HW, c = by_hw(static_cast<uint32_t>(f)),
                          u = by_w(static_cast<uint32_t>(f - c * HW)), v = f - c * HW - u * W;
            T acc = T(0);
            for (int64_t i = 0; i < KH; ++i) {
              const int64_t p = rows[u * KH + i];
              if (p < 0) continue;
              for (int64_t j = 0; j < KW; ++j) {
                const int64_t q = cols[v * KW + j];
                if (q >= 0) acc += dot(g_at(p, q), wp + ((c * KH + i) * KW + j) * O, O);
              }
            }
            xp[compact ? a : ap[a]] = acc;
          }
        }
      }
    });
  });
  if (need_w) dW = partial.sum(0).reshape({C, KH, KW, O}).permute({3, 0, 1, 2}).contiguous();
  return {dX, dW, db};
}

}  // namespace cpu
}  // namespace snnopt
