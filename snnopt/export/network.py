"""`Network`: the framework-neutral form of a spiking network that every exporter reads.

A network is a directed graph of named nodes; a node's input is the **sum** of the
outputs of its predecessors (fan-in is summed, as in NIR).  Every value is a sequence
over discrete time steps; shapes are batchless and channels-first (``(C, H, W)``,
``(features,)``).  Node kinds:

=============  ==============================================================
``Input``      a network input of ``shape``
``Output``     a network output (its shape is inferred)
``Affine``     ``y = W x (+ b)``, ``W: [out, in]``
``Conv``       1-d or 2-d convolution (``weight.dim() - 2`` spatial dims), zero padding
``Pool``       2-d sum or average pooling (``count_include_pad``, floor mode)
``Flatten``    flattens dims ``start_dim..end_dim`` of the batchless shape
``Scale``      ``y = s * x`` elementwise, ``s`` of the full shape
``Neuron``     a neuron population: a :class:`~snnopt.spec.NeuronSpec` plus full-shape
               parameter tensors (``beta``, ``alpha``, ``threshold``, optional
               ``input_scale`` multiplying the input) and an optional initial
               membrane ``v_init`` (``None``: zeros)
=============  ==============================================================

**Initial state.** A population starts from membrane ``v_init`` (the state ``v`` before
the first step, e.g. SpikingJelly's ``v_reset``) and, for kinds with a current, from
``i = 0``; every simulator starts a population there unless given another state.

**Time.** At step ``t`` the nodes are evaluated in :meth:`Network.order`.  An edge that
closes a cycle (a *delayed* edge, found by a depth-first search from the inputs in
insertion order) delivers its source's output of step ``t - 1`` (zeros at ``t = 0``):
a recurrent projection ``lif -> w_rec -> lif`` feeds the spikes of the previous step
back, as in NIR and in every recurrent SNN library.  Every other edge delivers the
value of the same step.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import networkx as nx
import torch

from ..spec import NeuronSpec


class NetworkError(ValueError):
    """A network that is malformed or that a format cannot hold; the message names the node."""


@dataclass(eq=False)
class Node:
    """Base of the network's node kinds."""

    kind = "node"

    def out_shape(self, name: str, shape: tuple) -> tuple:
        return shape


@dataclass(eq=False)
class Input(Node):
    shape: tuple

    kind = "input"

    def __post_init__(self):
        self.shape = tuple(int(s) for s in self.shape)


@dataclass(eq=False)
class Output(Node):
    kind = "output"


@dataclass(eq=False)
class Affine(Node):
    weight: torch.Tensor
    bias: torch.Tensor | None = None

    kind = "affine"

    def out_shape(self, name, shape):
        if tuple(shape) != (self.weight.shape[1],):
            raise NetworkError(f"node {name!r}: an affine map with weight {list(self.weight.shape)} takes input "
                               f"({self.weight.shape[1]},), got {tuple(shape)}")
        return (self.weight.shape[0],)


@dataclass(eq=False)
class Conv(Node):
    weight: torch.Tensor
    bias: torch.Tensor | None = None
    stride: tuple = (1,)
    padding: tuple = (0,)
    dilation: tuple = (1,)
    groups: int = 1

    kind = "conv"

    def __post_init__(self):
        d = self.dims
        if d not in (1, 2):
            raise NetworkError(f"a convolution has 1 or 2 spatial dims, got weight {list(self.weight.shape)}")
        self.stride, self.padding, self.dilation = (_pair(v, d) for v in (self.stride, self.padding, self.dilation))
        self.groups = int(self.groups)

    @property
    def dims(self) -> int:
        return self.weight.dim() - 2

    def out_shape(self, name, shape):
        fn = torch.nn.functional.conv1d if self.dims == 1 else torch.nn.functional.conv2d
        return _meta_shape(name, shape, self.dims + 1, lambda x: fn(
            x, self.weight.to("meta"), None, self.stride, self.padding, self.dilation, self.groups))


