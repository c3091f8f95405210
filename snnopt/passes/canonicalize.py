"""canonicalize_neurons: every neuron module call becomes one canonical scan node.

    call_module(lif)(x[, state])          ->  neuron_scan(x, v0, i0, beta, alpha, threshold, cfg)
    call_module(cell)(x_t, state)         ->  neuron_scan(x_t.unsqueeze(0), ...)[0].squeeze(0)

The scan node carries ``meta["snn"]`` (the :class:`NeuronSpec`), ``meta["snn_module"]``
(the module's qualified name) and ``meta["snn_cell"]`` (called one step at a time).
Parameters are ``get_attr`` nodes into the module, so they stay shared.  The module's
result structure (``out``, ``(out, state)``, ``(out, (i, v))``) is rebuilt with
``make_tuple`` and folded into its ``getitem`` users.  Neurons whose adapter refuses
the configuration stay eager calls, with a note.
"""

from __future__ import annotations

import operator

from torch import fx

from .. import kernels
from ..frontend.registry import UnsupportedNeuron, adapter_for
from .infra import Builder, Note, PassResult, fold_tuple_getitems, make_tuple

NAME = "canonicalize_neurons"


def _call_args(node: fx.Node):
    x = node.args[0] if node.args else node.kwargs.get("x", node.kwargs.get("input"))
    state = node.args[1] if len(node.args) > 1 else node.kwargs.get("state")
    return x, state


def _state_inputs(b: Builder, state, cuba: bool, origin: fx.Node):
    """``(v0, i0)`` graph values for a call's ``state`` argument."""
    if state is None:
        return None, None
    if not cuba:
        if isinstance(state, (tuple, list)):
            raise UnsupportedNeuron("its state argument is a tuple but the neuron keeps one state tensor")
        return state, None
    if isinstance(state, (tuple, list)):
        i0, v0 = state
        return v0, i0
    if state.op == "call_function" and state.target is make_tuple:
        i0, v0 = state.args
        return v0, i0
    return (b.call(operator.getitem, (state, 1), from_=[origin]),
            b.call(operator.getitem, (state, 0), from_=[origin]))


def canonicalize_neurons(gm: fx.GraphModule) -> PassResult:
    b = Builder(gm, NAME)
    notes, modified = [], False
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or "snn_eager_reason" in node.meta:
            continue
        module = gm.get_submodule(node.target)
        adapter = adapter_for(module)
        if adapter is None:
            continue
        try:
            spec = adapter.to_spec(module)
            cell = adapter.convention(module) == "cell"
            result = _rewrite(b, node, spec, cell, adapter.returns_state(module))
        except UnsupportedNeuron as exc:
            node.meta["snn_eager_reason"] = str(exc)
            notes.append(Note("eager", node.name, f"{type(module).__name__} `{node.target}` stays eager: {exc}"))
            continue
        node.replace_all_uses_with(result)
        gm.graph.erase_node(node)
        if result.op == "call_function" and result.target is make_tuple:
            fold_tuple_getitems(result)
        modified = True
    return PassResult(gm, modified, notes)


def _rewrite(b: Builder, node: fx.Node, spec, cell: bool, returns_state: bool) -> fx.Node:
    x, state = _call_args(node)
    cuba = spec.has_current
    attrs = dict(spec.param_attrs)
    with b.graph.inserting_before(node):
        v0, i0 = _state_inputs(b, state, cuba, node)
        params = [b.get_attr(f"{node.target}.{attrs[n]}", from_=[node]) if n in attrs else None
                  for n in ("beta", "alpha", "threshold")]
        xin = b.method("unsqueeze", (x, 0), from_=[node]) if cell else x
        scan = b.call(kernels.neuron_scan, (xin, v0, i0, *params, spec.op_config()), from_=[node])
        scan.meta.update(snn=spec, snn_module=node.target, snn_cell=cell)
        out = b.call(operator.getitem, (scan, 0), from_=[node])
        if cell:
            out = b.method("squeeze", (out, 0), from_=[node])
        if not (cell or returns_state):
            return out
        v = b.call(operator.getitem, (scan, 1), from_=[node])
        state_out = b.call(make_tuple, (b.call(operator.getitem, (scan, 2), from_=[node]), v), from_=[node]) \
            if cuba else v
        return b.call(make_tuple, (out, state_out), from_=[node])
