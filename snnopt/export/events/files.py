"""Event-graph files: :func:`write` stores a graph as GraphML or node-link JSON,
:func:`read` loads and checks one."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import networkx as nx
import torch

from ..network import NetworkError
from .build import to_graph
from .validate import _check_format, _compile

log = logging.getLogger(__name__)

_INT_ARRAYS = ("pre", "post")
_INT_TUPLES = ("shape", "kernel", "stride", "padding", "dilation")
_FLOAT_ARRAYS = ("weight", "bias", "beta", "alpha", "threshold", "input_scale", "v_init")


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
