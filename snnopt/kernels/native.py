"""The fused C++ / CUDA kernels: just-in-time build, and calls in the reference's layout.

The sources in ``csrc/`` (``cpu/*.cpp``, ``cuda/*.cu`` when CUDA is available,
``bindings.cpp``) are compiled on first use by :func:`torch.utils.cpp_extension.load`
with ninja and cached by PyTorch (``TORCH_EXTENSIONS_DIR``; a changed source rebuilds).
Floating-point contraction is off (``-ffp-contract=off``, ``--fmad=false``) so that the
forward is bit-identical to the plain-torch reference.  A failed build logs one warning
and leaves every op on the reference; ``SNNOPT_KERNELS=reference`` skips the build.

Each function here mirrors the reference function of the same name
(:mod:`.reference.dense`, :mod:`.reference.sparse`): same arguments, same results.  The
kernels see ``[T, M]`` sequences and ``[M]`` states and parameters (``M`` = batch x
features; a parameter with a single value is passed as one value, which the kernels
broadcast); parameters are computed here in the reference's dtype arithmetic first
(``b``, ``(1 - b) v_rest``), then cast to the input's dtype as the reference's
arithmetic does.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path

import torch

from ..spec import Config
from .reference.dense import _beta, _leak_const

log = logging.getLogger(__name__)

ENV = "SNNOPT_KERNELS"
_CSRC = Path(__file__).parent / "csrc"
_DTYPES = (torch.float32, torch.float64)
_state: dict = {}


def _isa() -> tuple[str, list[str]]:
    """``(name suffix, compiler flags)`` for the vector instructions of this CPU: AVX2 and FMA
    where PyTorch finds its AVX2 level (x86-64; that level requires both), else the
    compiler's baseline.  The suffix keeps builds for
    different instruction sets apart in a shared extension cache."""
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        return "_avx2", ["-mavx2", "-mfma"]
    return "", []


def _build():
    from torch.utils import cpp_extension

    with_cuda = torch.cuda.is_available() and cpp_extension.CUDA_HOME is not None
    sources = [_CSRC / "bindings.cpp", _CSRC / "cpu" / "scan.cpp", _CSRC / "cpu" / "synapse.cpp",
               _CSRC / "cpu" / "trace.cpp", _CSRC / "cpu" / "pool.cpp"]
    suffix, isa = _isa()
    flags = ["-O3", "-ffp-contract=off", "-fno-trapping-math", "-fopenmp", *isa]
    if with_cuda:
        sources += [_CSRC / "cuda" / "scan.cu", _CSRC / "cuda" / "synapse.cu"]
        flags.append("-DSNNOPT_WITH_CUDA")
    return cpp_extension.load(
        name=f"snnopt_kernels{suffix}", sources=[str(s) for s in sources], extra_cflags=flags,
        extra_cuda_cflags=["-O3", "--fmad=false", "-DSNNOPT_WITH_CUDA"], extra_ldflags=["-fopenmp"],
        extra_include_paths=[str(_CSRC)], with_cuda=with_cuda, verbose=False), with_cuda


def module():
    """The loaded extension, or None (forced reference, or a failed build)."""
    if os.environ.get(ENV, "").strip().lower() == "reference":
        return None
    if "module" not in _state:
        try:
            _state["module"], _state["cuda"] = _build()
            log.info("snnopt fused kernels loaded (CUDA: %s)", _state["cuda"])
        except Exception as exc:  # any build or load failure: stay on the reference
            _state["module"], _state["cuda"] = None, False
            _state["error"] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"snnopt: building the fused kernels failed, every op uses the plain-torch reference "
                          f"({_state['error'][:500]}). Set {ENV}=reference to skip the build.", stacklevel=2)
    return _state["module"]


def backend(device_type: str) -> str:
    """``"native"`` when the fused kernels serve tensors on ``device_type``, else ``"reference"``."""
    mod = module()
    if mod is None or device_type not in ("cpu", "cuda"):
        return "reference"
    return "native" if device_type == "cpu" or _state["cuda"] else "reference"


def serves(x: torch.Tensor, cfg: Config, sparse: bool = False) -> bool:
    """Whether the fused kernels run this call (dtype, device, and closed-form dynamics;
    the sparse kernels also take an input-discarding reset)."""
    generic = cfg.timing == "same_pending" if sparse else cfg.generic
    return not generic and x.dtype in _DTYPES and x.numel() > 0 and backend(x.device.type) == "native"


def serves_synapse(x: torch.Tensor) -> bool:
    """Whether the event-driven synapse kernels (packing, event Linear) run for input ``x``."""
    return x.dtype in _DTYPES and x.numel() > 0 and backend(x.device.type) == "native"


def serves_pool(x: torch.Tensor) -> bool:
    """Whether the average-pooling kernels (CPU only) run for input ``x``."""
    return x.device.type == "cpu" and x.dtype in _DTYPES and x.numel() > 0 and x.dim() >= 3 \
        and backend("cpu") == "native"


def avg_pool(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    """:func:`.reference.pool.avg_pool`."""
    return module().avg_pool2d(x, *kernel, *stride)


def avg_pool_backward(g: torch.Tensor, size, kernel, stride) -> torch.Tensor:
    """:func:`.reference.pool.avg_pool_backward`."""
    return module().avg_pool2d_backward(g, *size, *kernel, *stride)


def pack_spikes(x: torch.Tensor) -> tuple[torch.Tensor | None, int]:
    """``(packed bits, number of ones)`` of a binary ``x``, or ``(None, -1)`` when ``x`` is not
    binary (reads the count back: one device sync on CUDA)."""
    packed, count = module().pack_spikes(x.contiguous().reshape(-1))
    count = int(count)
    return (packed, count) if count >= 0 else (None, -1)


def count_spikes(packed: torch.Tensor) -> int:
    """The number of ones among the bits ``packed`` (a CPU tensor)."""
    return int(module().count_spikes(packed))


def time_mean(packed: torch.Tensor, shape, dtype) -> torch.Tensor:
    """``x.mean(0, keepdim=True)`` of the binary ``x`` of ``shape`` whose bits are ``packed``
    (a CPU tensor): the ones of each element counted over the first axis."""
    steps, rest = shape[0], list(shape[1:])
    like = packed.new_empty(0, dtype=dtype)
    return module().time_mean_bits(packed, steps, math.prod(rest), like).reshape([1] + rest)


def unpack_spikes(packed: torch.Tensor, shape, dtype) -> torch.Tensor:
    """:func:`.reference.sparse.unpack_bits`."""
    like = packed.new_empty(0, dtype=dtype)
    return module().unpack_spikes(packed, math.prod(shape), like).reshape(shape)


def event_linear(packed: torch.Tensor, shape, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for the binary ``x`` of ``shape`` whose bits are ``packed``."""
    rows = math.prod(shape[:-1])
    y = module().event_linear(packed, rows, weight.contiguous(), bias if bias is not None else weight.new_empty(0))
    return y.reshape(*shape[:-1], weight.shape[0])