@dataclass(eq=False)
class Pool(Node):
    mode: str  # "sum" | "avg"
    kernel_size: tuple
    stride: tuple | None = None
    padding: tuple = (0, 0)

    kind = "pool"

    def __post_init__(self):
        if self.mode not in ("sum", "avg"):
            raise NetworkError(f"pool mode must be 'sum' or 'avg', got {self.mode!r}")
        self.kernel_size = _pair(self.kernel_size, 2)
        self.stride = self.kernel_size if self.stride is None else _pair(self.stride, 2)
        self.padding = _pair(self.padding, 2)

    def out_shape(self, name, shape):
        return _meta_shape(name, shape, 3, lambda x: torch.nn.functional.avg_pool2d(
            x, self.kernel_size, self.stride, self.padding))


@dataclass(eq=False)
class Flatten(Node):
    start_dim: int = 0
    end_dim: int = -1

    kind = "flatten"

    def out_shape(self, name, shape):
        n = len(shape)
        start, end = (d + n if d < 0 else d for d in (self.start_dim, self.end_dim))
        if not 0 <= start <= end < n:
            raise NetworkError(f"node {name!r}: cannot flatten dims {self.start_dim}..{self.end_dim} of the "
                               f"batchless shape {tuple(shape)}")
        return tuple(shape[:start]) + (math.prod(shape[start:end + 1]),) + tuple(shape[end + 1:])


@dataclass(eq=False)
class Scale(Node):
    scale: torch.Tensor

    kind = "scale"

    def out_shape(self, name, shape):
        if tuple(self.scale.shape) != tuple(shape):
            raise NetworkError(f"node {name!r}: scale of shape {tuple(self.scale.shape)} on input {tuple(shape)}")
        return shape


NEURON_PARAMS = ("beta", "alpha", "threshold", "input_scale", "v_init")


def form_conflict(spec: NeuronSpec, params: dict) -> str | None:
    """The first parameter in ``params`` (name -> tensor or None) that does not hold the value
    ``spec``'s Euler or divided form fixes (``NeuronSpec.form_fixed``) everywhere, else None."""
    for name, fixed in spec.form_fixed.items():
        value = params.get(name)
        if value is not None and not bool((value == torch.tensor(fixed, dtype=value.dtype)).all()):
            return name
    return None


@dataclass(eq=False)
class Neuron(Node):
    """A population with the dynamics of ``spec`` (:mod:`snnopt.spec`); the scalar fields
    ``beta``/``alpha``/``threshold`` of ``spec`` are ignored in favour of the tensors here,
    which have the population's full shape (``None`` where the kind has none).  ``v_init``
    is the membrane the population starts from (``None``: zeros).

    A ``spec`` in Norse's Euler form or SpikingJelly's divided form (``integration``
    ``"euler"`` / ``"tau"``) keeps its library's order of float operations; its ``beta`` (and
    the Euler form's ``alpha``) are fixed by the spec (``NeuronSpec.form_fixed``), so the
    tensors must hold those values everywhere.  :meth:`to_decay_form` gives up the order (the same dynamics, rounded
    as ``beta v + (1 - beta) v_rest + scale x``) for passes that change the parameters."""

    spec: NeuronSpec
    shape: tuple
    beta: torch.Tensor | None = None
    alpha: torch.Tensor | None = None
    threshold: torch.Tensor | None = None
    input_scale: torch.Tensor | None = None
    v_init: torch.Tensor | None = None

    kind = "neuron"

    def __post_init__(self):
        self.shape = tuple(int(s) for s in self.shape)
        needed = {"beta": self.spec.kind != "if", "alpha": self.spec.has_current, "threshold": self.spec.spiking}
        for name in NEURON_PARAMS:
            value = getattr(self, name)
            if value is None:
                if needed.get(name):
                    raise NetworkError(f"a {self.spec.kind} population needs {name}")
                continue
            value = torch.as_tensor(value).detach()
            if value.dim() == 0 or tuple(value.shape) != self.shape:
                value = value.expand(self.shape)
            setattr(self, name, value.clone().contiguous())
        name = form_conflict(self.spec, self.params())
        if name is not None:
            raise NetworkError(f"a {self.spec.kind} population in integration {self.spec.integration!r} has {name} "
                               f"{self.spec.form_fixed[name]!r} everywhere (NeuronSpec.form_fixed); got other "
                               f"values: give it that {name} or a spec in integration 'decay'")

    def to_decay_form(self) -> None:
        """Compute in the decay form ``beta v + (1 - beta) v_rest + scale x`` (see the class docstring)."""
        self.spec = dataclasses.replace(self.spec, integration="decay", tau=None)

    def params(self) -> dict:
        """``{name: tensor}`` for the parameters this population has (``v_init`` included)."""
        return {n: getattr(self, n) for n in NEURON_PARAMS if getattr(self, n) is not None}

    def uniform(self, name: str) -> float | None:
        """The single value of parameter ``name`` when all neurons share it, else ``None``."""
        value = getattr(self, name)
        if value is None or value.numel() == 0:
            return None
        first = value.reshape(-1)[0]
        return float(first) if bool((value == first).all()) else None

    def out_shape(self, name, shape):
        if tuple(shape) != self.shape:
            raise NetworkError(f"node {name!r}: a population of shape {self.shape} gets input of shape {tuple(shape)}")
        return self.shape


