"""Plain-torch reference of the sparse (SSGD, Perez-Nieves & Goodman 2021) neuron ops.

Forward spikes are those of the dense scan.  The backward keeps the surrogate only on
the active set ``A = {(t, b, j): |h - theta| < band}`` and treats the reset as
detached, so the state Jacobian is ``beta * m_t`` with ``m_t = 1`` for subtract or no
reset and ``m_t = 1 - q_t`` for a reset to a fixed value, ``q_t`` the reset gate: the
spike ``s_t`` (same-step reset) or the pending reset ``r_t = H(h_{t-1} - theta)``
(next-step reset, ``h_{-1} = v_0``).  With ``C`` the gradient of the carried state
(``C = dL/dv_T`` before the last step, plus ``dL/dv_t`` at each step when the states
are recorded):

    g[t]     = dL/ds[t] * f'(h[t] - theta) * 1[(t, b, j) in A]
    same:    delta[t] = g[t] + m_t C,   C <- beta delta[t]
    next:    delta[t] = g[t] + C,       C <- beta m_t delta[t]
    dL/dv_0  = C after t = 0

so ``delta[t] = dL/dh[t] = sum_{k >= t} beta^(k - t) g[k]`` up to the first reset to a
fixed value in between.  A next-step reset that discards the input (snnTorch Synaptic,
``h_t = (beta h_{t-1} + in_t)(1 - r_t)``) gates the input gradient by ``1 - r_t`` too.  The
input gradient is ``scale * delta`` (lif, if), or, through a synaptic current, the reverse
current filter of :mod:`.dense`.  For a fused synapse ``I = syn(x)`` (Linear or Conv2d) the
op also returns ``dW``/``db``/``dX`` from it.

Saved for backward: the active set as flat int32 indices into ``[T, B, ...]`` plus ``f'``
there; for a reset to a fixed value the gates ``q`` bit-packed (8 per byte); for the
fused op the input spikes bit-packed when they are binary.  Never a float ``[T, B, N]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...spec import Config
from ...surrogate import heaviside, surrogate_grad
from .dense import _beta, scan_forward


def _bit_weights(device):
    return (2 ** torch.arange(8, device=device, dtype=torch.int32)).to(torch.uint8)


def pack_bits(x: torch.Tensor) -> torch.Tensor:
    """Pack a binary tensor into uint8, 8 values per byte (flattened, zero padded);
    returns an empty tensor when ``x`` is not binary (it is then saved as it is)."""
    flat = x.reshape(-1)
    if not bool(((flat == 0) | (flat == 1)).all()):
        return x.new_empty(0, dtype=torch.uint8)
    pad = (-flat.numel()) % 8
    bits = torch.cat([flat, flat.new_zeros(pad)]).to(torch.uint8).view(-1, 8)
    return (bits * _bit_weights(x.device)).sum(1, dtype=torch.int32).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, shape, dtype) -> torch.Tensor:
    n = 1
    for d in shape:
        n *= d
    bits = (packed.to(torch.int32).unsqueeze(1) >> torch.arange(8, device=packed.device, dtype=torch.int32)) & 1
    return bits.reshape(-1)[:n].reshape(shape).to(dtype)


def active_set(h, theta, cfg: Config, band: float):
    """Flat int32 indices of ``|h - theta| < band`` and ``f'`` there (NaN is never active)."""
    u = h - theta
    idx = torch.nonzero(u.abs().reshape(-1) < band).squeeze(1)
    sg = surrogate_grad(u.reshape(-1)[idx], cfg.sg_code, cfg.sg_param)
    return idx.to(torch.int32), sg


def gated(cfg: Config) -> bool:
    """Whether the sparse backward needs the reset gates (a reset to a fixed value)."""
    return cfg.spiking and cfg.reset == "zero"