def event_linear_backward(g: torch.Tensor, packed: torch.Tensor, weight: torch.Tensor, x_shape,
                          x_active: torch.Tensor | None, needs, compact: bool = False):
    """:func:`.reference.sparse.synapse_backward` of a Linear on packed binary input (``dX``
    only at ``x_active`` unless it is None: then the full matrix product; ``compact``: one
    value per index of ``x_active``)."""
    g2 = g.contiguous().reshape(-1, g.shape[-1])
    listed = needs[0] and x_active is not None
    active = x_active if listed else g.new_empty(0, dtype=torch.int32)
    dX, dW, db = module().event_linear_backward(g2, packed, weight.contiguous(), active, listed and compact,
                                                [listed, needs[1], needs[2]])
    if needs[0] and not (listed and compact):
        dX = (dX if listed else g2 @ weight).reshape(x_shape)
    return (dX if needs[0] else None), (dW if needs[1] else None), (db if needs[2] else None)


def event_conv2d_backward(g: torch.Tensor, packed: torch.Tensor, weight: torch.Tensor, x_shape, stride, padding,
                          dilation, x_active: torch.Tensor | None, needs, compact: bool = False):
    """:func:`.reference.sparse.synapse_backward` of a time-distributed Conv2d (groups 1) on
    packed binary input ``x [T, B, C, H, W]`` from ``g = dL/dI [T, B, O, Ho, Wo]`` (a CPU
    tensor): ``dW`` from the input spikes; ``dX`` only at ``x_active`` (one value per index
    if ``compact``), or, if it is None, by the transposed convolution."""
    g4 = g.contiguous().flatten(0, 1)
    listed = needs[0] and x_active is not None
    active = x_active if listed else g.new_empty(0, dtype=torch.int32)
    dX, dW, db = module().event_conv2d_backward(g4, packed, weight.contiguous(), x_shape[-2], x_shape[-1],
                                                list(stride), list(padding), list(dilation), active,
                                                listed and compact, [listed, needs[1], needs[2]])
    if needs[0] and not listed:
        shape4 = [x_shape[0] * x_shape[1], *x_shape[2:]]
        dX = torch.nn.grad.conv2d_input(shape4, weight, g4, stride, padding, dilation)
    if needs[0] and not (listed and compact):
        dX = dX.reshape(x_shape)
    return (dX if needs[0] else None), (dW if needs[1] else None), (db if needs[2] else None)