@dataclass
class Network:
    """Named nodes, edges ``(source, target)`` and free-form ``metadata`` (e.g. ``dt``)."""

    nodes: dict = field(default_factory=dict)
    edges: list = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    @property
    def inputs(self) -> list[str]:
        return [n for n, node in self.nodes.items() if isinstance(node, Input)]

    @property
    def outputs(self) -> list[str]:
        return [n for n, node in self.nodes.items() if isinstance(node, Output)]

    def add(self, name: str, node: Node, sources=()) -> str:
        """Add ``node`` under a fresh name derived from ``name``, fed by ``sources``; returns the name."""
        base, k = name, 1
        while name in self.nodes:
            name, k = f"{base}_{k}", k + 1
        self.nodes[name] = node
        self.edges.extend((s, name) for s in sources)
        return name

    def predecessors(self, name: str) -> list[str]:
        """Sources of ``name`` in edge order (a source listed twice is summed twice)."""
        return [s for s, t in self.edges if t == name]

    def successors(self, name: str) -> list[str]:
        """Targets of ``name`` in edge order."""
        return [t for s, t in self.edges if s == name]

    def graph(self) -> nx.MultiDiGraph:
        """The network as a networkx multigraph; nodes carry ``node`` (the :class:`Node`)."""
        g = nx.MultiDiGraph()
        for name, node in self.nodes.items():
            g.add_node(name, node=node)
        g.add_edges_from(self.edges)
        return g

    def delayed_edges(self) -> set[tuple[str, str]]:
        """The edges that close a cycle (they deliver the previous step's value)."""
        self._check_edges()
        succ: dict[str, list[str]] = {n: [] for n in self.nodes}
        for s, t in self.edges:
            if t not in succ[s]:
                succ[s].append(t)
        state: dict[str, int] = {}  # 1: on the DFS stack, 2: done
        back = set()
        roots = self.inputs + [n for n in self.nodes if n not in self.inputs]
        for root in roots:
            if root in state:
                continue
            stack = [(root, iter(succ[root]))]
            state[root] = 1
            while stack:
                node, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    state[node] = 2
                    stack.pop()
                elif state.get(nxt) == 1:
                    back.add((node, nxt))
                elif nxt not in state:
                    state[nxt] = 1
                    stack.append((nxt, iter(succ[nxt])))
        return back

    def order(self) -> list[str]:
        """Evaluation order within a time step: topological over the undelayed edges,
        ties broken by insertion order."""
        back = self.delayed_edges()
        g = nx.DiGraph()
        g.add_nodes_from(self.nodes)
        g.add_edges_from(e for e in self.edges if e not in back)
        index = {n: k for k, n in enumerate(self.nodes)}
        return list(nx.lexicographical_topological_sort(g, key=index.__getitem__))

    def shapes(self) -> dict[str, tuple]:
        """Output shape of every node (batchless); raises :class:`NetworkError` naming the
        first node whose input does not fit."""
        shapes: dict[str, tuple] = {}
        back = self.delayed_edges()
        pending = self.order()
        # a delayed edge's source may come later in the order: iterate until the shapes settle
        for _ in range(2):
            for name in pending:
                node = self.nodes[name]
                if isinstance(node, Input):
                    shapes[name] = node.shape
                    continue
                sources = self.predecessors(name)
                known = [shapes[s] for s in sources if s in shapes]
                if not known:
                    if isinstance(node, Neuron):
                        shapes[name] = node.shape
                    continue
                if len(set(known)) > 1:
                    raise NetworkError(f"node {name!r} sums inputs of different shapes: "
                                       + ", ".join(f"{s}: {shapes[s]}" for s in sources if s in shapes))
                shapes[name] = node.out_shape(name, known[0])
        missing = [n for n in self.nodes if n not in shapes]
        if missing:
            raise NetworkError(f"nodes {missing} are not reachable from an input; connect them or remove them")
        for s, t in back:
            if isinstance(self.nodes[t], (Input,)):
                raise NetworkError(f"edge {s!r} -> {t!r} feeds an input node")
        return shapes

    def validate(self) -> dict[str, tuple]:
        """Check the structure (known nodes, no edge into an input or out of an output,
        every output fed, shapes agree); returns :meth:`shapes`."""
        if not self.inputs:
            raise NetworkError("the network has no Input node")
        if not self.outputs:
            raise NetworkError("the network has no Output node")
        self._check_edges()
        for s, t in self.edges:
            if isinstance(self.nodes[t], Input):
                raise NetworkError(f"edge {s!r} -> {t!r} leads into an Input node")
            if isinstance(self.nodes[s], Output):
                raise NetworkError(f"edge {s!r} -> {t!r} leaves an Output node")
        for name, node in self.nodes.items():
            if not isinstance(node, Input) and not self.predecessors(name):
                raise NetworkError(f"node {name!r} ({node.kind}) has no input edge")
        return self.shapes()

    def _check_edges(self) -> None:
        for s, t in self.edges:
            for end in (s, t):
                if end not in self.nodes:
                    raise NetworkError(f"edge {s!r} -> {t!r} names an unknown node {end!r}")


