"""`CompileReport`: what the compiler did to a model, and why."""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import fx

from . import kernels
from .passes.fuse import is_spike_output, sparse_ineligibility
from .passes.infra import Note
from .passes.lower import neuron_keys

_OP_NAMES = {kernels.neuron_scan: "neuron_scan (dense)", kernels.spiking_synapse: "spiking_synapse (dense)",
             kernels.neuron_scan_sparse: "neuron_scan_sparse", kernels.spiking_synapse_sparse: "spiking_synapse_sparse",
             kernels.neuron_rate_stats: "neuron_rate_stats + rate_neuron"}
ASSUMED_ACTIVE = 0.02


@dataclass
class NeuronEntry:
    node: str
    module: str
    spec: str
    op: str
    shape: tuple
    synapse: str | None = None
    per_step: int = 0


@dataclass
class CompileReport:
    model: str
    mode: str
    band: float
    input_shapes: list
    neurons: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    passes: list = field(default_factory=list)
    saved_bytes_estimate: dict = field(default_factory=dict)
    active_fraction: dict = field(default_factory=dict)
    fallback: str | None = None

    @property
    def eager(self) -> list[Note]:
        return [n for n in self.notes if n.kind == "eager"]

    @property
    def warnings(self) -> list[Note]:
        return [n for n in self.notes if n.kind == "warning"]

    @property
    def rewritten(self) -> list[Note]:
        return [n for n in self.notes if n.kind == "rewritten"]

    @torch.compiler.disable  # bookkeeping on sizes: outside torch.compile's graphs
    def record_activity(self, aux: dict) -> None:
        """Update the measured active fraction of each sparse neuron from a training forward's
        aux outputs (active set size / number of neuron states)."""
        for key, idx in aux.items():
            if key.startswith("active:") and idx.numel():
                name = key[len("active:"):]
                self.active_fraction[name] = idx.numel() / aux[f"spikes:{name}"].numel()

    def __str__(self) -> str:
        lines = [f"snnopt compile report: {self.model}  mode={self.mode}" +
                 (f" band={self.band:g}" if self.mode == "sparse" else "") +
                 f"  inputs={', '.join(str(list(s)) for s in self.input_shapes)}"]
        if self.fallback:
            lines.append(f"  ! fell back: {self.fallback}")
        lines.append(f"  neurons ({len(self.neurons)}):")
        for e in self.neurons:
            act = self.active_fraction.get(e.node)
            extra = f"  active {act:.2%}" if act is not None else ""
            name = e.module + (f" + {e.synapse}" if e.synapse else "")
            step = f"  [per-step x{e.per_step}]" if e.per_step else ""
            lines.append(f"    {name:<18} {e.op:<32} {str(list(e.shape)):<16} {e.spec}{extra}{step}")
        for title, items in (("stayed eager", self.eager), ("warnings", self.warnings)):
            counts = Counter(n.detail for n in items)  # a module called once per step: one line
            if counts:
                lines.append(f"  {title} ({len(counts)}):")
                lines += [f"    - {detail}" + (f" (x{k})" if k > 1 else "") for detail, k in counts.items()]
        if self.passes:
            lines.append("  passes: " + " -> ".join(f"{p['pass']}({p['nodes_before']}->{p['nodes_after']})"
                                                    for p in self.passes))
        if self.saved_bytes_estimate:
            est = ", ".join(f"{m} {_mib(b)}" for m, b in self.saved_bytes_estimate.items())
            lines.append(f"  estimated saved-for-backward per step: {est} "
                         f"(sparse assumes {ASSUMED_ACTIVE:.0%} active)")
        return "\n".join(lines)


def _mib(b: float) -> str:
    return f"{b / 2**20:.2f} MiB" if b >= 2**20 else f"{b / 2**10:.1f} KiB"


def build_report(model_name, mode, band, example_inputs, gm: fx.GraphModule, notes, history) -> CompileReport:
    report = CompileReport(model_name, mode, band, [tuple(x.shape) for x in example_inputs
                                                    if isinstance(x, torch.Tensor)], notes=list(notes),
                           passes=[{k: h[k] for k in ("pass", "nodes_before", "nodes_after", "modified")}
                                   for h in history])
    keys = neuron_keys(gm.graph)
    per_step = {}
    for n, key in keys.items():
        val = n.meta.get("val")
        shape = tuple(val[0].shape) if val is not None else ()
        module = n.meta["snn_module"]
        if n.meta.get("snn_cell"):
            if module in per_step:
                per_step[module].per_step += 1
                continue
        entry = NeuronEntry(key, module, n.meta["snn"].describe(), _OP_NAMES.get(n.target, str(n.target)), shape,
                            n.meta.get("snn_synapse"), int(bool(n.meta.get("snn_cell"))))
        if entry.per_step:
            per_step[module] = entry
        report.neurons.append(entry)
    report.saved_bytes_estimate = _estimate(gm, keys)
    return report


def _estimate(gm: fx.GraphModule, keys) -> dict:
    """Bytes kept for backward per time step by each neuron and the synapse feeding it:
    dense keeps the membrane (and current) trace and the float synapse input; sparse keeps
    ``ASSUMED_ACTIVE`` of the states as (int32, float) pairs and the input bit-packed where
    the neuron can be sparse; rate keeps rates and eligibilities once, not per step."""
    dense = sparse = rate = 0.0
    for n in keys:
        out = n.meta["val"][0]
        T, per_step = out.shape[0], out[0].numel() * out.element_size()
        syn_in = _synapse_input(gm, n)
        x = syn_in.meta.get("val") if syn_in is not None else None
        x_bytes = x[0].numel() * x.element_size() if isinstance(x, torch.Tensor) else 0
        spec = n.meta["snn"]
        state = (2 if spec.has_current else 1) * per_step
        dense += state + x_bytes
        if sparse_ineligibility(spec, n):
            sparse += state + (x_bytes / 32 if is_spike_output(syn_in) else x_bytes)
        else:
            sparse += per_step * 2 * ASSUMED_ACTIVE + x_bytes / 32
        rate += (2 * per_step + x_bytes) / T
    return {"dense": dense, "sparse": sparse, "rate": rate}


def _synapse_input(gm: fx.GraphModule, n: fx.Node):
    """The node entering the Linear/Conv that drives neuron node ``n`` (None if none does)."""
    if "snn_synapse" in n.meta:
        return n.args[0]
    x = n.args[0]
    if x.op == "call_function" and x.target is torch.unflatten:
        x = x.args[0]
    if x.op == "call_function" and x.target is operator.getitem and x.args[0].target is kernels.binary_synapse:
        return x.args[0].args[0]
    if x.op == "call_module" and isinstance(gm.get_submodule(x.target), (torch.nn.Linear, torch.nn.Conv2d)):
        return x.args[0]
    return None
