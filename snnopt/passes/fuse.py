"""fuse_synapses: merge a synapse and the neuron it drives into one region node.

    neuron_scan(linear(S))                              -> spiking_synapse(S, W, b, ..., syn=0)
    neuron_scan(unflatten(conv2d(flatten(S, 0, 1))))    -> spiking_synapse(S, W, b, ..., syn=1)

Only where the region can later run sparse: a ``lif``/``if`` neuron (no synaptic current)
with closed-form dynamics, no learnable neuron parameter and no recorded membrane, and
a synapse whose output feeds nothing else.  Regions let the sparse backward keep the input spikes bit-packed
and visit only the active set for ``dW``.  (A synapse left unfused is :mod:`.binary`'s.)
"""

from __future__ import annotations

import operator

import torch
from torch import fx, nn

from .. import kernels
from .infra import Builder, Note, PassResult

NAME = "fuse_synapses"


def sparse_ineligibility(spec, node: fx.Node) -> str | None:
    """Why a scan node cannot use the sparse op (None when it can)."""
    if not spec.spiking:
        return f"{spec.kind} neurons do not spike (a readout's gradient is dense)"
    if spec.reset_timing == "same_pending":
        return "reset timing 'same_pending' has no closed-form sparse backward"
    if spec.learnable:
        return "learnable " + "/".join(sorted(spec.learnable)) + " need the full membrane trace"
    return None


def records_membrane(node: fx.Node) -> bool:
    return node.target is kernels.neuron_scan and len(node.args) > 7 and bool(node.args[7])


def _single_user(node: fx.Node, user: fx.Node) -> bool:
    return len(node.users) == 1 and user in node.users


def _is_call(node, function, method: str) -> bool:
    """``node`` calls ``function(x, ...)`` or ``x.method(...)`` (the same positional arguments)."""
    return isinstance(node, fx.Node) and not node.kwargs and (
        (node.op == "call_function" and node.target is function)
        or (node.op == "call_method" and node.target == method))


def synapse_of(gm: fx.GraphModule, node: fx.Node):
    """``(S, module_target, syn, nodes)`` if ``node`` is a Linear or time-distributed Conv2d
    output computed from ``S`` (``nodes``: the synapse's own nodes, each used only once)."""
    if not isinstance(node, fx.Node):
        return None
    if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Linear):
        return node.args[0], node.target, 0, [node]
    if _is_call(node, torch.unflatten, "unflatten") and node.args[1] == 0:
        conv = node.args[0]
        if conv.op == "call_module" and isinstance(gm.get_submodule(conv.target), nn.Conv2d) \
                and _single_user(conv, node):
            m = gm.get_submodule(conv.target)
            flat = conv.args[0]
            if m.padding_mode == "zeros" and not isinstance(m.padding, str) \
                    and _is_call(flat, torch.flatten, "flatten") and tuple(flat.args[1:]) == (0, 1) \
                    and _single_user(flat, conv):
                return flat.args[0], conv.target, 1, [node, conv, flat]
    return None


def conv_args(m: nn.Module, syn: int) -> tuple:
    return (list(m.stride), list(m.padding), list(m.dilation), m.groups) if syn else ([1], [0], [1], 1)


def is_spike_output(node) -> bool:
    """``node`` is the spike output (item 0) of a spiking neuron node."""
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target is operator.getitem \
        and node.args[1] == 0 and "snn" in node.args[0].meta and node.args[0].meta["snn"].spiking


def weights(b: Builder, m: nn.Module, target: str, absorbed):
    w = b.get_attr(f"{target}.weight", from_=absorbed)
    return w, (b.get_attr(f"{target}.bias", from_=absorbed) if m.bias is not None else None)


def fuse_synapses(gm: fx.GraphModule) -> PassResult:
    b = Builder(gm, NAME)
    notes, modified = [], False
    for scan in list(gm.graph.nodes):
        if not (scan.op == "call_function" and scan.target is kernels.neuron_scan):
            continue
        spec = scan.meta["snn"]
        if sparse_ineligibility(spec, scan) is not None or spec.has_current or records_membrane(scan):
            continue
        match = synapse_of(gm, scan.args[0])
        if match is None or not _single_user(scan.args[0], scan):
            continue
        src, target, syn, absorbed = match
        m = gm.get_submodule(target)
        with gm.graph.inserting_before(scan):
            w, bias = weights(b, m, target, absorbed)
            region = b.call(kernels.spiking_synapse, (src, w, bias, scan.args[1], scan.args[3], scan.args[5], syn,
                                                      *conv_args(m, syn), scan.args[6]), from_=[scan, *absorbed])
        region.meta.update(snn=spec, snn_module=scan.meta["snn_module"], snn_synapse=target)
        for user in list(scan.users):
            if user.target is operator.getitem and user.args[1] in (0, 1):
                user.replace_input_with(scan, region)
        if scan.users:
            raise RuntimeError(f"`{scan.name}` has uses the fused region cannot serve")
        gm.graph.erase_node(scan)
        for n in absorbed:
            gm.graph.erase_node(n)
        modified = True
        notes.append(Note("rewritten", region.name, f"`{target}` + `{scan.meta['snn_module']}` fused into one "
                                                    f"{'Linear' if syn == 0 else 'Conv2d'} region"))
    return PassResult(gm, modified, notes)
