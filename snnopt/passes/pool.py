"""fast_pooling: average pooling without padding runs as the ``avg_pool`` op (CPU graphs).

    AvgPool2d(k, s)(X)          -> avg_pool(X, k, s)
    avg_pool2d(X, k, s)         -> avg_pool(X, k, s)

for ``padding=0``, ``ceil_mode=False`` and no ``divisor_override`` (``count_include_pad``
then changes nothing).  The op's value and gradient are PyTorch's, bit for bit
(:mod:`snnopt.kernels.reference.pool`); its CPU kernel sums each plane's windows in a tight
loop, several times faster than PyTorch's on the small planes of spiking conv nets (a
2 x 2 window on 512 x 12 planes of 30 x 30: 1.4 against 12 ms forward, 2.6 against 14 ms
backward, 2 threads).  Other pooling keeps PyTorch's call, and so do subclasses of
``AvgPool2d`` (their forward may differ) unless registered with
:func:`snnopt.frontend.registry.register_plane_pooling` (SpikingJelly's ``layer.AvgPool2d``).
"""

from __future__ import annotations

import torch
from torch import fx

from .. import kernels
from ..frontend.registry import pools_planes
from .infra import Builder, Note, PassResult

NAME = "fast_pooling"
_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_DEFAULTS = {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True, "divisor_override": None}


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(e) for e in v]


def _window(options: dict) -> tuple[list[int], list[int]] | None:
    """``(kernel, stride)`` of a supported configuration, else None."""
    padding = options["padding"]
    if options["ceil_mode"] or options["divisor_override"] is not None or any(_pair(padding)):
        return None
    kernel = _pair(options["kernel_size"])
    stride = options["stride"]
    return kernel, (kernel if stride is None or (not isinstance(stride, int) and len(stride) == 0) else _pair(stride))


def _pooling(gm: fx.GraphModule, node: fx.Node):
    """``(input, kernel, stride)`` when ``node`` is a supported average pooling, else None."""
    if node.op == "call_module" and pools_planes(gm.get_submodule(node.target)) and not node.kwargs:
        m = gm.get_submodule(node.target)
        options = {a: getattr(m, a) for a in _ARGS}
    elif node.op == "call_function" and node.target is torch.nn.functional.avg_pool2d:
        options = {**_DEFAULTS, **dict(zip(_ARGS, node.args[1:])), **node.kwargs}
    else:
        return None
    window = _window(options)
    return None if window is None or not isinstance(node.args[0], fx.Node) else (node.args[0], *window)


def fast_pooling(gm: fx.GraphModule) -> PassResult:
    b = Builder(gm, NAME)
    notes, modified = [], False
    for node in list(gm.graph.nodes):
        match = _pooling(gm, node)
        if match is None:
            continue
        x, kernel, stride = match
        with gm.graph.inserting_before(node):
            new = b.call(kernels.avg_pool, (x, kernel, stride), from_=[node])
        notes.append(Note("rewritten", new.name, f"`{node.name}` -> avg_pool {kernel[0]}x{kernel[1]} "
                                                 f"stride {stride[0]}x{stride[1]} (fused CPU kernel)"))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        modified = True
    return PassResult(gm, modified, notes)
