"""Run the compiler's pass pipeline on a model and record every graph it goes through.

:func:`inspect_model` traces the model and runs ``pipeline(mode, band, device)`` through the
same :class:`~snnopt.passes.PassManager` (lint, recompile, shape propagation, verifier)
that ``snnopt.compile`` uses, with snapshots on.  Each graph is kept as plain data
(:class:`GraphSnapshot`): names, ops, targets, shapes, provenance, neuron specs and
the mode and kernel backend of snnopt ops.  A model that fails to trace, or a pass that
fails, is recorded as a :class:`Failure` with the graph as far as it got.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from .. import kernels
from ..compiler import MODES
from ..frontend.tracer import TraceFailure, trace
from ..passes import PassError, PassManager, mark_binary_inputs, pipeline, verify
from ..report import CompileReport, build_report

log = logging.getLogger(__name__)

OP_MODES = {"neuron_scan": "dense", "spiking_synapse": "dense", "neuron_scan_sparse": "sparse",
            "spiking_synapse_sparse": "sparse", "binary_synapse": "exact", "neuron_rate_stats": "rate",
            "rate_neuron": "rate", "rate_batch_norm": "rate"}
"""The backward mode each snnopt op implements (``exact``: the same in every mode)."""

_KERNEL_OPS = {getattr(kernels, name): name for name in OP_MODES}


@dataclass(frozen=True)
class NodeInfo:
    """One graph node as the report shows it."""

    name: str
    op: str
    target: str
    label: str
    inputs: tuple
    shape: str
    origin: str
    from_node: tuple
    spec: str = ""
    mode: str = ""
    backend: str = ""
    reason: str = ""
    signature: str = ""

    def tooltip(self) -> str:
        """Multi-line hover text: what the node is and where it came from."""
        lines = [self.name, f"op: {self.op}   target: {self.target}", f"shape: {self.shape or '-'}",
                 f"origin: {self.origin or '-'}", f"from_node: {', '.join(self.from_node) or '-'}"]
        if self.spec:
            lines.append(f"spec: {self.spec}")
        if self.mode:
            lines.append(f"mode: {self.mode}   backend: {self.backend}")
        if self.reason:
            lines.append(self.reason)
        return "\n".join(lines)


@dataclass(frozen=True)
class GraphSnapshot:
    """The nodes of one graph, in graph order."""

    nodes: tuple

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def __len__(self) -> int:
        return len(self.nodes)


@dataclass(frozen=True)
class PassRecord:
    """One pass: the graph before and after it, what it created, erased and changed in place."""

    name: str
    before: GraphSnapshot
    after: GraphSnapshot
    modified: bool
    notes: tuple = ()

    @property
    def created(self) -> list[str]:
        before = set(self.before.names)
        return [n for n in self.after.names if n not in before]

    @property
    def erased(self) -> list[str]:
        after = set(self.after.names)
        return [n for n in self.before.names if n not in after]

    @property
    def changed(self) -> list[str]:
        """Nodes kept by name whose target or arguments the pass rewrote."""
        before = {n.name: n.signature for n in self.before.nodes}
        return [n.name for n in self.after.nodes if n.name in before and before[n.name] != n.signature]


@dataclass(frozen=True)
class Failure:
    """Why the pipeline stopped: ``stage`` is ``"trace"`` or the name of the failing pass;
    ``last_node`` is where tracing stopped; ``graph`` the graph as far as it got."""

    stage: str
    message: str
    last_node: str | None = None
    graph: GraphSnapshot | None = None


@dataclass
class Inspection:
    """Everything the report shows about one compilation."""

    model: str
    mode: str
    band: float
    input_shapes: list
    training: bool
    device: str
    passes: list = field(default_factory=list)
    report: CompileReport | None = None
    failure: Failure | None = None
    backends: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failure is None


def inspect_model(model: nn.Module, example_inputs, mode: str = "dense", band: float = 0.05) -> Inspection:
    """Trace ``model`` on time-major ``example_inputs`` and run the compile pipeline of
    ``mode`` pass by pass, recording each graph; failures are recorded, not raised."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    tensors = [x for x in inputs if isinstance(x, torch.Tensor)]
    device = tensors[0].device.type if tensors else "cpu"
    result = Inspection(type(model).__name__, mode, float(band), [tuple(x.shape) for x in tensors], model.training,
                        device, backends=kernels.status())
    describe = _Describer(model, device, result.backends)
    with torch.no_grad():  # as in snnopt.compile: tracing and propagation record nothing for autograd
        try:
            gm, _ = trace(model, inputs)
        except (TraceFailure, ValueError) as exc:
            result.failure = _trace_failure(exc, describe)
            log.info("tracing %s failed: %s", result.model, exc)
            return result
        traced = describe.graph(gm.graph)
        mark_binary_inputs(gm, inputs)
        pm = PassManager(pipeline(mode, band, device), verifier=verify, snapshots=True)
        try:
            gm = pm(gm, inputs)
        except PassError as exc:
            failed = pm.passes[len(pm.history)]
            result.failure = Failure(getattr(failed, "__name__", type(failed).__name__), str(exc),
                                     graph=describe.graph(pm.history[-1]["graph_after"]) if pm.history else traced)
            log.info("compiling %s failed: %s", result.model, exc)
        else:
            result.report = build_report(result.model, mode, band, inputs, gm, pm.notes, pm.history)
    result.passes = [PassRecord(h["pass"], describe.graph(h["graph_before"]), describe.graph(h["graph_after"]),
                                h["modified"], tuple(n for n in pm.notes if n.pass_name == h["pass"]))
                     for h in pm.history]
    return result


