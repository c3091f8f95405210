"""A layered (top-to-bottom) layout of a dataflow graph, used when graphviz is not installed.

Each node sits one layer below its deepest input and, when it has users, as close above
its first user as that allows (so a per-step loop reads as a sequence of steps rather
than every step's input in one row; parameters sit next to their use).  Within a layer,
nodes are ordered and placed by the mean position of their neighbours (barycenter
sweeps) with unit spacing.
"""

from __future__ import annotations

import networkx as nx

SWEEPS = 4


def layered_layout(nodes: list[str], edges: list[tuple[str, str]]) -> dict[str, tuple[float, int]]:
    """``{node: (x, layer)}`` with ``layer`` 0 at the top and ``x >= 0`` in node spacings;
    ``nodes`` in a topological order (graph order), ``edges`` as ``(source, target)``."""
    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    g.add_edges_from(edges)
    layer = _layers(g, nodes)
    rows: dict[int, list[str]] = {}
    for n in nodes:
        rows.setdefault(layer[n], []).append(n)
    x = {n: float(i) for row in rows.values() for i, n in enumerate(row)}
    order = sorted(rows)
    for sweep in range(SWEEPS):
        downward = sweep % 2 == 0
        for k in (order if downward else reversed(order)):
            row = rows[k]
            neighbours = g.predecessors if downward else g.successors
            desired = {n: _mean([x[m] for m in neighbours(n)], x[n]) for n in row}
            row.sort(key=lambda n: desired[n])
            for n, pos in zip(row, _spread([desired[n] for n in row])):
                x[n] = pos
    left = min(x.values(), default=0.0)
    return {n: (x[n] - left, layer[n]) for n in nodes}


def _layers(g: nx.DiGraph, nodes: list[str]) -> dict[str, int]:
    """Longest-path layers from the sources, then each node with users moved down to just
    above its highest user; nodes without users (the output, unused values) stay put."""
    layer: dict[str, int] = {}
    for n in nodes:
        layer[n] = max((layer[p] + 1 for p in g.predecessors(n)), default=0)
    for n in reversed(nodes):
        users = list(g.successors(n))
        if users:
            layer[n] = min(layer[u] for u in users) - 1
    top = min(layer.values(), default=0)
    return {n: k - top for n, k in layer.items()}


def _mean(values: list[float], default: float) -> float:
    return sum(values) / len(values) if values else default


def _spread(desired: list[float]) -> list[float]:
    """Positions at least one apart, in the given order, as close to ``desired`` (sorted)
    as a left-to-right push followed by re-centring on their mean allows."""
    placed: list[float] = []
    for d in desired:
        placed.append(max(d, placed[-1] + 1.0) if placed else d)
    shift = (sum(desired) - sum(placed)) / len(placed) if placed else 0.0
    return [p + shift for p in placed]
