// CUDA kernels of the fused neuron ops (snnopt::cuda, declared in ../ops.h).
//
// One thread per element m scans t = 0..T-1 (backward: T-1..0) with the state in
// registers; sequences are [T, M], so step t of element m is x[t * M + m] and a warp's
// loads and stores are coalesced.  The scans read their sequences a window of steps at a
// time (kAhead forward, kBackAhead backward; the next window's loads issued
// before the current one is computed), so each thread keeps several loads in flight instead
// of waiting out the memory latency once per step.  The scalar math is that of ../neuron.h, in the
// reference's order of floating-point operations: with --fmad=false the forward equals
// snnopt/kernels/reference bit for bit.  Float and double are dispatched.

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>
#include <cub/device/device_scan.cuh>
#include <limits>
#include <optional>
#include <vector>

#include "../neuron.h"
#include "../ops.h"

namespace snnopt {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kAhead = 8;  // steps per window of prefetched loads

// ---------------------------------------------------------------------------- device side

// Steps t0 + d * j (j = 0 .. W - 1; d = 1 forward, -1 backward) of element m of the [steps, M]
// sequence p into w; zero outside 0 .. steps - 1 or when p is null.
template <int W, typename T>
__device__ __forceinline__ void load_window(const T* __restrict__ p, int64_t t0, int d, int64_t steps, int64_t M,
                                            int64_t m, T (&w)[W]) {
#pragma unroll
  for (int j = 0; j < W; ++j) {
    const int64_t t = t0 + d * j;
    w[j] = p && t >= 0 && t < steps ? __ldg(p + t * M + m) : T(0);
  }
}

template <int W, typename T>
__device__ __forceinline__ void copy_window(const T (&from)[W], T (&to)[W]) {
#pragma unroll
  for (int j = 0; j < W; ++j) to[j] = from[j];
}

// step(t, k, x_t) for t = 0 .. steps - 1 (k = t M + m, the flat index), x read in windows of
// kAhead steps, the next window's loads issued before the current window's steps run.
template <typename T, typename Step>
__device__ __forceinline__ void forward_steps(const T* __restrict__ x, int64_t steps, int64_t M, int64_t m,
                                              Step&& step) {
  T xs[kAhead], next[kAhead];
  load_window(x, 0, 1, steps, M, m, next);
  for (int64_t t0 = 0; t0 < steps; t0 += kAhead) {
    copy_window(next, xs);
    load_window(x, t0 + kAhead, 1, steps, M, m, next);
#pragma unroll
    for (int j = 0; j < kAhead; ++j) {
      if (t0 + j >= steps) break;
      step(t0 + j, (t0 + j) * M + m, xs[j]);
    }
  }
}

// A parameter array of F values (element m reads index m % F); F == 0 when it is absent.
template <typename T>
struct Param {
  const T* p;
  int64_t n;
  __device__ T at(int64_t m, T absent) const { return n ? p[m % n] : absent; }
};

// snnTorch Synaptic's input-discarding zero reset (next-step timing, sparse op only):
// h_t = (b v + cc + in_t) (1 - r_t), evaluated as h - h r_t like the eager step.
SNN_HD bool discards(const Cfg& c) { return c.discards_input && c.next() && c.reset == ZERO; }

// The reset gates of the sparse backward exist for a reset to a fixed value.
SNN_HD bool gated(const Cfg& c) { return c.spiking() && c.reset == ZERO; }

// One element's neuron: its parameters and carried state (v: state, i: current).
template <typename T>
struct Neuron {
  Cfg c;
  T b, cc, alpha, theta;
  T v, i;

  // h_t from x_t: current filter (I_t into `total`), input scale, charge.
  __device__ T charge(T x, T& total) {
    T inp = x;
    if (c.has_current()) {
      inp = current_step(c, i, x, alpha);
      total = inp;
    }
    inp = scaled_input(c, inp);
    if (discards(c)) {
      const T r = heaviside(v - theta, c.fire_ge);
      const T h = b * v + cc + inp;
      return h - h * r;
    }
    return snnopt::charge(c, v, b, cc, inp, theta);
  }

  // out_t = s_t = H(h_t - theta) (h_t for non-spiking kinds); the carried state becomes
  // h_t (next-step reset) or R(h_t, s_t).
  __device__ T fire(T h) {
    if (!c.spiking()) {
      v = h;
      return h;
    }
    const T s = heaviside(h - theta, c.fire_ge);
    v = c.timing == NEXT ? h : post_reset(c, h, s, theta);
    return s;
  }

  // r_t = H(v_{t-1} - theta), the pending reset before the charge of step t.
  __device__ bool pending() const { return heaviside(v - theta, c.fire_ge) != T(0); }
};

// The inputs of a forward scan.
template <typename T>
struct ScanIn {
  Cfg c;
  const T* x;   // [steps, M]
  const T* v0;  // [M] or null (zeros)
  const T* i0;  // [M] or null (zeros)
  Param<T> b, cc, alpha, theta;
  int64_t steps, M;

