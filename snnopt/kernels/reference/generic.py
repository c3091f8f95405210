"""Reference for neuron dynamics outside the closed-form kernels (``Config.generic``).

The forward runs :func:`snnopt.nn.functional.neuron_step` step by step.  For the
backward the op keeps the input sequence ``x`` (in place of the membrane sequence the
closed-form backward uses), recomputes the scan with autograd and differentiates it:
exact BPTT of the eager semantics, by construction.  The rate statistics use the same
recomputation: ``e = sum_k dr/dx_k`` is the gradient of ``sum(r)`` w.r.t. ``x`` summed
over time, since every neuron depends only on its own input.

Both need autograd, which is off inside a custom op's body: they are called at the
autograd level (the scan's registered backward, the rate-stats wrapper) and refuse
to run where they cannot record.
"""

from __future__ import annotations

import torch

from ...nn.functional import neuron_step
from ...spec import Config


def _run(x, v0, i0, beta, alpha, theta, cfg: Config, record: bool):
    v = None if v0 is None else v0.expand_as(x[0])
    i = None if i0 is None or not cfg.has_current else i0.expand_as(x[0])
    outs, states = [], []
    for t in range(x.shape[0]):
        o, v, i = neuron_step(x[t], v, i, beta, alpha, theta, cfg)
        outs.append(o)
        if record:
            states.append(v)
    v = torch.zeros_like(x[0]) if v is None else v
    if cfg.has_current:
        i = torch.zeros_like(x[0]) if i is None else i
    return torch.stack(outs), v, i, (torch.stack(states) if record else None)


def scan_forward(x, v0, i0, beta, alpha, theta, cfg: Config, save: bool, record: bool):
    """``(out, v_T, i_T, v_seq, saved, empty)``; ``saved`` is ``x`` itself when ``save``."""
    out, v, i, vseq = _run(x, v0, i0, beta, alpha, theta, cfg, record)

    def empty():
        return x.new_empty(0)
    return (out, v.clone(), empty() if i is None else i.clone(), empty() if vseq is None else vseq,
            x.clone() if save else empty(), empty())


def _leaf(t, need):
    return None if t is None else t.detach().requires_grad_(need)


def _recorded(*tensors: torch.Tensor) -> None:
    if not any(t.requires_grad for t in tensors):
        raise RuntimeError("generic neuron dynamics are differentiated by recomputing the scan with autograd, "
                           "which is unavailable here (inside an op body); call the snnopt.kernels wrappers")


def scan_backward(g_out, g_v, g_i, g_vseq, x, v0, i0, beta, alpha, theta, cfg: Config, needs):
    """Gradients for ``(x, v0, i0, beta, alpha, theta)`` (None where not needed)."""
    leaves = [_leaf(t, n) for t, n in zip((x, v0, i0, beta, alpha, theta), needs)]
    with torch.enable_grad():
        out, v, i, vseq = _run(*leaves, cfg, record=g_vseq is not None)
        if any(needs):
            _recorded(out, v)
        outputs, grads = [out, v], [g_out, g_v]
        if cfg.has_current and g_i is not None:
            outputs.append(i)
            grads.append(g_i)
        if g_vseq is not None:
            outputs.append(vseq)
            grads.append(g_vseq)
        wanted = [t for t, n in zip(leaves, needs) if n and t is not None]
        pairs = [(o, g) for o, g in zip(outputs, grads) if o.requires_grad]
        got = torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True) \
            if pairs and wanted else [None] * len(wanted)
    got = iter(got)
    result = []
    for t, n in zip(leaves, needs):
        if not n or t is None:
            result.append(None)
            continue
        g = next(got)
        result.append(torch.zeros_like(t) if g is None else g)
    return tuple(result)


def rate_stats(x, v0, i0, beta, alpha, theta, cfg: Config, record: bool = False):
    """``(out, v_T, i_T, v_seq, r, e, v_bar, e_v)`` as in
    :func:`snnopt.kernels.reference.dense.rate_stats`."""
    xl = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out, v, i, vseq = _run(xl, v0, i0, beta, alpha, theta, cfg, record=record)
        r = out.mean(0)
        _recorded(r)
        (gx,) = torch.autograd.grad(r.sum(), xl, allow_unused=True, retain_graph=record)
        if record:
            v_bar = vseq.mean(0)
            (gv,) = torch.autograd.grad(v_bar.sum(), xl, allow_unused=True)
    e = torch.zeros_like(x[0]) if gx is None else gx.sum(0)
    empty = x.new_empty(0)
    extra = (vseq.detach(), v_bar.detach(), torch.zeros_like(x[0]) if gv is None else gv.sum(0)) if record \
        else (empty, empty, empty)
    return (out.detach(), v.detach(), empty if i is None else i.detach(), extra[0], r.detach(), e,
            extra[1], extra[2])