def _trace_failure(exc: Exception, describe: "_Describer") -> Failure:
    if isinstance(exc, TraceFailure):
        graph = describe.graph(exc.graph) if exc.graph is not None else None
        return Failure("trace", str(exc), exc.last_node, graph)
    return Failure("trace", f"{type(exc).__name__}: {exc}", None, None)


class _Describer:
    """Turns fx graphs into :class:`GraphSnapshot` s (module targets resolved on ``root``)."""

    def __init__(self, root: nn.Module, device: str, backends: dict):
        self.root, self.device, self.backends = root, device, backends

    def graph(self, graph: fx.Graph) -> GraphSnapshot:
        return GraphSnapshot(tuple(self.node(n) for n in graph.nodes))

    def node(self, n: fx.Node) -> NodeInfo:
        meta = n.meta
        spec = meta.get("snn")
        spec_text = spec.describe() if spec is not None else ""
        target, label = self._target(n)
        mode = backend = ""
        op_name = _KERNEL_OPS.get(n.target) if n.op == "call_function" else None
        if op_name is not None:
            mode = OP_MODES[op_name]
            backend = self.backends.get(op_name, {}).get(self.device, "reference")
            if backend == "native" and spec is not None and spec.config.generic:
                backend = "reference (generic dynamics)"
        reason = ""
        if meta.get("snn_eager_reason"):
            mode, reason = "eager", f"stays eager: {meta['snn_eager_reason']}"
        elif meta.get("snn_per_step_reason"):
            reason = f"stays per-step: {meta['snn_per_step_reason']}"
        return NodeInfo(
            name=n.name, op=n.op, target=target, label=label,
            inputs=tuple(dict.fromkeys(i.name for i in n.all_input_nodes)),
            shape=shape_text(meta.get("val")), origin=str(meta.get("origin", "")),
            from_node=tuple(meta.get("from_node", ())), spec=spec_text, mode=mode, backend=backend, reason=reason,
            signature=f"{n.op}|{target}|{n.args}|{n.kwargs}|{spec_text}")

    def _target(self, n: fx.Node) -> tuple[str, str]:
        """Full target text and the short label drawn in the node's box."""
        if n.op == "call_function":
            module = getattr(n.target, "__module__", None) or ""
            name = getattr(n.target, "__name__", None) or str(n.target)
            module = "operator" if module == "_operator" else module
            return (f"{module}.{name}" if module else name), name
        if n.op == "call_module":
            try:
                kind = type(self.root.get_submodule(n.target)).__name__
            except AttributeError:
                return str(n.target), str(n.target)
            return f"{n.target} ({kind})", kind
        if n.op == "call_method":
            return f".{n.target}()", f".{n.target}()"
        if n.op == "get_attr":
            return str(n.target), "attribute"
        if n.op == "placeholder":
            return str(n.target), "input"
        return n.op, n.op


def shape_text(value) -> str:
    """``[T, B, ...] dtype`` of a tensor, a tuple of those for tuples, ``""`` for no value."""
    if isinstance(value, torch.Tensor):
        return f"{list(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(shape_text(v) or "None" for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {shape_text(v) or 'None'}" for k, v in value.items()) + "}"
    if value is None:
        return ""
    return type(value).__name__

