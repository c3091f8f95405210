// CPU kernels of the neuron ops: a sequential scan over T for each element, parallel
// (at::parallel_for, OpenMP) over blocks of elements; within a block the step loop runs
// over contiguous elements so that it vectorises.  The math is neuron.h's, in the order
// of operations of the plain-torch reference (built with -ffp-contract=off).
#include <ATen/Parallel.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <limits>
#include <vector>

#include "../neuron.h"
#include "../ops.h"
#include "divider.h"
#include "vec.h"

namespace snnopt {
namespace cpu {
namespace {

constexpr int64_t kBlock = 512;  // elements scanned together by one thread
constexpr int64_t kGrain = 512;  // parallel_for grain: elements per task at least
static_assert(kBlock <= 32768, "sparse_backward keeps the place of an element in its block as int16");

at::Tensor empty_like0(const at::Tensor& x) { return x.new_empty({0}); }

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.numel() ? t.data_ptr<T>() : nullptr;
}

template <typename T>
T* mut_or_null(at::Tensor& t) {
  return t.numel() ? t.data_ptr<T>() : nullptr;
}

// Bit l set where lane l of the kLanes values at h lies in the band, |h - theta| < band (a
// NaN never does): the comparison (u < 0 ? -u : u) < band of the reference, lane by lane.
template <typename T>
inline uint32_t band_bits(const T* h, const T* theta, T band) {
  uint32_t bits = 0;
  for (int64_t l = 0; l < kLanes<T>; ++l) {
    const T u = h[l] - theta[l];
    bits |= uint32_t((u < T(0) ? -u : u) < band) << l;
  }
  return bits;
}

#if defined(__AVX2__)
template <>
inline uint32_t band_bits<float>(const float* h, const float* theta, float band) {  // a compare and a movemask
  const __m256 u = _mm256_sub_ps(_mm256_loadu_ps(h), _mm256_loadu_ps(theta));
  const __m256 mag = _mm256_andnot_ps(_mm256_set1_ps(-0.f), u);
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(mag, _mm256_set1_ps(band), _CMP_LT_OQ)));
}
#endif

// Parameters of one element (arrays of M values, one per element, made here from a single
// value; an absent alpha or theta reads as zeros, so that the accessors have no branch).
template <typename T>
struct Params {
  const T *b, *cc, *alpha, *theta;
  at::Tensor zeros;              // backs an absent alpha / theta
  std::vector<at::Tensor> held;  // arrays made from a single value
  T beta(int64_t m) const { return b[m]; }
  T leak(int64_t m) const { return cc[m]; }
  T alp(int64_t m) const { return alpha[m]; }
  T th(int64_t m) const { return theta[m]; }
};

template <typename T>
Params<T> params_of(const at::Tensor& b, const at::Tensor& cc, const at::Tensor& alpha, const at::Tensor& theta,
                    int64_t M) {
  Params<T> p;
  p.zeros = at::zeros({M}, b.options());
  auto array = [&](const at::Tensor& t) -> const T* {
    TORCH_CHECK(t.numel() <= 1 || t.numel() == M, "snnopt kernels: a parameter array has ", t.numel(), " values for ",
                M, " elements; give one value or one per element");
    if (t.numel() == 0) return p.zeros.template data_ptr<T>();
    if (t.numel() == M) return t.template data_ptr<T>();
    p.held.push_back(t.expand({M}).contiguous());
    return p.held.back().template data_ptr<T>();
  };
  p.b = array(b), p.cc = array(cc), p.alpha = array(alpha), p.theta = array(theta);
  return p;
}

// One forward step of element m: consumes x, updates (v, i), returns the output and
// writes the membrane h and total input I.
template <typename T>
inline T forward_step(const Cfg& c, const Params<T>& p, int64_t m, T x, T& v, T& i, T& h, T& total) {
  T inp = x;
  if (c.has_current()) {
    total = current_step(c, i, x, p.alp(m));
    inp = total;
  }
  if (!c.scales_in_charge()) inp = T(c.scale) * inp;  // exact for scale 1, so no branch on it
  const T theta = p.th(m);
  h = charge(c, v, p.beta(m), p.leak(m), inp, theta);
  if (!c.spiking()) {
    v = h;
    return v;
  }
  const T s = heaviside(h - theta, c.fire_ge);
  v = c.next() ? h : post_reset(c, h, s, theta);
  return s;
}

// The membrane of an input-discarding next-step zero reset (snnTorch Synaptic):
// h = b v + cc + in; h = h - h r.
template <typename T>
inline T discarding_step(const Cfg& c, const Params<T>& p, int64_t m, T x, T& v, T& i, T& h) {
  T inp = x;
  if (c.has_current()) inp = current_step(c, i, x, p.alp(m));
  if (c.scale != 1.0) inp = T(c.scale) * inp;
  const T theta = p.th(m);
  const T r = heaviside(v - theta, c.fire_ge);
  h = p.beta(m) * v + p.leak(m) + inp;
  h = h - h * r;
  v = h;
  return heaviside(h - theta, c.fire_ge);
}

