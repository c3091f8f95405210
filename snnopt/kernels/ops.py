"""The ``torch.ops.snnopt.*`` custom ops: schema, fake (meta) kernels and autograd.

Each op body runs the fused kernel (:mod:`.native`) where it serves the call (built,
float32/float64, closed-form dynamics) and the plain-torch reference
(:mod:`.reference`) otherwise: same results either way.  ``cfg`` is
:meth:`snnopt.spec.NeuronSpec.op_config`.

==============================  ==============================================================
op                              returns
==============================  ==============================================================
neuron_scan                     out, v_T, i_T, v_seq, h, i_seq  (dense; v_seq if ``record``,
                                h/i_seq kept for backward if ``save``)
neuron_scan_backward            gx, gv0, gi0, gbeta, galpha, gthreshold  (empty if not needed)
neuron_scan_sparse              out, v_T, i_T, v_seq, idx, sg, gates  (active set: int32
                                indices, f'; reset gates bit-packed)
neuron_scan_sparse_backward     gx, gv0, gi0
spiking_synapse_sparse          out, v_T, idx, sg, gates, x_packed  (fused Linear/Conv2d + neuron)
spiking_synapse_sparse_backward gx, gweight, gbias, gv0   (gx only at ``x_active`` if given; one value
                                                          per entry with the tap, below)
binary_synapse                  out, x_packed, x_mean     (Linear/Conv2d keeping its spike input packed;
                                                          event-driven Linear forward if ``event``; the
                                                          input's time average if ``mean``)
binary_synapse_backward         gx, gweight, gbias        (gx as for spiking_synapse_sparse_backward)
neuron_rate_stats               out, v_T, i_T, v_seq, rate, eligibility, v_bar, e_v
                                (spike pass of rate mode; the last two for a recorded membrane)
rate_batch_norm                 y                         (RateBN)
avg_pool                        y                         (average pooling of every plane, no padding)
avg_pool_backward               gx
==============================  ==============================================================

**The tap.**  A synapse op fed by the spikes of a sparse neuron op reads ``dL/dx`` only at
that neuron's active set, so it may take the neuron's active set ``idx`` as ``x_active``
and its surrogate values ``sg`` as ``x_tap``.  Its backward then returns ``dL/dx`` at
``x_active`` compactly, one value per entry, as the gradient of ``x_tap`` (and none for
``x``); the neuron's backward reads the gradient arriving at its ``sg`` output as more
``dL/ds`` on its active set, added to whatever reaches its spike output.  No
``[T, B, features]`` gradient passes between the two.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..spec import Config
from . import native
from .dispatch import call, custom_op, register_autograd
from .reference import dense as ref_dense
from .reference import generic as ref_generic
from .reference import pool as ref_pool
from .reference import rate as ref_rate
from .reference import sparse as ref_sparse


def _opt(t: Tensor) -> Tensor | None:
    return None if t.numel() == 0 else t


# --------------------------------------------------------------------------- dense


@custom_op("neuron_scan")
def neuron_scan(x: Tensor, v0: Tensor | None, i0: Tensor | None, beta: Tensor | None, alpha: Tensor | None,
                threshold: Tensor | None, cfg: list[float], save: bool,
                record: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    c = Config(cfg)
    impl = native if native.serves(x, c) else ref_dense
    return impl.scan_forward(x, v0, i0, beta, alpha, threshold, c, save, record)


@neuron_scan.register_fake
def _(x, v0, i0, beta, alpha, threshold, cfg, save, record):
    c = Config(cfg)
    cuba = c.has_current

    def full(flag):
        return torch.empty_like(x) if flag else x.new_empty(0)
    return (torch.empty_like(x), torch.empty_like(x[0]), torch.empty_like(x[0]) if cuba else x.new_empty(0),
            full(record), full(save), full(save and cuba and not c.generic))


@custom_op("neuron_scan_backward")
def neuron_scan_backward(g_out: Tensor, g_v: Tensor, g_i: Tensor, g_vseq: Tensor, h: Tensor, i_seq: Tensor,
                         v0: Tensor | None, i0: Tensor | None, beta: Tensor | None, alpha: Tensor | None,
                         threshold: Tensor | None, cfg: list[float],
                         needs: list[bool]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    c = Config(cfg)
    impl = native if native.serves(h, c) else ref_dense
    grads = impl.scan_backward(g_out, g_v, _opt(g_i), _opt(g_vseq), h, i_seq, v0, i0, beta, alpha, threshold, c,
                               needs)
    return tuple(h.new_empty(0) if g is None else g.contiguous() for g in grads)


@neuron_scan_backward.register_fake
def _(g_out, g_v, g_i, g_vseq, h, i_seq, v0, i0, beta, alpha, threshold, cfg, needs):
    likes = (h, h[0], h[0], beta, alpha, threshold)
    return tuple(torch.empty_like(like) if need else h.new_empty(0) for like, need in zip(likes, needs))


def _scan_setup(ctx, inputs, output):
    x, v0, i0, beta, alpha, threshold, cfg, save, record = inputs
    ctx.set_materialize_grads(False)  # an output without gradient arrives as None, not as a tensor of zeros
    ctx.cfg = cfg
    ctx.save_for_backward(output[4], output[5], v0, i0, beta, alpha, threshold)


def _scan_backward(ctx, g_out, g_v, g_i, g_vseq, _gh, _gis):
    h, i_seq, v0, i0, beta, alpha, threshold = ctx.saved_tensors
    if h.numel() == 0:
        raise RuntimeError("snnopt.neuron_scan ran with save=False but a gradient was requested; "
                           "call it through snnopt.kernels.neuron_scan")
    needs = [bool(n) for n in ctx.needs_input_grad[:6]]
    g_out = torch.zeros_like(h) if g_out is None else g_out
    g_v = torch.zeros_like(h[0]) if g_v is None else g_v
    g_i = h.new_empty(0) if g_i is None else g_i
    if Config(ctx.cfg).generic:  # differentiated by autograd, which is available here and not in an op body
        grads = ref_generic.scan_backward(g_out, g_v, _opt(g_i), None if g_vseq is None else _opt(g_vseq), h, v0, i0,
                                          beta, alpha, threshold, Config(ctx.cfg), needs)
        return tuple(g if n else None for g, n in zip(grads, needs)) + (None, None, None)
    g_vseq = h.new_empty(0) if g_vseq is None else g_vseq
    grads = call("neuron_scan_backward", g_out, g_v, g_i, g_vseq, h, i_seq, v0, i0, beta, alpha, threshold, ctx.cfg,
                 needs)
    return tuple(g if n else None for g, n in zip(grads, needs)) + (None, None, None)


register_autograd("neuron_scan", _scan_backward, setup_context=_scan_setup)


# --------------------------------------------------------------------------- sparse


@custom_op("neuron_scan_sparse")
def neuron_scan_sparse(x: Tensor, v0: Tensor | None, i0: Tensor | None, beta: Tensor | None, alpha: Tensor | None,
                       threshold: Tensor | None, cfg: list[float], band: float, save: bool,
                       record: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    c = Config(cfg)
    impl = native if native.serves(x, c, sparse=True) else ref_sparse
    return impl.scan_forward_sparse(x, v0, i0, beta, alpha, threshold, c, band, save, record)


def _fake_saved(x, save, cfg):
    """Fake active set (``idx``, ``sg``) and packed reset gates."""
    if not save:
        return x.new_empty(0, dtype=torch.int32), x.new_empty(0), x.new_empty(0, dtype=torch.uint8)
    n = torch.library.get_ctx().new_dynamic_size()
    gates = (x.numel() + 7) // 8 if ref_sparse.gated(Config(cfg)) else 0
    return x.new_empty(n, dtype=torch.int32), x.new_empty(n), x.new_empty(gates, dtype=torch.uint8)


@neuron_scan_sparse.register_fake
def _(x, v0, i0, beta, alpha, threshold, cfg, band, save, record):
    i_T = torch.empty_like(x[0]) if Config(cfg).has_current else x.new_empty(0)
    v_seq = torch.empty_like(x) if record else x.new_empty(0)
    return (torch.empty_like(x), torch.empty_like(x[0]), i_T, v_seq) + _fake_saved(x, save, cfg)


@custom_op("neuron_scan_sparse_backward")
def neuron_scan_sparse_backward(g_out: Tensor, g_v: Tensor, g_i: Tensor, g_vseq: Tensor, idx: Tensor, sg: Tensor,
                                gates: Tensor, beta: Tensor | None, alpha: Tensor | None, cfg: list[float],
                                shape: list[int], needs: list[bool],
                                g_tap: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    c = Config(cfg)
    impl = native if native.serves(g_v, c, sparse=True) else ref_sparse
    grads = impl.neuron_sparse_backward(_opt(g_out), g_v, _opt(g_i), _opt(g_vseq), idx, sg, gates, beta, alpha, c,
                                        shape, needs, g_tap)
    return tuple(sg.new_empty(0) if g is None else g.contiguous() for g in grads)


@neuron_scan_sparse_backward.register_fake
def _(g_out, g_v, g_i, g_vseq, idx, sg, gates, beta, alpha, cfg, shape, needs, g_tap=None):
    return (sg.new_empty(shape) if needs[0] else sg.new_empty(0),
            sg.new_empty(shape[1:]) if needs[1] else sg.new_empty(0),
            sg.new_empty(shape[1:]) if needs[2] else sg.new_empty(0))


def _sparse_setup(ctx, inputs, output):
    x, v0, i0, beta, alpha, threshold, cfg, band, save, record = inputs
    ctx.set_materialize_grads(False)
    ctx.cfg, ctx.shape = cfg, list(x.shape)
    ctx.save_for_backward(output[4], output[5], output[6], beta, alpha)


def _sparse_backward(ctx, g_out, g_v, g_i, g_vseq, _gidx, g_tap, _ggates):
    idx, sg, gates, beta, alpha = ctx.saved_tensors
    needs = [bool(ctx.needs_input_grad[i]) for i in range(3)]
    g_out = sg.new_empty(0) if g_out is None else g_out
    g_v = sg.new_zeros(ctx.shape[1:]) if g_v is None else g_v
    g_i = sg.new_empty(0) if g_i is None or not Config(ctx.cfg).has_current else g_i
    g_vseq = sg.new_empty(0) if g_vseq is None or g_vseq.numel() == 0 else g_vseq
    grads = call("neuron_scan_sparse_backward", g_out, g_v, g_i, g_vseq, idx, sg, gates, beta, alpha, ctx.cfg,
                 ctx.shape, needs, g_tap)
    return tuple(g if n else None for g, n in zip(grads, needs)) + (None,) * 7


register_autograd("neuron_scan_sparse", _sparse_backward, setup_context=_sparse_setup)


EVENT_DENSITY = 0.15
"""Binary Linear inputs with fewer ones than this fraction run event-driven (one weight row
per spike forward, one gradient row per spike for ``dW``) instead of the BLAS matrix
product, and binary Conv2d inputs (groups 1) take ``dW`` by their spikes (one gradient
vector per spike and tap) instead of the convolution backward.  Measured crossovers of the
CPU kernels: Linear forward between 0.15 and 0.3 (2-16 threads, K, N in 256-1024), ``dW``
between 0.12 and 0.15 (2 threads, K 256-700, N 256); Conv2d ``dW`` between 0.15 and 0.2
(2 threads; 2-64 channels in and 12-64 out, kernels 3 and 5, 8 x 8 to 34 x 34 inputs)."""


def _synapse_forward(x, weight, bias, syn, stride, padding, dilation, groups, save, event=True):
    """``(I, saved, bits)``: ``I = syn(x)`` (event-driven for a sparse binary input to a Linear
    when ``event``; else the matrix product, bit for bit that of the module), the input kept
    for backward (bit-packed when binary, else its raw bytes; empty unless ``save``) and the
    bits of ``x`` if it was packed here (else None)."""
    if not native.serves_synapse(x) or not (save or (event and syn == 0)):  # (the latter: nothing to pack for)
        current = ref_sparse.synapse(x, weight, bias, syn, stride, padding, dilation, groups)
        return current, (_pack_input(x) if save else x.new_empty(0, dtype=torch.uint8)), None
    packed, count = native.pack_spikes(x)
    if packed is not None and syn == 0 and event and count < EVENT_DENSITY * x.numel():
        current = native.event_linear(packed, list(x.shape), weight, bias)
    else:
        current = ref_sparse.synapse(x, weight, bias, syn, stride, padding, dilation, groups)
    if not save:
        return current, x.new_empty(0, dtype=torch.uint8), packed
    return current, (packed if packed is not None else _raw_bytes(x)), packed


def _synapse_grads(g_current, x_packed, weight, syn, stride, padding, dilation, groups, x_shape, needs, x_active,
                   compact=False):
    """``(dX, dW, db)`` of the synapse from ``dL/dI``; ``dX`` only at ``x_active`` (flat
    indices into ``x``) unless it is None: zero elsewhere, or one value per index if
    ``compact``."""
    event = syn == 0 and _is_packed(x_packed, x_shape) and native.serves_synapse(g_current)
    if event and g_current.device.type == "cuda" and needs[1]:
        # dX by the event kernel, dW by the matrix product: the event dW kernel (one gradient
        # row gathered per spike, the bits of a column scanned per output tile) was measured
        # slower than cuBLAS on an H100 at 2% and 5% input density
        dX = native.event_linear_backward(g_current, x_packed, weight, x_shape, x_active, (True, False, False),
                                          compact)[0] if needs[0] else None
        x = _unpack_input(x_packed, x_shape, g_current.dtype)
        _, dW, db = ref_sparse.synapse_backward(g_current, x, weight, syn, stride, padding, dilation, groups,
                                                (False, needs[1], needs[2]))
        return dX, dW, db
    if event and (not needs[1] or _sparse(x_packed, x_shape)):
        return native.event_linear_backward(g_current, x_packed, weight, x_shape, x_active, needs, compact)
    if _event_conv(g_current, x_packed, syn, groups, x_shape) and (
            (x_active is not None and not needs[1]) or _sparse(x_packed, x_shape)):
        return native.event_conv2d_backward(g_current, x_packed, weight, x_shape, stride, padding, dilation, x_active,
                                            needs, compact)
    x = _unpack_input(x_packed, x_shape, g_current.dtype)
    return ref_sparse.synapse_backward(g_current, x, weight, syn, stride, padding, dilation, groups, needs, x_active,
                                       compact)


def _sparse(x_packed, x_shape) -> bool:
    """Whether the packed binary input has fewer ones than :data:`EVENT_DENSITY`."""
    return native.count_spikes(x_packed) < EVENT_DENSITY * math.prod(x_shape)


def _event_conv(g_current, x_packed, syn, groups, x_shape) -> bool:
    """Whether the CPU kernels can take the backward of this Conv2d event by event (groups 1,
    packed binary input)."""
    return syn == 1 and groups == 1 and g_current.device.type == "cpu" and _is_packed(x_packed, x_shape) \
        and native.serves_synapse(g_current)


def _traced(sg, idx, x_packed, weight, beta, syn, x_shape, c: Config) -> bool:
    """Whether the sparse backward runs through traces (``native.trace_linear_backward``:
    work ``|A| x K``, no ``[T, B, N]`` tensor) rather than through the input gradient
    ``delta`` on every state and the synapse backward over the input spikes (work
    ``spikes x N``): a Linear on packed binary input on the CPU kernels, into a LIF/IF
    with one decay and no reset gate, with an active set (surrogate values ``sg``) whose
    ``|A| x K`` is the smaller."""
    if not (syn == 0 and sg.device.type == "cpu" and native.serves(weight, c, sparse=True)  # (sg may be empty)
            and c.kind in ("lif", "if") and not ref_sparse.gated(c) and (beta is None or beta.numel() == 1)
            and _is_packed(x_packed, x_shape) and sg.dtype == weight.dtype):
        return False
    return idx.numel() * x_shape[-1] <= native.count_spikes(x_packed) * weight.shape[0]


@custom_op("spiking_synapse_sparse")
def spiking_synapse_sparse(x: Tensor, weight: Tensor, bias: Tensor | None, v0: Tensor | None, beta: Tensor | None,
                           threshold: Tensor | None, syn: int, stride: list[int], padding: list[int],
                           dilation: list[int], groups: int, cfg: list[float], band: float, save: bool,
                           x_active: Tensor | None,
                           x_tap: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    current, packed, _ = _synapse_forward(x, weight, bias, syn, stride, padding, dilation, groups, save)
    c = Config(cfg)
    impl = native if native.serves(current, c, sparse=True) else ref_sparse
    out, v_T, _, _, idx, sg, gates = impl.scan_forward_sparse(current, v0, None, beta, None, threshold, c, band, save)
    return out, v_T, idx, sg, gates, packed


@spiking_synapse_sparse.register_fake
def _(x, weight, bias, v0, beta, threshold, syn, stride, padding, dilation, groups, cfg, band, save, x_active,
      x_tap=None):
    current = ref_sparse.synapse(x, weight, bias, syn, stride, padding, dilation, groups)
    idx, sg, gates = _fake_saved(current, save, cfg)
    if save:
        packed = x.new_empty(torch.library.get_ctx().new_dynamic_size(), dtype=torch.uint8)
    else:
        packed = x.new_empty(0, dtype=torch.uint8)
    return torch.empty_like(current), torch.empty_like(current[0]), idx, sg, gates, packed


@custom_op("spiking_synapse_sparse_backward")
def spiking_synapse_sparse_backward(g_out: Tensor, g_v: Tensor, idx: Tensor, sg: Tensor, gates: Tensor,
                                    x_packed: Tensor, weight: Tensor, beta: Tensor | None, syn: int,
                                    stride: list[int], padding: list[int], dilation: list[int], groups: int,
                                    x_shape: list[int], out_shape: list[int], cfg: list[float], needs: list[bool],
                                    x_active: Tensor | None, g_tap: Tensor | None = None,
                                    compact: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    need_x, need_w, need_b, need_v0 = needs
    c = Config(cfg)
    if _traced(sg, idx, x_packed, weight, beta, syn, x_shape, c):
        dX, dW, db, gv0 = native.trace_linear_backward(_opt(g_out), g_tap, g_v, idx, sg, x_packed, weight, x_shape,
                                                       x_active, ref_dense._beta(beta, c), c, needs, compact)
    else:
        impl = native if native.serves(g_v, c, sparse=True) else ref_sparse
        g_current, gv0, _ = impl.neuron_sparse_backward(_opt(g_out), g_v, None, None, idx, sg, gates, beta, None, c,
                                                        out_shape, [True, need_v0, False], g_tap)
        dX, dW, db = _synapse_grads(g_current, x_packed, weight, syn, stride, padding, dilation, groups, x_shape,
                                    (need_x, need_w, need_b), x_active, compact)
    empty = sg.new_empty(0)
    return (empty if dX is None else dX, empty.clone() if dW is None else dW,
            empty.clone() if db is None else db, empty.clone() if not need_v0 else gv0.contiguous())


@spiking_synapse_sparse_backward.register_fake
def _(g_out, g_v, idx, sg, gates, x_packed, weight, beta, syn, stride, padding, dilation, groups, x_shape, out_shape,
      cfg, needs, x_active, g_tap=None, compact=False):
    e = sg.new_empty
    dx_shape = x_active.shape if compact and x_active is not None else x_shape
    return (e(dx_shape) if needs[0] else e(0), torch.empty_like(weight) if needs[1] else e(0),
            e(weight.shape[0]) if needs[2] else e(0), e(out_shape[1:]) if needs[3] else e(0))


def _tapped(ctx, x_active, x_tap, tap_position: int) -> bool:
    """Whether the backward returns ``dL/dx`` compactly, as the gradient of ``x_tap`` (the tap,
    module docstring)."""
    return x_active is not None and x_tap is not None and bool(ctx.needs_input_grad[tap_position])


def _synapse_setup(ctx, inputs, output):
    (x, weight, bias, v0, beta, threshold, syn, stride, padding, dilation, groups, cfg, band, save, x_active,
     x_tap) = inputs
    ctx.set_materialize_grads(False)
    ctx.static = (syn, stride, padding, dilation, groups)
    ctx.cfg, ctx.x_shape, ctx.out_shape = cfg, list(x.shape), list(output[0].shape)
    ctx.compact = _tapped(ctx, x_active, x_tap, 15)
    ctx.save_for_backward(output[2], output[3], output[4], output[5], weight, beta, x_active)


def _synapse_backward(ctx, g_out, g_v, _gi, g_tap, _gg, _gp):
    idx, sg, gates, packed, weight, beta, active = ctx.saved_tensors
    nig = ctx.needs_input_grad
    needs = [bool(nig[0]) or ctx.compact, bool(nig[1]), bool(nig[2]), bool(nig[3])]
    g_out = sg.new_empty(0) if g_out is None else g_out
    g_v = sg.new_zeros(ctx.out_shape[1:]) if g_v is None else g_v
    gx, gw, gb, gv0 = call("spiking_synapse_sparse_backward", g_out, g_v, idx, sg, gates, packed, weight, beta,
                           *ctx.static, ctx.x_shape, ctx.out_shape, ctx.cfg, needs, active, g_tap, ctx.compact)
    grads = [g if n else None for g, n in zip((gx, gw, gb, gv0), needs)]
    if ctx.compact:
        return (None,) + tuple(grads[1:]) + (None,) * 11 + (gx,)
    return tuple(grads) + (None,) * 12


register_autograd("spiking_synapse_sparse", _synapse_backward, setup_context=_synapse_setup)


@custom_op("binary_synapse")
def binary_synapse(x: Tensor, weight: Tensor, bias: Tensor | None, syn: int, stride: list[int], padding: list[int],
                   dilation: list[int], groups: int, save: bool, x_active: Tensor | None,
                   event: bool = True, x_tap: Tensor | None = None,
                   mean: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    current, saved, bits = _synapse_forward(x, weight, bias, syn, stride, padding, dilation, groups, save, event)
    return current, saved, _time_mean(x, bits) if mean else x.new_empty(0)


def _time_mean(x: Tensor, bits: Tensor | None) -> Tensor:
    """``x.mean(0, keepdim=True)``; from the bits of a binary ``x`` on the CPU, whose count of
    ones per element divided by T is that value exactly."""
    if bits is None or bits.device.type != "cpu":
        return x.mean(0, keepdim=True)
    return native.time_mean(bits, list(x.shape), x.dtype)


@binary_synapse.register_fake
def _(x, weight, bias, syn, stride, padding, dilation, groups, save, x_active, event=True, x_tap=None, mean=False):
    out = ref_sparse.synapse(x, weight, bias, syn, stride, padding, dilation, groups)
    size = torch.library.get_ctx().new_dynamic_size() if save else 0
    x_mean = torch.empty_like(x[:1]) if mean else x.new_empty(0)
    return torch.empty_like(out), x.new_empty(size, dtype=torch.uint8), x_mean


@custom_op("binary_synapse_backward")
def binary_synapse_backward(g: Tensor, x_packed: Tensor, weight: Tensor, syn: int, stride: list[int],
                            padding: list[int], dilation: list[int], groups: int, x_shape: list[int],
                            needs: list[bool], x_active: Tensor | None,
                            compact: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    grads = _synapse_grads(g, x_packed, weight, syn, stride, padding, dilation, groups, x_shape, needs, x_active,
                           compact)
    return tuple(g.new_empty(0) if t is None else t for t in grads)


@binary_synapse_backward.register_fake
def _(g, x_packed, weight, syn, stride, padding, dilation, groups, x_shape, needs, x_active, compact=False):
    e = g.new_empty
    dx_shape = x_active.shape if compact and x_active is not None else x_shape
    return (e(dx_shape) if needs[0] else e(0), torch.empty_like(weight) if needs[1] else e(0),
            e(weight.shape[0]) if needs[2] else e(0))


def _binary_setup(ctx, inputs, output):
    x, weight, bias, syn, stride, padding, dilation, groups, save, x_active, event, x_tap, mean = inputs
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(output[2])  # the time average of x, a statistic for rate mode
    ctx.static, ctx.x_shape = (syn, stride, padding, dilation, groups), list(x.shape)
    ctx.compact = _tapped(ctx, x_active, x_tap, 11)
    ctx.save_for_backward(output[1], weight, x_active)


def _binary_backward(ctx, g, _gp, _gm):
    packed, weight, active = ctx.saved_tensors
    needs = [bool(ctx.needs_input_grad[0]) or ctx.compact, bool(ctx.needs_input_grad[1]),
             bool(ctx.needs_input_grad[2])]
    gx, gw, gb = call("binary_synapse_backward", g, packed, weight, *ctx.static, ctx.x_shape, needs, active,
                      ctx.compact)
    grads = (gw if needs[1] else None, gb if needs[2] else None) + (None,) * 8
    if ctx.compact:
        return (None,) + grads + (gx, None)
    return (gx if needs[0] else None,) + grads + (None, None)


register_autograd("binary_synapse", _binary_backward, setup_context=_binary_setup)


def _pack_input(x: Tensor) -> Tensor:
    """Bit-packed ``x`` if it is binary, else its raw bytes (the backward tells them apart by size)."""
    packed = ref_sparse.pack_bits(x)
    return packed if packed.numel() else _raw_bytes(x)


def _raw_bytes(x: Tensor) -> Tensor:
    return x.detach().reshape(-1).clone().view(torch.uint8)


def _is_packed(packed: Tensor, shape: list[int]) -> bool:
    return packed.numel() == (math.prod(shape) + 7) // 8


def _unpack_input(packed: Tensor, shape: list[int], dtype) -> Tensor:
    if not _is_packed(packed, shape):
        return packed.view(dtype).reshape(shape)
    if native.serves_synapse(packed.new_empty(1, dtype=dtype)):
        return native.unpack_spikes(packed, shape, dtype)
    return ref_sparse.unpack_bits(packed, shape, dtype)


# --------------------------------------------------------------------------- rate


@custom_op("neuron_rate_stats")
def neuron_rate_stats(x: Tensor, v0: Tensor | None, i0: Tensor | None, beta: Tensor | None, alpha: Tensor | None,
                      threshold: Tensor | None, cfg: list[float],
                      record: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    c = Config(cfg)
    impl = native if native.serves(x, c) else ref_dense
    return impl.rate_stats(x, v0, i0, beta, alpha, threshold, c, record)


@neuron_rate_stats.register_fake
def _(x, v0, i0, beta, alpha, threshold, cfg, record):
    cuba = Config(cfg).has_current
    step = torch.empty_like(x[0])

    def maybe(flag, t):
        return torch.empty_like(t) if flag else x.new_empty(0)
    return (torch.empty_like(x), step, maybe(cuba, step), maybe(record, x), torch.empty_like(step),
            torch.empty_like(step), maybe(record, step), maybe(record, step))


@custom_op("rate_batch_norm")
def rate_batch_norm(x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None,
                    eps: float) -> Tensor:
    return ref_rate.rate_batch_norm(x, mean, var, weight, bias, eps)


@rate_batch_norm.register_fake
def _(x, mean, var, weight, bias, eps):
    return torch.empty_like(x)


def _rbn_setup(ctx, inputs, output):
    x, mean, var, weight, bias, eps = inputs
    ctx.eps = eps
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, mean, var, weight)


def _rbn_backward(ctx, g):
    x, mean, var, weight = ctx.saved_tensors
    gx, gw, gb = ref_rate.rate_batch_norm_backward(g, x, mean, var, weight, ctx.eps)
    nig = ctx.needs_input_grad
    return (gx if nig[0] else None, None, None, gw if nig[3] else None,
            gb if (nig[4] and ctx.has_bias) else None, None)


register_autograd("rate_batch_norm", _rbn_backward, setup_context=_rbn_setup, twice=True)


# --------------------------------------------------------------------------- pooling


@custom_op("avg_pool")
def avg_pool(x: Tensor, kernel: list[int], stride: list[int]) -> Tensor:
    if native.serves_pool(x):
        return native.avg_pool(x, kernel, stride)
    return ref_pool.avg_pool(x, kernel, stride)


@avg_pool.register_fake
def _(x, kernel, stride):
    return x.new_empty(*x.shape[:-2], *ref_pool.pooled_size(x.shape[-2:], kernel, stride))


@custom_op("avg_pool_backward")
def avg_pool_backward(g: Tensor, size: list[int], kernel: list[int], stride: list[int]) -> Tensor:
    if native.serves_pool(g):
        return native.avg_pool_backward(g, size, kernel, stride)
    return ref_pool.avg_pool_backward(g, size, kernel, stride)


@avg_pool_backward.register_fake
def _(g, size, kernel, stride):
    return g.new_empty(*g.shape[:-2], *size)


def _pool_setup(ctx, inputs, output):
    x, ctx.kernel, ctx.stride = inputs
    ctx.size = list(x.shape[-2:])


def _pool_backward(ctx, g):
    return call("avg_pool_backward", g, ctx.size, ctx.kernel, ctx.stride), None, None


def _pool_backward_setup(ctx, inputs, output):
    _, _, ctx.kernel, ctx.stride = inputs


def _pool_backward_backward(ctx, gg):
    """``avg_pool_backward`` is the adjoint of the linear map ``avg_pool``; its own adjoint
    is ``avg_pool`` again."""
    return call("avg_pool", gg, ctx.kernel, ctx.stride), None, None, None


register_autograd("avg_pool", _pool_backward, setup_context=_pool_setup, twice=True)
register_autograd("avg_pool_backward", _pool_backward_backward, setup_context=_pool_backward_setup, twice=True)
