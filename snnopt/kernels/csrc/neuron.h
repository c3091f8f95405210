// Neuron dynamics shared by the CPU (C++) and CUDA kernels of snnopt.
//
// Every function here is the scalar form of the plain-torch reference in
// snnopt/kernels/reference/dense.py, written with the same order of floating-point
// operations so that the forward is bit-identical to it (build with -ffp-contract=off /
// --fmad=false: a fused multiply-add would round differently).
//
// Notation: b = beta (1 for `if`), c = (1 - b) * v_rest (precomputed by the caller in the
// reference's dtype and cast, as the reference does), theta = threshold.
#pragma once

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__CUDACC__)
#define SNN_HD __host__ __device__ __forceinline__
#else
#define SNN_HD inline
#endif

namespace snnopt {

enum Kind : int { LIF = 0, CUBA_LIF = 1, IF = 2, LI = 3, CUBA_LI = 4 };
enum Reset : int { SUBTRACT = 0, ZERO = 1, NONE = 2 };
enum Timing : int { SAME = 0, NEXT = 1, SAME_PENDING = 2 };
enum Surrogate : int {
  ATAN = 0,
  FAST_SIGMOID = 1,
  SIGMOID = 2,
  TRIANGLE = 3,
  RECTANGLE = 4,
  STRAIGHT_THROUGH = 5,
  SNNTORCH_TRIANGULAR = 6
};

// The decoded `float[] cfg` of the ops (snnopt.spec.NeuronSpec.op_config).
struct Cfg {
  int kind, reset, timing;
  bool fire_ge, detach;
  int sg;
  double sg_param, scale, v_reset, v_rest;
  bool discards_input, decay_after;
  bool euler;       // Norse's Euler step (snnopt.spec: integration "euler")
  double syn_rate;  // its current decay alpha - 1
  bool by_tau;      // SpikingJelly's divided form (integration "tau")
  double tau;       // its divisor

  SNN_HD bool spiking() const { return kind != LI && kind != CUBA_LI; }
  SNN_HD bool has_current() const { return kind == CUBA_LIF || kind == CUBA_LI; }
  // Next-step reset with an actual reset (the reference's `next_timing`).
  SNN_HD bool next() const { return timing == NEXT && spiking() && reset != NONE; }
  // Dynamics the kernels do not cover (the reference differentiates them with autograd).
  SNN_HD bool generic() const { return timing == SAME_PENDING || discards_input; }
  // The Euler and divided forms take the input unscaled: the charge applies scale.
  SNN_HD bool scales_in_charge() const { return euler || by_tau; }

  static constexpr size_t kSize = 14;  // the length of NeuronSpec.op_config()