  __device__ Neuron<T> neuron(int64_t m) const {
    return Neuron<T>{
        c, b.at(m, T(1)), cc.at(m, T(0)), alpha.at(m, T(0)), theta.at(m, T(0)), v0 ? v0[m] : T(0), i0 ? i0[m] : T(0)};
  }
};

__device__ int64_t element() { return blockIdx.x * int64_t(blockDim.x) + threadIdx.x; }

// Dense forward: out_t, v_T, i_T, and per step when present v_seq_t (state after step t),
// h_t (membrane) and i_seq_t = I_t.
template <typename T>
__global__ void dense_forward_kernel(ScanIn<T> in, T* out, T* v_T, T* i_T, T* v_seq, T* h_seq, T* i_seq) {
  const int64_t m = element();
  if (m >= in.M) return;
  Neuron<T> n = in.neuron(m);
  forward_steps(in.x, in.steps, in.M, m, [&](int64_t, int64_t k, T x) {
    T total = T(0);
    const T h = n.charge(x, total);
    out[k] = n.fire(h);
    if (v_seq) v_seq[k] = n.v;
    if (h_seq) h_seq[k] = h;
    if (i_seq) i_seq[k] = total;
  });
  v_T[m] = n.v;
  if (i_T) i_T[m] = n.i;
}

// Rate statistics: the forward plus kappa_t = scale c_t + J(h_{t-1}) kappa_{t-1}
// (c_t = 1 + alpha c_{t-1} for current kinds, else 1; kappa_0 = scale c_0),
// rate = mean_t out_t, elig = mean_t kappa_t f'(h_t - theta) (mean_t kappa_t without spikes)
// and, when v_seq is recorded, v_bar = mean_t v_t, elig_v = mean_t (dv_t/dh_t) kappa_t.
template <typename T>
__global__ void rate_stats_kernel(ScanIn<T> in, T* out, T* v_T, T* i_T, T* v_seq, T* rate, T* elig, T* v_bar,
                                  T* elig_v) {
  const int64_t m = element();
  if (m >= in.M) return;
  const Cfg& c = in.c;
  Neuron<T> n = in.neuron(m);
  const T scale = T(c.scale);
  const bool record = v_bar != nullptr;
  T h_prev = T(0), cur_k = T(0), kappa = T(0), e = T(0), e_v = T(0), out_sum = T(0), v_sum = T(0);
  forward_steps(in.x, in.steps, in.M, m, [&](int64_t t, int64_t k, T x) {
    T total = T(0);
    const T h = n.charge(x, total);
    const T o = n.fire(h);
    out[k] = o;
    cur_k = c.has_current() ? T(1) + n.alpha * cur_k : T(1);
    kappa = t == 0 ? scale * cur_k : scale * cur_k + state_jacobian(c, h_prev, n.b, n.theta) * kappa;
    e = e + (c.spiking() ? kappa * sg_at(c, h - n.theta) : kappa);
    if (record) {
      v_seq[k] = n.v;
      e_v = e_v + state_derivative(c, h, n.theta) * kappa;
      v_sum = v_sum + n.v;
    }
    out_sum = out_sum + o;
    h_prev = h;
  });
  const T steps = T(in.steps);
  v_T[m] = n.v;
  if (i_T) i_T[m] = n.i;
  rate[m] = out_sum / steps;
  elig[m] = e / steps;
  if (record) {
    v_bar[m] = v_sum / steps;
    elig_v[m] = e_v / steps;
  }
}

// |h - theta| < band: the active set of the sparse backward (NaN is never active).
template <typename T>
__device__ bool active(T h, T theta, T band) {
  const T u = h - theta;
  return (u < T(0) ? -u : u) < band;
}

// Sparse forward: the dense outputs, and when saving, the number of active steps of each
// element (counts[m]) and the reset gates q_t (s_t for same-step reset, r_t for next-step)
// as bits: flat index k sets bit k % 32 of 32-bit word k / 32, which on the little-endian
// GPU is bit k % 8 of byte k / 8 (the layout of reference.sparse.pack_bits).
template <typename T>
__global__ void sparse_forward_kernel(ScanIn<T> in, T band, T* out, T* v_T, T* i_T, T* v_seq, int32_t* counts,
                                      unsigned int* gate_words) {
  const int64_t m = element();
  if (m >= in.M) return;
  Neuron<T> n = in.neuron(m);
  const bool same = in.c.timing == SAME;
  int32_t count = 0;
  forward_steps(in.x, in.steps, in.M, m, [&](int64_t, int64_t k, T x) {
    const bool r = !same && gate_words && n.pending();
    T total = T(0);
    const T h = n.charge(x, total);
    const T o = n.fire(h);
    out[k] = o;
    if (v_seq) v_seq[k] = n.v;
    if (counts) count += active(h, n.theta, band);
    if (gate_words && (same ? o != T(0) : r)) atomicOr(gate_words + (k >> 5), 1u << (k & 31));
  });
  v_T[m] = n.v;
  if (i_T) i_T[m] = n.i;
  if (counts) counts[m] = count;
}

// Compaction of the active set: the scan is recomputed (bit-identical) and element m
// writes its active flat indices t * M + m and f'(h - theta) from position ends[m - 1].
template <typename T>
__global__ void active_set_kernel(ScanIn<T> in, T band, const int32_t* ends, int32_t* idx, T* sg) {
  const int64_t m = element();
  if (m >= in.M) return;
  int32_t pos = m ? ends[m - 1] : 0;
  if (pos == ends[m]) return;
  Neuron<T> n = in.neuron(m);
  forward_steps(in.x, in.steps, in.M, m, [&](int64_t, int64_t k, T x) {
    T total = T(0);
    const T h = n.charge(x, total);
    n.fire(h);
    if (active(h, n.theta, band)) {
      idx[pos] = static_cast<int32_t>(k);
      sg[pos] = sg_at(in.c, h - n.theta);
      ++pos;
    }
  });
}

// The inputs of the dense backward.
template <typename T>
struct DenseBackIn {
  Cfg c;
  const T *g_out, *g_v, *g_i, *g_vseq;  // null: zero gradient
  const T *h, *i_seq, *v0, *i0;
  Param<T> b, alpha, theta;
  int64_t steps, M;
};

// One element's state in the exact BPTT sweep (reference.dense.scan_backward): the carried
// gradient dL/dp_t (same-step reset) or dL/dh_t (next-step), the reverse current filter, and
// the element's sums of the beta / alpha / theta gradients (wanted: gb / ga / gth).
template <typename T>
struct BackElement {
  T b, alpha, th, v0, i0;
  T carry, gi_acc, acc_b, acc_a, acc_th;

