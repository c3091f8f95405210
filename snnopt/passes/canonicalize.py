"""canonicalize_neurons: every neuron module call becomes one canonical scan node.

    call_module(lif)(x[, state])          ->  neuron_scan(x, v0, i0, beta, alpha, threshold, cfg)
    call_module(cell)(x_t, state)         ->  neuron_scan(x_t.unsqueeze(0), ...)[0].squeeze(0)

The module's adapter (:mod:`snnopt.frontend.registry`) says where the input and the
state are in the call and how to rebuild its result, which is folded into its
``getitem`` users.  The scan node carries ``meta["snn"]`` (the :class:`NeuronSpec`),
``meta["snn_module"]`` (the module's qualified name) and ``meta["snn_cell"]``.

Parameters are ``get_attr`` nodes into the module (shared, not copied), or a function
of the module for derived ones (a clamped or sigmoid-parametrised decay), created once
per module at the top of the graph; an ``input_scale`` multiplies the input.

A module that keeps its state between calls reads it at its first call
(``load_state``); each later call continues from the previous call's state, and after
the last call ``store_state`` writes the final state back, as the eager module does.
Neurons whose adapter refuses the configuration stay eager calls, with a note.
"""

from __future__ import annotations

import operator

import torch
from torch import fx
from torch.fx.node import has_side_effect

from .. import kernels
from ..frontend.registry import UnsupportedNeuron, adapter_for
from .infra import Builder, Note, PassResult, fold_tuple_getitems, is_tuple_node

NAME = "canonicalize_neurons"
PARAMS = ("beta", "alpha", "threshold")


def load_state(module, x_step):
    """Runtime: the state ``(v, i)`` a stateful module starts from for step input ``x_step``."""
    return adapter_for(module).load_state(module, x_step)


@has_side_effect
def store_state(module, v, i) -> None:
    """Runtime: keep the final state on the module, as its eager forward would."""
    adapter_for(module).store_state(module, v, i)


def canonicalize_neurons(gm: fx.GraphModule) -> PassResult:
    b = Builder(gm, NAME)
    notes, modified = [], False
    params: dict[tuple[str, str], fx.Node] = {}
    last_state: dict[str, tuple] = {}
    top = next(n for n in gm.graph.nodes if n.op != "placeholder")
    for node in list(gm.graph.nodes):
        if node.meta.get("snn_state_reset"):  # state kept so far goes to the modules before they are reset
            _store_states(b, last_state, before=node)
            continue
        if node.op != "call_module" or "snn_eager_reason" in node.meta:
            continue
        module = gm.get_submodule(node.target)
        adapter = adapter_for(module)
        if adapter is None:
            continue
        try:
            spec = adapter.spec(module)
            with gm.graph.inserting_before(node):
                result, state = _rewrite(b, node, module, adapter, spec, _param_nodes(b, top, node, spec, params),
                                         last_state.get(node.target))
        except UnsupportedNeuron as exc:
            node.meta["snn_eager_reason"] = str(exc)
            notes.append(Note("eager", node.name, f"{type(module).__name__} `{node.target}` stays eager: {exc}"))
            continue
        if adapter.stores_state(module):
            last_state[node.target] = state
        node.replace_all_uses_with(result)
        gm.graph.erase_node(node)
        if is_tuple_node(result):
            fold_tuple_getitems(result)
        modified = True
    _store_states(b, last_state)
    if modified:  # state tuples whose parts were passed on directly
        gm.graph.eliminate_dead_code()
    return PassResult(gm, modified, notes)


def _store_states(b: Builder, last_state: dict, before: fx.Node | None = None) -> None:
    for target, (v, i, after) in last_state.items():
        with b.graph.inserting_before(before) if before is not None else b.graph.inserting_after(after):
            module = b.get_attr(target, from_=[after])
        with b.graph.inserting_after(module):
            b.call(store_state, (module, v, i), from_=[after]).meta["snn_side_effect"] = True
    last_state.clear()


def _param_nodes(b: Builder, top: fx.Node, node: fx.Node, spec, cache: dict) -> dict:
    """``{name: node}`` for the parameters of ``spec``, made once per module: module
    tensors, derived tensors, or 0-d tensors of the spec's constant floats."""
    sources = dict(spec.param_attrs)
    sources.update({n: float(getattr(spec, n)) for n in PARAMS
                    if n not in sources and isinstance(getattr(spec, n), float)})
    nodes = {}
    for name, source in sources.items():
        key = (node.target, name)
        if key not in cache:
            with b.graph.inserting_before(top):
                if isinstance(source, float):  # float64 0-d: exact for float64 models, a scalar for float32 ones
                    cache[key] = b.call(torch.scalar_tensor, (source,), {"dtype": torch.float64}, from_=[node])
                elif callable(source):
                    cache[key] = b.call(source, (b.get_attr(node.target, from_=[node]),), from_=[node])
                else:
                    cache[key] = b.get_attr(f"{node.target}.{source}", from_=[node])
        nodes[name] = cache[key]
    return nodes


def _rewrite(b: Builder, node: fx.Node, module, adapter, spec, params: dict, previous):
    cell = adapter.convention(module) == "cell"
    x, given, v0, i0 = adapter.inputs(module, spec, node, b)
    if not given and adapter.stores_state(module):
        if previous is not None:
            v0, i0, _ = previous
        else:
            step = x if cell else b.call(operator.getitem, (x, 0), from_=[node])
            loaded = b.call(load_state, (b.get_attr(node.target, from_=[node]), step), from_=[node])
            v0 = b.call(operator.getitem, (loaded, 0), from_=[node])
            i0 = b.call(operator.getitem, (loaded, 1), from_=[node]) if spec.has_current else None
    if "input_scale" in params:
        x = b.call(operator.mul, (x, params["input_scale"]), from_=[node])
    xin = b.method("unsqueeze", (x, 0), from_=[node]) if cell else x
    scan = b.call(kernels.neuron_scan, (xin, v0, i0, *(params.get(n) for n in PARAMS), spec.op_config()),
                  from_=[node])
    scan.meta.update(snn=spec, snn_module=node.target, snn_cell=cell)
    out = b.call(operator.getitem, (scan, 0), from_=[node])
    if cell:
        out = b.method("squeeze", (out, 0), from_=[node])
    v = b.call(operator.getitem, (scan, 1), from_=[node])
    i = b.call(operator.getitem, (scan, 2), from_=[node]) if spec.has_current else None
    return adapter.result(module, spec, out, v, i, node, b), (v, i, v if i is None else i)
