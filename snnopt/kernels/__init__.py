"""Entry points that compiled graphs call; each wraps one ``torch.ops.snnopt`` op (called
through :func:`.dispatch.call`: directly in plain eager code, through the dispatcher
otherwise).

The wrappers decide whether the op must keep anything for backward
(``save = grad enabled and some input requires grad``), so inference and ``eval()``
runs save nothing.
"""

from __future__ import annotations

import torch

from ..spec import Config
from . import ops
from .dispatch import call, through_dispatcher
from .reference.generic import rate_stats as _generic_rate_stats
from .reference.rate import rate_neuron
from .reference.sparse import synapse

__all__ = ["neuron_scan", "spiking_synapse", "neuron_scan_sparse", "spiking_synapse_sparse", "binary_synapse",
           "neuron_rate_stats", "rate_neuron", "rate_batch_norm", "avg_pool", "status", "through_dispatcher", "OPS"]

OPS = ("neuron_scan", "neuron_scan_backward", "neuron_scan_sparse", "neuron_scan_sparse_backward",
       "spiking_synapse_sparse", "spiking_synapse_sparse_backward", "binary_synapse", "binary_synapse_backward",
       "neuron_rate_stats", "rate_batch_norm", "avg_pool", "avg_pool_backward")


def _needs_save(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _autocast(x, weight, bias):
    """``(x, weight, bias)`` as autocast hands them to ``linear`` / ``conv2d``: inside an
    autocast region of ``x``'s device type, float32 and float16/bfloat16 tensors in the
    region's dtype (float64 stays, as autocast leaves it), so a fused synapse computes its
    current in the precision the module's own call would."""
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return x, weight, bias
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t
                 for t in (x, weight, bias))


def _state_dtype(x, *states):
    """The dtype the model's own arithmetic gives the state: ``beta * v + x`` promotes the
    input ``x`` with a given state tensor (a float32 membrane kept by the module, fed a
    bfloat16 current under autocast, stays float32), as ``torch.result_type`` does."""
    dtype = x.dtype
    for s in states:
        if s is not None and s.is_floating_point() and s.dim() > 0:
            dtype = torch.promote_types(dtype, s.dtype)
    return dtype


def _promoted(x, *states):
    """``x`` in :func:`_state_dtype` (a differentiable cast; ``x`` itself when it already is)."""
    dtype = _state_dtype(x, *states)
    return x if dtype == x.dtype or not x.is_floating_point() else x.to(dtype)


def neuron_scan(x, v0, i0, beta, alpha, threshold, cfg, record=False):
    """Dense scan (exact BPTT): ``(out, v_T, i_T, v_seq)``; ``v_seq`` (the state after
    every step) is empty unless ``record``."""
    x = _promoted(x, v0, i0)
    save = _needs_save(x, v0, i0, beta, alpha, threshold)
    out, v_T, i_T, v_seq, _, _ = call("neuron_scan", x, v0, i0, beta, alpha, threshold, cfg, save, record)
    return out, v_T, i_T, v_seq


def spiking_synapse(x, weight, bias, v0, beta, threshold, syn, stride, padding, dilation, groups, cfg):
    """Synapse (``syn`` 0: Linear, 1: Conv2d, applied per step) followed by the dense scan:
    ``(out, v_T)``.  The canonical form of a fused region before lowering."""
    current = synapse(x, weight, bias, syn, stride, padding, dilation, groups)
    out, v_T, _, _ = neuron_scan(current, v0, None, beta, None, threshold, cfg)
    return out, v_T


def neuron_scan_sparse(x, v0, i0, beta, alpha, threshold, cfg, band, record=False):
    """Sparse-gradient scan: ``(out, v_T, i_T, v_seq, active_indices, surrogate)``; ``v_seq``
    empty unless ``record``; ``surrogate`` (f' on the active set) is the tap a synapse fed by
    ``out`` may take (``x_tap``, :mod:`.ops`)."""
    x = _promoted(x, v0, i0)
    save = _needs_save(x, v0, i0)
    out, v_T, i_T, v_seq, idx, sg, _ = call("neuron_scan_sparse", x, v0, i0, beta, alpha, threshold, cfg, band,
                                            save, record)
    return out, v_T, i_T, v_seq, idx, sg


