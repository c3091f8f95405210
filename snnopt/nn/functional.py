"""One time step of a neuron described by a :class:`~snnopt.spec.Config`, with autograd.

This is the eager (uncompiled) semantics that every compiled op must reproduce;
the equations are in :mod:`snnopt.spec`.  ``v``/``i`` are the carried membrane and
current (``i`` only for kinds with a current); ``None`` means zeros.
"""

from __future__ import annotations

import torch

from ..spec import Config
from ..surrogate import SpikeFunction


def form_charge(v: torch.Tensor, inp: torch.Tensor, cfg: Config) -> torch.Tensor:
    """``h_t`` of the Euler and divided forms from the state ``v`` and the unscaled input, in
    their libraries' order of float operations: Norse's ``v + scale ((v_rest - v) + I)`` with the
    constants in the input's dtype (as its 0-d parameter tensors enter), SpikingJelly's
    ``v + (I - (v - v_rest)) / tau`` (or ``v - (v - v_rest) / tau + I`` where ``scale`` is 1)
    with Python floats (as its own)."""
    if cfg.euler:
        return v + inp.new_tensor(cfg.scale) * ((inp.new_tensor(cfg.v_rest) - v) + inp)
    off = v - cfg.v_rest
    return v - off / cfg.tau + inp if cfg.scale == 1.0 else v + (inp - off) / cfg.tau


def neuron_step(x: torch.Tensor, v: torch.Tensor | None, i: torch.Tensor | None,
                beta, alpha, threshold, cfg: Config):
    """Advance one step: returns ``(out, v, i)`` (``out`` = spikes, or the membrane for
    non-spiking kinds)."""
    zeros = torch.zeros_like(x)
    v = zeros if v is None else v
    if cfg.has_current:
        i = zeros if i is None else i
        if cfg.current_decay == "after":
            total = i + x
            i = total + total.new_tensor(cfg.syn_rate) * total if cfg.euler else alpha * total
        else:
            total = alpha * i + x
            i = total
        inp = cfg.scale * total if cfg.scale != 1.0 and not cfg.scales_in_charge else total
    else:
        inp = cfg.scale * x if cfg.scale != 1.0 and not cfg.scales_in_charge else x

    def spike(u):
        return SpikeFunction.apply(u, cfg.sg_code, cfg.sg_param, cfg.fire_ge)

    def leak(u):
        if cfg.kind == "if":
            return u
        out = beta * u
        return out + (1 - beta) * cfg.v_rest if cfg.v_rest != 0.0 else out

    def charge(u):  # the same-step charge
        return form_charge(u, inp, cfg) if cfg.scales_in_charge else leak(u) + inp

    if not cfg.spiking:
        h = charge(v)
        return h, h, i
    if cfg.timing == "same":
        h = charge(v)
        s = spike(h - threshold)
        sr = s.detach() if cfg.detach else s
        if cfg.reset == "subtract":
            v = h - threshold * sr
        elif cfg.reset == "zero":
            v = h * (1 - sr) + cfg.v_reset * sr
        else:
            v = h
        return s, v, i
    # "next" and "same_pending": the pending reset of the carried state enters the charge
    if cfg.reset == "none":
        h = leak(v) + inp
        return spike(h - threshold), h, i
    r = spike(v - threshold)
    if cfg.detach or cfg.timing == "same_pending":
        r = r.detach()
    if cfg.reset == "subtract":
        h = leak(v) + inp - threshold * r
    elif cfg.discards_input:
        h = leak(v) + inp
        h = h - h * r
    else:
        h = leak(v * (1 - r) + cfg.v_reset * r) + inp
    s = spike(h - threshold)
    if cfg.timing == "next":
        return s, h, i
    sr = s.detach() if cfg.detach else s
    if cfg.reset == "subtract":
        return s, h - (sr - r) * threshold, i
    return s, h - (sr - r) * h, i
