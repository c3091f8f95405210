"""Plain-torch reference of the sparse (SSGD, Perez-Nieves & Goodman 2021) neuron ops.

Forward spikes are those of the dense scan.  The backward keeps the surrogate only on
the active set ``A = {(t, b, j): |h - theta| < band}`` and treats the reset as
detached, so along the membrane the Jacobian is ``beta`` and

    g[t]     = dL/ds[t] * f'(h[t] - theta) * 1[(t, b, j) in A]
    delta[t] = dL/dI[t] = sum_{k >= t} beta^(k - t) g[k]     (+ beta^(T-1-t) dL/dv_T)
    dx       = scale * delta,   dv_0 = beta * delta[0]

For a fused synapse ``I = syn(x)`` (Linear or Conv2d) the op also returns
``dW``/``db``/``dX`` from ``delta``.  Saved for backward: the active set as flat int32
indices into ``[T, B, ...]`` plus ``f'`` at those points, and for the fused op the
input spikes bit-packed (8 per byte) when they are binary; never a float ``[T, B, N]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...spec import Config
from ...surrogate import surrogate_grad
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


def scan_forward_sparse(x, v0, beta, theta, cfg: Config, band: float, save: bool):
    """``(out, v_T, idx, sg)``; ``idx``/``sg`` empty unless ``save``."""
    out, v_T, _, _, h, _ = scan_forward(x, v0, None, beta, None, theta, cfg, save=save)
    if save:
        idx, sg = active_set(h, theta, cfg, band)
    else:
        idx, sg = x.new_empty(0, dtype=torch.int32), x.new_empty(0)
    return out, v_T, idx, sg


def delta_scan(g_out, g_v, idx, sg, beta, cfg: Config, shape):
    """``delta = dL/dI`` from the active set by the reverse scan ``delta[t] = g[t] + beta delta[t+1]``."""
    g = torch.zeros(shape, dtype=sg.dtype, device=sg.device).reshape(-1)
    if g_out is not None and idx.numel():
        g[idx.long()] = g_out.reshape(-1)[idx.long()] * sg
    g = g.reshape(shape)
    b = _beta(beta, cfg)
    delta = torch.empty_like(g)
    carry = torch.zeros_like(g[0]) if g_v is None else g_v.expand_as(g[0])
    for t in range(shape[0] - 1, -1, -1):
        carry = g[t] + carry if t == shape[0] - 1 else g[t] + b * carry
        delta[t] = carry
    return delta, b * carry


def neuron_sparse_backward(g_out, g_v, idx, sg, beta, cfg: Config, shape, needs):
    need_x, need_v0 = needs
    delta, gv0 = delta_scan(g_out, g_v, idx, sg, beta, cfg, shape)
    gx = delta * cfg.scale if need_x else None
    return gx, (gv0 if need_v0 else None)


def synapse(x, weight, bias, syn: int, stride, padding, dilation, groups):
    """``I = syn(x)`` applied per step on ``x [T, B, ...]`` (syn 0: linear, 1: conv2d)."""
    if syn == 0:
        return F.linear(x, weight, bias)
    y = F.conv2d(x.flatten(0, 1), weight, bias, stride, padding, dilation, groups)
    return y.unflatten(0, x.shape[:2])


def synapse_backward(gI, x, weight, syn: int, stride, padding, dilation, groups, needs):
    """``(dX, dW, db)`` of ``I = syn(x)`` given ``gI = dL/dI``."""
    need_x, need_w, need_b = needs
    if syn == 0:
        gI2 = gI.reshape(-1, gI.shape[-1])
        dW = gI2.t() @ x.reshape(-1, x.shape[-1]) if need_w else None
        db = gI2.sum(0) if need_b else None
        dX = gI @ weight if need_x else None
        return dX, dW, db
    g4 = gI.flatten(0, 1)
    x4 = x.flatten(0, 1)
    dW = torch.nn.grad.conv2d_weight(x4, weight.shape, g4, stride, padding, dilation, groups) if need_w else None
    db = g4.sum((0, 2, 3)) if need_b else None
    dX = None
    if need_x:
        dX = torch.nn.grad.conv2d_input(x4.shape, weight, g4, stride, padding, dilation, groups).unflatten(0, x.shape[:2])
    return dX, dW, db