def trace_linear_backward(g_out: torch.Tensor | None, g_tap: torch.Tensor | None, g_v: torch.Tensor,
                          idx: torch.Tensor, sg: torch.Tensor, packed: torch.Tensor, weight: torch.Tensor, x_shape,
                          x_active: torch.Tensor | None, beta: float, cfg: Config, needs, compact: bool = False):
    """``(dX, dW, db, dL/dv_0)`` (None where ``needs`` = (x, weight, bias, v0) is False) of a
    fused Linear -> LIF/IF in sparse mode with one decay ``beta`` and no reset gate, from
    the active set (``idx``, ``sg``; ``dL/ds`` there: ``g_out`` [T, B, N] read at ``idx``
    plus ``g_tap``, one value per entry; either may be None) and the bit-packed binary input
    of ``x_shape``, through traces (``csrc/cpu/trace.cpp``; CPU only); ``dX`` only at
    ``x_active`` unless it is None, one value per index of ``x_active`` if ``compact``."""
    every = x_active is None
    compact = compact and not every
    empty = sg.new_empty(0)
    dX, dW, db, gv0 = module().trace_linear_backward(
        empty if g_out is None else g_out.contiguous(), empty if g_tap is None else g_tap.contiguous(),
        g_v.contiguous().reshape(-1), idx, sg, packed, weight, empty.int() if every else x_active, every, compact,
        x_shape[0], math.prod(x_shape[1:-1]), float(beta), cfg.scale, list(needs))
    if needs[0] and not compact:
        dX = dX.reshape(x_shape)
    return ((dX if needs[0] else None), (dW if needs[1] else None), (db if needs[2] else None),
            (gv0.reshape(g_v.shape) if needs[3] else None))


def _flat(t, like: torch.Tensor) -> torch.Tensor:
    """``t`` broadcast to ``like`` ([B, ...]), in its dtype, contiguous and flat; empty if None."""
    if t is None:
        return like.new_empty(0)
    return t.to(like.dtype).expand_as(like).contiguous().reshape(-1)


def _param(t, like: torch.Tensor) -> torch.Tensor:
    """A parameter for the kernels: a single value as one value (the kernels broadcast it),
    otherwise :func:`_flat`."""
    if t is not None and t.numel() == 1:
        return t.to(like.dtype).reshape(1)
    return _flat(t, like)


def _params(x, beta, alpha, theta, cfg: Config):
    step = x[0]
    b = _beta(beta, cfg)
    b_t = torch.as_tensor(b, dtype=step.dtype, device=step.device) if not isinstance(b, torch.Tensor) else b
    c = _leak_const(b, cfg)
    c_t = torch.as_tensor(c, dtype=step.dtype, device=step.device) if not isinstance(c, torch.Tensor) else c
    return (_param(b_t, step), _param(c_t, step), _param(alpha if cfg.has_current else None, step),
            _param(theta if cfg.spiking else None, step))


