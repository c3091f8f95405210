"""The IR verifier: checks the invariants of ``snnopt/passes/README.md`` on a GraphModule."""

from __future__ import annotations

import torch
from torch import fx

from .. import kernels
from ..frontend.registry import adapter_for
from ..spec import NeuronSpec

SCAN_TARGETS = (kernels.neuron_scan, kernels.spiking_synapse, kernels.neuron_scan_sparse,
                kernels.spiking_synapse_sparse, kernels.neuron_rate_stats)


class VerificationError(AssertionError):
    pass


def verify(gm: fx.GraphModule) -> None:
    """Raise :class:`VerificationError` naming the first node that breaks an invariant."""
    gm.graph.lint()
    for n in gm.graph.nodes:
        def fail(msg):
            raise VerificationError(f"node `{n.name}` ({n.op} {n.target}): {msg}")
        if n.op == "output":
            continue
        if "origin" not in n.meta:
            fail("has no provenance (meta['origin'])")
        if "val" not in n.meta:
            fail("has no propagated value (meta['val'])")
        if n.meta["origin"] != "trace" and "from_node" not in n.meta:
            fail("was created by a pass but records no meta['from_node']")
        if n.op == "call_module" and adapter_for(gm.get_submodule(n.target)) is not None \
                and "snn_eager_reason" not in n.meta:
            fail("is a neuron module call that was neither canonicalised nor marked eager with a reason")
        if n.op == "call_function" and n.target in SCAN_TARGETS:
            spec = n.meta.get("snn")
            if not isinstance(spec, NeuronSpec):
                fail("is a neuron op without a NeuronSpec in meta['snn']")
            cfg = next(a for a in n.args if isinstance(a, list) and len(a) == len(spec.op_config()))
            if cfg != spec.op_config():
                fail(f"cfg {cfg} disagrees with its NeuronSpec {spec.describe()}")
            x = n.args[0].meta.get("val")
            if not isinstance(x, torch.Tensor) or x.dim() < 3:
                fail("input is not a time-major [T, B, ...] tensor")
            out = n.meta.get("val")
            if out is None or not isinstance(out[0], torch.Tensor):
                fail("has no propagated output value")
            if n.meta.get("snn_cell") and x.shape[0] != 1:
                fail("is a single-step call with more than one time step")
            state = n.args[3] if n.target in (kernels.spiking_synapse, kernels.spiking_synapse_sparse) else n.args[1]
            if isinstance(state, fx.Node) and tuple(state.meta["val"].shape) != tuple(out[0].shape[1:]):
                fail(f"initial state shape {tuple(state.meta['val'].shape)} != {tuple(out[0].shape[1:])}")
