// CPU kernel of the sparse backward of a Linear -> LIF/IF layer through traces (DESIGN §1).
// With one decay beta, a subtractive or no reset and the reset detached, the input
// gradient is the decayed sum of the active-set gradients,
//
//   gI[b,t,:] = scale delta[b,t,:],   delta[b,t,j] = sum_{k >= t, (k,b,j) in A} beta^(k-t) g[k,b,j]
//
// (g = dL/ds f' on the active set A, dL/ds there being g_out's entries plus the tap's, one
// per entry; dL/dv_T one more entry at the last step), so no [T, B, N] tensor is needed:
//
//   dW[j, :]   = sum_{(t,b,j) in A} scale g[t,b,j] E[b,t,:],  E[b,t] = beta E[b,t-1] + x[b,t]
//   db[j]      = sum_{(t,b,j) in A} scale g[t,b,j] c[t],      c[t]   = beta c[t-1] + 1
//   dX[b,t,i]  = P[b,t,i] at the listed (b,t,i) only,         P[b,t] = beta P[b,t+1] + sum_{(t,b,j) in A} scale g W[j]
//   dv0[m]     = sum_{(t,m) in A} beta^(t+1) g[t,m]            (the carry left before step 0)
//
// E is the presynaptic trace (forward in time), P the input gradient carried backward in
// time; the work is |A| x K plus the trace updates, against spikes x N and a scan of every
// state for the input-gradient route.  The entries are bucketed by row, sample-major
// (key b T + t), so that each sample's steps are visited in memory order.  dW is computed
// in tiles of kTile = 64 input features: the tile's spikes of every row are first gathered
// into one 64-bit word per row, then each sample's trace of the tile is kept in registers
// while its steps pass, and the tile's [N, kTile] block of dW stays in cache.  dX is
// computed per sample, into [T x B, K] or, compact, one value per listed position.  Both
// split the work so that every output has one writer: the result does not depend on the
// thread count.
#include <ATen/Parallel.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <numeric>

#include "../ops.h"
#include "bits.h"
#include "vec.h"

namespace snnopt {
namespace cpu {
namespace {

constexpr int64_t kTile = 64;  // input features per dW tile: one 64-bit word of spikes per row

// Items grouped by key r in [0, R) (counting sort, stable): for s in [start[r], start[r + 1])
// the column col[s] and the value val[s].
template <typename V>
struct Buckets {
  std::vector<int64_t> start;
  std::vector<int32_t> col;
  std::vector<V> val;