  static Cfg from(const std::vector<double>& v) {
    if (v.size() != kSize) {
      throw std::invalid_argument("snnopt: cfg must hold " + std::to_string(kSize) + " values, got " +
                                  std::to_string(v.size()));
    }
    Cfg c;
    c.kind = static_cast<int>(v[0]);
    c.reset = static_cast<int>(v[1]);
    c.timing = static_cast<int>(v[2]);
    c.fire_ge = v[3] != 0.0;
    c.detach = v[4] != 0.0;
    c.sg = static_cast<int>(v[5]);
    c.sg_param = v[6];
    c.scale = v[7];
    c.v_reset = v[8];
    c.v_rest = v[9];
    c.discards_input = v[10] != 0.0;
    c.decay_after = v[11] != 0.0;
    c.euler = v[12] == 1.0;
    c.syn_rate = c.euler ? v[13] : 0.0;
    c.by_tau = v[12] == 2.0;
    c.tau = c.by_tau ? v[13] : 1.0;
    return c;
  }
};

// A configuration fixed at compile time: Fixed<...>::apply(c) returns c with the fields
// given (>= 0) replaced by constants, so that a kernel instantiated for it loses the
// branches on them (and vectorises); -1 keeps the runtime value.  FORM: the integration,
// decay (0), Euler (1) or divided (2).
template <int KIND, int RESET, int TIMING, int SG, int FORM = 0>
struct Fixed {
  static constexpr bool fixed = KIND >= 0;  // a specialised configuration (not Runtime)
  static SNN_HD Cfg apply(Cfg c) {
    if (KIND >= 0) c.kind = KIND;
    if (RESET >= 0) c.reset = RESET;
    if (TIMING >= 0) c.timing = TIMING;
    if (SG >= 0) c.sg = SG;
    if (KIND >= 0) c.discards_input = false;
    if (KIND >= 0) c.euler = FORM == 1;
    if (KIND >= 0) c.by_tau = FORM == 2;
    return c;
  }
};
using Runtime = Fixed<-1, -1, -1, -1>;

// with_fixed's dispatch over the common configurations (see below).
template <class F>
void with_common(const Cfg& c, bool uses_sg, F&& f) {
  const bool common = (c.kind == LIF || c.kind == IF) && (c.reset == SUBTRACT || c.reset == ZERO) &&
                      (c.timing == SAME || c.timing == NEXT) && !c.discards_input &&
                      (!uses_sg || c.sg == ATAN || c.sg == FAST_SIGMOID) &&
                      (!c.scales_in_charge() || (c.kind == LIF && c.timing == SAME));
  if (!common) return f(Runtime{});
  auto by_sg = [&](auto kind, auto reset, auto timing, auto form) {
    constexpr int K = decltype(kind)::value, R = decltype(reset)::value, Tm = decltype(timing)::value;
    constexpr int Fm = decltype(form)::value;
    if (!uses_sg) return f(Fixed<K, R, Tm, -1, Fm>{});
    if (c.sg == ATAN) return f(Fixed<K, R, Tm, ATAN, Fm>{});
    return f(Fixed<K, R, Tm, FAST_SIGMOID, Fm>{});
  };
  auto by_timing = [&](auto kind, auto reset) {
    using Same = std::integral_constant<int, SAME>;
    if constexpr (decltype(kind)::value == LIF) {  // the Euler and divided forms: same-step reset
      if (c.euler) return by_sg(kind, reset, Same{}, std::integral_constant<int, 1>{});
      if (c.by_tau) return by_sg(kind, reset, Same{}, std::integral_constant<int, 2>{});
    }
    if (c.timing == SAME) return by_sg(kind, reset, Same{}, std::integral_constant<int, 0>{});
    return by_sg(kind, reset, std::integral_constant<int, NEXT>{}, std::integral_constant<int, 0>{});
  };
  auto by_reset = [&](auto kind) {
    if (c.reset == SUBTRACT) return by_timing(kind, std::integral_constant<int, SUBTRACT>{});
    return by_timing(kind, std::integral_constant<int, ZERO>{});
  };
  if (c.kind == LIF) return by_reset(std::integral_constant<int, LIF>{});
  return by_reset(std::integral_constant<int, IF>{});
}

// Calls f(Fixed<...>{}) for the common configurations (lif / if, subtract or zero reset,
// same or next step, atan or fast-sigmoid surrogate when `uses_sg`, lif's Euler and divided
// forms too) and f(Runtime{}) otherwise.  Without Specialise (e.g. float64, which is not worth
// the code) only f(Runtime{}) is instantiated.
template <bool Specialise, class F>
void with_fixed(const Cfg& c, bool uses_sg, F&& f) {
  if constexpr (!Specialise) {
    return f(Runtime{});
  } else {
    with_common(c, uses_sg, f);
  }
}

// Calls f(std::true_type{}) when c.detach, else f(std::false_type{}): a kernel that fixes
// its Cfg's detach from the argument loses the select on it, which keeps a loop from
// vectorising (the condition is a run-time scalar).
template <class F>
void with_detach(const Cfg& c, F&& f) {
  if (c.detach) return f(std::true_type{});
  return f(std::false_type{});
}

// H(u): 1 where u > 0, and at u = 0 when ge; 0 otherwise (NaN included).  Arithmetic
// rather than a branch on ge, so that loops over it vectorise.
template <typename T>
SNN_HD T heaviside(T u, bool ge) {
  return T(u > T(0)) + T(u == T(0)) * T(ge);
}

// f'(u) of surrogate `code` with parameter p (snnopt.surrogate.surrogate_grad).
template <typename T>
SNN_HD T surrogate_grad(T u, int code, T p) {
  switch (code) {
    case ATAN: {
      const T a = T(1.5707963267948966) * p * u;
      return (p / T(2)) / (T(1) + a * a);
    }
    case FAST_SIGMOID: {
      const T d = p * (u < T(0) ? -u : u) + T(1);
      return T(1) / (d * d);
    }
    case SIGMOID: {
      const T s = T(1) / (T(1) + exp(-p * u));
      return p * s * (T(1) - s);
    }
    case TRIANGLE: {  // max(r, 0) / p with a NaN r kept, as torch.clamp_min
      const T r = T(1) - (u < T(0) ? -u : u) / p;
      return (r < T(0) ? T(0) : r) / p;
    }
    case RECTANGLE:
      return ((u < T(0) ? -u : u) < p / T(2)) ? T(1) / p : T(0);
    case STRAIGHT_THROUGH:
      return T(1);
    case SNNTORCH_TRIANGULAR:
      return u >= T(0) ? -p : p;
    default:
      return T(0);
  }
}

// f'(u) of the neuron's configured surrogate.
template <typename T>
SNN_HD T sg_at(const Cfg& c, T u) {
  return surrogate_grad(u, c.sg, T(c.sg_param));
}

// Synaptic current filter: returns I_t (the total input) and updates the carried current i.
template <typename T>
SNN_HD T current_step(const Cfg& c, T& i, T x, T alpha) {
  if (c.decay_after) {
    const T total = i + x;
    i = c.euler ? total + T(c.syn_rate) * total : alpha * total;
    return total;
  }
  const T total = alpha * i + x;
  i = total;
  return total;
}

// One reverse step of the current filter: g = dL/dI_t from the membrane, d = the gradient
// of the carried current (updated to the previous step's); returns dL/dx_t.
//   before: dL/dx_t = g + d, d <- alpha dL/dx_t;   after: dL/dx_t = g + alpha d, d <- dL/dx_t.
template <typename T>
SNN_HD T current_backward_step(const Cfg& c, T g, T& d, T alpha) {
  if (c.decay_after) {
    g = g + alpha * d;
    d = g;
  } else {
    g = g + d;
    d = alpha * g;
  }
  return g;
}

// Same-step post-reset state p = R(h, s).
template <typename T>
SNN_HD T post_reset(const Cfg& c, T h, T s, T theta) {
  if (!c.spiking() || c.reset == NONE) return h;
  if (c.reset == SUBTRACT) return h - theta * s;
  return h * (T(1) - s) + T(c.v_reset) * s;
}

// The scaled input in_t from I_t (the Euler and divided forms scale inside the charge).
template <typename T>
SNN_HD T scaled_input(const Cfg& c, T total) {
  return c.scales_in_charge() || c.scale == 1.0 ? total : T(c.scale) * total;
}

// Membrane h_t from the carried state v (h_{t-1} for next-step reset, p_{t-1} otherwise)
// and in_t (I_t itself in the Euler form, h = v + scale ((v_rest - v) + I), and in the divided
// form, h = v + (I - (v - v_rest)) / tau, or h = v - (v - v_rest) / tau + I where scale is 1).
template <typename T>
SNN_HD T charge(const Cfg& c, T v, T b, T cc, T inp, T theta) {
  if (c.euler) return v + T(c.scale) * ((T(c.v_rest) - v) + inp);
  if (c.by_tau) {
    const T off = v - T(c.v_rest);
    return c.scale == 1.0 ? v - off / T(c.tau) + inp : v + (inp - off) / T(c.tau);
  }
  if (!c.next()) return b * v + cc + inp;
  const T s_prev = heaviside(v - theta, c.fire_ge);
  if (c.reset == SUBTRACT) return b * v + cc + inp - theta * s_prev;
  return b * (v * (T(1) - s_prev) + T(c.v_reset) * s_prev) + cc + inp;
}

// dv_t/dh_t: the carried state's derivative w.r.t. the membrane (1 unless reset this step).
template <typename T>
SNN_HD T state_derivative(const Cfg& c, T h, T theta) {
  if (!c.spiking() || c.reset == NONE || c.timing != SAME) return T(1);
  const T u = h - theta;
  const T sp = c.detach ? T(0) : sg_at(c, u);
  if (c.reset == SUBTRACT) return T(1) - theta * sp;
  return (T(1) - heaviside(u, c.fire_ge)) + (T(c.v_reset) - h) * sp;
}

// J = dh_{t+1}/dh_t along the state path.
template <typename T>
SNN_HD T state_jacobian(const Cfg& c, T h, T b, T theta) {
  if (!c.spiking() || c.reset == NONE || c.timing == SAME) return b * state_derivative(c, h, theta);
  const T u = h - theta;
  const T s = heaviside(u, c.fire_ge);
  const T sp = c.detach ? T(0) : sg_at(c, u);
  if (c.reset == SUBTRACT) return b - theta * sp;
  return b * (T(1) - s) - b * (h - T(c.v_reset)) * sp;
}

}  // namespace snnopt
