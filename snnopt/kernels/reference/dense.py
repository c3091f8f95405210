"""Plain-torch reference of the fused neuron scan: forward, exact BPTT backward, rate statistics.

Notation (see :mod:`snnopt.spec`): ``b`` = beta (1 for ``if``), ``c = (1 - b) * v_rest``,
``in_t`` the (current-filtered, scaled) input, ``h_t`` the thresholded membrane,
``s_t = H(h_t - theta)``, ``f'_t = f'(h_t - theta)``, ``nd = not detach_reset``.

Same-step reset: ``p_t = R(h_t, s_t)`` is the carried state and ``h_{t+1} = b p_t + c + in_{t+1}``.
Reverse sweep, with ``gp`` = dL/dp_t (initialised with dL/dv_T):

    gu_t   = dL/ds_t + nd * gp * dR/ds          (subtract: -theta, zero: v_reset - h)
    gh_t   = gu_t f'_t + gp * dR/dh             (subtract, none: 1, zero: 1 - s)
    gtheta += -gu_t f'_t - gp * s_t [subtract]
    gbeta  += gh_t * (p_{t-1} - v_rest)
    gp     <- b * gh_t                           (dL/dp_{t-1}; dL/dv_0 after t = 0)

Next-step reset: the state is ``h_t`` and ``h_{t+1} = b h_t + c + in_{t+1} - rho(h_t, s_t)``
with ``rho`` = ``theta s`` (subtract) or ``b s (h - v_reset)`` (zero); ``h_{-1} = v_0``.
The carry is dL/dh_t along the state path, multiplied at each step by the
Jacobian ``J_t = b - drho/dh - nd * drho/ds * f'_t``.

Current kinds (cuba_lif, cuba_li) filter the input first, in the eager order of
operations: ``I_t = alpha i_{t-1} + x_t`` and carried ``i_t = I_t`` ("before"), or
``I_t = i_{t-1} + x_t`` and carried ``i_t = alpha I_t`` ("after", Norse); ``in_t = scale I_t``.
With ``gI_t`` = dL/dI_t and ``D_t`` = dL/d(carried i_t) (``D_{T-1}`` = dL/di_T):

    before:  gI_t = scale gh_t + D_t,        D_{t-1} = alpha gI_t,  galpha += gI_t i_{t-1}
    after:   gI_t = scale gh_t + alpha D_t,  D_{t-1} = gI_t,        galpha += D_t I_t

and ``dL/dx_t = gI_t``, ``dL/di_0 = D_{-1}``.

The Euler form (``cfg.euler``, Norse) charges ``h_t = v + scale ((v_rest - v) + I_t)`` and
carries ``I_t + (alpha - 1) I_t``: the derivatives above (``b = 1 - scale``), Norse's rounding.
The divided form (SpikingJelly) charges ``h_t = v + (I_t - (v - v_rest)) / tau`` (or
``v - (v - v_rest) / tau + I_t`` where ``scale`` is 1): the same with ``b = 1 - 1/tau``.

The saved tensors are the membrane sequence ``h`` and, for current kinds, ``I``;
spikes and surrogate values are recomputed from them in the backward.
"""

from __future__ import annotations

import torch

from ...nn.functional import form_charge
from ...spec import Config
from ...surrogate import heaviside, surrogate_grad
from . import generic


def _beta(beta, cfg: Config):
    return 1.0 if cfg.kind == "if" or beta is None else beta


def _leak_const(b, cfg: Config):
    return 0.0 if cfg.kind == "if" or cfg.v_rest == 0.0 else (1 - b) * cfg.v_rest


def post_reset(h, s, theta, cfg: Config):
    """The same-step state ``p = R(h, s)``."""
    if not cfg.spiking or cfg.reset == "none":
        return h
    if cfg.reset == "subtract":
        return h - theta * s
    return h * (1 - s) + cfg.v_reset * s


def current_step(i, x, alpha, cfg: Config):
    """``(I_t, carried i_t)`` of the synaptic current filter."""
    if cfg.current_decay == "after":
        total = i + x
        return total, (total + total.new_tensor(cfg.syn_rate) * total) if cfg.euler else alpha * total
    total = alpha * i + x
    return total, total


def next_charge(v, b, c, inp, theta, cfg: Config):
    """``h_t`` for next-step reset from the previous state ``v = h_{t-1}``."""
    if cfg.reset == "none":
        return b * v + c + inp
    s_prev = heaviside(v - theta, cfg.fire_ge)
    if cfg.reset == "subtract":
        return b * v + c + inp - theta * s_prev
    return b * (v * (1 - s_prev) + cfg.v_reset * s_prev) + c + inp


def state_derivative(h, theta, cfg: Config):
    """``dv_t/dh_t``: the carried state's derivative w.r.t. the membrane (the surrogate
    stands in for dH); 1 unless the state is reset in the same step."""
    if not cfg.spiking or cfg.reset == "none" or cfg.timing != "same":
        return torch.ones_like(h)
    u = h - theta
    sp = surrogate_grad(u, cfg.sg_code, cfg.sg_param) if not cfg.detach else 0.0
    if cfg.reset == "subtract":
        return 1 - theta * sp
    return (1 - heaviside(u, cfg.fire_ge)) + (cfg.v_reset - h) * sp