  Buckets(int64_t R, const std::vector<int64_t>& keys, const std::vector<int32_t>& cols, const std::vector<V>& vals)
      : start(R + 1, 0), col(cols.size()), val(vals.size()) {
    for (int64_t r : keys) ++start[r + 1];
    std::partial_sum(start.begin(), start.end(), start.begin());
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (size_t a = 0; a < keys.size(); ++a) {
      const int64_t slot = fill[keys[a]]++;
      col[slot] = cols[a];
      val[slot] = vals[a];
    }
  }
};

// tr[k / L][k % L] += 1 for every set bit k of w: the 64 values of a tile as 0 / 1.
template <typename T>
inline void add_bits(Vec<T>* tr, uint64_t w) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t v = 0; v < kTile / L; ++v)
    for (int64_t l = 0; l < L; ++l) tr[v][l] += T((w >> (v * L + l)) & 1u);
}

#if defined(__AVX2__)
template <>
inline void add_bits<float>(Vec<float>* tr, uint64_t w) {  // per byte: a broadcast, an and, a compare
  const __m256i select = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256 one = _mm256_set1_ps(1.f);
  for (int v = 0; v < 8; ++v) {
    const __m256i byte = _mm256_set1_epi32(static_cast<int>((w >> (8 * v)) & 0xFFu));
    const __m256i hit = _mm256_cmpeq_epi32(_mm256_and_si256(byte, select), select);
    tr[v] += Vec<float>(_mm256_and_ps(_mm256_castsi256_ps(hit), one));
  }
}
#endif

// acc[j, :] += sum over the entries (t, b, j) of g E[b, t, tile] for one tile, from the
// tile's spike word of each row (words[b T + t]); acc is [N, kTile], zeroed by the caller;
// last[b] is sample b's last step with an entry.
template <typename T>
void trace_tile(const Buckets<T>& e, const uint64_t* words, const std::vector<int64_t>& last, int64_t T_, T beta,
                T* __restrict__ acc) {
  constexpr int64_t L = kLanes<T>, V = kTile / L;
  const int64_t B = static_cast<int64_t>(last.size());
  for (int64_t b = 0; b < B; ++b) {
    Vec<T> trace[V];
    for (int64_t v = 0; v < V; ++v) trace[v] = Vec<T>{};
    for (int64_t t = 0; t <= last[b]; ++t) {
      const int64_t r = b * T_ + t;
      for (int64_t v = 0; v < V; ++v) trace[v] *= beta;
      if (words[r]) add_bits<T>(trace, words[r]);
      for (int64_t s = e.start[r]; s < e.start[r + 1]; ++s) {
        T* row = acc + e.col[s] * kTile;
        const T g = e.val[s];
        for (int64_t v = 0; v < V; ++v) store(row + v * L, load(row + v * L) + g * trace[v]);
      }
    }
  }
}

template <typename T>
void weight_grad(const Buckets<T>& e, const uint8_t* bits, int64_t nbytes, const std::vector<int64_t>& last, int64_t T_,
                 int64_t N, int64_t K, T beta, T* dw) {
  const int64_t B = static_cast<int64_t>(last.size());
  at::parallel_for(0, (K + kTile - 1) / kTile, 1, [&](int64_t tile0, int64_t tile1) {
    std::vector<T> acc(N * kTile);
    std::vector<uint64_t> words(B * T_);
    for (int64_t tile = tile0; tile < tile1; ++tile) {
      const int64_t k0 = tile * kTile, w = std::min(kTile, K - k0);
      const uint64_t mask = w == kTile ? ~uint64_t(0) : (uint64_t(1) << w) - 1;
      for (int64_t t = 0; t < T_; ++t)  // the rows in memory order
        for (int64_t b = 0; b < B; ++b) words[b * T_ + t] = bits64(bits, nbytes, (t * B + b) * K + k0) & mask;
      std::fill(acc.begin(), acc.end(), T(0));
      trace_tile<T>(e, words.data(), last, T_, beta, acc.data());
      for (int64_t j = 0; j < N; ++j) std::copy(acc.data() + j * kTile, acc.data() + j * kTile + w, dw + j * K + k0);
    }
  });
}

// dX from P, per sample backward in time: at the listed positions (bucketed like the
// entries, col = i, val = the position in the list), into [T x B, K] or, if compact, into
// the list's order; everywhere when listed is null.
template <typename T>
void input_grad(const Buckets<T>& e, const Buckets<int32_t>* listed, bool compact, const std::vector<int64_t>& last,
                const T* w, int64_t T_, int64_t K, T beta, T* dx) {
  const int64_t B = static_cast<int64_t>(last.size());
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> carried(K);
    T* __restrict__ p = carried.data();
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(p, p + K, T(0));
      for (int64_t t = last[b]; t >= 0; --t) {
        const int64_t r = b * T_ + t;
        T* out = dx + (t * B + b) * K;
#pragma omp simd
        for (int64_t k = 0; k < K; ++k) p[k] *= beta;
        for (int64_t s = e.start[r]; s < e.start[r + 1]; ++s) {
          const T* __restrict__ wj = w + e.col[s] * K;
          const T g = e.val[s];
#pragma omp simd
          for (int64_t k = 0; k < K; ++k) p[k] += g * wj[k];
        }
        if (!listed)
          std::copy(p, p + K, out);
        else if (compact)
          for (int64_t s = listed->start[r]; s < listed->start[r + 1]; ++s) dx[listed->val[s]] = p[listed->col[s]];
        else
          for (int64_t s = listed->start[r]; s < listed->start[r + 1]; ++s) out[listed->col[s]] = p[listed->col[s]];
      }
    }
  });
}

}  // namespace

