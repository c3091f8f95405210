// CPU kernel of the sparse backward of a Linear -> LIF/IF layer through traces (DESIGN §1).
// With one decay beta, a subtractive or no reset and the reset detached, the input
// gradient is the decayed sum of the active-set gradients,
//
//   gI[b,t,:] = scale delta[b,t,:],   delta[b,t,j] = sum_{k >= t, (k,b,j) in A} beta^(k-t) g[k,b,j]
//
// (g = dL/ds f' on the active set A, dL/ds there being g_out's entries plus the tap's, one
// per entry; dL/dv_T one more entry at the last step), so no [T, B, N] tensor is needed:
//
//   dW[j, :]   = scale sum_{(t,b,j) in A} g[t,b,j] E[b,t,:],  E[b,t] = beta E[b,t-1] + x[b,t]
//   db[j]      = scale sum_{(t,b,j) in A} g[t,b,j] c[t],      c[t]   = beta c[t-1] + 1
//   dX[b,t,i]  = scale P[b,t,i] at the listed (b,t,i) only,   P[b,t] = beta P[b,t+1] + sum_{(t,b,j) in A} g W[j]
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
#include <vector>

#include "../ops.h"
#include "bits.h"
#include "divider.h"
#include "vec.h"

namespace snnopt {
namespace cpu {
namespace {

constexpr int64_t kTile = 64;  // input features per dW tile: one 64-bit word of spikes per row

// Items of a [T, B, W] layout given by their flat indices f, grouped by row, sample-major:
// row key r = b T + t; for s in [first[r], end[r]) the column col[s] = f % W and a value
// val[s].  The ops' active sets list the items of each (t, b) together (the scans emit
// them step by step, feature-ordered, within blocks of whole rows), so the groups are
// usually the runs of the list as it is: one pass finds them and nothing moves.  Only
// when a row comes back after another row (a block boundary inside a row, or listed
// entries in another order) are the items placed by a stable counting sort.
template <typename V>
struct Buckets {
  std::vector<int64_t> first, end;
  std::vector<int32_t> col;
  std::vector<V> val;

  // flat(a): item a's flat index; value(a): its value.
  template <class Flat, class Value>
  Buckets(int64_t T_, int64_t B, int64_t W, int64_t n, const Flat& flat, const Value& value)
      : first(T_ * B, 0), end(T_ * B, 0), col(n), val(n) {
    const Divider by_w(static_cast<uint32_t>(W)), by_b(static_cast<uint32_t>(B));
    const uint32_t T32 = static_cast<uint32_t>(T_), B32 = static_cast<uint32_t>(B), W32 = static_cast<uint32_t>(W);
    auto key_of = [&](uint32_t row) {
      const uint32_t t = by_b(row);
      return (row - t * B32) * T32 + t;
    };
    uint32_t lo = 1, hi = 0, key = 0;  // the current run: flat indices [lo, hi) of row key
    for (int64_t a = 0; a < n; ++a) {
      const uint32_t f = static_cast<uint32_t>(flat(a));
      if (f < lo || f >= hi) {
        if (a > 0) end[key] = a;
        const uint32_t row = by_w(f);
        key = key_of(row), lo = row * W32, hi = lo + W32;
        if (end[key] != 0) {  // the row came back
          sort(flat, value, key_of, by_w, W32);
          return;
        }
        first[key] = a;
      }
      col[a] = static_cast<int32_t>(f - lo);
      val[a] = value(a);
    }
    if (n > 0) end[key] = n;
  }

 private:
  template <class Flat, class Value, class KeyOf>
  void sort(const Flat& flat, const Value& value, const KeyOf& key_of, const Divider& by_w, uint32_t W32) {
    const int64_t R = static_cast<int64_t>(first.size()), n = static_cast<int64_t>(col.size());
    std::vector<uint32_t> keys(n);
    std::vector<int64_t> next(R + 1, 0);
    for (int64_t a = 0; a < n; ++a) ++next[(keys[a] = key_of(by_w(static_cast<uint32_t>(flat(a))))) + 1];
    for (int64_t r = 0; r < R; ++r) next[r + 1] += next[r];
    for (int64_t r = 0; r < R; ++r) first[r] = next[r], end[r] = next[r + 1];
    for (int64_t a = 0; a < n; ++a) {
      const uint32_t f = static_cast<uint32_t>(flat(a));
      const int64_t s = next[keys[a]]++;
      col[s] = static_cast<int32_t>(f - by_w(f) * W32);
      val[s] = value(a);
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
      for (int64_t s = e.first[r]; s < e.end[r]; ++s) {
        T* row = acc + e.col[s] * kTile;
        const T g = e.val[s];
        for (int64_t v = 0; v < V; ++v) store(row + v * L, load(row + v * L) + g * trace[v]);
      }
    }
  }
}

template <typename T>
void weight_grad(const Buckets<T>& e, const uint8_t* bits, int64_t nbytes, const std::vector<int64_t>& last, int64_t T_,
                 int64_t N, int64_t K, T beta, T scale, T* dw) {
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
      for (int64_t j = 0; j < N; ++j)
        for (int64_t k = 0; k < w; ++k) dw[j * K + k0 + k] = acc[j * kTile + k] * scale;
    }
  });
}

// P[:V L] = beta P[:V L] + sum_s g_s W[j_s, :V L] over one row's entries (columns col,
// values val), that chunk of P held in registers: one load and one store of it per row.
template <typename T, int64_t V>
inline void carry_chunk(T* __restrict__ p, const T* __restrict__ w, int64_t K, const int32_t* col, const T* val,
                        int64_t n, T beta) {
  constexpr int64_t L = kLanes<T>;
  Vec<T> acc[V];
  for (int64_t v = 0; v < V; ++v) acc[v] = load(p + v * L) * beta;
  for (int64_t s = 0; s < n; ++s) {
    const T* __restrict__ wj = w + int64_t(col[s]) * K;
    const Vec<T> g = Vec<T>{} + val[s];
    for (int64_t v = 0; v < V; ++v) acc[v] = fmadd(g, load(wj + v * L), acc[v]);
  }
  for (int64_t v = 0; v < V; ++v) store(p + v * L, acc[v]);
}