// One reverse step of a spiking neuron without synaptic current, for dL/dx only: from
// dL/ds_t (g), the membrane h_t and h_{t-1} (h_prev), updates the carried dL/dv (carry)
// and returns dL/dx_t.  The arithmetic of the general loop of dense_backward, term by term.
template <typename T>
inline T dense_input_step(const Cfg& c, T h, T h_prev, T g, T beta, T th, T scale, T& carry) {
  const T u = h - th;
  const T sp = sg_at(c, u);
  T gh;
  if (c.next()) {
    gh = g * sp + carry;
    carry = gh * state_jacobian(c, h_prev, beta, th);
  } else {
    const T s = heaviside(u, c.fire_ge);
    T dpdh = 1, dpds = 0;
    if (c.reset == SUBTRACT) dpds = -th;
    if (c.reset == ZERO) dpdh = T(1) - s, dpds = T(c.v_reset) - h;
    T gu = g;
    if (!c.detach && c.reset != NONE) gu += carry * dpds;
    gh = gu * sp + carry * dpdh;
    carry = beta * gh;
  }
  return c.scale != 1.0 ? gh * scale : gh;
}

// The outputs every forward scan returns: {out, v_T, i_T (current kinds), v_seq (if record)}.
std::vector<at::Tensor> scan_outputs(const at::Tensor& x, const Cfg& c, int64_t M, bool record) {
  return {at::empty_like(x), x.new_empty({M}), c.has_current() ? x.new_empty({M}) : empty_like0(x),
          record ? at::empty_like(x) : empty_like0(x)};
}

template <typename T>
void init_state(T* dst, const T* src, int64_t m0, int64_t n) {
  for (int64_t k = 0; k < n; ++k) dst[k] = src ? src[m0 + k] : T(0);
}

// Asks for the next step's rows of a block (n values of the input x, read, and of the
// output o, written) to be brought into cache while the current step is computed: the rows
// of a block lie M values apart, too far for the hardware prefetchers to follow.
template <typename T>
inline void prefetch_step(const T* x, T* o, int64_t n) {
  for (int64_t k = 0; k < n; k += 64 / static_cast<int64_t>(sizeof(T))) {
    __builtin_prefetch(x + k, 0, 3);
    __builtin_prefetch(o + k, 1, 3);
  }
}

// dense_backward when only dL/dx (and dL/dv0) are wanted, for a fixed configuration Fx
// and detach flag Dt: dense_input_step over rows of contiguous elements, branch-free so
// that it vectorises.
template <class Fx, class Dt, typename T>
void dense_input_backward(const Cfg& rt, const Params<T>& p, const T* go, const T* hp, const T* v0p, const T* gvp,
                          T scale, int64_t T_, int64_t M, T* gxp, T* gv0p) {
  const T* zero = p.zeros.template data_ptr<T>();
  at::parallel_for(0, M, kGrain, [&, scale](int64_t begin, int64_t end) {  // scale by value: no alias of a store
    Cfg c = Fx::apply(rt);
    c.detach = Dt::value;
    T carry[kBlock];
    for (int64_t m0 = begin; m0 < end; m0 += kBlock) {
      const int64_t n = std::min(kBlock, end - m0);
      const T *beta = p.b + m0, *th = p.theta + m0;
      init_state(carry, gvp, m0, n);
      for (int64_t t = T_ - 1; t >= 0; --t) {
        const T *ht = hp + t * M + m0, *gr = go + t * M + m0;
        const T* hprev = t > 0 ? hp + (t - 1) * M + m0 : (v0p ? v0p + m0 : zero);
        T* out = gxp + t * M + m0;
        for (int64_t j = 0; j < n; ++j)
          out[j] = dense_input_step(c, ht[j], hprev[j], gr[j], beta[j], th[j], scale, carry[j]);
      }
      if (gv0p) std::copy(carry, carry + n, gv0p + m0);
    }
  });
}

