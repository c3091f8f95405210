"""The event graph: a spiking network as populations and projections, and an event-driven
reference simulator of it.

A neuromorphic toolchain places *populations* of neurons on cores and routes spike
*events* between them along *projections*; it has no use for the chain of layers a
framework builds a network from.  :func:`to_graph` rewrites a
:class:`~snnopt.export.network.Network` into that form, a :class:`networkx.MultiDiGraph`:

**Nodes (populations).**  Every ``Input`` (a source of events, which may be real-valued
currents), every ``Neuron`` and every ``Output`` (a sink) of the network.  Attributes:

===============================  =====================================================
``kind``                         ``"input"``, ``"neuron"`` or ``"output"``
``shape``, ``size``              the batchless shape and the number of units; a unit's
                                 index is its row-major position in ``shape``
``port``                         inputs and outputs: the position among the network's
                                 inputs (outputs), i.e. in ``run``'s tuples
``neuron_kind``, ``reset``,      neurons: the fields of :class:`~snnopt.spec.NeuronSpec`
``reset_timing``, ``fire``,      that fix the discrete dynamics (equations in
``v_reset``, ``v_rest``,         :mod:`snnopt.spec`), plus the surrogate gradient and
``scale``, ``current_decay``,    ``detach_reset`` for readers that train again
``reset_discards_input``,
``detach_reset``, ``surrogate``,
``surrogate_param``
``beta``, ``alpha``,             neurons: per-unit parameter arrays of length ``size``
``threshold``, ``input_scale``   (those the kind has; ``input_scale`` multiplies the
                                 summed input before the neuron)
``bias``                         optional: a constant input per unit, every step
``lines``                        optional: the target's delay lines, ``{line: {"count":
                                 m, "bias": array or None}}`` (see *delays*)
===============================  =====================================================

**Edges (projections).**  A projection ``P -> Q`` is the composite of every chain of
synaptic nodes (``Affine``, ``Conv``, ``Pool``, ``Flatten``, ``Scale`` and the fan-in sums
between them) that leads from population ``P`` to population ``Q`` without passing
through another population.  All those nodes are affine, so the chains' linear parts
compose and add up to one matrix ``W_PQ``, stored as a connectivity list over the
flattened populations: arrays ``pre``, ``post``, ``weight`` (one entry per synapse,
sorted by ``pre`` then ``post``).  Their constant parts do not depend on ``P``; they are
summed per target into ``bias`` (or a line's ``bias``).  Attributes ``delay`` (0 or 1
step), ``line`` (delay 1: the delay line, below), ``kind`` (``"dense"``, ``"conv"``,
``"pool"`` or ``"one_to_one"`` for a projection made of one such layer, else
``"composite"``), ``chain`` (the network's synaptic nodes it composes, comma-separated,
in evaluation order), ``paths`` (how many chains were merged by summing their weights)
and, for ``"conv"`` / ``"pool"``, the layer's geometry (``kernel``, ``stride``,
``padding``, ``dilation``, ``groups``, ``in_channels``, ``out_channels`` / ``pool_mode``).
Edge keys are ``"delay0"`` and ``"delay1:<line>"``.

**Input of a population.**  With ``o_P(t)`` the output of population ``P`` at step ``t``
(an input's value, a neuron's spikes, or an LI neuron's membrane), the summed input of
``Q`` is ::

    x_Q(t) = bias_Q + sum_{delay-0 projections P->Q} W_PQ o_P(t)
                    + sum_{lines l of Q} count_l * d_l(t - 1)
    d_l(t) = bias_l + sum_{delay-1 projections P->Q on line l} W_PQ o_P(t),   d_l(-1) = 0

A neuron then takes ``x_Q(t) * input_scale`` through one step of its dynamics; an output
*is* ``x_Q(t)`` (a neuron's spikes, an LI readout's membrane, or a current).

**Delays.**  A network's cycles are closed by *delayed* edges (``s -> Q`` delivers ``s``'s
output of the previous step, zeros before the first; see
:meth:`~snnopt.export.network.Network.delayed_edges`).  The event graph needs each
delayed edge to end at a neuron population ``Q`` (a synaptic delay at the population's
input; :class:`~snnopt.nn.Recurrent` exports so): the delayed value ``d_l`` with line
``l = s`` is then exactly the value of the network node ``s``, and ``count_l`` is the
number of ``s -> Q`` edges.  Projections reaching ``Q`` through ``s`` have ``delay = 1``
and ``line = s``; ``bias_l`` is the constant part of ``s`` (it enters from the second
step on, as in the network).  Every other projection has ``delay = 0``.

**Files.**  :func:`write` stores the graph as GraphML (``networkx.write_graphml``; the
arrays, ``shape`` and ``lines`` as JSON text, since GraphML attributes are scalars) or
as JSON (``networkx.node_link_data``, arrays as lists); graph attributes ``format``
(``"snnopt-events"``), ``format_version``, ``dtype`` and ``metadata`` (e.g. ``dt``).
:func:`read` inverts it and checks the graph, raising
:class:`~snnopt.export.network.NetworkError` naming the file, the population or
projection and the problem.

**Simulator.**  :class:`EventSimulator` runs the graph.  Per time step:

1. every target's input buffer starts at its ``bias``, every delay line's next value at
   its line ``bias``;
2. each input population emits its non-zero entries as events; each event ``(unit j,
   value a)`` adds ``a * w`` to the input buffer of every synapse ``(j, post, w)`` of each
   outgoing projection (for ``delay = 1``, to the line's next value);
3. the neuron populations, in topological order of the delay-0 projections, sum their
   input buffer and their lines' values of the previous step, advance one step with
   :func:`snnopt.nn.functional.neuron_step` and emit their non-zero outputs as events;
4. each output returns its summed input.

The synaptic work is proportional to the number of events times their fan-out
(``stats``); neuron updates are dense, since every neuron leaks every step.

**Exactness.**  The neuron update is the very function the PyTorch modules run, so
neurons given the same input produce bit-identical spikes and state.  The inputs agree
bit for bit when the weights, biases and their products with the event values are
exactly representable (e.g. integers / 64, binary or small-integer events) and the
partial sums stay within the mantissa: then every order of summation is exact.  The
simulator sums a target's bias first, then its delay-0 events, then its lines, in
line order.  With arbitrary float weights the currents agree with a dense evaluation
(:class:`~snnopt.export.runtime.NetworkModule`) to rounding only, since a matrix product
sums in another order, and composites (e.g. a Scale folded into a Linear, an average
pool into a Conv) round once instead of after every layer.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import torch

from ..nn.functional import neuron_step
from ..spec import Config, NeuronSpec
from ..surrogate import Surrogate
from . import network as N
from .network import NetworkError

__all__ = ["FORMAT", "to_graph", "write", "read", "EventSimulator"]

log = logging.getLogger(__name__)

FORMAT = "snnopt-events"
FORMAT_VERSION = 1

_POPULATIONS = (N.Input, N.Neuron, N.Output)
_INT_ARRAYS = ("pre", "post")
_INT_TUPLES = ("shape", "kernel", "stride", "padding", "dilation")
_FLOAT_ARRAYS = ("weight", "bias", "beta", "alpha", "threshold", "input_scale")
_SPEC_TEXT = ("reset", "reset_timing", "fire", "current_decay", "surrogate")
_SPEC_NUMBERS = ("v_reset", "v_rest", "scale", "surrogate_param")
_SPEC_FLAGS = ("reset_discards_input", "detach_reset")


# -- sparse linear maps ---------------------------------------------------------------------

def _csr(rows: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(perm, start)``: ``rows[perm]`` is sorted (stably) and row ``r``'s entries are
    ``perm[start[r]:start[r + 1]]``."""
    perm = torch.sort(rows, stable=True).indices
    start = torch.zeros(n_rows + 1, dtype=torch.long)
    start[1:] = torch.cumsum(torch.bincount(rows, minlength=n_rows), 0)
    return perm, start


