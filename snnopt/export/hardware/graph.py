"""Graph helpers shared by :func:`check` and :func:`quantize`: what a node's values reach
(or come from) through pass-through nodes."""

from __future__ import annotations

from .. import network as N
from ..network import Network

SYNAPSES = (N.Affine, N.Conv)
PASS_THROUGH = (N.Flatten, N.Pool, N.Scale)
"""Linear nodes without weights of their own: a value keeps its unit through them."""


def _through(net: Network, name: str, step) -> list[str]:
    """The nodes ``step`` (predecessors or successors) reaches from ``name`` through
    pass-through nodes, in network order, each once; pass-through nodes are crossed, not
    listed."""
    found, seen, stack = [], set(), list(step(net, name))
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if isinstance(net.nodes[node], PASS_THROUGH):
            stack.extend(step(net, node))
        else:
            found.append(node)
    order = {n: k for k, n in enumerate(net.nodes)}
    return sorted(found, key=order.__getitem__)


def _sources(net: Network, name: str) -> list[str]:
    """The weight nodes, neurons and inputs whose values are summed into ``name``."""
    return _through(net, name, Network.predecessors)


def _sinks(net: Network, name: str) -> list[str]:
    """The weight nodes, neurons and outputs that ``name``'s output reaches."""
    return _through(net, name, Network.successors)
