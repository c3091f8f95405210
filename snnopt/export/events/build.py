"""Network -> event graph: :func:`to_graph` composes the synaptic nodes between
populations into projections (format in :mod:`snnopt.export.events`)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import networkx as nx
import torch

from .. import network as N
from ..network import NetworkError
from .maps import _Map, _operator, _own_bias
from .validate import FORMAT, FORMAT_VERSION

log = logging.getLogger(__name__)

_POPULATIONS = (N.Input, N.Neuron, N.Output)


@dataclass
class _Route:
    """The linear map from one population to a node's output, summed over its chains
    (``matrix`` ``None``: the identity), the synaptic nodes on them and how many there are."""

    matrix: _Map | None
    nodes: frozenset = frozenset()
    paths: int = 1

    def dense(self, n: int) -> _Map:
        return _Map.identity(n) if self.matrix is None else self.matrix

    def plus(self, other: "_Route", n: int) -> "_Route":
        return _Route(self.dense(n).plus(other.dense(n)), self.nodes | other.nodes, self.paths + other.paths)


@dataclass
class _Synapses:
    """What the synaptic nodes of a network compute: ``routes[node][P]`` and ``bias[node]``."""

    routes: dict = field(default_factory=dict)
    bias: dict = field(default_factory=dict)


def to_graph(net: N.Network) -> nx.MultiDiGraph:
    """The event graph of ``net`` (see :mod:`snnopt.export.events`); raises :class:`NetworkError`
    for a delayed edge that does not end at a neuron population."""
    shapes = net.validate()
    delayed = net.delayed_edges()
    for s, t in sorted(delayed):
        if not isinstance(net.nodes[t], N.Neuron):
            raise NetworkError(f"the delayed edge {s!r} -> {t!r} (it closes a cycle) ends at a {net.nodes[t].kind} "
                               "node; the event graph holds delays at a neuron population's input only: feed the "
                               "fed-back value straight into the population")
    order = net.order()
    dtype = _dtype_of(net)
    synapses = _synapses(net, shapes, order)
    g = nx.MultiDiGraph(format=FORMAT, format_version=FORMAT_VERSION, dtype=str(dtype).removeprefix("torch."),
                        metadata=_metadata(net))
    for name, node in net.nodes.items():
        if isinstance(node, _POPULATIONS):
            g.add_node(name, **_population_attrs(net, name, shapes[name], dtype))
    for target in (n for n in net.nodes if isinstance(net.nodes[n], (N.Neuron, N.Output))):
        _add_target(g, net, target, delayed, synapses, shapes, order, dtype)
    log.debug("event graph: %d populations, %d projections, %d synapses", g.number_of_nodes(),
              g.number_of_edges(), sum(len(a["pre"]) for *_, a in g.edges(data=True)))
    return g


def _dtype_of(net: N.Network) -> torch.dtype:
    for node in net.nodes.values():
        for value in vars(node).values():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                return value.dtype
    return torch.get_default_dtype()


def _metadata(net: N.Network) -> dict:
    kept = {}
    for key, value in net.metadata.items():
        if isinstance(value, (str, int, float, bool)):
            kept[str(key)] = value
        else:
            log.warning("network metadata %r (%s) is not a scalar; the event graph leaves it out", key,
                        type(value).__name__)
    return kept


def _synapses(net: N.Network, shapes: dict, order: list) -> _Synapses:
    """Push every population's identity, and the biases, through the synaptic nodes in
    evaluation order (their inputs are undelayed: delayed edges end at populations)."""
    syn = _Synapses()
    for name in order:
        node = net.nodes[name]
        if isinstance(node, _POPULATIONS):
            continue
        sources = net.predecessors(name)
        in_shape = shapes[sources[0]]
        op = _operator(node, in_shape, shapes[name])
        acc: dict[str, _Route] = {}
        bias = None
        for src in sources:
            if isinstance(net.nodes[src], _POPULATIONS):
                incoming = {src: _Route(None)}
            else:
                incoming = syn.routes[src]
                if syn.bias[src] is not None:
                    bias = syn.bias[src] if bias is None else bias + syn.bias[src]
            for pop, route in incoming.items():
                size = math.prod(shapes[pop])
                acc[pop] = route if pop not in acc else acc[pop].plus(route, size)
        syn.routes[name] = {pop: _through(route, op, name) for pop, route in acc.items()}
        if bias is not None and op is not None:
            bias = op.apply(bias)
        own = _own_bias(node, shapes[name])
        syn.bias[name] = own if bias is None else (bias if own is None else bias + own)
    return syn


def _through(route: _Route, op: _Map | None, name: str) -> _Route:
    if op is None:
        matrix = route.matrix
    else:
        matrix = op if route.matrix is None else route.matrix.then(op)
    return _Route(matrix, route.nodes | {name}, route.paths)


def _add_target(g, net, target, delayed, synapses: _Synapses, shapes, order, dtype) -> None:
    """The projections into ``target``, its bias and its delay lines."""
    merged: dict[tuple, _Route] = {}
    bias = None
    lines: dict[str, dict] = {}
    for src in net.predecessors(target):
        line = src if (src, target) in delayed else None
        if line is not None:
            if line in lines:  # the same delayed edge again: the line's value counts once more
                lines[line]["count"] += 1
                continue
            lines[line] = {"count": 1, "bias": _cast(synapses.bias.get(src), dtype)}
        if isinstance(net.nodes[src], _POPULATIONS):
            incoming = {src: _Route(None)}
        else:
            incoming = synapses.routes[src]
            if line is None and synapses.bias[src] is not None:
                bias = synapses.bias[src] if bias is None else bias + synapses.bias[src]
        for pop, route in incoming.items():
            key = (pop, line)
            merged[key] = route if key not in merged else merged[key].plus(route, math.prod(shapes[pop]))
    attrs = g.nodes[target]
    if bias is not None:
        attrs["bias"] = _cast(bias, dtype)
    if lines:
        attrs["lines"] = lines
    rank = {n: k for k, n in enumerate(order)}
    for (pop, line), route in merged.items():
        key = "delay0" if line is None else f"delay1:{line}"
        g.add_edge(pop, target, key=key, **_projection_attrs(net, route, line, math.prod(shapes[pop]), rank, dtype))


def _cast(t: torch.Tensor | None, dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


def _projection_attrs(net, route: _Route, line, n_pre: int, rank: dict, dtype) -> dict:
    m = route.dense(n_pre)
    perm = torch.argsort(m.inp * m.n_out + m.out)
    chain = sorted(route.nodes, key=rank.__getitem__)
    attrs = {"pre": m.inp[perm], "post": m.out[perm], "weight": m.value[perm].to(dtype),
             "delay": 0 if line is None else 1, "chain": ",".join(chain), "paths": route.paths}
    if line is not None:
        attrs["line"] = line
    layers = [n for n in chain if isinstance(net.nodes[n], (N.Affine, N.Conv, N.Pool))]
    kind = "composite"
    if route.paths == 1 and len(layers) <= 1:
        kind = net.nodes[layers[0]].kind if layers else "one_to_one"
        kind = {"affine": "dense"}.get(kind, kind)
    attrs["kind"] = kind
    if kind == "conv":
        conv = net.nodes[layers[0]]
        attrs.update(kernel=tuple(conv.weight.shape[2:]), stride=conv.stride, padding=conv.padding,
                     dilation=conv.dilation, groups=conv.groups, in_channels=conv.weight.shape[1] * conv.groups,
                     out_channels=conv.weight.shape[0])
    elif kind == "pool":
        pool = net.nodes[layers[0]]
        attrs.update(kernel=pool.kernel_size, stride=pool.stride, padding=pool.padding, pool_mode=pool.mode)
    return attrs


def _population_attrs(net: N.Network, name: str, shape: tuple, dtype) -> dict:
    node = net.nodes[name]
    attrs = {"kind": node.kind, "shape": tuple(shape), "size": math.prod(shape)}
    if isinstance(node, N.Input):
        attrs["port"] = net.inputs.index(name)
    elif isinstance(node, N.Output):
        attrs["port"] = net.outputs.index(name)
    else:
        spec = node.spec
        attrs.update(neuron_kind=spec.kind, reset=spec.reset, reset_timing=spec.reset_timing, fire=spec.fire,
                     v_reset=float(spec.v_reset), v_rest=float(spec.v_rest), scale=float(spec.scale),
                     current_decay=spec.current_decay, reset_discards_input=bool(spec.reset_discards_input),
                     detach_reset=bool(spec.detach_reset), surrogate=spec.surrogate.name,
                     surrogate_param=float(spec.surrogate.param), integration=spec.integration)
        if spec.tau is not None:
            attrs["tau"] = float(spec.tau)
        if spec.integration == "euler" and spec.has_current:
            attrs["euler_alpha"] = float(spec.alpha)
        attrs.update({k: v.detach().reshape(-1).to(dtype) for k, v in node.params().items()})
    return attrs