def _fan_out(start: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All entries of the listed rows of a row-sorted list: ``(which, pos)``, entry ``pos[k]``
    belonging to ``rows[which[k]]``, in the order of ``rows`` then of the list."""
    first = start[rows]
    counts = start[rows + 1] - first
    begins = torch.cumsum(counts, 0) - counts  # where each row's entries begin in the output
    total = int(counts.sum())
    # ``which`` steps from one listed row to the next at that row's beginning: a cumulative sum
    # of the steps (rows without entries are stepped over)
    listed = torch.arange(len(rows))[counts > 0]
    steps = torch.zeros(total, dtype=torch.long)
    steps[begins[listed]] = torch.diff(listed, prepend=listed.new_zeros(1))
    which = torch.cumsum(steps, 0)
    return which, first[which] + torch.arange(total) - begins[which]


@dataclass
class _Map:
    """A sparse linear map ``y = M x``, ``M: [n_out, n_in]``, as entries ``(out, inp, value)``
    (float64; explicit zeros stay, so a layer's synapses are its structure)."""

    out: torch.Tensor
    inp: torch.Tensor
    value: torch.Tensor
    n_out: int
    n_in: int

    @classmethod
    def identity(cls, n: int) -> "_Map":
        idx = torch.arange(n)
        return cls(idx, idx, torch.ones(n, dtype=torch.float64), n, n)

    @classmethod
    def dense(cls, weight: torch.Tensor) -> "_Map":
        n_out, n_in = weight.shape
        out, inp = torch.meshgrid(torch.arange(n_out), torch.arange(n_in), indexing="ij")
        return cls(out.reshape(-1), inp.reshape(-1), weight.detach().reshape(-1).double(), n_out, n_in)

    @classmethod
    def diagonal(cls, scale: torch.Tensor) -> "_Map":
        idx = torch.arange(scale.numel())
        return cls(idx, idx, scale.detach().reshape(-1).double(), scale.numel(), scale.numel())

    def then(self, op: "_Map") -> "_Map":
        """``op @ self``: every entry ``(m, i, a)`` of ``self`` joins every entry ``(o, m, b)``
        of ``op`` into ``(o, i, b * a)``; equal ``(o, i)`` are summed."""
        perm, start = _csr(op.inp, op.n_in)
        which, pos = _fan_out(start, self.out)
        k = perm[pos]
        return _Map(op.out[k], self.inp[which], op.value[k] * self.value[which], op.n_out, self.n_in).coalesced()

    def plus(self, other: "_Map") -> "_Map":
        return _Map(torch.cat([self.out, other.out]), torch.cat([self.inp, other.inp]),
                    torch.cat([self.value, other.value]), self.n_out, self.n_in).coalesced()

    def coalesced(self) -> "_Map":
        """Equal ``(out, inp)`` summed, entries sorted by ``(out, inp)``."""
        keys, inverse = torch.unique(self.out * self.n_in + self.inp, return_inverse=True)
        value = torch.zeros(len(keys), dtype=torch.float64).index_add_(0, inverse, self.value)
        return _Map(keys // self.n_in, keys % self.n_in, value, self.n_out, self.n_in)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``M x`` for a dense vector ``x``."""
        return torch.zeros(self.n_out, dtype=torch.float64).index_add_(0, self.out, self.value * x[self.inp])


def _conv_map(node: N.Conv, in_shape: tuple, out_shape: tuple) -> _Map:
    """The synapses of a convolution: output ``(co, oy, ox)`` reads input ``(ci, oy*s - p +
    ky*d, ...)`` with weight ``w[co, ci mod group size, ky, kx]`` where that is inside the
    input (zero padding has no synapse).  A 1-d convolution is a 2-d one of height 1."""
    w = node.weight.detach().double()
    stride, padding, dilation = node.stride, node.padding, node.dilation
    if node.dims == 1:
        w, in_shape, out_shape = w[:, :, None, :], (in_shape[0], 1, in_shape[1]), (out_shape[0], 1, out_shape[1])
        stride, padding, dilation = (1, *stride), (0, *padding), (1, *dilation)
    c_out, c_in_group, kh, kw = w.shape
    _, h, wd = in_shape
    _, ho, wo = out_shape
    co, cg, ky, kx, oy, ox = torch.meshgrid(*(torch.arange(n) for n in (c_out, c_in_group, kh, kw, ho, wo)),
                                            indexing="ij")
    iy = oy * stride[0] - padding[0] + ky * dilation[0]
    ix = ox * stride[1] - padding[1] + kx * dilation[1]
    ci = (co // (c_out // node.groups)) * c_in_group + cg
    keep = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < wd)
    return _Map(((co * ho + oy) * wo + ox)[keep], ((ci * h + iy) * wd + ix)[keep], w[co, cg, ky, kx][keep],
                c_out * ho * wo, in_shape[0] * h * wd).coalesced()


def _pool_map(node: N.Pool, in_shape: tuple, out_shape: tuple) -> _Map:
    """Sum pooling (weight 1) or average pooling (weight ``1 / (kh * kw)``, padding counted)."""
    c, h, wd = in_shape
    _, ho, wo = out_shape
    (kh, kw), (sy, sx), (py, px) = node.kernel_size, node.stride, node.padding
    ch, ky, kx, oy, ox = torch.meshgrid(*(torch.arange(n) for n in (c, kh, kw, ho, wo)), indexing="ij")
    iy, ix = oy * sy - py + ky, ox * sx - px + kx
    keep = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < wd)
    out, inp = ((ch * ho + oy) * wo + ox)[keep], ((ch * h + iy) * wd + ix)[keep]
    value = torch.full((len(out),), 1.0 if node.mode == "sum" else 1.0 / (kh * kw), dtype=torch.float64)
    return _Map(out, inp, value, c * ho * wo, c * h * wd).coalesced()


def _operator(node: N.Node, in_shape: tuple, out_shape: tuple) -> _Map | None:
    """The linear part of a synaptic node (``None``: the identity, a Flatten)."""
    if isinstance(node, N.Affine):
        return _Map.dense(node.weight)
    if isinstance(node, N.Conv):
        return _conv_map(node, in_shape, out_shape)
    if isinstance(node, N.Pool):
        return _pool_map(node, in_shape, out_shape)
    if isinstance(node, N.Scale):
        return _Map.diagonal(node.scale)
    return None


def _own_bias(node: N.Node, out_shape: tuple) -> torch.Tensor | None:
    """The constant a synaptic node adds to its output (flattened), if any."""
    bias = getattr(node, "bias", None)
    if bias is None:
        return None
    bias = bias.detach().double()
    if isinstance(node, N.Conv):
        bias = bias.repeat_interleave(math.prod(out_shape[1:]))
    return bias


# -- Network -> event graph -----------------------------------------------------------------

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
    """The event graph of ``net`` (see the module docstring); raises :class:`NetworkError`
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
                     surrogate_param=float(spec.surrogate.param))
        attrs.update({k: v.detach().reshape(-1).to(dtype) for k, v in node.params().items()})
    return attrs


# -- checking a graph -----------------------------------------------------------------------

@dataclass
class _Population:
    name: str
    kind: str
    shape: tuple
    size: int
    port: int | None = None
    bias: torch.Tensor | None = None
    lines: dict = field(default_factory=dict)  # line -> (count, bias or None)
    cfg: Config | None = None
    params: dict = field(default_factory=dict)  # beta/alpha/threshold/input_scale, None where absent


@dataclass
class _Projection:
    source: str
    target: str
    line: str | None
    start: torch.Tensor  # [n_pre + 1]: synapses of pre unit j are post[start[j]:start[j + 1]]
    post: torch.Tensor
    weight: torch.Tensor


@dataclass
class _Model:
    dtype: torch.dtype
    populations: dict
    projections: list
    inputs: list
    outputs: list
    order: list  # neuron populations, delay-0 projections before their targets


def _compile(g: nx.DiGraph, where: str) -> _Model:
    """Check an event graph and put it in the simulator's form; raises :class:`NetworkError`
    naming ``where`` (the file or "event graph"), the population or projection and the problem."""
    if not isinstance(g, nx.DiGraph):
        raise NetworkError(f"{where}: an event graph is a networkx DiGraph, got {type(g).__name__}")
    _check_format(g, where)
    dtype = _graph_dtype(g, where)
    pops = {name: _check_population(name, attrs, dtype, f"{where}: population {name!r}")
            for name, attrs in g.nodes(data=True)}
    projections = [_check_projection(s, t, attrs, pops, dtype, f"{where}: projection {s!r} -> {t!r}")
                   for s, t, attrs in g.edges(data=True)]
    inputs, outputs = (_ports(pops, kind, where) for kind in ("input", "output"))
    return _Model(dtype, pops, projections, inputs, outputs, _neuron_order(pops, projections, where))


def _check_format(g: nx.Graph, where: str) -> None:
    fmt = g.graph.get("format")
    if fmt != FORMAT:
        raise NetworkError(f"{where}: not an snnopt event graph (graph attribute 'format' is {fmt!r}, expected "
                           f"{FORMAT!r}); make one with snnopt.export.events.to_graph or write")
    if g.graph.get("format_version") != FORMAT_VERSION:
        raise NetworkError(f"{where}: event graph format_version {g.graph.get('format_version')!r}; this snnopt "
                           f"reads version {FORMAT_VERSION}")


def _graph_dtype(g, where) -> torch.dtype:
    name = g.graph.get("dtype")
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise NetworkError(f"{where}: graph attribute 'dtype' must name a float dtype such as 'float32', got {name!r}")
    return dtype


def _require(attrs: dict, name: str, types, where: str, what: str):
    if name not in attrs:
        raise NetworkError(f"{where}: lacks the required attribute {name!r} ({what})")
    value = attrs[name]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise NetworkError(f"{where}: attribute {name!r} must be {what}, got {type(value).__name__} {value!r:.80}")
    return value


def _as_tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _array(attrs: dict, name: str, size: int | None, dtype, where: str, required=True):
    """A 1-d tensor attribute (of ``size`` entries when given), cast to ``dtype``."""
    if name not in attrs and not required:
        return None
    value = _require(attrs, name, torch.Tensor, where, "a 1-d array")
    if value.dim() != 1 or (size is not None and value.numel() != size):
        need = "a 1-d array" + ("" if size is None else f" of {size} entries")
        raise NetworkError(f"{where}: attribute {name!r} must be {need}, got shape {list(value.shape)}")
    if value.is_floating_point() and not dtype.is_floating_point and value.numel():
        raise NetworkError(f"{where}: attribute {name!r} must hold integers")
    return value.to(dtype)


def _check_population(name, attrs, dtype, where) -> _Population:
    kind = _require(attrs, "kind", str, where, "'input', 'neuron' or 'output'")
    if kind not in ("input", "neuron", "output"):
        raise NetworkError(f"{where}: kind must be 'input', 'neuron' or 'output', got {kind!r}")
    shape = _require(attrs, "shape", tuple, where, "a tuple of dimensions")
    size = _require(attrs, "size", int, where, "the number of units")
    if not all(isinstance(s, int) and s > 0 for s in shape) or size != math.prod(shape):
        raise NetworkError(f"{where}: size {size} does not match shape {shape}")
    pop = _Population(name, kind, shape, size)
    if kind in ("input", "output"):
        pop.port = _require(attrs, "port", int, where, f"the position among the network's {kind}s")
        if kind == "input":
            return pop
    pop.bias = _array(attrs, "bias", size, dtype, where, required=False)
    pop.lines = _check_lines(attrs.get("lines", {}), size, dtype, where)
    if kind == "neuron":
        spec = _check_spec(attrs, where)
        needed = {"beta": spec.kind != "if", "alpha": spec.has_current, "threshold": spec.spiking,
                  "input_scale": False}
        for p, need in needed.items():
            pop.params[p] = _array(attrs, p, size, dtype, f"{where} (a {spec.kind} population)", required=need)
        if spec.kind == "if":
            pop.params["beta"] = None
        pop.cfg = spec.config
    return pop


def _check_spec(attrs, where) -> NeuronSpec:
    """The population's dynamics; its parameters are the arrays, hence ``param_attrs``."""
    fields = {name: _require(attrs, name, str, where, "text") for name in _SPEC_TEXT}
    fields.update({name: float(_require(attrs, name, (int, float), where, "a number")) for name in _SPEC_NUMBERS})
    fields.update({name: _require(attrs, name, bool, where, "true or false") for name in _SPEC_FLAGS})
    kind = _require(attrs, "neuron_kind", str, where, "the neuron kind")
    tensors = tuple((p, p) for p in ("beta", "alpha", "threshold"))
    try:
        surrogate = Surrogate(fields.pop("surrogate"), fields.pop("surrogate_param"))
        return NeuronSpec(kind=kind, beta=None, alpha=None, threshold=None, surrogate=surrogate,
                          param_attrs=tensors, **fields)
    except ValueError as exc:
        raise NetworkError(f"{where}: invalid neuron: {exc}") from None


def _check_lines(lines, size, dtype, where) -> dict:
    if not isinstance(lines, dict):
        raise NetworkError(f"{where}: attribute 'lines' must map line names to {{'count', 'bias'}}")
    checked = {}
    for line, spec in lines.items():
        here = f"{where}, delay line {line!r}"
        if not isinstance(spec, dict):
            raise NetworkError(f"{here}: must be {{'count': n, 'bias': array or None}}")
        count = _require(spec, "count", int, here, "how many delayed edges deliver the line")
        if count < 1:
            raise NetworkError(f"{here}: count must be at least 1, got {count}")
        bias = spec.get("bias")
        checked[line] = (count, None if bias is None else _array(spec, "bias", size, dtype, here))
    return checked


def _check_projection(s, t, attrs, pops, dtype, where) -> _Projection:
    src, dst = pops[s], pops[t]
    if src.kind == "output":
        raise NetworkError(f"{where}: leaves an output; outputs are sinks")
    if dst.kind == "input":
        raise NetworkError(f"{where}: enters an input; inputs are sources")
    pre = _array(attrs, "pre", None, torch.long, where)
    post = _array(attrs, "post", len(pre), torch.long, where)
    weight = _array(attrs, "weight", len(pre), dtype, where)
    for name, idx, pop in (("pre", pre, src), ("post", post, dst)):
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= pop.size):
            raise NetworkError(f"{where}: {name} indices must lie in [0, {pop.size}) (population {pop.name!r}), "
                               f"got {int(idx.min())}..{int(idx.max())}")
    delay = _require(attrs, "delay", int, where, "0 or 1 steps")
    line = None
    if delay == 1:
        line = _require(attrs, "line", str, where, "the delay line of a delay-1 projection")
        if line not in dst.lines:
            raise NetworkError(f"{where}: delay line {line!r} is not among the lines of {t!r} "
                               f"({sorted(dst.lines)}); add it to the target's 'lines'")
    elif delay != 0:
        raise NetworkError(f"{where}: delay must be 0 or 1 steps, got {delay}")
    perm, start = _csr(pre, src.size)
    return _Projection(s, t, line, start, post[perm], weight[perm])


def _ports(pops: dict, kind: str, where: str) -> list[str]:
    named = sorted((p.port, p.name) for p in pops.values() if p.kind == kind)
    if not named:
        raise NetworkError(f"{where}: the graph has no {kind} population")
    if [port for port, _ in named] != list(range(len(named))):
        raise NetworkError(f"{where}: the {kind} ports must be 0..{len(named) - 1}, got "
                           + ", ".join(f"{n!r}: {port}" for port, n in named))
    return [n for _, n in named]


def _neuron_order(pops: dict, projections: list, where: str) -> list[str]:
    g = nx.DiGraph()
    g.add_nodes_from(pops)
    g.add_edges_from((p.source, p.target) for p in projections if p.line is None)
    index = {n: k for k, n in enumerate(pops)}
    try:
        order = list(nx.lexicographical_topological_sort(g, key=index.__getitem__))
    except nx.NetworkXUnfeasible:
        cycle = " -> ".join(s for s, _ in nx.find_cycle(g))
        raise NetworkError(f"{where}: the delay-0 projections form a cycle ({cycle}); a cycle needs a delay-1 "
                           "projection") from None
    return [n for n in order if pops[n].kind == "neuron"]


# -- files ----------------------------------------------------------------------------------

def write(net, path) -> Path:
    """Write the event graph of ``net`` (a :class:`Network`, or a graph from :func:`to_graph`
    or :func:`read`) to ``path``: ``.graphml`` (GraphML) or ``.json`` (node-link JSON)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".graphml", ".json"):
        raise ValueError(f"cannot tell the event-graph file format of {str(path)!r}; use a .graphml or .json path")
    graph = net if isinstance(net, nx.DiGraph) else to_graph(net)
    _compile(graph, "event graph")
    if suffix == ".graphml":
        nx.write_graphml(_encoded(graph, text=True), path)
    else:
        path.write_text(json.dumps(nx.node_link_data(_encoded(graph, text=False), edges="edges")))
    log.info("wrote the event graph (%d populations, %d projections) to %s", graph.number_of_nodes(),
             graph.number_of_edges(), path)
    return path


def read(path) -> nx.MultiDiGraph:
    """The event graph in ``path`` (``.graphml`` or ``.json``, as :func:`write` makes them),
    checked; raises :class:`NetworkError` naming the file and the problem."""
    path = Path(path)
    where = str(path)
    suffix = path.suffix.lower()
    if suffix not in (".graphml", ".json"):
        raise NetworkError(f"{where}: an event graph file ends in .graphml or .json")
    if not path.is_file():
        raise NetworkError(f"{where}: no such file")
    try:
        if suffix == ".graphml":
            plain = nx.read_graphml(path, force_multigraph=True)
        else:
            data = json.loads(path.read_text())
            plain = nx.node_link_graph(data, directed=True, multigraph=True, edges="edges")
    except OSError as exc:
        raise NetworkError(f"{where}: cannot be read ({exc})") from None
    except (SyntaxError, ValueError, KeyError, TypeError, AttributeError, IndexError, nx.NetworkXError) as exc:
        kind = "GraphML" if suffix == ".graphml" else "node-link JSON"
        raise NetworkError(f"{where}: not a readable {kind} file ({type(exc).__name__}: {exc}); it may be "
                           "truncated or of another format") from None
    graph = _decoded(plain, where)
    _compile(graph, where)
    return graph


def _array_text(t: torch.Tensor) -> str:
    """A JSON list of ``t``'s values, each with the fewest digits that read back exactly."""
    values = t.detach().reshape(-1)
    values = (values.float() if values.dtype == torch.bfloat16 else values).numpy()
    if not t.is_floating_point():
        return json.dumps(values.tolist())
    text = values.astype(str)
    for bad, spelled in (("inf", "Infinity"), ("-inf", "-Infinity"), ("nan", "NaN")):
        text[text == bad] = spelled
    return "[" + ",".join(text.tolist()) + "]"


def _encode(value, text: bool):
    """An attribute as GraphML (``text``: arrays, tuples and dicts as JSON text) or JSON holds it."""
    if isinstance(value, torch.Tensor):
        return _array_text(value) if text else json.loads(_array_text(value))
    if isinstance(value, (tuple, list)):
        items = [int(v) for v in value]
        return json.dumps(items) if text else items
    if isinstance(value, dict):
        plain = {str(k): _encode(v, False) for k, v in value.items()}
        return json.dumps(plain) if text else plain
    return value


def _encoded(g: nx.DiGraph, text: bool) -> nx.MultiDiGraph:
    out = nx.MultiDiGraph(**{k: _encode(v, text) for k, v in g.graph.items()})
    for name, attrs in g.nodes(data=True):
        out.add_node(name, **{k: _encode(v, text) for k, v in attrs.items() if v is not None})
    for s, t, key, attrs in _edges_with_keys(g):
        out.add_edge(s, t, key=key, **{k: _encode(v, text) for k, v in attrs.items() if v is not None})
    return out


def _edges_with_keys(g: nx.DiGraph):
    if g.is_multigraph():
        return g.edges(keys=True, data=True)
    return ((s, t, f"delay{a.get('delay')}", a) for s, t, a in g.edges(data=True))


def _decoded(plain: nx.DiGraph, where: str) -> nx.MultiDiGraph:
    """The in-memory form of a graph read from a file: arrays as tensors, ``shape`` etc. as
    tuples, ``lines`` and ``metadata`` as dicts."""
    _check_format(plain, where)
    graph = {k: _decode(k, v, torch.float64, f"{where}: graph") for k, v in plain.graph.items()
             if k not in ("node_default", "edge_default")}
    dtype = getattr(torch, str(graph.get("dtype")), None)
    dtype = dtype if isinstance(dtype, torch.dtype) else torch.float64  # a bad dtype is reported by _compile
    g = nx.MultiDiGraph(**graph)
    for name, attrs in plain.nodes(data=True):
        g.add_node(name, **{k: _decode(k, v, dtype, f"{where}: population {name!r}") for k, v in attrs.items()})
    for s, t, key, attrs in _edges_with_keys(plain):
        here = f"{where}: projection {s!r} -> {t!r}"
        g.add_edge(s, t, key=key, **{k: _decode(k, v, dtype, here) for k, v in attrs.items()})
    return g


def _decode(name: str, value, dtype, where: str):
    """An attribute as :func:`_encode` wrote it, back in memory form."""
    if name not in _INT_ARRAYS + _FLOAT_ARRAYS + _INT_TUPLES + ("lines", "metadata") or value is None:
        return value
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise NetworkError(f"{where}: attribute {name!r} is not valid JSON ({exc})") from None
    try:
        if name in _INT_TUPLES:
            return tuple(_integer(v) for v in value)
        if name in _INT_ARRAYS:
            array = torch.tensor(value)
            if array.is_floating_point() and array.numel():
                raise TypeError("the entries are not integers")
            return array.long()
        if name in _FLOAT_ARRAYS:
            return torch.tensor(value, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise NetworkError(f"{where}: attribute {name!r} must be a list of numbers ({exc})") from None
    if name == "lines" and isinstance(value, dict):
        return {line: {k: _decode(k, v, dtype, f"{where}, delay line {line!r}") for k, v in spec.items()}
                if isinstance(spec, dict) else spec for line, spec in value.items()}
    return value


def _integer(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r} is not an integer")
    return value


# -- the simulator --------------------------------------------------------------------------

class EventSimulator:
    """Runs an event graph event by event (algorithm in the module docstring).

    ``run(x, state=None) -> (out, state)`` has :meth:`NetworkModule.run
    <snnopt.export.runtime.NetworkModule.run>`'s convention: ``x`` is time-major ``[T, B,
    *shape]`` (a tuple in port order for several inputs), ``out`` likewise; ``state`` maps a
    neuron population to ``v`` or ``(i, v)`` (``[B, *shape]``) and ``"<line>:out"`` to a
    delay line's value of the previous step, which is the network's ``"<source>:out"``;
    missing entries are zeros.  After a run, ``stats`` holds ``events`` (non-zero source
    outputs processed) and ``synaptic_events`` (synapse additions made).
    """

    def __init__(self, graph: nx.DiGraph):
        self._model = _compile(graph, "event graph")
        self._outgoing: dict[str, list[_Projection]] = {n: [] for n in self._model.populations}
        for proj in self._model.projections:
            self._outgoing[proj.source].append(proj)
        self.stats = {"events": 0, "synaptic_events": 0}

    @property
    def inputs(self) -> list[str]:
        return list(self._model.inputs)

    @property
    def outputs(self) -> list[str]:
        return list(self._model.outputs)

    def run(self, x, state: dict | None = None):
        """Outputs and final state from ``state`` (see the class docstring)."""
        xs = self._check_inputs(x)
        steps, batch = xs[0].shape[:2]
        state = dict(state or {})
        line_keys = {f"{line}:out" for pop in self._model.populations.values() for line in pop.lines}
        unknown = set(state) - set(self._model.order) - line_keys
        if unknown:
            raise ValueError(f"state entries {sorted(unknown)} name no neuron population {self._model.order} and no "
                             f"delay line {sorted(line_keys)}")
        neurons = {n: self._initial(n, state, batch) for n in self._model.order}
        lines = self._initial_lines(state, batch)
        self.stats = {"events": 0, "synaptic_events": 0}
        outs = {n: [] for n in self._model.outputs}
        with torch.no_grad():
            for t in range(steps):
                values, lines = self._step([x[t] for x in xs], neurons, lines, batch)
                for n in outs:
                    outs[n].append(values[n].reshape(batch, *self._model.populations[n].shape))
        result = [torch.stack(outs[n]) if outs[n] else
                  xs[0].new_zeros((0, batch, *self._model.populations[n].shape)) for n in self._model.outputs]
        return (result[0] if len(result) == 1 else tuple(result)), self._final(neurons, lines, batch)

    def _check_inputs(self, x) -> list[torch.Tensor]:
        xs = list(x) if isinstance(x, (tuple, list)) else [x]
        names = self._model.inputs
        if len(xs) != len(names):
            raise ValueError(f"the graph has inputs {names}; pass a tuple of {len(names)} tensors")
        for name, value in zip(names, xs):
            shape = self._model.populations[name].shape
            if not isinstance(value, torch.Tensor) or value.dim() != len(shape) + 2 or tuple(value.shape[2:]) != shape:
                got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"input {name!r} must be time-major [T, B, {', '.join(map(str, shape))}]; got {got}")
        if len({tuple(v.shape[:2]) for v in xs}) != 1:
            raise ValueError(f"the inputs differ in [T, B]: {[list(v.shape[:2]) for v in xs]}")
        return [v.to(self._model.dtype) for v in xs]

    def _initial(self, name: str, state: dict, batch: int) -> list:
        """``[v, i]`` of a neuron population, flattened to ``[B, size]`` (``None``: zeros)."""
        pop = self._model.populations[name]
        value = state.get(name)
        if value is None:
            return [None, None]
        if pop.cfg.has_current:
            if not (isinstance(value, (tuple, list)) and len(value) == 2):
                raise ValueError(f"the state of {pop.cfg.kind} population {name!r} is (i, v)")
            i, v = value
        else:
            i, v = None, value
        return [self._flat_state(v, pop, batch, name), self._flat_state(i, pop, batch, name)]

    def _flat_state(self, value, pop: _Population, batch: int, key: str):
        if value is None:
            return None
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != (batch, *pop.shape):
            got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"state {key!r} must be a tensor [{batch}, {', '.join(map(str, pop.shape))}], got {got}")
        return value.to(self._model.dtype).reshape(batch, pop.size)

    def _initial_lines(self, state: dict, batch: int) -> dict:
        lines = {}
        for pop in self._model.populations.values():
            for line in pop.lines:
                value = self._flat_state(state.get(f"{line}:out"), pop, batch, f"{line}:out")
                lines[(pop.name, line)] = value if value is not None else self._zeros(pop, batch)
        return lines

    def _final(self, neurons: dict, lines: dict, batch: int) -> dict:
        final = {}
        for name, (v, i) in neurons.items():
            pop = self._model.populations[name]
            if v is None:
                continue
            v = v.reshape(batch, *pop.shape)
            final[name] = (i.reshape(batch, *pop.shape), v) if pop.cfg.has_current else v
        for (target, line), value in lines.items():
            final[f"{line}:out"] = value.reshape(batch, *self._model.populations[target].shape)
        return final

    def _zeros(self, pop: _Population, batch: int) -> torch.Tensor:
        return torch.zeros(batch, pop.size, dtype=self._model.dtype)

    def _start(self, bias, pop: _Population, batch: int) -> torch.Tensor:
        return self._zeros(pop, batch) if bias is None else bias.expand(batch, pop.size).clone()

    def _step(self, xs: list, neurons: dict, lines: dict, batch: int):
        """One time step: returns the outputs' values by name and the delay lines' values for
        the next step; updates ``neurons`` in place."""
        pops = self._model.populations
        buffers = {n: self._start(p.bias, p, batch) for n, p in pops.items() if p.kind != "input"}
        next_lines = {}
        for target, line in lines:
            next_lines[(target, line)] = self._start(pops[target].lines[line][1], pops[target], batch)
        for name, x in zip(self._model.inputs, xs):
            self._emit(name, x.reshape(batch, -1), buffers, next_lines)
        for name in self._model.order:
            pop = pops[name]
            drive = self._summed(pop, buffers, lines)
            if pop.params["input_scale"] is not None:
                drive = drive * pop.params["input_scale"]
            state = neurons[name]
            out, state[0], state[1] = neuron_step(drive, state[0], state[1], pop.params["beta"],
                                                  pop.params["alpha"], pop.params["threshold"], pop.cfg)
            self._emit(name, out, buffers, next_lines)
        return {n: self._summed(pops[n], buffers, lines) for n in self._model.outputs}, next_lines

    @staticmethod
    def _summed(pop: _Population, buffers: dict, lines: dict) -> torch.Tensor:
        """The buffer (bias + delay-0 events) plus each line's previous value, ``count`` times."""
        x = buffers[pop.name]
        for line, (count, _) in pop.lines.items():
            for _ in range(count):
                x = x + lines[(pop.name, line)]
        return x

    def _emit(self, name: str, out: torch.Tensor, buffers: dict, next_lines: dict) -> None:
        """Deliver the events (non-zero entries) of ``out`` ``[B, size]`` along every outgoing
        projection: event ``(b, j, a)`` adds ``a * w`` at ``(b, post)`` for each synapse
        ``(j, post, w)``."""
        projections = self._outgoing[name]
        if not projections:
            return
        b, j = out.nonzero(as_tuple=True)
        self.stats["events"] += len(j)
        if not len(j):
            return
        amount = out[b, j]
        for proj in projections:
            which, syn = _fan_out(proj.start, j)
            target = buffers[proj.target] if proj.line is None else next_lines[(proj.target, proj.line)]
            n_post = target.shape[1]
            target.view(-1).index_add_(0, b[which] * n_post + proj.post[syn], amount[which] * proj.weight[syn])
            self.stats["synaptic_events"] += len(syn)