// rate_stats without recorded states (and without synaptic current), for a fixed
// configuration Fx and detach flag Dt: the general loop by rows, branch-free so that it
// vectorises.
template <class Fx, class Dt, typename T>
void rate_stats_rows(const Cfg& rt, const Params<T>& p, const T* xp, const T* v0p, T scale, T inv_T, int64_t T_,
                     int64_t M, T* op, T* vTp, T* rp, T* ep) {
  at::parallel_for(0, M, kGrain, [&, scale](int64_t begin, int64_t end) {  // scale by value: no alias of a store
    Cfg c = Fx::apply(rt);
    c.detach = Dt::value;
    T v_[kBlock], i_[kBlock], kappa_[kBlock], e_[kBlock], rs_[kBlock], hp_[kBlock];
    for (int64_t m0 = begin; m0 < end; m0 += kBlock) {
      const int64_t n = std::min(kBlock, end - m0);
      const T *beta = p.b + m0, *th = p.theta + m0;
      init_state(v_, v0p, m0, n);
      for (T* a : {i_, kappa_, e_, rs_, hp_}) std::fill(a, a + n, T(0));
      for (int64_t t = 0; t < T_; ++t) {
        const T* xr = xp + t * M + m0;
        T* orow = op + t * M + m0;
        const bool first = t == 0;
        if (t + 1 < T_) prefetch_step(xr + M, orow + M, n);
        for (int64_t j = 0; j < n; ++j) {
          T h, total;
          const T o = forward_step(c, p, m0 + j, xr[j], v_[j], i_[j], h, total);
          orow[j] = o;
          kappa_[j] = first ? scale : scale + state_jacobian(c, hp_[j], beta[j], th[j]) * kappa_[j];
          e_[j] += kappa_[j] * sg_at(c, h - th[j]);
          rs_[j] += o;
          hp_[j] = h;
        }
      }
      for (int64_t j = 0; j < n; ++j) {
        vTp[m0 + j] = v_[j];
        rp[m0 + j] = rs_[j] * inv_T;
        ep[m0 + j] = e_[j] * inv_T;
      }
    }
  });
}

}  // namespace

std::vector<at::Tensor> dense_forward(const at::Tensor& x, const at::Tensor& v0, const at::Tensor& i0,
                                      const at::Tensor& b, const at::Tensor& cc, const at::Tensor& alpha,
                                      const at::Tensor& theta, const std::vector<double>& cfg, bool save, bool record) {
  const Cfg rt = Cfg::from(cfg);
  const int64_t T_ = x.size(0), M = x.numel() / std::max<int64_t>(T_, 1);
  auto outs = scan_outputs(x, rt, M, record);
  auto &out = outs[0], &vT = outs[1], &iT = outs[2], &vseq = outs[3];
  auto hs = save ? at::empty_like(x) : empty_like0(x);
  auto iseq = save && rt.has_current() ? at::empty_like(x) : empty_like0(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "snnopt_dense_forward", [&] {
    using T = scalar_t;
    const auto p = params_of<T>(b, cc, alpha, theta, M);
    const T *xp = x.data_ptr<T>(), *v0p = ptr_or_null<T>(v0), *i0p = ptr_or_null<T>(i0);
    T *op = out.data_ptr<T>(), *vTp = vT.data_ptr<T>(), *iTp = mut_or_null<T>(iT);
    T *vsp = mut_or_null<T>(vseq), *hp = mut_or_null<T>(hs), *isp = mut_or_null<T>(iseq);
    with_fixed<std::is_same_v<T, float>>(rt, false, [&](auto fixed) {
      at::parallel_for(0, M, kGrain, [&](int64_t begin, int64_t end) {
        // Built here, inside the (outlined) parallel body, so that its constants propagate.
        const Cfg c = decltype(fixed)::apply(rt);
        T v[kBlock], i[kBlock], h[kBlock], total[kBlock];
        for (int64_t m0 = begin; m0 < end; m0 += kBlock) {
          const int64_t n = std::min(kBlock, end - m0);
          init_state(v, v0p, m0, n);
          init_state(i, i0p, m0, n);
          for (int64_t t = 0; t < T_; ++t) {
            const int64_t row = t * M + m0;
            if (t + 1 < T_) prefetch_step(xp + row + M, op + row + M, n);
            for (int64_t k = 0; k < n; ++k)  // branch-free for a fixed configuration: vectorises
              op[row + k] = forward_step(c, p, m0 + k, xp[row + k], v[k], i[k], h[k], total[k]);
            if (hp) std::copy(h, h + n, hp + row);
            if (isp) std::copy(total, total + n, isp + row);
            if (vsp) std::copy(v, v + n, vsp + row);
          }
          for (int64_t k = 0; k < n; ++k) {
            vTp[m0 + k] = v[k];
            if (iTp) iTp[m0 + k] = i[k];
          }
        }
      });
    });
  });
  return {out, vT, iT, vseq, hs, iseq};
}