std::vector<at::Tensor> trace_linear_backward(const at::Tensor& g_out, const at::Tensor& g_tap, const at::Tensor& g_v,
                                              const at::Tensor& idx, const at::Tensor& sg, const at::Tensor& packed,
                                              const at::Tensor& weight, const at::Tensor& x_active, bool every_x,
                                              bool compact, int64_t steps, int64_t batch, double beta, double scale,
                                              const std::vector<bool>& needs) {
  const int64_t T_ = steps, N = weight.size(0), K = weight.size(1), B = batch, M = B * N, R = T_ * B;
  TORCH_CHECK(B > 0 && T_ > 0, "snnopt trace_linear_backward: ", T_, " steps of ", B, " samples");
  TORCH_CHECK(g_out.numel() == 0 || g_out.numel() == T_ * M, "snnopt trace_linear_backward: dL/ds has ", g_out.numel(),
              " values for ", T_, " x ", M, " states");
  TORCH_CHECK(g_tap.numel() == 0 || g_tap.numel() == idx.numel(), "snnopt trace_linear_backward: the tap has ",
              g_tap.numel(), " values for ", idx.numel(), " active entries");
  const bool need_x = needs[0], need_w = needs[1], need_b = needs[2], need_v0 = needs[3];
  TORCH_CHECK(!need_w || packed.numel() * 8 >= R * K, "snnopt trace_linear_backward: ", packed.numel(),
              " packed bytes for ", R, " x ", K, " inputs");
  auto empty = sg.new_empty({0});
  const std::vector<int64_t> dx_shape = compact ? std::vector<int64_t>{x_active.numel()} : std::vector<int64_t>{R, K};
  at::Tensor dX = need_x ? at::zeros(dx_shape, sg.options()) : empty;
  at::Tensor dW = need_w ? at::empty({N, K}, sg.options()) : empty;
  at::Tensor db = need_b ? at::zeros({N}, sg.options()) : empty;
  at::Tensor gv0 = need_v0 ? at::zeros({M}, sg.options()) : empty;
  AT_DISPATCH_FLOATING_TYPES(sg.scalar_type(), "snnopt_trace_linear_backward", [&] {
    using T = scalar_t;
    const T bt = T(beta), sc = T(scale);
    const int64_t n = idx.numel();
    const int32_t* ip = idx.data_ptr<int32_t>();
    const T *sgp = sg.data_ptr<T>(), *go = g_out.numel() ? g_out.data_ptr<T>() : nullptr;
    const T *tap = g_tap.numel() ? g_tap.data_ptr<T>() : nullptr, *gvp = g_v.numel() ? g_v.data_ptr<T>() : nullptr;

    // The entries (t, b, j) with g = dL/ds f' (dL/ds = g_out there + the tap), keyed b T + t,
    // and dL/dv_T at t = T - 1 (delta[T-1] = g[T-1] + dL/dv_T); the entry value is scale g.
    std::vector<int64_t> keys(n);
    std::vector<int32_t> cols(n);
    std::vector<T> g(n);
    const uint32_t M32 = static_cast<uint32_t>(M), N32 = static_cast<uint32_t>(N);  // int32 indices: 32-bit division
    at::parallel_for(0, n, 4096, [&](int64_t a0, int64_t a1) {                      // a gather: in parallel
      for (int64_t a = a0; a < a1; ++a) {
        const uint32_t flat = static_cast<uint32_t>(ip[a]), t = flat / M32, m = flat - t * M32, b = m / N32;
        const T ds = go && tap ? go[flat] + tap[a] : go ? go[flat] : tap ? tap[a] : T(0);
        keys[a] = int64_t(b) * T_ + t, cols[a] = static_cast<int32_t>(m - b * N32), g[a] = ds * sgp[a];
      }
    });
    for (int64_t m = 0; gvp && m < M; ++m)
      if (gvp[m] != T(0)) keys.push_back((m / N) * T_ + T_ - 1), cols.push_back(m % N), g.push_back(gvp[m]);
    const size_t count = keys.size();
    std::vector<T> vals(count);
    for (size_t a = 0; a < count; ++a) vals[a] = g[a] * sc;
    const Buckets<T> e(R, keys, cols, vals);
    std::vector<int64_t> last(B, -1);  // the last step of each sample with an entry
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = T_ - 1; t >= 0 && last[b] < 0; --t)
        if (e.start[b * T_ + t + 1] > e.start[b * T_ + t]) last[b] = t;

    if (need_v0) {
      std::vector<T> decay(T_ + 1, T(1));  // beta^t
      for (int64_t t = 1; t <= T_; ++t) decay[t] = decay[t - 1] * bt;
      T* v0p = gv0.data_ptr<T>();
      for (size_t a = 0; a < count; ++a) {
        const int64_t b = keys[a] / T_, t = keys[a] - b * T_;
        v0p[b * N + cols[a]] += g[a] * decay[t + 1];
      }
    }
    if (need_b) {
      T* bp = db.data_ptr<T>();
      T c = T(0);
      for (int64_t t = 0; t < T_; ++t) {
        c = bt * c + T(1);
        for (int64_t b = 0; b < B; ++b)
          for (int64_t s = e.start[b * T_ + t]; s < e.start[b * T_ + t + 1]; ++s) bp[e.col[s]] += e.val[s] * c;
      }
    }
    if (need_w) weight_grad<T>(e, packed.data_ptr<uint8_t>(), packed.numel(), last, T_, N, K, bt, dW.data_ptr<T>());
    if (need_x) {
      const auto w = weight.contiguous();
      if (every_x) {
        input_grad<T>(e, nullptr, false, last, w.data_ptr<T>(), T_, K, bt, dX.data_ptr<T>());
      } else {
        const int64_t nl = x_active.numel();
        const int32_t* xa = x_active.data_ptr<int32_t>();
        std::vector<int64_t> lkeys(nl);
        std::vector<int32_t> lcols(nl), position(nl);
        for (int64_t l = 0; l < nl; ++l) {
          const int64_t row = xa[l] / K;
          lkeys[l] = (row % B) * T_ + row / B, lcols[l] = static_cast<int32_t>(xa[l] % K);
          position[l] = static_cast<int32_t>(l);
        }
        const Buckets<int32_t> listed(R, lkeys, lcols, position);
        input_grad<T>(e, &listed, compact, last, w.data_ptr<T>(), T_, K, bt, dX.data_ptr<T>());
      }
    }
  });
  return {dX, dW, db, gv0};
}

}  // namespace cpu
}  // namespace snnopt