  __device__ BackElement(const DenseBackIn<T>& in, int64_t m)
      : b(in.b.at(m, T(1))),
        alpha(in.alpha.at(m, T(0))),
        th(in.theta.at(m, T(0))),
        v0(in.v0 ? in.v0[m] : T(0)),
        i0(in.i0 ? in.i0[m] : T(0)),
        carry(in.g_v ? in.g_v[m] : T(0)),
        gi_acc(in.g_i ? in.g_i[m] : T(0)),
        acc_b(T(0)),
        acc_a(T(0)),
        acc_th(T(0)) {}

  // Step t (flat index k) back: dL/dx_t from dL/dout_t (go), dL/dv_seq_t (gvs), h_t, h_{t-1}.
  __device__ T step(const DenseBackIn<T>& in, int64_t t, int64_t k, T go, T gvs, T ht, T h_prev, bool gb, bool ga,
                    bool gth) {
    const Cfg& c = in.c;
    const T v_rest = T(c.v_rest), v_reset = T(c.v_reset);
    const bool nxt = c.next(), nd = !c.detach;
    if (in.g_vseq) carry = carry + gvs;
    T gh;
    if (!c.spiking()) {
      gh = go + carry;
    } else {
      const T u = ht - th;
      const T sp = sg_at(c, u);
      if (nxt) {
        gh = go * sp + carry;
        acc_th = acc_th - go * sp;
      } else {
        const T s = heaviside(u, c.fire_ge);
        T dpdh = T(1), dpds = T(0);
        if (c.reset == SUBTRACT) {
          dpds = -th;
        } else if (c.reset == ZERO) {
          dpdh = T(1) - s;
          dpds = v_reset - ht;
        }
        T gu = go;
        if (nd && c.reset != NONE) gu = gu + carry * dpds;
        gh = gu * sp + carry * dpdh;
        acc_th = acc_th - gu * sp;
        if (c.reset == SUBTRACT) acc_th = acc_th - carry * s;
      }
    }
    if (nxt) {
      const T u_p = h_prev - th;
      const T s_p = heaviside(u_p, c.fire_ge);
      if (gth) {
        if (c.reset == SUBTRACT) acc_th = acc_th - gh * s_p;
        if (nd) {
          const T drho_ds = c.reset == SUBTRACT ? th : b * (h_prev - v_reset);
          acc_th = acc_th + gh * drho_ds * sg_at(c, u_p);
        }
      }
      if (gb) {
        T dbeta = h_prev - v_rest;
        if (c.reset == ZERO) dbeta = dbeta - s_p * (h_prev - v_reset);
        acc_b = acc_b + gh * dbeta;
      }
    } else if (gb) {
      const T p_prev = (t == 0 || !c.spiking()) ? h_prev : post_reset(c, h_prev, heaviside(h_prev - th, c.fire_ge), th);
      acc_b = acc_b + gh * (p_prev - v_rest);
    }
    T gin = c.scale != 1.0 ? gh * T(c.scale) : gh;
    if (c.has_current()) {
      if (c.decay_after) {
        if (ga) acc_a = acc_a + gi_acc * in.i_seq[k];
        gin = gin + alpha * gi_acc;
        gi_acc = gin;
      } else {
        gin = gin + gi_acc;
        if (ga) acc_a = acc_a + gin * (t > 0 ? in.i_seq[k - in.M] : i0);
        gi_acc = alpha * gin;
      }
    }
    carry = nxt ? gh * state_jacobian(c, h_prev, b, th) : b * gh;
    return gin;
  }
};

// Steps per window of the backward scans, and their register budget: at most 64 registers a
// thread for float (four blocks of kThreads on an SM; more registers, fewer resident threads,
// and the backward, which waits on two sequences, was measured slower), 128 for double.
constexpr int kBackAhead = 4;
template <typename T>
constexpr int kBackBlocks = sizeof(T) == 4 ? 4 : 2;

// Exact BPTT; Vseq: a gradient for the recorded states arrives (g_vseq).  Null outputs are
// not needed.
template <typename T, bool Vseq>
__global__ void __launch_bounds__(kThreads, kBackBlocks<T>)
    dense_backward_kernel(DenseBackIn<T> in, T* gx, T* gv0, T* gi0, T* gb, T* ga, T* gth) {
  constexpr int W = kBackAhead;
  const int64_t m = element();
  if (m >= in.M) return;
  BackElement<T> e(in, m);
  // Windows of W steps from t0 down; h_{t-1} of a window's last step is the next window's first h.
  constexpr int WV = Vseq ? W : 1;
  T go_w[W], h_w[W], gvs_w[WV], go_n[W], h_n[W], gvs_n[WV];
  load_window(in.g_out, in.steps - 1, -1, in.steps, in.M, m, go_n);
  load_window(in.h, in.steps - 1, -1, in.steps, in.M, m, h_n);
  if (Vseq) load_window(in.g_vseq, in.steps - 1, -1, in.steps, in.M, m, gvs_n);
  for (int64_t t0 = in.steps - 1; t0 >= 0; t0 -= W) {
    copy_window(go_n, go_w);
    copy_window(h_n, h_w);
    load_window(in.g_out, t0 - W, -1, in.steps, in.M, m, go_n);
    load_window(in.h, t0 - W, -1, in.steps, in.M, m, h_n);
    if (Vseq) {
      copy_window(gvs_n, gvs_w);
      load_window(in.g_vseq, t0 - W, -1, in.steps, in.M, m, gvs_n);
    }
#pragma unroll
    for (int j = 0; j < W; ++j) {
      const int64_t t = t0 - j;
      if (t < 0) break;
      const int64_t k = t * in.M + m;
      const T h_prev = t == 0 ? e.v0 : j + 1 < W ? h_w[j + 1] : h_n[0];
      const T gvs = Vseq ? gvs_w[Vseq ? j : 0] : T(0);
      const T gin = e.step(in, t, k, go_w[j], gvs, h_w[j], h_prev, gb, ga, gth);
      if (gx) gx[k] = gin;
    }
  }
  if (gv0) gv0[m] = e.carry;
  if (gi0) gi0[m] = e.gi_acc;
  if (gb) gb[m] = e.acc_b;
  if (ga) ga[m] = e.acc_a;
  if (gth) gth[m] = e.acc_th;
}

// g[idx_j] = (g_out[idx_j] + tap_j) * sg_j: the output gradient (either part may be absent)
// through the surrogate, kept on the active set (g is zero elsewhere; the indices are
// distinct).
template <typename T>
__global__ void scatter_active_kernel(const int32_t* idx, const T* sg, int64_t nnz, const T* g_out, const T* tap,
                                      int64_t numel, T* g) {
  const int64_t j = element();
  if (j >= nnz) return;
  const int32_t k = idx[j];
  CUDA_KERNEL_ASSERT(k >= 0 && k < numel);
  const T ds = g_out && tap ? g_out[k] + tap[j] : g_out ? g_out[k] : tap ? tap[j] : T(0);
  g[k] = ds * sg[j];
}

// The inputs of the sparse backward.
template <typename T>
struct SparseBackIn {
  Cfg c;
  const T* g;                   // [steps, M]: g_out * f' on the active set, else 0
  const T *g_v, *g_i, *g_vseq;  // null: zero gradient
  const uint8_t* gates;         // bit-packed q_t, null unless gated
  Param<T> b, alpha;
  int64_t steps, M;
};

// Sparse backward (reference.sparse): with keep_t = 1 - q_t and C the carried gradient,
//   same: delta_t = g_t + keep_t C,  C <- b delta_t;   next: delta_t = g_t + C,  C <- b keep_t delta_t
// (keep_t = 1 without gates), C += g_vseq_t first; dL/dv_0 = C.  The input gradient is
// scale * delta_t (times 1 - r_t for an input-discarding reset) through the reverse current
// filter: before: gI = g_in + D, D <- alpha gI;  after: gI = g_in + alpha D, D <- gI.
template <typename T>
__global__ void __launch_bounds__(kThreads, kBackBlocks<T>)
    sparse_backward_kernel(SparseBackIn<T> in, T* gx, T* gv0, T* gi0) {
  const int64_t m = element();
  if (m >= in.M) return;
  const Cfg& c = in.c;
  const T b = in.b.at(m, T(1)), alpha = in.alpha.at(m, T(0));
  const bool same = c.timing == SAME, gate_input = discards(c), filter = gx || gi0;
  T carry = in.g_v ? in.g_v[m] : T(0);
  T d = in.g_i ? in.g_i[m] : T(0);
  T g_w[kBackAhead], gvs_w[kBackAhead], g_n[kBackAhead], gvs_n[kBackAhead];
  load_window(in.g, in.steps - 1, -1, in.steps, in.M, m, g_n);
  load_window(in.g_vseq, in.steps - 1, -1, in.steps, in.M, m, gvs_n);
  for (int64_t t0 = in.steps - 1; t0 >= 0; t0 -= kBackAhead) {
    copy_window(g_n, g_w);
    copy_window(gvs_n, gvs_w);
    load_window(in.g, t0 - kBackAhead, -1, in.steps, in.M, m, g_n);
    load_window(in.g_vseq, t0 - kBackAhead, -1, in.steps, in.M, m, gvs_n);
#pragma unroll
    for (int j = 0; j < kBackAhead; ++j) {
      const int64_t t = t0 - j;
      if (t < 0) break;
      const int64_t k = t * in.M + m;
      if (in.g_vseq) carry = carry + gvs_w[j];
      const T keep = in.gates ? T(1) - T((in.gates[k >> 3] >> (k & 7)) & 1) : T(1);
      const T delta = g_w[j] + (in.gates && same ? carry * keep : carry);
      carry = (!in.gates || same) ? b * delta : b * keep * delta;
      if (!filter) continue;
      T gin = gate_input ? delta * keep : delta;
      if (c.scale != 1.0) gin = gin * T(c.scale);
      if (c.has_current()) gin = current_backward_step(c, gin, d, alpha);
      if (gx) gx[k] = gin;
    }
  }
  if (gv0) gv0[m] = carry;
  if (gi0) gi0[m] = d;
}

// ---------------------------------------------------------------------------- host side

unsigned int blocks(int64_t n) { return static_cast<unsigned int>((n + kThreads - 1) / kThreads); }

template <typename T>
const T* cptr(const at::Tensor& t) {
  return t.numel() ? t.const_data_ptr<T>() : nullptr;
}

template <typename T>
T* mptr(const at::Tensor& t) {
  return t.numel() ? t.mutable_data_ptr<T>() : nullptr;
}

template <typename T>
Param<T> param(const at::Tensor& t) {
  return Param<T>{cptr<T>(t), t.numel()};
}

// An input as a contiguous tensor on `like`'s device with `like`'s dtype (or `dtype`), or an
// empty one when absent (undefined or empty); `numel` >= 0 checks its size, `required`
// rejects absence.
at::Tensor input(const at::Tensor& t, const at::Tensor& like, const char* name, int64_t numel, bool required,
                 std::optional<at::ScalarType> dtype = std::nullopt) {
  const at::ScalarType want = dtype.value_or(like.scalar_type());
  if (!t.defined() || t.numel() == 0) {
    TORCH_CHECK(!required || numel == 0, "snnopt: ", name, " is required");
    return at::empty({0}, like.options().dtype(want));
  }
  TORCH_CHECK(t.device() == like.device(), "snnopt: ", name, " is on ", t.device(), ", expected ", like.device());
  TORCH_CHECK(t.scalar_type() == want, "snnopt: ", name, " has dtype ", t.scalar_type(), ", expected ", want);
  TORCH_CHECK(numel < 0 || t.numel() == numel, "snnopt: ", name, " has ", t.numel(), " elements, expected ", numel);
  return t.contiguous();
}

// A [T, M] sequence (or [T, ...] with M the product of the other sizes); states are [M].
struct Shape {
  int64_t steps, M;