std::vector<at::Tensor> dense_backward(const at::Tensor& g_out, const at::Tensor& g_v, const at::Tensor& g_i,
                                       const at::Tensor& g_vseq, const at::Tensor& h, const at::Tensor& i_seq,
                                       const at::Tensor& v0, const at::Tensor& i0, const at::Tensor& b,
                                       const at::Tensor& alpha, const at::Tensor& theta, const std::vector<double>& cfg,
                                       const std::vector<bool>& needs) {
  const Cfg rt = Cfg::from(cfg);
  const int64_t T_ = h.size(0), M = h.numel() / std::max<int64_t>(T_, 1);
  auto opt = [&](bool need, std::initializer_list<int64_t> shape) {
    return need ? h.new_empty(shape) : empty_like0(h);
  };
  auto gx = opt(needs[0], {T_, M});
  auto gv0 = opt(needs[1], {M});
  auto gi0 = opt(needs[2] && rt.has_current(), {M});
  auto gb = opt(needs[3], {M});
  auto ga = opt(needs[4], {M});
  auto gth = opt(needs[5], {M});
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "snnopt_dense_backward", [&] {
    using T = scalar_t;
    const auto p = params_of<T>(b, b, alpha, theta, M);  // the leak constant plays no part here
    const T *go = g_out.data_ptr<T>(), *gvp = ptr_or_null<T>(g_v), *gip = ptr_or_null<T>(g_i);
    const T *gsp = ptr_or_null<T>(g_vseq), *hp = h.data_ptr<T>(), *isp = ptr_or_null<T>(i_seq);
    const T *v0p = ptr_or_null<T>(v0), *i0p = ptr_or_null<T>(i0);
    T *gxp = mut_or_null<T>(gx), *gv0p = mut_or_null<T>(gv0), *gi0p = mut_or_null<T>(gi0);
    T *gbp = mut_or_null<T>(gb), *gap = mut_or_null<T>(ga), *gthp = mut_or_null<T>(gth);
    const T vr = T(rt.v_reset), vrest = T(rt.v_rest), scale = T(rt.scale);
    // Only dL/dx (and dL/dv0) wanted: the loop without parameter sums or recorded states.
    const bool inputs_only = gxp && !gsp && !gbp && !gap && !gthp;
    with_fixed<std::is_same_v<T, float>>(rt, true, [&](auto fixed) {
      if constexpr (decltype(fixed)::fixed) {
        if (inputs_only) {
          with_detach(rt, [&](auto detach) {
            dense_input_backward<decltype(fixed), decltype(detach)>(rt, p, go, hp, v0p, gvp, scale, T_, M, gxp, gv0p);
          });
          return;
        }
      }
      at::parallel_for(0, M, kGrain, [&](int64_t begin, int64_t end) {
        const Cfg c = decltype(fixed)::apply(rt);  // inside the parallel body: constants propagate
        const bool nd = !c.detach, next = c.next(), cuba = c.has_current();
        T carry_[kBlock], gi_acc_[kBlock], sb_[kBlock], sa_[kBlock], sth_[kBlock];
        for (int64_t m0 = begin; m0 < end; m0 += kBlock) {
          const int64_t n = std::min(kBlock, end - m0);
          init_state(carry_, gvp, m0, n);
          init_state(gi_acc_, gip, m0, n);
          std::fill(sb_, sb_ + n, T(0));
          std::fill(sa_, sa_ + n, T(0));
          std::fill(sth_, sth_ + n, T(0));
          for (int64_t t = T_ - 1; t >= 0; --t) {
            for (int64_t j = 0; j < n; ++j) {
              const int64_t m = m0 + j, k = t * M + m;
              const T beta = p.beta(m), th = p.th(m), alp = p.alp(m);
              T &carry = carry_[j], &gi_acc = gi_acc_[j], &sb = sb_[j], &sa = sa_[j], &sth = sth_[j];
              if (gsp) carry += gsp[k];
              const T ht = hp[k];
              const T h_prev = t > 0 ? hp[k - M] : (v0p ? v0p[m] : T(0));
              T gh;
              if (!c.spiking()) {
                gh = go[k] + carry;
              } else {
                const T u = ht - th;
                const T sp = sg_at(c, u);
                if (next) {
                  gh = go[k] * sp + carry;
                  sth -= go[k] * sp;
                } else {
                  const T s = heaviside(u, c.fire_ge);
                  T dpdh = 1, dpds = 0;
                  if (c.reset == SUBTRACT) dpds = -th;
                  if (c.reset == ZERO) dpdh = T(1) - s, dpds = vr - ht;
                  T gu = go[k];
                  if (nd && c.reset != NONE) gu += carry * dpds;
                  gh = gu * sp + carry * dpdh;
                  sth -= gu * sp;
                  if (c.reset == SUBTRACT) sth -= carry * s;
                }
              }
              if (next) {
                const T u_p = h_prev - th;
                const T s_p = heaviside(u_p, c.fire_ge);
                if (c.reset == SUBTRACT) sth -= gh * s_p;
                if (nd) {
                  const T drho_ds = c.reset == SUBTRACT ? th : beta * (h_prev - vr);
                  sth += gh * drho_ds * sg_at(c, u_p);
                }
                T dbeta = h_prev - vrest;
                if (c.reset == ZERO) dbeta -= s_p * (h_prev - vr);
                sb += gh * dbeta;
              } else {
                const T p_prev =
                    (t == 0 || !c.spiking()) ? h_prev : post_reset(c, h_prev, heaviside(h_prev - th, c.fire_ge), th);
                sb += gh * (p_prev - vrest);
              }
              T gin = c.scale != 1.0 ? gh * scale : gh;
              if (cuba) {
                if (c.decay_after) {
                  sa += gi_acc * isp[k];
                  gin = gin + alp * gi_acc;
                  gi_acc = gin;
                } else {
                  gin = gin + gi_acc;
                  sa += gin * (t > 0 ? isp[k - M] : (i0p ? i0p[m] : T(0)));
                  gi_acc = alp * gin;
                }
              }
              if (gxp) gxp[k] = gin;
              carry = next ? gh * state_jacobian(c, h_prev, beta, th) : beta * gh;
            }
          }
          for (int64_t j = 0; j < n; ++j) {
            const int64_t m = m0 + j;
            if (gv0p) gv0p[m] = carry_[j];
            if (gi0p) gi0p[m] = gi_acc_[j];
            if (gbp) gbp[m] = sb_[j];
            if (gap) gap[m] = sa_[j];
            if (gthp) gthp[m] = sth_[j];
          }
        }
      });
    });
  });
  return {gx, gv0, gi0, gb, ga, gth};
}

