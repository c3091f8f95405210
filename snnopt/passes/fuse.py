"""fuse_synapses: merge a synapse and the neuron it drives into one region node.

    neuron_scan(linear(S))                              -> spiking_synapse(S, W, b, ..., syn=0)
    neuron_scan(unflatten(conv2d(flatten(S, 0, 1))))    -> spiking_synapse(S, W, b, ..., syn=1)

Only where the region can later run sparse: a ``lif``/``if`` neuron with subtract or no
reset, no learnable neuron parameter, no recorded membrane, and a synapse whose output
feeds nothing else.  Regions let the sparse backward keep the input spikes bit-packed
and visit only the active set for ``dW``.
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
    if spec.kind not in ("lif", "if"):
        return f"{spec.kind} neurons have no sparse backward"
    if spec.reset == "zero":
        return "reset-to-zero makes the membrane Jacobian depend on spikes outside the active set"
    if spec.learnable:
        return "learnable " + "/".join(sorted(spec.learnable)) + " need the full membrane trace"
    if len(node.args) > 7 and node.args[7]:
        return "its membrane sequence is recorded"
    return None


def _single_user(node: fx.Node, user: fx.Node) -> bool:
    return len(node.users) == 1 and user in node.users


def _match_synapse(gm: fx.GraphModule, scan: fx.Node):
    """``(S, module_target, syn, nodes)`` if ``scan``'s input is a fusable synapse output."""
    x = scan.args[0]
    if not (isinstance(x, fx.Node) and _single_user(x, scan)):
        return None
    if x.op == "call_module" and isinstance(gm.get_submodule(x.target), nn.Linear):
        return x.args[0], x.target, 0, [x]
    if x.op == "call_function" and x.target is torch.unflatten and x.args[1] == 0:
        conv = x.args[0]
        if conv.op == "call_module" and isinstance(gm.get_submodule(conv.target), nn.Conv2d) \
                and _single_user(conv, x):
            m = gm.get_submodule(conv.target)
            flat = conv.args[0]
            if m.padding_mode == "zeros" and not isinstance(m.padding, str) and flat.op == "call_function" \
                    and flat.target is torch.flatten and flat.args[1:] == (0, 1) and _single_user(flat, conv):
                return flat.args[0], conv.target, 1, [x, conv, flat]
    return None


def fuse_synapses(gm: fx.GraphModule) -> PassResult:
    b = Builder(gm, NAME)
    notes, modified = [], False
    for scan in list(gm.graph.nodes):
        if not (scan.op == "call_function" and scan.target is kernels.neuron_scan):
            continue
        spec = scan.meta["snn"]
        if sparse_ineligibility(spec, scan) is not None or scan.args[2] is not None:
            continue
        match = _match_synapse(gm, scan)
        if match is None:
            continue
        src, target, syn, absorbed = match
        m = gm.get_submodule(target)
        conv = (list(m.stride), list(m.padding), list(m.dilation), m.groups) if syn else ([1], [0], [1], 1)
        with gm.graph.inserting_before(scan):
            w = b.get_attr(f"{target}.weight", from_=absorbed)
            bias = b.get_attr(f"{target}.bias", from_=absorbed) if m.bias is not None else None
            region = b.call(kernels.spiking_synapse, (src, w, bias, scan.args[1], scan.args[3], scan.args[5], syn,
                                                      *conv, scan.args[6]), from_=[scan, *absorbed])
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
