// CPU kernel of the sparse backward of a Linear -> LIF/IF layer through traces (DESIGN §1).
// With one decay beta, a subtractive or no reset and the reset detached, the input
// gradient is the decayed sum of the active-set gradients,
//
//   gI[b,t,:] = scale delta[b,t,:],   delta[b,t,j] = sum_{k >= t, (k,b,j) in A} beta^(k-t) g[k,b,j]
//
// (g = dL/ds f' on the active set A, dL/dv_T one more entry at the last step), so no
// [T, B, N] tensor is needed:
//
//   dW[j, :]   = sum_{(t,b,j) in A} scale g[t,b,j] E[b,t,:],  E[b,t] = beta E[b,t-1] + x[b,t]
//   db[j]      = sum_{(t,b,j) in A} scale g[t,b,j] c[t],      c[t]   = beta c[t-1] + 1
//   dX[b,t,i]  = P[b,t,i] at the listed (b,t,i) only,         P[b,t] = beta P[b,t+1] + sum_{(t,b,j) in A} scale g W[j]
//   dv0[m]     = sum_{(t,m) in A} beta^(t+1) g[t,m]            (the carry left before step 0)
//
// E is the presynaptic trace (forward in time), P the input gradient carried backward in
// time; the work is |A| x K plus the trace updates, against spikes x N and a scan of every
// state for the input-gradient route.  The entries are bucketed by row (t, b).  dW is
// computed in tiles of kTile input features, each tile's [N, kTile] block of dW and its
// trace staying in cache while all the entries pass; dX per sample.  Both split the work
// so that every output has one writer: the result does not depend on the thread count.
#include <ATen/Parallel.h>

#include <algorithm>
#include <numeric>

#include "../ops.h"
#include "bits.h"

namespace snnopt {
namespace cpu {
namespace {

constexpr int64_t kTile = 64;

// Items grouped by row r = t B + b (counting sort): for s in [start[r], start[r + 1]) the
// column col[s] and the value val[s] (val empty when no values are given).
template <typename T>
struct Buckets {
  std::vector<int64_t> start;
  std::vector<int32_t> col;
  std::vector<T> val;

  Buckets(int64_t R, const std::vector<int64_t>& rows, const std::vector<int32_t>& cols, const std::vector<T>& vals)
      : start(R + 1, 0), col(cols.size()), val(vals.size()) {
    for (int64_t r : rows) ++start[r + 1];
    std::partial_sum(start.begin(), start.end(), start.begin());
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (size_t a = 0; a < rows.size(); ++a) {
      const int64_t slot = fill[rows[a]]++;
      col[slot] = cols[a];
      if (!vals.empty()) val[slot] = vals[a];
    }
  }
};

// acc[j, :w] += sum over the entries (t, b, j) of g E[b, t, k0 : k0 + w], w = W or, for W = 0,
// width; acc is [N, w], zeroed by the caller; last[b] is sample b's last step with an entry.
template <typename T, int64_t W>
void trace_tile(const Buckets<T>& e, const uint8_t* bits, const std::vector<int64_t>& last, int64_t K, int64_t k0,
                int64_t width, T beta, T* __restrict__ acc) {
  const int64_t w = W ? W : width, B = static_cast<int64_t>(last.size());
  T trace[kTile];
  for (int64_t b = 0; b < B; ++b) {
    if (last[b] < 0) continue;
    std::fill(trace, trace + w, T(0));
    for (int64_t t = 0; t <= last[b]; ++t) {
      const int64_t r = t * B + b;
#pragma omp simd
      for (int64_t k = 0; k < w; ++k) trace[k] *= beta;
      for_each_bit(bits, r * K + k0, r * K + k0 + w, [&](int64_t i) { trace[i] += T(1); });
      for (int64_t s = e.start[r]; s < e.start[r + 1]; ++s) {
        T* __restrict__ row = acc + e.col[s] * w;
        const T g = e.val[s];
#pragma omp simd
        for (int64_t k = 0; k < w; ++k) row[k] += g * trace[k];
      }
    }
  }
}

template <typename T>
void weight_grad(const Buckets<T>& e, const uint8_t* bits, const std::vector<int64_t>& last, int64_t N, int64_t K,
                 T beta, T* dw) {
  at::parallel_for(0, (K + kTile - 1) / kTile, 1, [&](int64_t tile0, int64_t tile1) {
    std::vector<T> acc(N * kTile);
    for (int64_t tile = tile0; tile < tile1; ++tile) {
      const int64_t k0 = tile * kTile, w = std::min(kTile, K - k0);
      std::fill(acc.begin(), acc.end(), T(0));
      if (w == kTile)
        trace_tile<T, kTile>(e, bits, last, K, k0, w, beta, acc.data());
      else
        trace_tile<T, 0>(e, bits, last, K, k0, w, beta, acc.data());
      for (int64_t j = 0; j < N; ++j) std::copy(acc.data() + j * w, acc.data() + (j + 1) * w, dw + j * K + k0);
    }
  });
}

// dX from P, per sample backward in time: at the listed positions (bucketed by row, col = i),
// or everywhere when listed is null.
template <typename T>
void input_grad(const Buckets<T>& e, const Buckets<T>* listed, const std::vector<int64_t>& last, const T* w, int64_t K,
                T beta, T* dx) {
  const int64_t B = static_cast<int64_t>(last.size());
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> carried(K);
    T* __restrict__ p = carried.data();
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(p, p + K, T(0));
      for (int64_t t = last[b]; t >= 0; --t) {
        const int64_t r = t * B + b;
#pragma omp simd
        for (int64_t k = 0; k < K; ++k) p[k] *= beta;
        for (int64_t s = e.start[r]; s < e.start[r + 1]; ++s) {
          const T* __restrict__ wj = w + e.col[s] * K;
          const T g = e.val[s];
#pragma omp simd
          for (int64_t k = 0; k < K; ++k) p[k] += g * wj[k];
        }
        if (!listed)
          std::copy(p, p + K, dx + r * K);
        else
          for (int64_t s = listed->start[r]; s < listed->start[r + 1]; ++s)
            dx[r * K + listed->col[s]] = p[listed->col[s]];
      }
    }
  });
}

}  // namespace