def reset_gates(out, v0, theta, cfg: Config) -> torch.Tensor:
    """The gates ``q`` (``[T, B, ...]``, bit-packed): spikes for a same-step reset, pending
    resets ``H(h_{t-1} - theta)`` (from the spikes and ``v_0``) for a next-step reset."""
    if cfg.timing == "same":
        return pack_bits(out)
    first = torch.zeros_like(out[0]) if v0 is None else v0.expand_as(out[0])
    first = heaviside(first - theta, cfg.fire_ge)
    return pack_bits(torch.cat([first.unsqueeze(0), out[:-1]]))


def scan_forward_sparse(x, v0, i0, beta, alpha, theta, cfg: Config, band: float, save: bool, record: bool = False):
    """``(out, v_T, i_T, v_seq, idx, sg, gates)``; ``v_seq`` (the state after every step)
    empty unless ``record``, ``idx``/``sg``/``gates`` empty unless ``save`` (``gates`` also
    unless :func:`gated`)."""
    if cfg.generic:  # input-discarding reset: the state sequence is the membrane h
        out, v_T, i_T, v_seq, _, _ = scan_forward(x, v0, i0, beta, alpha, theta, cfg, False, record or save)
        h, v_seq = v_seq, (v_seq if record else x.new_empty(0))
    else:
        out, v_T, i_T, v_seq, h, _ = scan_forward(x, v0, i0, beta, alpha, theta, cfg, save=save, record=record)
    no_gates = x.new_empty(0, dtype=torch.uint8)
    if not save:
        return out, v_T, i_T, v_seq, x.new_empty(0, dtype=torch.int32), x.new_empty(0), no_gates
    idx, sg = active_set(h, theta, cfg, band)
    return out, v_T, i_T, v_seq, idx, sg, (reset_gates(out, v0, theta, cfg) if gated(cfg) else no_gates)


def delta_scan(g_out, g_v, idx, sg, gates, beta, cfg: Config, shape, g_vseq=None, g_tap=None):
    """``(delta, dL/dv_0)`` with ``delta = dL/dh`` by the reverse scan of the module docstring;
    ``dL/ds`` on the active set is ``g_out`` there plus ``g_tap`` (one value per entry; either
    may be None); ``g_vseq``, the gradient of recorded states (dense), adds to ``C`` at every
    step."""
    g = torch.zeros(shape, dtype=sg.dtype, device=sg.device).reshape(-1)
    if idx.numel() and (g_out is not None or g_tap is not None):
        i = idx.long()
        ds = g_tap if g_out is None else g_out.reshape(-1)[i] if g_tap is None else g_out.reshape(-1)[i] + g_tap
        g[i] = ds * sg
    g = g.reshape(shape)
    keep = 1 - unpack_bits(gates, shape, g.dtype) if gated(cfg) else None
    b = _beta(beta, cfg)
    same = cfg.timing == "same"
    delta = torch.empty_like(g)
    carry = torch.zeros_like(g[0]) if g_v is None else g_v.expand_as(g[0])
    for t in range(shape[0] - 1, -1, -1):
        if g_vseq is not None:
            carry = carry + g_vseq[t]
        delta[t] = g[t] + (carry * keep[t] if keep is not None and same else carry)
        carry = b * delta[t] if keep is None or same else b * keep[t] * delta[t]
    return delta, carry


def input_gate(delta, gates, cfg: Config):
    """``dL/d in_t``: ``delta`` itself, or ``(1 - r_t) delta`` for an input-discarding reset
    (``h_t = (beta h_{t-1} + in_t)(1 - r_t)``)."""
    return delta * (1 - unpack_bits(gates, delta.shape, delta.dtype)) if cfg.discards_input else delta


