"""One time step of a neuron described by a :class:`~snnopt.spec.NeuronSpec`, with autograd.

This is the eager (uncompiled) semantics that every compiled op must reproduce;
the equations are in :mod:`snnopt.spec`.  ``state`` is ``(v, i)`` (``i`` only for
``cuba_lif``); ``None`` entries mean zeros.
"""

from __future__ import annotations

import torch

from ..spec import NeuronSpec
from ..surrogate import SpikeFunction


def neuron_step(x: torch.Tensor, v: torch.Tensor | None, i: torch.Tensor | None,
                beta: torch.Tensor, alpha: torch.Tensor, threshold: torch.Tensor, spec: NeuronSpec):
    """Advance one step: returns ``(out, v, i)`` (``out`` = spikes, or the membrane for ``li``)."""
    zeros = torch.zeros_like(x)
    v = zeros if v is None else v
    if spec.has_current:
        i = alpha * (zeros if i is None else i) + spec.scale * x
        inp = i
    else:
        inp = spec.scale * x if spec.scale != 1.0 else x
    sg = spec.surrogate
    fire_ge = spec.fire == ">="

    def spike(u):
        return SpikeFunction.apply(u, sg.code, sg.param, fire_ge)

    if spec.kind == "if":
        base = v
    elif spec.v_rest != 0.0:
        base = beta * v + (1 - beta) * spec.v_rest
    else:
        base = beta * v
    if spec.kind == "li":
        h = base + inp
        return h, h, i
    if spec.reset_timing == "next" and spec.reset != "none":
        s_prev = spike(v - threshold)
        if spec.detach_reset:
            s_prev = s_prev.detach()
        if spec.reset == "subtract":
            h = base + inp - threshold * s_prev
        else:
            b = 1.0 if spec.kind == "if" else beta
            h = b * (v * (1 - s_prev) + spec.v_reset * s_prev) + inp
            if spec.kind != "if" and spec.v_rest != 0.0:
                h = h + (1 - beta) * spec.v_rest
        s = spike(h - threshold)
        return s, h, i
    h = base + inp
    s = spike(h - threshold)
    if spec.reset_timing == "next":
        return s, h, i
    sr = s.detach() if spec.detach_reset else s
    if spec.reset == "subtract":
        v = h - threshold * sr
    elif spec.reset == "zero":
        v = h * (1 - sr) + spec.v_reset * sr
    else:
        v = h
    return s, v, i
