"""Pass infrastructure: results, notes, provenance-stamping node creation, the PassManager.

A pass is a callable ``GraphModule -> PassResult`` with a ``__name__``.  It rewrites
the graph of the module it is given (never its submodules or parameters) and is
idempotent: run twice, the second run reports ``modified=False``.
"""

from __future__ import annotations

import logging
import operator
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from ..frontend.registry import is_neuron
from ..frontend.tracer import FAKE_LOG, neuron_fake_value, preserved_buffers, quiet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Note:
    """One line of the compile report. ``kind``: rewritten | eager | warning | info."""

    kind: str
    node: str
    detail: str
    pass_name: str = ""


@dataclass
class PassResult:
    graph_module: fx.GraphModule
    modified: bool
    notes: list = field(default_factory=list)


class PassError(RuntimeError):
    """A pass failed or left an invalid graph; the message names the pass."""


class Builder:
    """Creates nodes stamped with provenance: ``meta["origin"]`` (the pass name) and
    ``meta["from_node"]`` (names of the nodes they replace or derive from)."""

    def __init__(self, gm: fx.GraphModule, pass_name: str):
        self.gm, self.graph, self.pass_name = gm, gm.graph, pass_name

    def _stamp(self, node: fx.Node, from_: Sequence[fx.Node]) -> fx.Node:
        node.meta["origin"] = self.pass_name
        node.meta["from_node"] = [f.name for f in from_]
        return node

    def call(self, target, args, kwargs=None, *, from_=()) -> fx.Node:
        return self._stamp(self.graph.call_function(target, tuple(args), kwargs or {}), from_)

    def method(self, name, args, kwargs=None, *, from_=()) -> fx.Node:
        return self._stamp(self.graph.call_method(name, tuple(args), kwargs or {}), from_)

    def module(self, target, args, kwargs=None, *, from_=()) -> fx.Node:
        return self._stamp(self.graph.call_module(target, tuple(args), kwargs or {}), from_)

    def get_attr(self, target, *, from_=()) -> fx.Node:
        return self._stamp(self.graph.get_attr(target), from_)

    def tuple(self, items, origin: fx.Node, cls=None) -> fx.Node:
        """A tuple of graph values (``cls``: a NamedTuple type to build instead)."""
        return self.call(cls or make_tuple, tuple(items), from_=[origin])

    def unpack(self, value, n: int, origin: fx.Node) -> tuple:
        """The ``n`` items of a tuple-valued argument: its parts when the tuple is built
        in the graph, else ``getitem`` nodes."""
        if isinstance(value, (tuple, list)):
            if len(value) != n:
                raise ValueError(f"expected a tuple of {n} items at `{origin.name}`, got {len(value)}")
            return tuple(value)
        if is_tuple_node(value) and len(value.args) == n:
            return tuple(value.args)
        return tuple(self.call(operator.getitem, (value, k), from_=[origin]) for k in range(n))

    def placeholder(self, name, *, from_=()) -> fx.Node:
        return self._stamp(self.graph.placeholder(name), from_)


def make_tuple(*items):
    """Graph helper: pack values into a tuple (the module-call result a rewrite stands in for)."""
    return items


def is_tuple_node(node) -> bool:
    """A node building a tuple (``make_tuple`` or a NamedTuple constructor) from its args."""
    if not (isinstance(node, fx.Node) and node.op == "call_function" and not node.kwargs):
        return False
    t = node.target
    return t is make_tuple or (isinstance(t, type) and issubclass(t, tuple) and hasattr(t, "_fields"))


def fold_tuple_getitems(node: fx.Node) -> None:
    """Replace ``getitem(make_tuple(a, b, ...), k)`` users of ``node`` by the item, recursively,
    and erase tuple nodes left without users."""
    for user in list(node.users):
        if user.op == "call_function" and user.target is operator.getitem and user.args[0] is node \
                and isinstance(user.args[1], int):
            item = node.args[user.args[1]]
            user.replace_all_uses_with(item)
            node.graph.erase_node(user)
            if is_tuple_node(item):
                fold_tuple_getitems(item)
    if not node.users:
        inner = [a for a in node.args if is_tuple_node(a)]
        node.graph.erase_node(node)
        for a in inner:
            if not a.users:
                fold_tuple_getitems(a)