  explicit Shape(const at::Tensor& seq, const char* name) {
    TORCH_CHECK(seq.defined() && seq.dim() >= 1, "snnopt: ", name, " must be a [T, M] sequence");
    TORCH_CHECK(seq.is_cuda(), "snnopt.cuda: ", name, " must be a CUDA tensor");
    TORCH_CHECK(seq.scalar_type() == at::kFloat || seq.scalar_type() == at::kDouble, "snnopt.cuda: ", name,
                " must be float32 or float64, got ", seq.scalar_type());
    steps = seq.size(0);
    M = 1;
    for (int64_t d = 1; d < seq.dim(); ++d) M *= seq.size(d);
  }
  int64_t numel() const { return steps * M; }
};

// The checked inputs of a forward scan.
struct Scan {
  Cfg c;
  Shape shape;
  at::Tensor x, v0, i0, b, cc, alpha, theta;

  Scan(const at::Tensor& x_, const at::Tensor& v0_, const at::Tensor& i0_, const at::Tensor& b_, const at::Tensor& cc_,
       const at::Tensor& alpha_, const at::Tensor& theta_, const Cfg& cfg, bool need_theta)
      : c(cfg), shape(x_, "x") {
    const int64_t M = shape.M;
    x = x_.contiguous();
    v0 = input(v0_, x, "v0", M, false);
    i0 = input(i0_, x, "i0", M, false);
    b = input(b_, x, "beta", -1, false);
    cc = input(cc_, x, "cc", -1, false);
    alpha = input(alpha_, x, "alpha", -1, c.has_current());
    theta = input(theta_, x, "threshold", -1, need_theta);
  }