def check_dt(dt) -> float:
    """``dt`` as a float number of seconds; raises :class:`NetworkError` unless it is a positive finite number."""
    try:
        value = float(dt)
    except (TypeError, ValueError):
        raise NetworkError(f"dt must be a positive number of seconds (e.g. dt=1e-3), got {dt!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise NetworkError(f"dt must be a positive number of seconds (e.g. dt=1e-3), got {dt!r}")
    return value


def check_steps(name: str, shape) -> None:
    """Raise ``ValueError`` when the time-major input ``name`` of ``shape`` ``[T, B, ...]`` has no time step."""
    if shape[0] < 1:
        raise ValueError(f"input {name!r} of shape {list(shape)} has no time steps: inputs are time-major "
                         "[T, B, ...] and T must be >= 1")


def _pair(value, n: int) -> tuple:
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, (int, float)) or getattr(value, "ndim", 1) == 0:
        return (int(value),) * n
    value = tuple(int(v) for v in value)
    if len(value) == 1:
        return value * n
    if len(value) != n:
        raise NetworkError(f"expected {n} values, got {value}")
    return value


def _meta_shape(name: str, shape: tuple, rank: int, fn) -> tuple:
    if len(shape) != rank:
        raise NetworkError(f"node {name!r} takes a batchless input of {rank} dims (channels first), got {tuple(shape)}")
    try:
        return tuple(fn(torch.empty((1, *shape), device="meta")).shape[1:])
    except RuntimeError as exc:
        raise NetworkError(f"node {name!r}: input of shape {tuple(shape)} does not fit: {exc}") from None
