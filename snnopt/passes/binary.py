"""binary_synapses: a synapse fed by spikes keeps them bit-packed and may run event-driven.

    linear(S)                                   -> binary_synapse(S, W, b, syn=0)[0]
    unflatten(conv2d(flatten(S, 0, 1)), 0)      -> binary_synapse(S, W, b, syn=1, ...)[0]

``S`` is the spike output of a spiking neuron or a graph input whose example value was
binary (placeholder ``meta["snn_binary"]``, set by :func:`mark_binary_inputs`), possibly
reshaped (flatten, view, permute, ...).  The op's value and gradients are those of the
Linear / Conv2d, in every mode; what changes is the work and the memory.  Kept for
backward: the input as bits (1/32 of the floats) when it is binary at run time, else as
it is.  Computed, for a Linear on binary input with fewer than
``snnopt.kernels.ops.EVENT_DENSITY`` ones (measured at run time):
``dW[:, i] = sum_{r : x[r, i] = 1} g[r]`` and, unless the pass is built with
``event=False`` (dense mode, whose forward reproduces the model bit for bit),
``y[r] = b + sum_{i : x[r, i] = 1} W[:, i]``: one gradient row / weight column per spike
instead of a matrix product.  Denser inputs use the matrix product.

Runs after :func:`.fuse.fuse_synapses` in sparse mode (it takes the synapses left
unfused, e.g. the Linear before a readout).
"""

from __future__ import annotations

import operator

import torch
from torch import fx, nn

from .. import kernels
from .fuse import conv_args, is_spike_output, synapse_of, weights
from .infra import Builder, Note, PassResult

NAME = "binary_synapses"


def mark_binary_inputs(gm: fx.GraphModule, example_inputs) -> None:
    """Set ``meta["snn_binary"]`` on the placeholders whose example tensor holds only 0 and 1."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, x in zip(placeholders, example_inputs):
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            node.meta["snn_binary"] = bool(((x == 0) | (x == 1)).all())


_SHAPE_METHODS = {"flatten", "unflatten", "reshape", "view", "squeeze", "unsqueeze", "permute", "transpose",
                  "contiguous"}
_SHAPE_FUNCTIONS = {torch.flatten, torch.unflatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute,
                    torch.transpose}


def _is_binary(gm: fx.GraphModule, node) -> bool:
    """``node`` holds spikes or a binary graph input, possibly reshaped."""
    if not isinstance(node, fx.Node):
        return False
    if is_spike_output(node) or (node.op == "placeholder" and node.meta.get("snn_binary", False)):
        return True
    reshaped = (node.op == "call_method" and node.target in _SHAPE_METHODS) or (
        node.op == "call_function" and node.target in _SHAPE_FUNCTIONS) or (
        node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Flatten))
    return reshaped and _is_binary(gm, node.args[0])


def binary_synapses(event: bool = True):
    """The pass; ``event`` lets a Linear on sparse binary input run event-driven (its value
    then equals the module's up to float rounding; dense mode keeps the module's matrix
    product, bit for bit, and takes the event-driven ``dW`` only)."""

    def binary_pass(gm: fx.GraphModule) -> PassResult:
        return _rewrite(gm, event)

    binary_pass.__name__ = NAME
    return binary_pass


def _rewrite(gm: fx.GraphModule, event: bool) -> PassResult:
    b = Builder(gm, NAME)
    notes, modified = [], False
    for node in list(gm.graph.nodes):
        match = synapse_of(gm, node)
        if match is None or not _is_binary(gm, match[0]):
            continue
        src, target, syn, absorbed = match
        m = gm.get_submodule(target)
        with gm.graph.inserting_before(node):
            w, bias = weights(b, m, target, absorbed)
            packed = b.call(kernels.binary_synapse, (src, w, bias, syn, *conv_args(m, syn)), {"event": event},
                            from_=absorbed)
            out = b.call(operator.getitem, (packed, 0), from_=absorbed)
        node.replace_all_uses_with(out)
        for n in absorbed:
            gm.graph.erase_node(n)
        modified = True
        source = "binary input" if src.op == "placeholder" else "spikes"
        how = " (event-driven when sparse)" if syn == 0 and event else ""
        notes.append(Note("rewritten", packed.name, f"`{target}` keeps its {source} bit-packed{how}"))
    return PassResult(gm, modified, notes)