// dX from P, per sample backward in time: at the listed positions (bucketed like the
// entries, col = i, val = the position in the list), into [T x B, K] or, if compact, into
// the list's order; everywhere when listed is null.  P is updated a row at a time in
// chunks of 8 vectors, then vector by vector, then the last features one by one.
template <typename T>
void input_grad(const Buckets<T>& e, const Buckets<int32_t>* listed, bool compact, const std::vector<int64_t>& last,
                const T* w, int64_t T_, int64_t K, T beta, T scale, T* dx) {
  constexpr int64_t L = kLanes<T>, C = 8 * L;
  const int64_t B = static_cast<int64_t>(last.size()), chunked = K / C * C, vectored = K / L * L;
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> carried(K);
    T* __restrict__ p = carried.data();
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(p, p + K, T(0));
      for (int64_t t = last[b]; t >= 0; --t) {
        const int64_t r = b * T_ + t, s0 = e.first[r], n = e.end[r] - s0;
        const int32_t* col = e.col.data() + s0;
        const T* val = e.val.data() + s0;
        for (int64_t k = 0; k < chunked; k += C) carry_chunk<T, 8>(p + k, w + k, K, col, val, n, beta);
        for (int64_t k = chunked; k < vectored; k += L) carry_chunk<T, 1>(p + k, w + k, K, col, val, n, beta);
        for (int64_t k = vectored; k < K; ++k) {
          T acc = p[k] * beta;
          for (int64_t s = 0; s < n; ++s) acc += val[s] * w[int64_t(col[s]) * K + k];
          p[k] = acc;
        }
        T* out = dx + (t * B + b) * K;
        if (!listed)
          for (int64_t k = 0; k < K; ++k) out[k] = p[k] * scale;
        else if (compact)
          for (int64_t s = listed->first[r]; s < listed->end[r]; ++s) dx[listed->val[s]] = p[listed->col[s]] * scale;
        else
          for (int64_t s = listed->first[r]; s < listed->end[r]; ++s) out[listed->col[s]] = p[listed->col[s]] * scale;
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

    // The entries (t, b, j) with value g = dL/ds f' (dL/ds = g_out there + the tap), keyed
    // b T + t, and dL/dv_T at t = T - 1 (delta[T-1] = g[T-1] + dL/dv_T); the scale is
    // applied to the results.
    std::vector<int32_t> final_m;  // the states with dL/dv_T != 0
    for (int64_t m = 0; gvp && m < M; ++m)
      if (gvp[m] != T(0)) final_m.push_back(static_cast<int32_t>(m));
    const int64_t last_row = (T_ - 1) * M;
    const Buckets<T> e(
        T_, B, N, n + static_cast<int64_t>(final_m.size()),
        [&](int64_t a) { return a < n ? int64_t(ip[a]) : last_row + final_m[a - n]; },
        [&](int64_t a) {
          if (a >= n) return gvp[final_m[a - n]];
          const T ds = go && tap ? go[ip[a]] + tap[a] : go ? go[ip[a]] : tap ? tap[a] : T(0);
          return ds * sgp[a];
        });
    std::vector<int64_t> last(B, -1);  // the last step of each sample with an entry
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = T_ - 1; t >= 0 && last[b] < 0; --t)
        if (e.end[b * T_ + t] > e.first[b * T_ + t]) last[b] = t;

    if (need_v0) {  // dv0[b, j] = sum over b's entries (t, j) of g beta^(t+1)
      T* v0p = gv0.data_ptr<T>();
      for (int64_t b = 0; b < B; ++b) {
        T decay = bt;
        for (int64_t t = 0; t < T_; ++t, decay *= bt)
          for (int64_t s = e.first[b * T_ + t]; s < e.end[b * T_ + t]; ++s) v0p[b * N + e.col[s]] += e.val[s] * decay;
      }
    }
    if (need_b) {
      T* bp = db.data_ptr<T>();
      T c = T(0);
      for (int64_t t = 0; t < T_; ++t) {
        c = bt * c + T(1);
        for (int64_t b = 0; b < B; ++b)
          for (int64_t s = e.first[b * T_ + t]; s < e.end[b * T_ + t]; ++s) bp[e.col[s]] += e.val[s] * c;
      }
      for (int64_t j = 0; j < N; ++j) bp[j] *= sc;
    }
    if (need_w) weight_grad<T>(e, packed.data_ptr<uint8_t>(), packed.numel(), last, T_, N, K, bt, sc, dW.data_ptr<T>());
    if (need_x) {
      const auto w = weight.contiguous();
      if (every_x) {
        input_grad<T>(e, nullptr, false, last, w.data_ptr<T>(), T_, K, bt, sc, dX.data_ptr<T>());
      } else {
        const int32_t* xa = x_active.data_ptr<int32_t>();
        const Buckets<int32_t> listed(
            T_, B, K, x_active.numel(), [&](int64_t l) { return int64_t(xa[l]); },
            [](int64_t l) { return static_cast<int32_t>(l); });
        input_grad<T>(e, &listed, compact, last, w.data_ptr<T>(), T_, K, bt, sc, dX.data_ptr<T>());
      }
    }
  });
  return {dX, dW, db, gv0};
}

}  // namespace cpu
}  // namespace snnopt
