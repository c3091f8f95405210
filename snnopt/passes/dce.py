"""dce: remove nodes whose values nothing uses (all snnopt ops are pure)."""

from __future__ import annotations

from torch import fx

from .infra import PassResult


def dce(gm: fx.GraphModule) -> PassResult:
    return PassResult(gm, gm.graph.eliminate_dead_code())