def _seq(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().reshape(x.shape[0], -1)


def _shaped(results, x: torch.Tensor):
    """Results of a kernel back to ``x``'s shape: ``[T, M]`` -> ``x.shape``, ``[M]`` -> ``x[0].shape``."""
    def one(r):
        if r.numel() == 0:
            return r
        return r.reshape(x.shape) if r.dim() == 2 else r.reshape(x.shape[1:])
    return [one(r) for r in results]


def scan_forward(x, v0, i0, beta, alpha, theta, cfg: Config, save: bool, record: bool = False):
    """:func:`.reference.dense.scan_forward`."""
    step = x[0]
    results = module().dense_forward(_seq(x), _flat(v0, step), _flat(i0 if cfg.has_current else None, step),
                                     *_params(x, beta, alpha, theta, cfg), cfg.values, save, record)
    return tuple(_shaped(results, x))


def scan_backward(g_out, g_v, g_i, g_vseq, h, iseq, v0, i0, beta, alpha, theta, cfg: Config, needs):
    """:func:`.reference.dense.scan_backward` (parameter gradients reduced to their shapes)."""
    step = h[0]
    b, _, a, th = _params(h, beta, alpha, theta, cfg)
    empty = h.new_empty(0)
    results = module().dense_backward(
        _seq(g_out), _flat(g_v, step), empty if g_i is None else _flat(g_i, step),
        empty if g_vseq is None else _seq(g_vseq), _seq(h), _seq(iseq) if iseq.numel() else empty,
        _flat(v0, step), _flat(i0 if cfg.has_current else None, step), b, a, th, cfg.values, list(needs))
    gx, gv0, gi0, gb, ga, gth = _shaped(results, h)

    def reduce(g, p, need):
        return g.sum_to_size(p.shape) if need and p is not None else None
    return ((gx if needs[0] else None), (gv0 if needs[1] else None), (gi0 if needs[2] and cfg.has_current else None),
            reduce(gb, beta, needs[3]), reduce(ga, alpha, needs[4]), reduce(gth, theta, needs[5]))


def rate_stats(x, v0, i0, beta, alpha, theta, cfg: Config, record: bool = False):
    """:func:`.reference.dense.rate_stats`."""
    step = x[0]
    results = module().rate_stats(_seq(x), _flat(v0, step), _flat(i0 if cfg.has_current else None, step),
                                  *_params(x, beta, alpha, theta, cfg), cfg.values, record)
    return tuple(_shaped(results, x))


def scan_forward_sparse(x, v0, i0, beta, alpha, theta, cfg: Config, band: float, save: bool, record: bool = False):
    """:func:`.reference.sparse.scan_forward_sparse`."""
    step = x[0]
    results = module().sparse_forward(_seq(x), _flat(v0, step), _flat(i0 if cfg.has_current else None, step),
                                      *_params(x, beta, alpha, theta, cfg), cfg.values, float(band), save, record)
    return tuple(_shaped(results[:4], x)) + tuple(results[4:])


def neuron_sparse_backward(g_out, g_v, g_i, g_vseq, idx, sg, gates, beta, alpha, cfg: Config, shape, needs,
                           g_tap=None):
    """:func:`.reference.sparse.neuron_sparse_backward`."""
    like = sg.new_empty(1).expand(shape)  # the shape, dtype and device, no memory
    step = like[0]
    b, _, a, _ = _params(like, beta, alpha, None, cfg)
    empty = sg.new_empty(0)
    results = module().sparse_backward(
        empty if g_out is None else _seq(g_out), empty if g_tap is None else g_tap.contiguous(), _flat(g_v, step),
        empty if g_i is None else _flat(g_i, step), empty if g_vseq is None else _seq(g_vseq), idx, sg, gates, b, a,
        cfg.values, shape[0], step.numel(), list(needs))
    gx, gv0, gi0 = _shaped(results, like)
    return (gx if needs[0] else None), (gv0 if needs[1] else None), (gi0 if needs[2] and cfg.has_current else None)