std::vector<at::Tensor> rate_stats(const at::Tensor& x, const at::Tensor& v0, const at::Tensor& i0, const at::Tensor& b,
                                   const at::Tensor& cc, const at::Tensor& alpha, const at::Tensor& theta,
                                   const std::vector<double>& cfg, bool record) {
  const Cfg rt = Cfg::from(cfg);
  const int64_t T_ = x.size(0), M = x.numel() / std::max<int64_t>(T_, 1);
  auto outs = scan_outputs(x, rt, M, record);
  auto &out = outs[0], &vT = outs[1], &iT = outs[2], &vseq = outs[3];
  auto rate = x.new_empty({M}), elig = x.new_empty({M});
  auto vbar = record ? x.new_empty({M}) : empty_like0(x);
  auto eligv = record ? x.new_empty({M}) : empty_like0(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "snnopt_rate_stats", [&] {
    using T = scalar_t;
    const auto p = params_of<T>(b, cc, alpha, theta, M);
    const T *xp = x.data_ptr<T>(), *v0p = ptr_or_null<T>(v0), *i0p = ptr_or_null<T>(i0);
    T *op = out.data_ptr<T>(), *vTp = vT.data_ptr<T>(), *iTp = mut_or_null<T>(iT), *vsp = mut_or_null<T>(vseq);
    T *rp = rate.data_ptr<T>(), *ep = elig.data_ptr<T>(), *vbp = mut_or_null<T>(vbar), *evp = mut_or_null<T>(eligv);
    const T scale = T(rt.scale), inv_T = T(1) / T(std::max<int64_t>(T_, 1));
    with_fixed<std::is_same_v<T, float>>(rt, true, [&](auto fixed) {
      if constexpr (decltype(fixed)::fixed) {
        if (!record) {
          with_detach(rt, [&](auto detach) {
            rate_stats_rows<decltype(fixed), decltype(detach)>(rt, p, xp, v0p, scale, inv_T, T_, M, op, vTp, rp, ep);
          });
          return;
        }
      }
      at::parallel_for(0, M, kGrain, [&](int64_t begin, int64_t end) {
        const Cfg c = decltype(fixed)::apply(rt);  // inside the parallel body: constants propagate
        T v_[kBlock], i_[kBlock], kappa_[kBlock], cur_[kBlock], e_[kBlock], ev_[kBlock], rs_[kBlock], vs_[kBlock],
            hp_[kBlock];
        for (int64_t m0 = begin; m0 < end; m0 += kBlock) {
          const int64_t n = std::min(kBlock, end - m0);
          init_state(v_, v0p, m0, n);
          init_state(i_, i0p, m0, n);
          for (T* a : {kappa_, cur_, e_, ev_, rs_, vs_, hp_}) std::fill(a, a + n, T(0));
          for (int64_t t = 0; t < T_; ++t) {
            for (int64_t j = 0; j < n; ++j) {
              const int64_t m = m0 + j, k = t * M + m;
              const T beta = p.beta(m), th = p.th(m);
              T h, total;
              const T o = forward_step(c, p, m, xp[k], v_[j], i_[j], h, total);
              op[k] = o;
              if (vsp) vsp[k] = v_[j];
              cur_[j] = c.has_current() ? T(1) + p.alp(m) * cur_[j] : T(1);
              kappa_[j] = t == 0 ? scale * cur_[j] : scale * cur_[j] + state_jacobian(c, hp_[j], beta, th) * kappa_[j];
              e_[j] += c.spiking() ? kappa_[j] * sg_at(c, h - th) : kappa_[j];
              if (record) {
                ev_[j] += state_derivative(c, h, th) * kappa_[j];
                vs_[j] += v_[j];
              }
              rs_[j] += o;
              hp_[j] = h;
            }
          }
          for (int64_t j = 0; j < n; ++j) {
            const int64_t m = m0 + j;
            vTp[m] = v_[j];
            if (iTp) iTp[m] = i_[j];
            rp[m] = rs_[j] * inv_T;
            ep[m] = e_[j] * inv_T;
            if (vbp) vbp[m] = vs_[j] * inv_T;
            if (evp) evp[m] = ev_[j] * inv_T;
          }
        }
      });
    });
  });
  return {out, vT, iT, vseq, rate, elig, vbar, eligv};
}