  template <typename T>
  ScanIn<T> args() const {
    return ScanIn<T>{c,           cptr<T>(x),   cptr<T>(v0),     cptr<T>(i0),
                     param<T>(b), param<T>(cc), param<T>(alpha), param<T>(theta),
                     shape.steps, shape.M};
  }
  at::Tensor sequence() const { return at::empty(x.sizes(), x.options()); }
  at::Tensor state() const { return at::empty({shape.M}, x.options()); }
  at::Tensor none() const { return at::empty({0}, x.options()); }
};

cudaStream_t stream() { return at::cuda::getCurrentCUDAStream(); }

}  // namespace

std::vector<at::Tensor> dense_forward(const at::Tensor& x, const at::Tensor& v0, const at::Tensor& i0,
                                      const at::Tensor& b, const at::Tensor& cc, const at::Tensor& alpha,
                                      const at::Tensor& theta, const std::vector<double>& cfg, bool save, bool record) {
  const Cfg c = Cfg::from(cfg);
  TORCH_CHECK(!c.generic(),
              "snnopt.cuda.dense_forward: same_pending timing and input-discarding resets are not "
              "covered by the dense kernels");
  const c10::cuda::CUDAGuard guard(x.device());
  const Scan s(x, v0, i0, b, cc, alpha, theta, c, c.spiking());
  at::Tensor out = s.sequence(), v_T = s.state();
  at::Tensor i_T = c.has_current() ? s.state() : s.none();
  at::Tensor v_seq = record ? s.sequence() : s.none();
  at::Tensor h = save ? s.sequence() : s.none();
  at::Tensor i_seq = save && c.has_current() ? s.sequence() : s.none();
  if (s.shape.M > 0) {
    AT_DISPATCH_FLOATING_TYPES(s.x.scalar_type(), "snnopt_cuda_dense_forward", [&] {
      using T = scalar_t;
      const int64_t M = s.shape.M;
      dense_forward_kernel<T><<<blocks(M), kThreads, 0, stream()>>>(
          s.args<T>(), mptr<T>(out), mptr<T>(v_T), mptr<T>(i_T), mptr<T>(v_seq), mptr<T>(h), mptr<T>(i_seq));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {out, v_T, i_T, v_seq, h, i_seq};
}

std::vector<at::Tensor> dense_backward(const at::Tensor& g_out, const at::Tensor& g_v, const at::Tensor& g_i,
                                       const at::Tensor& g_vseq, const at::Tensor& h, const at::Tensor& i_seq,
                                       const at::Tensor& v0, const at::Tensor& i0, const at::Tensor& b,
                                       const at::Tensor& alpha, const at::Tensor& theta, const std::vector<double>& cfg,
                                       const std::vector<bool>& needs) {
  const Cfg c = Cfg::from(cfg);
  TORCH_CHECK(!c.generic(),
              "snnopt.cuda.dense_backward: same_pending timing and input-discarding resets are not "
              "covered by the dense kernels");
  TORCH_CHECK(needs.size() == 6, "snnopt: needs must hold 6 flags (x, v0, i0, beta, alpha, threshold)");
  const c10::cuda::CUDAGuard guard(h.device());
  const Shape shape(h, "h");
  const int64_t M = shape.M, n = shape.numel();
  const bool cuba = c.has_current();
  const at::Tensor hc = h.contiguous();
  const at::Tensor go = input(g_out, hc, "g_out", n, false), gv = input(g_v, hc, "g_v", M, false),
                   gi = input(g_i, hc, "g_i", M, false), gvs = input(g_vseq, hc, "g_vseq", n, false),
                   is = input(i_seq, hc, "i_seq", n, cuba && needs[4]), v0c = input(v0, hc, "v0", M, false),
                   i0c = input(i0, hc, "i0", M, false), bc = input(b, hc, "beta", -1, false),
                   ac = input(alpha, hc, "alpha", -1, cuba), thc = input(theta, hc, "threshold", -1, c.spiking());
  const auto opts = hc.options();
  auto make = [&](bool need, bool sequence) {
    if (!need) return at::empty({0}, opts);
    return sequence ? at::empty(hc.sizes(), opts) : at::empty({shape.M}, opts);
  };
  at::Tensor gx = make(needs[0], true), gv0 = make(needs[1], false), gi0 = make(needs[2] && cuba, false),
             gb = make(needs[3], false), ga = make(needs[4], false), gth = make(needs[5], false);
  if (M > 0) {
    AT_DISPATCH_FLOATING_TYPES(hc.scalar_type(), "snnopt_cuda_dense_backward", [&] {
      using T = scalar_t;
      const DenseBackIn<T> in{c,
                              cptr<T>(go),
                              cptr<T>(gv),
                              cptr<T>(gi),
                              cptr<T>(gvs),
                              cptr<T>(hc),
                              cptr<T>(is),
                              cptr<T>(v0c),
                              cptr<T>(i0c),
                              param<T>(bc),
                              param<T>(ac),
                              param<T>(thc),
                              shape.steps,
                              M};
      if (gvs.numel()) {
        dense_backward_kernel<T, true><<<blocks(M), kThreads, 0, stream()>>>(
            in, mptr<T>(gx), mptr<T>(gv0), mptr<T>(gi0), mptr<T>(gb), mptr<T>(ga), mptr<T>(gth));
      } else {
        dense_backward_kernel<T, false><<<blocks(M), kThreads, 0, stream()>>>(
            in, mptr<T>(gx), mptr<T>(gv0), mptr<T>(gi0), mptr<T>(gb), mptr<T>(ga), mptr<T>(gth));
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {gx, gv0, gi0, gb, ga, gth};
}

std::vector<at::Tensor> rate_stats(const at::Tensor& x, const at::Tensor& v0, const at::Tensor& i0, const at::Tensor& b,
                                   const at::Tensor& cc, const at::Tensor& alpha, const at::Tensor& theta,
                                   const std::vector<double>& cfg, bool record) {
  const Cfg c = Cfg::from(cfg);
  TORCH_CHECK(!c.generic(),
              "snnopt.cuda.rate_stats: same_pending timing and input-discarding resets are not "
              "covered by the rate kernel");
  const c10::cuda::CUDAGuard guard(x.device());
  const Scan s(x, v0, i0, b, cc, alpha, theta, c, c.spiking());
  at::Tensor out = s.sequence(), v_T = s.state(), rate = s.state(), elig = s.state();
  at::Tensor i_T = c.has_current() ? s.state() : s.none();
  at::Tensor v_seq = record ? s.sequence() : s.none();
  at::Tensor v_bar = record ? s.state() : s.none(), elig_v = record ? s.state() : s.none();
  if (s.shape.M > 0) {
    AT_DISPATCH_FLOATING_TYPES(s.x.scalar_type(), "snnopt_cuda_rate_stats", [&] {
      using T = scalar_t;
      rate_stats_kernel<T><<<blocks(s.shape.M), kThreads, 0, stream()>>>(
          s.args<T>(), mptr<T>(out), mptr<T>(v_T), mptr<T>(i_T), mptr<T>(v_seq), mptr<T>(rate), mptr<T>(elig),
          mptr<T>(v_bar), mptr<T>(elig_v));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {out, v_T, i_T, v_seq, rate, elig, v_bar, elig_v};
}

std::vector<at::Tensor> sparse_forward(const at::Tensor& x, const at::Tensor& v0, const at::Tensor& i0,
                                       const at::Tensor& b, const at::Tensor& cc, const at::Tensor& alpha,
                                       const at::Tensor& theta, const std::vector<double>& cfg, double band, bool save,
                                       bool record) {
  const Cfg c = Cfg::from(cfg);
  TORCH_CHECK(c.timing != SAME_PENDING, "snnopt.cuda.sparse_forward: same_pending timing is not covered");
  const c10::cuda::CUDAGuard guard(x.device());
  const Scan s(x, v0, i0, b, cc, alpha, theta, c, c.spiking() || save);
  const int64_t M = s.shape.M, n = s.shape.numel();
  TORCH_CHECK(!save || n <= std::numeric_limits<int32_t>::max(),
              "snnopt: the sparse active set indexes [T, M] with int32, too small for ", n, " elements");
  const auto opts = s.x.options();
  at::Tensor out = s.sequence(), v_T = s.state();
  at::Tensor i_T = c.has_current() ? s.state() : s.none();
  at::Tensor v_seq = record ? s.sequence() : s.none();
  const at::Tensor no_ints = at::empty({0}, opts.dtype(at::kInt));
  at::Tensor idx = no_ints, sg = s.none(), gates = at::empty({0}, opts.dtype(at::kByte));
  // Gate bits are set with 32-bit atomics on a word-padded buffer whose first
  // ceil(n / 8) bytes are the packed gates.
  const bool with_gates = save && gated(c) && n > 0;
  const at::Tensor gate_words = with_gates ? at::zeros({(n + 31) / 32}, opts.dtype(at::kInt)) : no_ints;
  if (with_gates) gates = gate_words.view(at::kByte).narrow(0, 0, (n + 7) / 8);
  const at::Tensor counts = save && n > 0 ? at::empty({M}, opts.dtype(at::kInt)) : no_ints;
  if (M == 0) return {out, v_T, i_T, v_seq, idx, sg, gates};
  AT_DISPATCH_FLOATING_TYPES(s.x.scalar_type(), "snnopt_cuda_sparse_forward", [&] {
    using T = scalar_t;
    const ScanIn<T> in = s.args<T>();
    sparse_forward_kernel<T><<<blocks(M), kThreads, 0, stream()>>>(
        in, T(band), mptr<T>(out), mptr<T>(v_T), mptr<T>(i_T), mptr<T>(v_seq), mptr<int32_t>(counts),
        reinterpret_cast<unsigned int*>(mptr<int32_t>(gate_words)));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (!counts.numel()) return;
    // ends[m] = counts[0] + ... + counts[m]: element m's active steps go to [ends[m-1], ends[m]).
    at::Tensor ends = at::empty({M}, counts.options());
    const int num = static_cast<int>(M);  // M <= n fits int32 (checked above)
    size_t temp_bytes = 0;
    C10_CUDA_CHECK(
        cub::DeviceScan::InclusiveSum(nullptr, temp_bytes, mptr<int32_t>(counts), mptr<int32_t>(ends), num, stream()));
    // (never a null buffer: that would make the second call a size query again)
    at::Tensor temp = at::empty({static_cast<int64_t>(std::max<size_t>(temp_bytes, 1))}, opts.dtype(at::kByte));
    C10_CUDA_CHECK(cub::DeviceScan::InclusiveSum(temp.mutable_data_ptr(), temp_bytes, mptr<int32_t>(counts),
                                                 mptr<int32_t>(ends), num, stream()));
    // The only host synchronisation: the size of the active set, to allocate idx and sg.
    const int64_t total = ends[M - 1].item<int32_t>();
    idx = at::empty({total}, opts.dtype(at::kInt));
    sg = at::empty({total}, opts);
    if (total == 0) return;
    active_set_kernel<T>
        <<<blocks(M), kThreads, 0, stream()>>>(in, T(band), mptr<int32_t>(ends), mptr<int32_t>(idx), mptr<T>(sg));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, v_T, i_T, v_seq, idx, sg, gates};
}

std::vector<at::Tensor> sparse_backward(const at::Tensor& g_out, const at::Tensor& g_tap, const at::Tensor& g_v,
                                        const at::Tensor& g_i, const at::Tensor& g_vseq, const at::Tensor& idx,
                                        const at::Tensor& sg, const at::Tensor& gates, const at::Tensor& b,
                                        const at::Tensor& alpha, const std::vector<double>& cfg, int64_t steps,
                                        int64_t states, const std::vector<bool>& needs) {
  const Cfg c = Cfg::from(cfg);
  TORCH_CHECK(c.timing != SAME_PENDING, "snnopt.cuda.sparse_backward: same_pending timing is not covered");
  TORCH_CHECK(needs.size() == 3, "snnopt: needs must hold 3 flags (x, v0, i0)");
  TORCH_CHECK(sg.is_cuda(), "snnopt.cuda: sg must be a CUDA tensor");
  TORCH_CHECK(sg.scalar_type() == at::kFloat || sg.scalar_type() == at::kDouble,
              "snnopt.cuda: sg must be float32 or float64, got ", sg.scalar_type());
  TORCH_CHECK(steps >= 0 && states >= 0, "snnopt.cuda.sparse_backward: ", steps, " steps of ", states, " states");
  const c10::cuda::CUDAGuard guard(sg.device());
  const int64_t M = states, n = steps * states;
  const bool cuba = c.has_current();
  const at::Tensor ic = input(idx, sg, "idx", -1, false, at::kInt), sgc = input(sg, sg, "sg", ic.numel(), false);
  const at::Tensor go = input(g_out, sg, "g_out", n, false), tap = input(g_tap, sg, "g_tap", ic.numel(), false),
                   gv = input(g_v, sg, "g_v", M, false), gi = input(g_i, sg, "g_i", M, false),
                   gvs = input(g_vseq, sg, "g_vseq", n, false),
                   gc = gated(c) ? input(gates, sg, "gates", (n + 7) / 8, n > 0, at::kByte)
                                 : at::empty({0}, sg.options().dtype(at::kByte)),
                   bc = input(b, sg, "beta", -1, false), ac = input(alpha, sg, "alpha", -1, cuba);
  const auto opts = sg.options();
  at::Tensor gx = needs[0] ? at::empty({steps, M}, opts) : at::empty({0}, opts);
  at::Tensor gv0 = needs[1] ? at::empty({M}, opts) : at::empty({0}, opts);
  at::Tensor gi0 = needs[2] && cuba ? at::empty({M}, opts) : at::empty({0}, opts);
  if (M == 0 || !(gx.numel() || gv0.numel() || gi0.numel())) return {gx, gv0, gi0};
  const at::Tensor g = at::zeros({n}, opts);
  const int64_t nnz = ic.numel();
  AT_DISPATCH_FLOATING_TYPES(sg.scalar_type(), "snnopt_cuda_sparse_backward", [&] {
    using T = scalar_t;
    if (nnz > 0) {
      scatter_active_kernel<T><<<blocks(nnz), kThreads, 0, stream()>>>(cptr<int32_t>(ic), cptr<T>(sgc), nnz,
                                                                       cptr<T>(go), cptr<T>(tap), n, mptr<T>(g));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const SparseBackIn<T> in{
        c, cptr<T>(g), cptr<T>(gv), cptr<T>(gi), cptr<T>(gvs), cptr<uint8_t>(gc), param<T>(bc), param<T>(ac), steps, M};
    sparse_backward_kernel<T><<<blocks(M), kThreads, 0, stream()>>>(in, mptr<T>(gx), mptr<T>(gv0), mptr<T>(gi0));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gx, gv0, gi0};
}

}  // namespace cuda
}  // namespace snnopt