def state_jacobian(h, b, theta, cfg: Config):
    """``J = dh_{t+1}/dh_t`` along the state path (the surrogate stands in for dH)."""
    if not cfg.spiking or cfg.reset == "none" or cfg.timing == "same":
        return b * state_derivative(h, theta, cfg)
    u = h - theta
    s = heaviside(u, cfg.fire_ge)
    sp = surrogate_grad(u, cfg.sg_code, cfg.sg_param) if not cfg.detach else 0.0
    if cfg.reset == "subtract":
        return b - theta * sp
    return b * (1 - s) - b * (h - cfg.v_reset) * sp


def scan_forward(x, v0, i0, beta, alpha, theta, cfg: Config, save: bool, record: bool = False):
    """Run the neuron over ``x [T, B, ...]``.

    Returns ``(out, v_T, i_T, v_seq, h, i_seq)``: ``v_seq`` (the state after every step)
    is empty unless ``record``, ``h``/``i_seq`` are empty unless ``save``
    (``i_seq`` and ``i_T`` are empty for kinds without a current).  For
    ``cfg.generic`` dynamics the saved sequence is ``x`` (see :mod:`.generic`).
    """
    if cfg.generic:
        return generic.scan_forward(x, v0, i0, beta, alpha, theta, cfg, save, record)
    T = x.shape[0]
    b = _beta(beta, cfg)
    c = _leak_const(b, cfg)
    v = torch.zeros_like(x[0]) if v0 is None else v0.expand_as(x[0])
    cur = None
    if cfg.has_current:
        cur = torch.zeros_like(x[0]) if i0 is None else i0.expand_as(x[0])
    out = torch.empty_like(x)
    hs = torch.empty_like(x) if save else x.new_empty(0)
    iseq = torch.empty_like(x) if save and cur is not None else x.new_empty(0)
    vseq = torch.empty_like(x) if record else x.new_empty(0)
    for t in range(T):
        inp = x[t]
        if cur is not None:
            inp, cur = current_step(cur, inp, alpha, cfg)
            if save:
                iseq[t] = inp
        if cfg.scales_in_charge:
            h = form_charge(v, inp, cfg)
        elif cfg.scale != 1.0:
            inp = cfg.scale * inp
        if not cfg.spiking:
            v = h if cfg.scales_in_charge else b * v + c + inp
            out[t] = v
            if save:
                hs[t] = v
            if record:
                vseq[t] = v
            continue
        if not cfg.scales_in_charge:
            h = next_charge(v, b, c, inp, theta, cfg) if cfg.timing == "next" else b * v + c + inp
        s = heaviside(h - theta, cfg.fire_ge)
        out[t] = s
        if save:
            hs[t] = h
        v = h if cfg.timing == "next" else post_reset(h, s, theta, cfg)
        if record:
            vseq[t] = v
    return out, v, (cur if cur is not None else x.new_empty(0)), vseq, hs, iseq