def spiking_synapse_sparse(x, weight, bias, v0, beta, threshold, syn, stride, padding, dilation, groups, cfg, band,
                           x_active=None, x_tap=None):
    """Fused synapse + sparse-gradient scan: ``(out, v_T, active_indices, packed_input,
    surrogate)``.  ``x_active``: the active set of the sparse neuron producing ``x``, the only
    entries of ``dL/dx`` its backward reads (``dL/dx`` is computed there only); ``x_tap``: that
    neuron's surrogate output, through which ``dL/dx`` then flows back compactly (the tap,
    :mod:`.ops`).  A state ``v0`` of a wider dtype than the current (autocast) takes the
    synapse and the scan apart, so that the current is widened between them as the model
    widens it."""
    x, weight, bias = _autocast(x, weight, bias)
    if _state_dtype(weight, v0) != weight.dtype:
        current, packed, _ = binary_synapse(x, weight, bias, syn, stride, padding, dilation, groups, x_active,
                                            True, x_tap)
        out, v_T, _, _, idx, sg = neuron_scan_sparse(current, v0, None, beta, None, threshold, cfg, band)
        return out, v_T, idx, packed, sg
    save = _needs_save(x, weight, bias, v0)
    out, v_T, idx, sg, _, packed = call("spiking_synapse_sparse", x, weight, bias, v0, beta, threshold, syn, stride,
                                        padding, dilation, groups, cfg, band, save, x_active, x_tap)
    return out, v_T, idx, packed, sg


def binary_synapse(x, weight, bias, syn, stride, padding, dilation, groups, x_active=None, event=True, x_tap=None,
                   mean=False):
    """Synapse on spike input that keeps the input bit-packed for backward: ``(out, packed,
    x_mean)`` (``x_active``, ``x_tap`` as in :func:`spiking_synapse_sparse`).  ``event``: a
    Linear on sparse binary input may run event-driven (equal to the module's value up to
    float rounding); False keeps the module's matrix product, bit for bit.  ``mean``: also
    return ``x.mean(0, keepdim=True)`` (no gradient; from the bits where ``x`` was packed),
    else ``x_mean`` is empty."""
    x, weight, bias = _autocast(x, weight, bias)
    save = _needs_save(x, weight, bias)
    return call("binary_synapse", x, weight, bias, syn, stride, padding, dilation, groups, save, x_active, event,
                x_tap, mean)


def neuron_rate_stats(x, v0, i0, beta, alpha, threshold, cfg, record=False):
    """Spike pass of rate mode: ``(out, v_T, i_T, v_seq, rate, eligibility, v_bar, e_v)``;
    ``v_seq``, ``v_bar``, ``e_v`` (recorded membrane, its time average and eligibility) are
    empty unless ``record``."""
    x = _promoted(x, v0, i0)
    c = Config(cfg)
    if c.generic:  # its eligibility comes from autograd, unavailable inside the op
        return _generic_rate_stats(x, v0, i0, beta, alpha, threshold, c, record)
    return call("neuron_rate_stats", x, v0, i0, beta, alpha, threshold, cfg, record)


def rate_batch_norm(x, mean, var, weight, bias, eps):
    return call("rate_batch_norm", x, mean, var, weight, bias, eps)


def avg_pool(x, kernel, stride):
    """Average pooling without padding of every plane of ``x [..., H, W]`` (``kernel``,
    ``stride``: two values each): ``torch.nn.functional.avg_pool2d``'s value and gradient, bit
    for bit, from a CPU kernel that is several times faster on small planes."""
    return call("avg_pool", x, list(kernel), list(stride))


NATIVE_OPS = ("neuron_scan", "neuron_scan_backward", "neuron_scan_sparse", "neuron_scan_sparse_backward",
              "spiking_synapse_sparse", "spiking_synapse_sparse_backward", "binary_synapse", "binary_synapse_backward",
              "neuron_rate_stats", "avg_pool", "avg_pool_backward")
"""Ops with a fused kernel (the others are compositions of ATen ops; the synapse ops run the
event-driven Linear kernels on binary input)."""

CPU_ONLY_OPS = ("avg_pool", "avg_pool_backward")
"""Native ops with a CPU kernel only (on CUDA they run PyTorch's own, already fast there)."""


def status() -> dict:
    """The backend serving each op on each device type: ``"native"`` (fused kernel) or
    ``"reference"`` (plain torch; also the native ops' fallback for generic dynamics)."""
    backends = {dev: ops.native.backend(dev) for dev in ("cpu", "cuda")}
    return {name: {dev: (b if name in NATIVE_OPS and not (dev == "cuda" and name in CPU_ONLY_OPS) else "reference")
                   for dev, b in backends.items()} for name in OPS}