std::vector<at::Tensor> sparse_forward(const at::Tensor& x, const at::Tensor& v0, const at::Tensor& i0,
                                       const at::Tensor& b, const at::Tensor& cc, const at::Tensor& alpha,
                                       const at::Tensor& theta, const std::vector<double>& cfg, double band, bool save,
                                       bool record) {
  const Cfg rt = Cfg::from(cfg);
  const int64_t T_ = x.size(0), M = x.numel() / std::max<int64_t>(T_, 1);
  auto outs = scan_outputs(x, rt, M, record);
  auto &out = outs[0], &vT = outs[1], &iT = outs[2], &vseq = outs[3];
  TORCH_CHECK(T_ * M < std::numeric_limits<int32_t>::max(), "snnopt sparse scan: ", T_, " x ", M,
              " states exceed the int32 indices of the active set; split the sequence in time");
  const bool gated = save && rt.spiking() && rt.reset == ZERO;
  auto gates = at::zeros({gated ? (T_ * M + 7) / 8 : 0}, x.options().dtype(at::kByte));
  at::Tensor idx, sg;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "snnopt_sparse_forward", [&] {
    using T = scalar_t;
    const auto p = params_of<T>(b, cc, alpha, theta, M);
    const T *xp = x.data_ptr<T>(), *v0p = ptr_or_null<T>(v0), *i0p = ptr_or_null<T>(i0);
    T *op = out.data_ptr<T>(), *vTp = vT.data_ptr<T>(), *iTp = mut_or_null<T>(iT), *vsp = mut_or_null<T>(vseq);
    uint8_t* gp = gated ? gates.data_ptr<uint8_t>() : nullptr;
    // Each task appends its active entries to its own list; the lists are then
    // concatenated (count + compaction, no index sort).
    const int64_t tasks = std::max<int64_t>(1, (M + kGrain - 1) / kGrain);
    std::vector<std::vector<int32_t>> found_idx(tasks);
    std::vector<std::vector<T>> found_sg(tasks);
    const T bd = T(band);
    auto set_bit = [gp](int64_t k) {
      __atomic_fetch_or(gp + (k >> 3), static_cast<uint8_t>(1u << (k & 7)), __ATOMIC_RELAXED);
    };
    with_fixed<std::is_same_v<T, float>>(rt, true, [&](auto fixed) {
      at::parallel_for(0, tasks, 1, [&](int64_t tb, int64_t te) {
        const Cfg c = decltype(fixed)::apply(rt);  // inside the parallel body: constants propagate
        for (int64_t task = tb; task < te; ++task) {
          const int64_t begin = task * kGrain, end = std::min(M, begin + kGrain);
          auto& fi = found_idx[task];
          auto& fs = found_sg[task];
          T v_[kBlock], i_[kBlock], h_[kBlock], total_[kBlock];
          for (int64_t m0 = begin; m0 < end; m0 += kBlock) {
            const int64_t n = std::min(kBlock, end - m0);
            const T* th = p.theta + m0;
            init_state(v_, v0p, m0, n);
            init_state(i_, i0p, m0, n);
            if (gp && c.timing != SAME)
              for (int64_t j = 0; j < n; ++j)
                if (heaviside(v_[j] - p.th(m0 + j), c.fire_ge) != T(0)) set_bit(m0 + j);
            for (int64_t t = 0; t < T_; ++t) {
              const int64_t row = t * M + m0;
              T* o = op + row;
              if (t + 1 < T_) prefetch_step(xp + row + M, o + M, n);
              for (int64_t j = 0; j < n; ++j)  // branch-free for a fixed configuration: vectorises
                o[j] = c.discards_input ? discarding_step(c, p, m0 + j, xp[row + j], v_[j], i_[j], h_[j])
                                        : forward_step(c, p, m0 + j, xp[row + j], v_[j], i_[j], h_[j], total_[j]);
              if (vsp) std::copy(v_, v_ + n, vsp + row);
              if (!save) continue;
              // The entries in the band, in order: a word of band flags per 64 elements, then
              // its set bits, each listed with u = h - theta (the surrogate follows per task).
              for (int64_t j0 = 0; j0 < n; j0 += 64) {
                uint64_t word = 0;
                if (j0 + 64 <= n) {
                  for (int64_t l = 0; l < 64; l += kLanes<T>)
                    word |= uint64_t(band_bits(h_ + j0 + l, th + j0 + l, bd)) << l;
                } else {
                  for (int64_t j = j0; j < n; ++j) {
                    const T u = h_[j] - th[j];
                    word |= uint64_t((u < T(0) ? -u : u) < bd) << (j - j0);
                  }
                }
                for (; word; word &= word - 1) {
                  const int64_t j = j0 + __builtin_ctzll(word);
                  fi.push_back(static_cast<int32_t>(row + j));
                  fs.push_back(h_[j] - th[j]);
                }
              }
              if (gp)
                for (int64_t j = 0; j < n; ++j) {
                  if (o[j] == T(0)) continue;
                  if (c.timing == SAME)
                    set_bit(row + j);
                  else if (t + 1 < T_)
                    set_bit(row + j + M);
                }
            }
            for (int64_t j = 0; j < n; ++j) {
              vTp[m0 + j] = v_[j];
              if (iTp) iTp[m0 + j] = i_[j];
            }
          }
          for (T& u : fs) u = sg_at(c, u);  // f'(u) of the task's entries: vectorises
        }
      });
    });
    int64_t total = 0;
    std::vector<int64_t> offset(tasks);
    for (int64_t task = 0; task < tasks; ++task) offset[task] = total, total += found_idx[task].size();
    idx = at::empty({total}, x.options().dtype(at::kInt));
    sg = x.new_empty({total});
    int32_t* ip = idx.data_ptr<int32_t>();
    T* sp = sg.data_ptr<T>();
    at::parallel_for(0, tasks, 1, [&](int64_t tb, int64_t te) {
      for (int64_t task = tb; task < te; ++task) {
        std::copy(found_idx[task].begin(), found_idx[task].end(), ip + offset[task]);
        std::copy(found_sg[task].begin(), found_sg[task].end(), sp + offset[task]);
      }
    });
  });
  return {out, vT, iT, vseq, idx, sg, gates};
}

