"""Function-preserving folds applied before quantizing: ``Scale`` nodes, average pools on
sum-pool targets and neuron input gains are multiplied into adjacent weights."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math

import torch

from .. import network as N
from ..network import Network
from .profiles import Profile

log = logging.getLogger(__name__)


def _fold_into_producers(net: Network, shapes: dict, name: str, factor: torch.Tensor) -> str | None:
    """Multiply the input of ``name`` (the sum of its predecessors) by ``factor`` (of that
    input's shape) by changing the predecessors' parameters; returns why not, or ``None``.
    Each predecessor must feed ``name`` alone."""
    for pred in dict.fromkeys(net.predecessors(name)):
        others = [t for t in net.successors(pred) if t != name]
        if others:
            return f"{pred!r} also feeds {others[0]!r}"
        reason = _scale_output(net, shapes, pred, factor)
        if reason:
            return reason
    return None


def _fold_into_consumers(net: Network, shapes: dict, name: str, factor: torch.Tensor) -> str | None:
    """Multiply the value ``name`` passes to each consumer by ``factor`` (of ``name``'s output
    shape) by changing the consumers' parameters; each consumer must take ``name`` alone."""
    for succ in dict.fromkeys(net.successors(name)):
        others = [s for s in net.predecessors(succ) if s != name]
        if others:
            return f"{succ!r} also sums {others[0]!r}"
        reason = _scale_input(net, shapes, succ, factor)
        if reason:
            return reason
    return None


def _channel_factor(factor: torch.Tensor, what: str) -> tuple[torch.Tensor | None, str | None]:
    """The per-channel values of ``factor`` (dim 0) when it is uniform within each channel."""
    flat = factor.reshape(factor.shape[0], -1)
    if not bool((flat == flat[:, :1]).all()):
        return None, f"the factor varies within a channel of {what!r}"
    return flat[:, 0], None


def _scale_output(net: Network, shapes: dict, name: str, factor: torch.Tensor) -> str | None:
    """Multiply the output of ``name`` by ``factor``: rows of a weight node (per output
    channel for a Conv), or further back through a Flatten or Pool (per channel)."""
    node = net.nodes[name]
    if isinstance(node, N.Affine):
        node.weight = node.weight * factor.reshape(-1, 1)
        node.bias = None if node.bias is None else node.bias * factor.reshape(-1)
        return None
    if isinstance(node, N.Conv):
        per_channel, reason = _channel_factor(factor, name)
        if reason:
            return reason
        node.weight = node.weight * per_channel.reshape(-1, *([1] * (node.weight.dim() - 1)))
        node.bias = None if node.bias is None else node.bias * per_channel
        return None
    if isinstance(node, N.Scale):
        node.scale = node.scale * factor
        return None
    if isinstance(node, N.Flatten):
        return _fold_into_producers(net, shapes, name, factor.reshape(shapes[net.predecessors(name)[0]]))
    if isinstance(node, N.Pool):
        per_channel, reason = _channel_factor(factor, name)
        if reason:
            return reason
        in_shape = shapes[net.predecessors(name)[0]]
        return _fold_into_producers(net, shapes, name, per_channel.reshape(-1, 1, 1).expand(in_shape))
    return f"{name!r} ({node.kind}) has no weights to take the factor"


def _scale_input(net: Network, shapes: dict, name: str, factor: torch.Tensor) -> str | None:
    """Multiply the input of ``name`` by ``factor``: columns of a weight node (per input
    channel for a Conv, zero padding stays zero), or further on through a Flatten or Pool."""
    node = net.nodes[name]
    if isinstance(node, N.Affine):
        node.weight = node.weight * factor.reshape(1, -1)
        return None
    if isinstance(node, N.Conv):
        per_channel, reason = _channel_factor(factor, name)
        if reason:
            return reason
        c_out, c_in_group = node.weight.shape[:2]
        group = torch.arange(c_out) // (c_out // node.groups)
        channel = group.reshape(-1, 1) * c_in_group + torch.arange(c_in_group).reshape(1, -1)
        node.weight = node.weight * per_channel[channel].reshape(c_out, c_in_group, *([1] * node.dims))
        return None
    if isinstance(node, N.Scale):
        node.scale = node.scale * factor
        return None
    if isinstance(node, N.Flatten):
        start, end = (d + factor.dim() if d < 0 else d for d in (node.start_dim, node.end_dim))
        return _fold_into_consumers(net, shapes, name, factor.flatten(start, end))
    if isinstance(node, N.Pool):
        per_channel, reason = _channel_factor(factor, name)
        if reason:
            return reason
        return _fold_into_consumers(net, shapes, name, per_channel.reshape(-1, 1, 1).expand(shapes[name]))
    return f"{name!r} ({node.kind}) has no weights to take the factor"


def _transaction(net: Network, fold) -> str | None:
    """Run ``fold(trial)`` on a copy of ``net``; keep the result only if it succeeds."""
    trial = copy.deepcopy(net)
    reason = fold(trial)
    if reason is None:
        net.nodes, net.edges = trial.nodes, trial.edges
    return reason


def _fold_scale(net: Network, shapes: dict, name: str) -> str | None:
    """Remove the Scale node ``name``, multiplying its factor into the weights before it
    (each feeding it alone) or else after it (each taking it alone); returns why not."""
    scale = net.nodes[name].scale
    reason = _transaction(net, lambda t: _fold_into_producers(t, shapes, name, scale))
    if reason is not None:
        second = _transaction(net, lambda t: _fold_into_consumers(t, shapes, name, scale))
        if second is not None:
            return f"before it: {reason}; after it: {second}"
    preds = net.predecessors(name)
    edges = []
    for s, t in net.edges:
        if t == name:
            continue
        edges.extend([(p, t) for p in preds] if s == name else [(s, t)])
    net.edges = edges
    del net.nodes[name]
    return None


def _fold_avg_pool(net: Network, shapes: dict, name: str) -> str | None:
    """Make the average pool ``name`` a sum pool, multiplying ``1 / (kh kw)`` into the weights
    after it (or before it); returns why not."""
    node = net.nodes[name]
    inv = 1.0 / math.prod(node.kernel_size)
    out = torch.full(shapes[name], inv)
    reason = _transaction(net, lambda t: _fold_into_consumers(t, shapes, name, out))
    if reason is not None:
        before = torch.full(shapes[net.predecessors(name)[0]], inv)
        second = _transaction(net, lambda t: _fold_into_producers(t, shapes, name, before))
        if second is not None:
            return f"after it: {reason}; before it: {second}"
    net.nodes[name].mode = "sum"
    return None


def _fold_input_scale(net: Network, shapes: dict, name: str) -> str | None:
    """Move the input gain of population ``name`` (``spec.scale * input_scale``) into the
    weights feeding it; returns why not."""
    node = net.nodes[name]
    gain = torch.full(node.shape, float(node.spec.scale))
    if node.input_scale is not None:
        gain = gain * node.input_scale
    reason = _transaction(net, lambda t: _fold_into_producers(t, shapes, name, gain))
    if reason is None:
        node = net.nodes[name]
        node.spec = dataclasses.replace(node.spec, scale=1.0)
        node.input_scale = None
    return reason


def _fold_all(net: Network, p: Profile) -> None:
    """Apply every fold the target needs, logging the ones that are impossible."""
    shapes = net.validate()
    for name in [n for n, node in net.nodes.items() if isinstance(node, N.Scale)]:
        reason = _fold_scale(net, shapes, name)
        if reason:
            log.warning("quantize: Scale node %r stays (%s)", name, reason)
    if "avg" not in p.pool_modes:
        for name in [n for n, node in net.nodes.items() if isinstance(node, N.Pool) and node.mode == "avg"]:
            reason = _fold_avg_pool(net, shapes, name)
            if reason:
                log.warning("quantize: average pool %r stays (%s)", name, reason)
    for name, node in list(net.nodes.items()):
        if isinstance(node, N.Neuron) and (node.spec.scale != 1 or node.input_scale is not None):
            reason = _fold_input_scale(net, shapes, name)
            if reason:
                log.warning("quantize: the input gain of %r stays (%s)", name, reason)
