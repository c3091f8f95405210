"""Checking an event graph: :func:`_compile` checks its format, populations and
projections and puts it in the simulator's form (:class:`_Model`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import networkx as nx
import torch

from ...spec import Config, NeuronSpec
from ...surrogate import Surrogate
from ..network import NetworkError, form_conflict
from .maps import _csr

FORMAT = "snnopt-events"
FORMAT_VERSION = 1

_SPEC_TEXT = ("reset", "reset_timing", "fire", "current_decay", "surrogate")
_SPEC_NUMBERS = ("v_reset", "v_rest", "scale", "surrogate_param")
_SPEC_FLAGS = ("reset_discards_input", "detach_reset")


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
    params: dict = field(default_factory=dict)  # beta/alpha/threshold/input_scale/v_init, None where absent


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
                  "input_scale": False, "v_init": False}
        for p, need in needed.items():
            pop.params[p] = _array(attrs, p, size, dtype, f"{where} (a {spec.kind} population)", required=need)
        if spec.kind == "if":
            pop.params["beta"] = None
        p = form_conflict(spec, pop.params)
        if p is not None:
            raise NetworkError(f"{where}: integration {spec.integration!r} fixes {p} at {spec.form_fixed[p]!r} "
                               f"(NeuronSpec.form_fixed); the {p} array holds other values: write that {p} or "
                               "integration 'decay'")
        pop.cfg = spec.config
    return pop


def _check_spec(attrs, where) -> NeuronSpec:
    """The population's dynamics; its parameters are the arrays, hence ``param_attrs``."""
    fields = {name: _require(attrs, name, str, where, "text") for name in _SPEC_TEXT}
    fields.update({name: float(_require(attrs, name, (int, float), where, "a number")) for name in _SPEC_NUMBERS})
    fields.update({name: _require(attrs, name, bool, where, "true or false") for name in _SPEC_FLAGS})
    kind = _require(attrs, "neuron_kind", str, where, "the neuron kind")
    fields["integration"] = _require(attrs, "integration", str, where, "text") if "integration" in attrs else "decay"
    if fields["integration"] == "tau":
        fields["tau"] = float(_require(attrs, "tau", (int, float), where, "a number (the divided form's tau)"))
    alpha = None
    if fields["integration"] == "euler" and kind in ("cuba_lif", "cuba_li"):
        alpha = float(_require(attrs, "euler_alpha", (int, float), where, "a number (the Euler form's alpha)"))
    tensors = tuple((p, p) for p in ("beta", "alpha", "threshold") if p != "alpha" or alpha is None)
    try:
        surrogate = Surrogate(fields.pop("surrogate"), fields.pop("surrogate_param"))
        return NeuronSpec(kind=kind, beta=None, alpha=alpha, threshold=None, surrogate=surrogate,
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