def current_backward(delta, g_i, alpha, cfg: Config, need_i0: bool):
    """``(dL/dx, dL/di_0)`` from ``delta = dL/dh``: ``scale * delta`` without a current,
    else the reverse current filter (``D`` = gradient of the carried current):
    before: ``gI_t = scale delta_t + D``, ``D <- alpha gI_t``;
    after:  ``gI_t = scale delta_t + alpha D``, ``D <- gI_t``."""
    g_in = delta * cfg.scale if cfg.scale != 1.0 else delta
    if not cfg.has_current:
        return g_in, None
    carry = torch.zeros_like(delta[0]) if g_i is None else g_i.expand_as(delta[0])
    gx = torch.empty_like(delta)
    for t in range(delta.shape[0] - 1, -1, -1):
        if cfg.current_decay == "after":
            gx[t] = g_in[t] + alpha * carry
            carry = gx[t]
        else:
            gx[t] = g_in[t] + carry
            carry = alpha * gx[t]
    return gx, (carry.clone() if need_i0 else None)


def neuron_sparse_backward(g_out, g_v, g_i, g_vseq, idx, sg, gates, beta, alpha, cfg: Config, shape, needs,
                           g_tap=None):
    """``(dL/dx, dL/dv_0, dL/di_0)``, None where ``needs`` (x, v0, i0) is False; ``dL/ds`` is
    ``g_out`` (or None) plus ``g_tap`` on the active set (one value per entry, or None)."""
    need_x, need_v0, need_i0 = needs
    delta, gv0 = delta_scan(g_out, g_v, idx, sg, gates, beta, cfg, shape, g_vseq, g_tap)
    delta = input_gate(delta, gates, cfg)
    gx, gi0 = current_backward(delta, g_i, alpha, cfg, need_i0) if (need_x or need_i0) else (None, None)
    return (gx if need_x else None), (gv0 if need_v0 else None), gi0


def synapse(x, weight, bias, syn: int, stride, padding, dilation, groups):
    """``I = syn(x)`` applied per step on ``x [T, B, ...]`` (syn 0: linear, 1: conv2d)."""
    if syn == 0:
        return F.linear(x, weight, bias)
    y = F.conv2d(x.flatten(0, 1), weight, bias, stride, padding, dilation, groups)
    return y.unflatten(0, x.shape[:2])


def synapse_backward(gI, x, weight, syn: int, stride, padding, dilation, groups, needs, x_active=None,
                     compact=False):
    """``(dX, dW, db)`` of ``I = syn(x)`` given ``gI = dL/dI``; with ``x_active`` (flat int32
    indices into ``x``) ``dX`` only there: zero elsewhere, or, if ``compact``, one value per
    index."""
    dX, dW, db = _synapse_backward(gI, x, weight, syn, stride, padding, dilation, groups, needs)
    if dX is not None and x_active is not None:
        dX = dX.reshape(-1)[x_active.long()] if compact else only_at(dX, x_active)
    return dX, dW, db


def only_at(t, flat_idx):
    """``t`` where its flat index is listed in ``flat_idx``, zero elsewhere."""
    out = torch.zeros_like(t).reshape(-1)
    i = flat_idx.long()
    out[i] = t.reshape(-1)[i]
    return out.reshape(t.shape)


def _synapse_backward(gI, x, weight, syn: int, stride, padding, dilation, groups, needs):
    need_x, need_w, need_b = needs
    if syn == 0:
        gI2 = gI.reshape(-1, gI.shape[-1])
        dW = gI2.t() @ x.reshape(-1, x.shape[-1]) if need_w else None
        db = gI2.sum(0) if need_b else None
        dX = gI @ weight if need_x else None
        return dX, dW, db
    # one call for all three, as autograd makes it (separate calls repeat the unfolding)
    dX, dW, db = torch.ops.aten.convolution_backward(gI.flatten(0, 1), x.flatten(0, 1), weight, [weight.shape[0]],
                                                     stride, padding, dilation, False, [0, 0], groups,
                                                     [need_x, need_w, need_b])
    return (dX.unflatten(0, x.shape[:2]) if need_x else None), (dW if need_w else None), (db if need_b else None)