def scan_backward(g_out, g_v, g_i, g_vseq, h, iseq, v0, i0, beta, alpha, theta, cfg: Config, needs):
    """Exact BPTT through the scan (``g_vseq``: gradient of the recorded states, or None).
    ``needs`` = which of ``(x, v0, i0, beta, alpha, theta)``
    need a gradient. Returns the gradients in that order (``None`` where not needed)."""
    if cfg.generic:
        return generic.scan_backward(g_out, g_v, g_i, g_vseq, h, v0, i0, beta, alpha, theta, cfg, needs)
    need_x, need_v0, need_i0, need_b, need_a, need_th = needs
    T = h.shape[0]
    b = _beta(beta, cfg)
    feat = h.shape[1:]
    zeros = h.new_zeros(feat)
    v0z = zeros if v0 is None else v0.expand(feat)
    g_out = torch.zeros_like(h) if g_out is None else g_out
    gx = torch.empty_like(h) if need_x else None
    gb = torch.zeros_like(zeros) if need_b else None
    ga = torch.zeros_like(zeros) if need_a else None
    gth = torch.zeros_like(zeros) if need_th else None
    cuba = cfg.has_current
    gi_acc = (zeros if g_i is None else g_i.expand(feat)).clone()
    carry = (zeros if g_v is None else g_v.expand(feat)).clone()  # dL/dp_t (same) or dL/dh_t (next)
    nd = not cfg.detach
    next_timing = cfg.timing == "next" and cfg.spiking and cfg.reset != "none"
    for t in range(T - 1, -1, -1):
        if g_vseq is not None:
            carry = carry + g_vseq[t]
        ht = h[t]
        h_prev = h[t - 1] if t > 0 else v0z
        if not cfg.spiking:
            gh = g_out[t] + carry
        else:
            u = ht - theta
            sp = surrogate_grad(u, cfg.sg_code, cfg.sg_param)
            if next_timing:
                gh = g_out[t] * sp + carry
                if need_th:
                    gth -= g_out[t] * sp
            else:
                s = heaviside(u, cfg.fire_ge)
                gu = g_out[t]
                if cfg.reset == "subtract":
                    dpdh, dpds = 1.0, -theta
                elif cfg.reset == "zero":
                    dpdh, dpds = 1 - s, cfg.v_reset - ht
                else:
                    dpdh, dpds = 1.0, 0.0
                if nd and cfg.reset != "none":
                    gu = gu + carry * dpds
                gh = gu * sp + carry * dpdh
                if need_th:
                    gth -= gu * sp
                    if cfg.reset == "subtract":
                        gth -= carry * s
        if next_timing:
            u_p = h_prev - theta
            s_p = heaviside(u_p, cfg.fire_ge)
            if need_th:
                if cfg.reset == "subtract":
                    gth -= gh * s_p
                if nd:
                    drho_ds = theta if cfg.reset == "subtract" else b * (h_prev - cfg.v_reset)
                    gth += gh * drho_ds * surrogate_grad(u_p, cfg.sg_code, cfg.sg_param)
            if need_b:
                dbeta = h_prev - cfg.v_rest
                if cfg.reset == "zero":
                    dbeta = dbeta - s_p * (h_prev - cfg.v_reset)
                gb += gh * dbeta
        elif need_b:
            p_prev = h_prev if t == 0 or not cfg.spiking else \
                post_reset(h_prev, heaviside(h_prev - theta, cfg.fire_ge), theta, cfg)
            gb += gh * (p_prev - cfg.v_rest)
        gin = gh * cfg.scale if cfg.scale != 1.0 else gh
        if cuba:
            if cfg.current_decay == "after":
                if need_a:
                    ga += gi_acc * iseq[t]
                gin = gin + alpha * gi_acc
                gi_acc = gin
            else:
                gin = gin + gi_acc
                if need_a:
                    ga += gin * (iseq[t - 1] if t > 0 else (zeros if i0 is None else i0.expand(feat)))
                gi_acc = alpha * gin
        if need_x:
            gx[t] = gin
        carry = gh * state_jacobian(h_prev, b, theta, cfg) if next_timing else b * gh
    def reduce(g, p):
        return None if g is None else g.sum_to_size(p.shape)
    gv0 = carry if need_v0 else None
    gi0 = gi_acc if (need_i0 and cuba) else None
    return (gx, gv0, gi0, reduce(gb, beta) if need_b else None, reduce(ga, alpha) if need_a else None,
            reduce(gth, theta) if need_th else None)


def rate_stats(x, v0, i0, beta, alpha, theta, cfg: Config, record: bool = False):
    """Spike pass of rate-based backprop: ``(out, v_T, i_T, v_seq, r, e, v_bar, e_v)`` with
    ``r = mean_t out_t`` and eligibility ``e = mean_t kappa_t f'_t`` (``mean_t kappa_t``
    for non-spiking kinds), where ``kappa_t = sum_k dh_t/dx_k`` obeys
    ``kappa_t = scale * c_t + J_{t-1} kappa_{t-1}`` (``c_t = 1 + alpha c_{t-1}`` for
    current kinds, else 1).  So ``e = sum_k dr/dx_k`` under surrogate BPTT.  With
    ``record`` the membrane sequence ``v_seq`` is returned with its time average
    ``v_bar`` and ``e_v = mean_t (dv_t/dh_t) kappa_t = sum_k dv_bar/dx_k`` (else empty)."""
    if cfg.generic:
        return generic.rate_stats(x, v0, i0, beta, alpha, theta, cfg, record)
    out, v_T, i_T, v_seq, h, _ = scan_forward(x, v0, i0, beta, alpha, theta, cfg, save=True, record=record)
    T = x.shape[0]
    b = _beta(beta, cfg)
    kappa = torch.zeros_like(x[0])
    cur_k = torch.zeros_like(x[0])
    e = torch.zeros_like(x[0])
    e_v = torch.zeros_like(x[0]) if record else x.new_empty(0)
    for t in range(T):
        cur_k = (1 + alpha * cur_k) if cfg.has_current else torch.ones_like(cur_k)
        if t == 0:
            kappa = cfg.scale * cur_k
        else:
            kappa = cfg.scale * cur_k + state_jacobian(h[t - 1], b, theta, cfg) * kappa
        if cfg.spiking:
            e += kappa * surrogate_grad(h[t] - theta, cfg.sg_code, cfg.sg_param)
        else:
            e += kappa
        if record:
            e_v += state_derivative(h[t], theta, cfg) * kappa
    v_bar = v_seq.mean(0) if record else x.new_empty(0)
    return out, v_T, i_T, v_seq, out.mean(0), e / T, v_bar, (e_v / T if record else e_v)