std::vector<at::Tensor> sparse_backward(const at::Tensor& g_out, const at::Tensor& g_tap, const at::Tensor& g_v,
                                        const at::Tensor& g_i, const at::Tensor& g_vseq, const at::Tensor& idx,
                                        const at::Tensor& sg, const at::Tensor& gates, const at::Tensor& b,
                                        const at::Tensor& alpha, const std::vector<double>& cfg, int64_t steps,
                                        int64_t states, const std::vector<bool>& needs) {
  const Cfg c = Cfg::from(cfg);
  const int64_t T_ = steps, M = states, n = idx.numel();
  TORCH_CHECK(g_out.numel() == 0 || g_out.numel() == T_ * M, "snnopt sparse backward: dL/ds has ", g_out.numel(),
              " values for ", T_, " x ", M, " states");
  TORCH_CHECK(g_tap.numel() == 0 || g_tap.numel() == n, "snnopt sparse backward: the tap has ", g_tap.numel(),
              " values for ", n, " active entries");
  TORCH_CHECK(sg.numel() == n, "snnopt sparse backward: ", sg.numel(), " surrogate values for ", n, " active entries");
  const bool gated = c.spiking() && c.reset == ZERO, same = c.timing == SAME;
  TORCH_CHECK(!gated || gates.numel() * 8 >= T_ * M, "snnopt sparse backward: a reset to a fixed value needs the ",
              "reset gates its forward saved (got ", gates.numel(), " bytes for ", T_ * M, " states)");
  // The common case (no reset gate, recorded membrane or current, dL/dx wanted) reads the
  // entries by block and step and writes every value of gx once; the others scan a dense g.
  const bool common = !gated && g_vseq.numel() == 0 && !c.has_current() && !c.discards_input && needs[0];
  auto gx = needs[0] ? (common ? sg.new_empty({T_, M}) : at::zeros({T_, M}, sg.options())) : empty_like0(sg);
  auto gv0 = needs[1] ? sg.new_empty({M}) : empty_like0(sg);
  auto gi0 = needs[2] && c.has_current() ? sg.new_empty({M}) : empty_like0(sg);
  AT_DISPATCH_FLOATING_TYPES(sg.scalar_type(), "snnopt_sparse_backward", [&] {
    using T = scalar_t;
    const int32_t* ip = idx.data_ptr<int32_t>();
    const T *sgp = sg.data_ptr<T>(), *go = ptr_or_null<T>(g_out), *tap = ptr_or_null<T>(g_tap);
    auto state = [&](int64_t a) {  // the state k of entry a, checked
      const int64_t k = ip[a];
      TORCH_CHECK(k >= 0 && k < T_ * M, "snnopt sparse backward: active entry ", k, " outside the ", T_, " x ", M,
                  " states");
      return k;
    };
    auto value = [&](int64_t a, int64_t k) {  // g = dL/ds f' of entry a (state k); dL/ds: output + tap
      const T ds = go && tap ? go[k] + tap[a] : go ? go[k] : tap ? tap[a] : T(0);
      return ds * sgp[a];
    };
    const T *gvp = ptr_or_null<T>(g_v), *gip = ptr_or_null<T>(g_i), *gsp = ptr_or_null<T>(g_vseq);
    const auto p = params_of<T>(b, b, alpha, alpha.new_empty({0}), M);
    const T *bp = p.b, *ap = alpha.numel() ? p.alpha : nullptr;
    const uint8_t* bits = gated ? gates.data_ptr<uint8_t>() : nullptr;
    T *gxp = mut_or_null<T>(gx), *gv0p = mut_or_null<T>(gv0), *gi0p = mut_or_null<T>(gi0);
    const T scale = T(c.scale);
    const bool want_x = gxp || gi0p;
    if (common) {
      // delta_t = g_t + b delta_{t+1}, branch-free so that it vectorises, with g_t added from
      // the entries of the block at step t: grouped by key = block T + t (a stable counting
      // sort; col = the element in its block).
      const int64_t blocks = (M + kBlock - 1) / kBlock;
      std::vector<int64_t> first(blocks * T_ + 1, 0);
      std::vector<int64_t> keys(n);
      std::vector<int16_t> in_block(n), col(n);
      std::vector<T> val(n);
      const Divider by_m(static_cast<uint32_t>(M));
      for (int64_t a = 0; a < n; ++a) {
        const uint32_t k = static_cast<uint32_t>(state(a)), t = by_m(k), m = k - t * static_cast<uint32_t>(M);
        in_block[a] = static_cast<int16_t>(m % kBlock);
        ++first[(keys[a] = (m / kBlock) * T_ + t) + 1];
      }
      for (int64_t key = 0; key < blocks * T_; ++key) first[key + 1] += first[key];
      {
        std::vector<int64_t> next(first.begin(), first.end() - 1);
        for (int64_t a = 0; a < n; ++a) {
          const int64_t s = next[keys[a]]++;
          col[s] = in_block[a];
          val[s] = value(a, ip[a]);
        }
      }
      at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
        T carry[kBlock], delta[kBlock];
        for (int64_t blk = b0; blk < b1; ++blk) {
          const int64_t m0 = blk * kBlock, w = std::min(kBlock, M - m0);
          const T* beta = bp + m0;
          init_state(carry, gvp, m0, w);
          for (int64_t t = T_ - 1; t >= 0; --t) {
            for (int64_t j = 0; j < w; ++j) delta[j] = T(0) + carry[j];  // (+0: as the dense g's zeros add)
            for (int64_t s = first[blk * T_ + t]; s < first[blk * T_ + t + 1]; ++s) delta[col[s]] += val[s];
            T* row = gxp + t * M + m0;
            for (int64_t j = 0; j < w; ++j) {
              carry[j] = beta[j] * delta[j];
              row[j] = delta[j] * scale;
            }
          }
          if (gv0p) std::copy(carry, carry + w, gv0p + m0);
        }
      });
      return;
    }
    auto g = gxp ? gx : at::zeros({T_, M}, sg.options());  // read, then overwritten by dL/dx
    T* gp = g.data_ptr<T>();
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {  // indices are distinct
      for (int64_t a = begin; a < end; ++a) {
        const int64_t k = state(a);
        gp[k] = value(a, k);
      }
    });
    at::parallel_for(0, M, kGrain, [&](int64_t begin, int64_t end) {
      T carry_[kBlock], cur_[kBlock];
      for (int64_t m0 = begin; m0 < end; m0 += kBlock) {
        const int64_t n = std::min(kBlock, end - m0);
        init_state(carry_, gvp, m0, n);
        init_state(cur_, gip, m0, n);
        for (int64_t t = T_ - 1; t >= 0; --t) {
          for (int64_t j = 0; j < n; ++j) {
            const int64_t m = m0 + j, k = t * M + m;
            const T beta = bp[m];
            T &carry = carry_[j], &cur = cur_[j];
            if (gsp) carry += gsp[k];
            const T keep = bits ? T(1) - T((bits[k >> 3] >> (k & 7)) & 1) : T(1);
            const T delta = gp[k] + (same ? carry * keep : carry);
            carry = same ? beta * delta : beta * keep * delta;
            if (!want_x) continue;
            T gin = c.discards_input ? delta * keep : delta;
            if (c.scale != 1.0) gin = gin * scale;
            if (c.has_current()) gin = current_backward_step(c, gin, cur, ap[m]);
            if (gxp) gxp[k] = gin;
          }
        }
        for (int64_t j = 0; j < n; ++j) {
          if (gv0p) gv0p[m0 + j] = carry_[j];
          if (gi0p) gi0p[m0 + j] = cur_[j];
        }
      }
    });
  });
  return {gx, gv0, gi0};
}

}  // namespace cpu
}  // namespace snnopt