class _Propagation(FakeTensorProp):
    """FakeTensorProp that evaluates neuron modules left eager on zeros (see
    :func:`snnopt.frontend.tracer.neuron_fake_value`) and skips the side-effect nodes
    (``meta["snn_side_effect"]``: writing or resetting the state kept on modules), whose
    value is None."""

    def run_node(self, n):
        if n.meta.get("snn_side_effect"):
            n.meta["val"] = None
            return None
        return super().run_node(n)

    def call_module(self, target, args, kwargs):
        module = self.fetch_attr(target)
        if is_neuron(module):
            return neuron_fake_value(module, args, kwargs, self._mode)
        return super().call_module(target, args, kwargs)


def fake_propagate(gm: fx.GraphModule, example_inputs) -> None:
    """Fill ``node.meta["val"]`` by running ``gm`` on fake copies of ``example_inputs``; placeholders
    beyond them (added by a pass) use their ``meta["example"]``."""
    for node in gm.graph.nodes:
        node.meta.pop("val", None)
        node.meta.pop("unbacked_bindings", None)
    mode = FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv())
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    values = list(example_inputs) + [p.meta["example"] for p in placeholders[len(example_inputs):]]
    fakes = [mode.from_tensor(x, static_shapes=True) if isinstance(x, torch.Tensor) else x for x in values]
    with preserved_buffers(gm), quiet(FAKE_LOG):  # modules update buffers (BatchNorm statistics) on fake inputs too
        _Propagation(gm, mode).propagate_dont_convert_inputs(*fakes)
    for node in gm.graph.nodes:  # results that are not tensors (a module, None) get no fake value
        node.meta.setdefault("val", None)


class PassManager:
    """Runs passes in order; after each: lint, recompile, fake-propagate shapes, verify.

    Errors are re-raised as :class:`PassError` naming the pass.  Notes of every pass are
    collected in ``self.notes``; ``self.history`` records ``(pass, nodes_before,
    nodes_after, modified)`` and, when ``snapshots`` is set, the graph code after each pass.
    """

    def __init__(self, passes: Sequence[Callable], verifier: Callable | None = None, snapshots: bool = False):
        self.passes = list(passes)
        self.verifier = verifier
        self.snapshots = snapshots
        self.notes: list[Note] = []
        self.history: list[dict] = []

    def __call__(self, gm: fx.GraphModule, example_inputs) -> fx.GraphModule:
        for p in self.passes:
            name = getattr(p, "__name__", type(p).__name__)
            before = len(gm.graph.nodes)
            snapshot_before = _copy_graph(gm.graph) if self.snapshots else None
            try:
                result = p(gm)
                gm = result.graph_module
                gm.graph.lint()
                gm.recompile()
                fake_propagate(gm, example_inputs)
                if self.verifier is not None:
                    self.verifier(gm)
            except PassError:
                raise
            except Exception as exc:
                raise PassError(f"pass `{name}` failed: {exc}") from exc
            for note in result.notes:
                self.notes.append(Note(note.kind, note.node, note.detail, note.pass_name or name))
            entry = {"pass": name, "nodes_before": before, "nodes_after": len(gm.graph.nodes),
                     "modified": result.modified}
            if self.snapshots:
                entry["graph_before"], entry["graph_after"] = snapshot_before, _copy_graph(gm.graph)
            self.history.append(entry)
            log.debug("pass %s: %d -> %d nodes (modified=%s)", name, before, len(gm.graph.nodes), result.modified)
        return gm


def _copy_graph(graph: fx.Graph) -> fx.Graph:
    new = fx.Graph()
    env = {}
    out = new.graph_copy(graph, env)
    new.output(out)
    for old, copied in env.items():
        copied.meta = dict(old.meta)
    return new
