"""``collapse_steps(steps)``: one step of a model that makes its own time axis.

A model fed a static input (an image, say) makes its time axis itself: SpikingJelly's
``x.unsqueeze(0).repeat(T, 1, 1, 1, 1)``, or a loop that hands the same current to a
neuron at every step, which ``reroll_time`` folds into ``x.unsqueeze(0).expand(T, ...)``.
Every step then sees the same value, so its time average is the value itself, and the
rate pass (:func:`~snnopt.passes.lower.lower_rate_pass`) runs the graph at one step.
This pass rewrites, on the way into a neuron, the broadcasts that make the ``steps`` axis
from a one-step value, and the time-distributed merges ``reroll_time`` made for them,
to one step:

    x.expand(steps, *rest)                  ->  x.expand(1, *rest)        (x of leading size 1)
    x.repeat(steps, *rest)                  ->  x.repeat(1, *rest)        (x of leading size 1)
    unflatten(y, 0, (steps, batch))         ->  unflatten(y, 0, (1, batch))      (reroll_time's)
    y.view(steps, *shape) / reshape         ->  y.view(1, *shape)                (reroll_time's)

Each rewritten node is tagged ``meta["snn_time_axis"]``: the time axis starts there
(``lower_rate_pass`` scales sums over time from it, not from the graph inputs).  Shapes
are propagated by the pass manager afterwards; a graph that hard-codes ``steps`` anywhere
else fails there, and the caller falls back with the reason.
"""

from __future__ import annotations

import torch
from torch import fx

from .infra import PassResult
from .reroll import _target_name

_BROADCASTS = ("expand", "repeat")
_REROLLED = ("unflatten", "view", "reshape")


def _neuron_inputs(graph: fx.Graph) -> set[fx.Node]:
    """The nodes a neuron's input (its first argument) depends on, the inputs included."""
    seen, queue = set(), [n.args[0] for n in graph.nodes if "snn" in n.meta and isinstance(n.args[0], fx.Node)]
    while queue:
        n = queue.pop()
        if n not in seen:
            seen.add(n)
            queue.extend(n.all_input_nodes)
    return seen


def _leading(value, steps: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == steps


def _one_step_args(n: fx.Node, steps: int):
    """``n``'s arguments with its ``steps`` size turned to 1, or None if it makes no time axis."""
    name, args = _target_name(n), n.args
    if n.op not in ("call_method", "call_function") or not args or not isinstance(args[0], fx.Node):
        return None
    src = args[0].meta.get("val")
    if name in _BROADCASTS and len(args) >= 2 and not n.kwargs:
        sizes = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list, torch.Size)) else args[1:]
        if not sizes or sizes[0] != steps or not isinstance(src, torch.Tensor) or src.dim() == 0 or \
                src.shape[0] != 1:
            return None
        sizes = (1, *sizes[1:])
        return (args[0], tuple(sizes)) if len(args) == 2 else (args[0], *sizes)
    if n.meta.get("origin") != "reroll_time" or name not in _REROLLED:
        return None
    if name == "unflatten" and len(args) == 3 and args[1] == 0 and tuple(args[2])[:1] == (steps,):
        return (args[0], 0, (1, *tuple(args[2])[1:]))
    if name in ("view", "reshape") and len(args) >= 2 and args[1] == steps:
        return (args[0], 1, *args[2:])
    return None


def collapse_steps(steps: int):
    """The pass for a graph whose neurons run ``steps`` steps made inside the model."""

    def collapse(gm: fx.GraphModule) -> PassResult:
        feeding = _neuron_inputs(gm.graph)
        modified = False
        for n in gm.graph.nodes:
            if n not in feeding or not _leading(n.meta.get("val"), steps):
                continue
            args = _one_step_args(n, steps)
            if args is not None:
                n.args = args
                n.meta["snn_time_axis"] = True
                modified = True
        return PassResult(gm, modified)

    collapse.__name__ = "collapse_steps"
    return collapse