std::vector<at::Tensor> trace_linear_backward(const at::Tensor& g_out, const at::Tensor& g_v, const at::Tensor& idx,
                                              const at::Tensor& sg, const at::Tensor& packed, const at::Tensor& weight,
                                              const at::Tensor& x_active, bool every_x, int64_t batch, double beta,
                                              double scale, const std::vector<bool>& needs) {
  const int64_t T_ = g_out.size(0), M = g_out.size(1), N = weight.size(0), K = weight.size(1), B = batch, R = T_ * B;
  TORCH_CHECK(B > 0 && N * B == M, "snnopt trace_linear_backward: ", M, " states are not ", B, " rows of ", N,
              " neurons");
  const bool need_x = needs[0], need_w = needs[1], need_b = needs[2], need_v0 = needs[3];
  TORCH_CHECK(!need_w || packed.numel() * 8 >= R * K, "snnopt trace_linear_backward: ", packed.numel(),
              " packed bytes for ", R, " x ", K, " inputs");
  auto empty = g_out.new_empty({0});
  at::Tensor dX = need_x ? at::zeros({R, K}, g_out.options()) : empty;
  at::Tensor dW = need_w ? at::empty({N, K}, g_out.options()) : empty;
  at::Tensor db = need_b ? at::zeros({N}, g_out.options()) : empty;
  at::Tensor gv0 = need_v0 ? at::zeros({M}, g_out.options()) : empty;
  AT_DISPATCH_FLOATING_TYPES(g_out.scalar_type(), "snnopt_trace_linear_backward", [&] {
    using T = scalar_t;
    const T bt = T(beta), sc = T(scale);
    const int64_t n = idx.numel();
    const int32_t* ip = idx.data_ptr<int32_t>();
    const T *sgp = sg.data_ptr<T>(), *go = g_out.data_ptr<T>(), *gvp = g_v.numel() ? g_v.data_ptr<T>() : nullptr;

    // The entries (t, m = b N + j, g), and dL/dv_T at t = T - 1 (delta[T-1] = g[T-1] + dL/dv_T).
    std::vector<int64_t> step(n), state(n);
    std::vector<T> g(n);
    at::parallel_for(0, n, 4096, [&](int64_t a0, int64_t a1) {  // a gather: in parallel
      for (int64_t a = a0; a < a1; ++a) step[a] = ip[a] / M, state[a] = ip[a] % M, g[a] = go[ip[a]] * sgp[a];
    });
    for (int64_t m = 0; gvp && m < M; ++m)
      if (gvp[m] != T(0)) step.push_back(T_ - 1), state.push_back(m), g.push_back(gvp[m]);
    const size_t count = step.size();
    std::vector<int64_t> rows(count);
    std::vector<int32_t> cols(count);
    std::vector<T> vals(count);
    for (size_t a = 0; a < count; ++a)
      rows[a] = step[a] * B + state[a] / N, cols[a] = static_cast<int32_t>(state[a] % N), vals[a] = g[a] * sc;
    const Buckets<T> e(R, rows, cols, vals);
    std::vector<int64_t> last(B, -1);  // the last step of each sample with an entry
    for (int64_t r = 0; r < R; ++r)
      if (e.start[r + 1] > e.start[r]) last[r % B] = r / B;

    if (need_v0) {
      std::vector<T> decay(T_ + 1, T(1));  // beta^t
      for (int64_t t = 1; t <= T_; ++t) decay[t] = decay[t - 1] * bt;
      T* v0p = gv0.data_ptr<T>();
      for (size_t a = 0; a < count; ++a) v0p[state[a]] += g[a] * decay[step[a] + 1];
    }
    if (need_b) {
      T* bp = db.data_ptr<T>();
      T c = T(0);
      for (int64_t t = 0; t < T_; ++t) {
        c = bt * c + T(1);
        for (int64_t s = e.start[t * B]; s < e.start[(t + 1) * B]; ++s) bp[e.col[s]] += e.val[s] * c;
      }
    }
    if (need_w) weight_grad<T>(e, packed.data_ptr<uint8_t>(), last, N, K, bt, dW.data_ptr<T>());
    if (need_x) {
      const auto w = weight.contiguous();
      if (every_x) {
        input_grad<T>(e, nullptr, last, w.data_ptr<T>(), K, bt, dX.data_ptr<T>());
      } else {
        const int64_t nl = x_active.numel();
        const int32_t* xa = x_active.data_ptr<int32_t>();
        std::vector<int64_t> lrows(nl);
        std::vector<int32_t> lcols(nl);
        for (int64_t l = 0; l < nl; ++l) lrows[l] = xa[l] / K, lcols[l] = static_cast<int32_t>(xa[l] % K);
        const Buckets<T> listed(R, lrows, lcols, {});
        input_grad<T>(e, &listed, last, w.data_ptr<T>(), K, bt, dX.data_ptr<T>());
      }
    }
  });
  return {dX, dW, db, gv0};
}

}  // namespace cpu
}  // namespace snnopt
