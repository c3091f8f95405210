"""`snnopt.compile`: trace, run the pass pipeline, and wrap the result as a drop-in module."""

from __future__ import annotations

import logging

import torch
from torch import fx, nn
from torch.utils._pytree import tree_flatten, tree_leaves, tree_map

from . import kernels
from .frontend.registry import UnsupportedNeuron, adapter_for
from .frontend.tracer import TraceFailure, complete_inputs, trace
from .passes import (PassError, PassManager, canonicalize_neurons, collapse_steps, dce, lower_rate_pass,
                     mark_binary_inputs, pipeline, reroll_time, verify)
from .passes.infra import Note
from .passes.lower import RateUnsupported, StepsNotFromInput, neuron_keys
from .report import CompileReport, build_report

log = logging.getLogger(__name__)

MODES = ("dense", "sparse", "rate")


class _Program:
    """One compiled specialisation: graph(s) plus how to run them, and the neuron
    descriptions it was built from (:class:`NeuronGuard`)."""

    def __init__(self, gm: fx.GraphModule, report: CompileReport, generic: bool, guard: "NeuronGuard",
                 rate_gm=None):
        self.gm, self.report, self.generic, self.rate_gm = gm, report, generic, rate_gm
        self.guard = guard

    def __call__(self, inputs, grad: bool):
        """Run on ``inputs``; ``grad``: build the graph for backward (rate mode: run the rate
        pass for the gradient, unless autograd is off)."""
        if self.rate_gm is None or not (grad and torch.is_grad_enabled()):
            out, aux = self.gm(*inputs)
            self.report.record_activity(aux)
            return out
        with torch.no_grad():
            spike_out, aux = self.gm(*inputs)
        stats = []
        bn = synchronise_batch_stats({k: v for k, v in aux.items() if k.startswith("bn:")})
        steps = self.rate_gm.meta.get("static_steps")
        for key in self.rate_gm.meta["rate_inputs"]:
            if key == "T":
                stats.append(float(steps or inputs[0].shape[0]))
            elif key.startswith("bn:"):
                name, part = key.rsplit(":", 1)
                stats.append(bn[name][int(part)])
            else:
                stats.append(aux[key])
        means = inputs if steps else [_rate_input(x, aux.get(f"mean:{k}")) for k, x in enumerate(inputs)]
        rate_out = self.rate_gm(*means, *stats)
        return tree_map(_attach, spike_out, rate_out)


class NeuronGuard:
    """The dynamics a program baked in: for each neuron module of the traced model, the
    description its adapter gave (constant decays, thresholds, reset, surrogate; tensors
    read at run time are named, not valued).  ``holds()`` is False once a module describes
    itself differently — ``load_state_dict`` or an assignment changed a constant buffer or
    attribute — and the program must be rebuilt (one adapter call per neuron and call,
    some 20 us each)."""

    def __init__(self, gm: fx.GraphModule):
        self._modules = []
        for node in gm.graph.nodes:
            if node.op == "call_module":
                module = gm.get_submodule(node.target)
                adapter = adapter_for(module)
                if adapter is not None and all(m is not module for m, _, _ in self._modules):
                    self._modules.append((module, adapter, _described(module, adapter)))

    @torch.compiler.disable  # reads buffer values: torch.compile runs it between graphs, each call
    def holds(self) -> bool:
        return all(_described(m, adapter) == seen for m, adapter, seen in self._modules)


def _described(module, adapter):
    """A comparable description of ``adapter.spec(module)`` (the reason if it stays eager)."""
    try:
        spec = adapter.spec(module)
    except UnsupportedNeuron as exc:
        return str(exc)
    return (tuple(spec.op_config()), spec.beta, spec.alpha, spec.threshold, spec.learnable,
            tuple(name for name, _ in spec.param_attrs))


def _hook_notes(model: nn.Module) -> list[Note]:
    """A warning for each submodule with forward or backward hooks: the compiled program
    replaces the submodules' calls by fused ops, so their hooks may not run and an output a
    hook returns is not used (hooks on the compiled module itself run as usual)."""
    kinds = {"_forward_pre_hooks": "forward pre-hooks", "_forward_hooks": "forward hooks",
             "_backward_pre_hooks": "backward pre-hooks", "_backward_hooks": "backward hooks"}
    notes = []
    for name, module in model.named_modules():
        found = [label for attr, label in kinds.items() if name and getattr(module, attr, None)]
        if found:
            notes.append(Note("warning", name, f"`{name}` has {' and '.join(found)}: fused ops replace the submodule "
                                               f"calls, so they may not run and what they return may be ignored; "
                                               f"register them on the compiled module, or run the model itself "
                                               f"where they matter", "compile"))
    return notes


def synchronise_batch_stats(stats: dict) -> dict:
    """``{key: (var, mean)}`` batch statistics of the spike pass, averaged over the ranks of
    a distributed run (equal batch sizes): ``mean = avg_r mean_r``, ``var = avg_r (var_r +
    mean_r^2) - mean^2`` — the statistics of the global batch.  One process: unchanged."""
    import torch.distributed as dist

    if not stats or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return stats
    keys = sorted(stats)
    flat = torch.cat([torch.cat([stats[k][1], stats[k][0] + stats[k][1] ** 2]) for k in keys])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    out, offset = {}, 0
    for k in keys:
        n = stats[k][1].numel()
        mean, square = flat[offset:offset + n], flat[offset + n:offset + 2 * n]
        out[k] = (square - mean ** 2, mean)
        offset += 2 * n
    return out


def _rate_input(x, from_spike_pass: torch.Tensor | None):
    """The rate pass's input: the time average of input ``x`` (as the spike pass returned it,
    if it did and ``x`` needs no gradient), or ``x`` itself if it is not a tensor.  An input
    that requires grad gets the rate gradient, ``dL/dx_t = dL/dx_bar / T`` at every step."""
    if not isinstance(x, torch.Tensor):
        return x
    if from_spike_pass is not None and not x.requires_grad:
        return from_spike_pass
    return _time_mean(x)


def _time_mean(x: torch.Tensor) -> torch.Tensor:
    """``x.mean(0, keepdim=True)``; integer and bool spike tensors average in the default
    floating dtype (the dtype ``x * 1.0`` would have)."""
    if not (x.is_floating_point() or x.is_complex()):
        x = x.to(torch.get_default_dtype())
    return x.mean(0, keepdim=True)


def _check_sequence_inputs(gm: fx.GraphModule, inputs) -> None:
    """Rate mode averages every tensor input over time: each must be a time-major sequence
    with the first one's ``[T, B]``, and none may reach a neuron's initial state (the rate
    pass starts every neuron from rest)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    seq = next(x for x in inputs if isinstance(x, torch.Tensor))
    for node, x in zip(placeholders, inputs):
        if not isinstance(x, torch.Tensor) or x is seq:
            continue
        if x.dim() < 2 or x.shape[:2] != seq.shape[:2]:
            raise RateUnsupported(f"input `{node.name}` of shape {list(x.shape)} is not a time-major sequence with "
                                  f"the first input's [T, B] = {list(seq.shape[:2])}; the rate pass averages every "
                                  f"tensor input over time")
        state_of = _feeds_neuron_state(node)
        if state_of is not None:
            raise RateUnsupported(f"input `{node.name}` sets the initial state of `{state_of}`; the rate pass "
                                  f"starts every neuron from rest")


class _NoStaticSteps(RateUnsupported):
    """The model's steps do not come from a broadcast of a static input."""


def _static_steps(exc: Exception) -> bool:
    """Whether the time-major rate pass failed because the model makes its own steps (its
    neurons ran several steps on a one-step input)."""
    return isinstance(exc if isinstance(exc, RateUnsupported) else exc.__cause__, StepsNotFromInput)


def _feeds_neuron_state(node: fx.Node) -> str | None:
    """The module of a neuron whose initial state (``v0`` / ``i0``) depends on ``node``, if any."""
    seen, queue = {node}, [node]
    for n in queue:
        for user in n.users:
            scan = user.target in (kernels.neuron_scan, kernels.neuron_rate_stats)
            if scan and any(a in seen for a in user.args[1:3]):
                return user.meta.get("snn_module", user.name)
            if user not in seen:
                seen.add(user)
                queue.append(user)
    return None


class _Attach(torch.autograd.Function):
    """Value of the spike pass, gradient of the rate pass (broadcast over time, summed back).
    The value is the spike pass's exactly, also where the rate is not finite (``spike +
    (rate - rate.detach())`` would turn a NaN rate into a NaN output where the model has a
    spike or none)."""

    @staticmethod
    def forward(ctx, spike, rate):
        ctx.rate_shape = rate.shape
        return spike.clone()

    @staticmethod
    def backward(ctx, grad):
        return None, grad.sum_to_size(ctx.rate_shape)


def _attach(spike: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """Value of the spike pass, gradient of the rate pass (broadcast over time)."""
    return _Attach.apply(spike, rate)


class CompiledSNN(nn.Module):
    """A compiled spiking network: shares parameters, buffers, submodules and ``state_dict``
    keys with the source model; compiles one program per input signature (and train/eval).
    Hooks registered on the compiled module run; hooks on the model's submodules are not
    guaranteed to (fused ops replace those calls), and the report warns about them."""

    def __init__(self, model: nn.Module, mode: str = "dense", band: float = 0.05, example_inputs=None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if isinstance(band, bool) or not isinstance(band, (int, float)) or not band > 0:
            raise ValueError(f"band must be positive (math.inf for the dense gradient), got {band}")
        object.__setattr__(self, "_source", model)
        self._parameters, self._buffers, self._modules = model._parameters, model._buffers, model._modules
        self.training = model.training
        self.mode, self.band = mode, float(band)
        self._programs: dict = {}
        self._report: CompileReport | None = None
        self._rank: int | None = None
        self._warned: set[str] = set()
        if example_inputs is not None:
            example_inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
            example_inputs = complete_inputs(model, example_inputs)
            self._check(example_inputs)
            self._program(example_inputs, self.training)

    @property
    def report(self) -> CompileReport | None:
        """The report of the most recent compilation (``None`` before the first)."""
        return self._report

    @property
    def source(self) -> nn.Module:
        return self._source

    def forward(self, *inputs):
        """Run the program for these inputs' signature (compiling it first if needed).  In
        ``eval()`` it runs without autograd unless an input requires grad; then (and in
        ``train()``) the output has the gradient of the mode — in rate mode the rate pass's."""
        inputs = complete_inputs(self._source, inputs)
        self._check(inputs)
        grad = self.training or any(isinstance(x, torch.Tensor) and x.requires_grad for x in tree_leaves(inputs))
        program = self._program(inputs, grad)
        if not grad:
            with torch.no_grad():
                return program(inputs, False)
        return program(inputs, True)

    def train(self, mode: bool = True):
        self._source.training = mode
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        self._programs.clear()
        return super()._apply(fn, recurse)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_programs"], state["_report"] = {}, None
        return state

    def _check(self, inputs):
        """The first tensor input is the time-major sequence ``[T, B, ...]`` with the rank it
        was compiled with; later inputs (initial states, say) may have any shape."""
        x = next((x for x in inputs if isinstance(x, torch.Tensor)), None)
        if x is None:
            raise ValueError("snnopt compiled modules take time-major tensor inputs [T, B, ...]")
        if x.dim() < 2:
            raise ValueError(f"expected a time-major input [T, B, ...]; got shape {list(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError(f"{type(self._source).__name__}: the time-major input [T, B, ...] has no time steps "
                             f"(shape {list(x.shape)}); give at least one step (T >= 1)")
        if self._rank is not None and x.dim() != self._rank:
            raise ValueError(f"expected a time-major input [T, B, ...] with {self._rank} dims (as compiled); "
                             f"got shape {list(x.shape)}. Put time first and batch second, "
                             f"e.g. x.unsqueeze(0) for one step or x.transpose(0, 1) for batch-first data.")
        self._rank = x.dim()

    def _rate_pass(self, grad: bool) -> bool:
        """Whether a program needs the rate pass: rate mode, with gradients (``train()``, or
        an input that requires grad in ``eval()``)."""
        return self.mode == "rate" and (self.training or grad)

    def _key(self, inputs, generic: bool, grad: bool):
        """What a program is specialised on: train/eval (and in rate mode whether it
        carries the rate pass), the tensors' shapes (without T and B when ``generic``),
        dtypes and devices — also inside tuples of states — and the other inputs' values."""
        leaves, spec = tree_flatten(inputs)
        sig = tuple((tuple(x.shape[2:]) if generic else tuple(x.shape), x.dtype, x.device.type)
                    if isinstance(x, torch.Tensor) else x for x in leaves)
        return self.training, self._rate_pass(grad), generic, str(spec), sig

    def _program(self, inputs, grad: bool = True) -> _Program:
        """The program for ``inputs`` (built and cached if there is none, or if a neuron's
        constants changed); ``grad``: it will run with gradients."""
        for generic in (True, False):
            program = self._programs.get(self._key(inputs, generic, grad))
            if program is not None and not program.guard.holds():
                log.info("%s: a neuron's constants changed since compilation; recompiling",
                         type(self._source).__name__)
                self._programs.clear()
                break
            if program is not None:
                self._report = program.report  # the report of the program that runs (and records activity)
                return program
        with torch.no_grad():  # tracing and shape propagation record nothing for autograd
            program = self._build(inputs, self._rate_pass(grad))
        self._programs[self._key(inputs, program.generic, grad)] = program
        self._report = program.report
        log.info("%s", program.report)
        for note in program.report.warnings:
            if note.detail not in self._warned:
                self._warned.add(note.detail)
                log.warning("%s: %s", type(self._source).__name__, note.detail)
        return program

    def _build(self, inputs, rate_pass: bool) -> _Program:
        model, mode = self._source, self.mode
        gm, specialised = trace(model, inputs)
        guard = NeuronGuard(gm)
        mark_binary_inputs(gm, inputs)
        device = next((x.device.type for x in inputs if isinstance(x, torch.Tensor)), "cpu")
        pm = PassManager(pipeline(mode, self.band, device), verifier=verify)
        gm = pm(gm, inputs)
        notes = list(pm.notes) + _hook_notes(model)
        rate_gm = None
        if mode == "rate" and rate_pass:
            try:
                rate_gm = self._build_rate_pass(inputs, gm)
            except (PassError, RateUnsupported) as exc:
                reason = exc if isinstance(exc, RateUnsupported) else exc.__cause__
                if not isinstance(reason, RateUnsupported):
                    raise
                return self._fallback(inputs, f"rate mode is not possible here ({reason}); compiled in dense mode")
            steps = rate_gm.meta.get("static_steps")
            if steps:
                made = f"{steps} step{'s' * (steps != 1)}"
                notes.append(Note("rewritten", "", f"the model makes its {made} from a static input: the rate pass "
                                                   f"runs once on the input itself", "compile"))
        report = build_report(type(model).__name__, mode, self.band, inputs, gm, notes, pm.history)
        return _Program(gm, report, generic=not specialised, guard=guard, rate_gm=rate_gm)

    def _build_rate_pass(self, inputs, gm_T: fx.GraphModule) -> fx.GraphModule:
        """The rate pass's graph: the model traced on the time average of its time-major inputs,
        or, for a model that makes its time axis from a static input, the full trace collapsed
        to one step (:func:`_build_static_rate_pass`)."""
        nodes = neuron_keys(gm_T.graph)
        keys = set(nodes.values())
        recorded = frozenset(n.meta["snn_aux"][len("vbar:"):] for n in gm_T.graph.nodes
                             if n.meta.get("snn_aux", "").startswith("vbar:"))
        per_step = next((n for n in gm_T.graph.nodes if "snn_per_step_reason" in n.meta), None)
        if per_step is not None:
            raise RateUnsupported(f"`{per_step.meta.get('snn_module', per_step.name)}` stays per-step: "
                                  f"{per_step.meta['snn_per_step_reason']}")
        lengths = {n.args[0].meta["val"].shape[0] for n in nodes}
        seq = next(x for x in inputs if isinstance(x, torch.Tensor))
        static = len(lengths) == 1 and lengths != {seq.shape[0]}  # or a model that takes fewer steps than given
        if static:
            try:
                return self._build_static_rate_pass(inputs, gm_T, keys, recorded, next(iter(lengths)))
            except _NoStaticSteps:
                pass
        try:
            return self._build_sequence_rate_pass(inputs, gm_T, keys, recorded)
        except (PassError, RateUnsupported) as exc:
            if static or len(lengths) != 1 or not _static_steps(exc):
                raise
        return self._build_static_rate_pass(inputs, gm_T, keys, recorded, lengths.pop())

    def _build_sequence_rate_pass(self, inputs, gm_T, keys, recorded) -> fx.GraphModule:
        _check_sequence_inputs(gm_T, inputs)
        ones = tuple(_time_mean(x[:1]) if isinstance(x, torch.Tensor) else x for x in inputs)
        try:
            gm1, _ = trace(self._source, ones)
        except TraceFailure as exc:
            raise RateUnsupported(f"the model does not trace on a one-step input ({exc}); rate mode needs the "
                                  "time-major input [T, B, ...] to drive the steps") from exc
        pm = PassManager([canonicalize_neurons, reroll_time, lower_rate_pass(keys, recorded), dce], verifier=verify)
        return pm(gm1, ones)

    def _build_static_rate_pass(self, inputs, gm_T, keys, recorded, steps: int) -> fx.GraphModule:
        """The rate pass of a model whose neurons run ``steps`` steps over a static input: every
        step sees the same input, whose time average is the input itself, so the full trace,
        its time axis collapsed to one step (:func:`~snnopt.passes.collapse_steps`), runs on the
        inputs as they are, with sums over time scaled by ``steps``.  A one-step model needs no
        collapse: its rate pass is the model itself, BPTT exactly."""
        tensors = [(node, x) for node, x in zip((n for n in gm_T.graph.nodes if n.op == "placeholder"), inputs)
                   if isinstance(x, torch.Tensor)]
        for node, x in tensors[1:]:  # as for sequences: the first input drives the neurons (their state's shape)
            state_of = _feeds_neuron_state(node)
            if state_of is not None:
                raise RateUnsupported(f"input `{node.name}` sets the initial state of `{state_of}`; the rate pass "
                                      f"starts every neuron from rest")
        gm, _ = trace(self._source, inputs)
        front = PassManager([canonicalize_neurons, reroll_time], verifier=verify)
        gm = front(gm, inputs)
        try:
            gm = PassManager([collapse_steps(steps)], verifier=verify)(gm, inputs)
        except PassError as exc:
            raise RateUnsupported(f"the model runs {steps} steps over a static input, but its graph does not run "
                                  f"at one step ({exc.__cause__ or exc}); rate mode needs the steps to come from "
                                  f"a broadcast of the input (x.unsqueeze(0).repeat(T, ...), or the same current "
                                  f"at every step of a loop)") from exc
        if steps != 1 and not any(n.meta.get("snn_time_axis") for n in gm.graph.nodes):
            raise _NoStaticSteps(f"the neurons run {steps} steps, made by no broadcast of a static input")
        gm = PassManager([lower_rate_pass(keys, recorded), dce], verifier=verify)(gm, inputs)
        gm.meta["static_steps"] = steps
        return gm

    def _fallback(self, inputs, reason: str) -> _Program:
        mode = self.mode
        try:
            self.mode = "dense"
            program = self._build(inputs, False)
        finally:
            self.mode = mode
        program.report.mode = f"{mode} -> dense"
        program.report.fallback = reason
        program.report.notes.append(Note("warning", "", reason, "compile"))
        return program


def compile(model: nn.Module, mode: str = "dense", example_inputs=None, band: float = 0.05) -> CompiledSNN:
    """Compile a spiking network for fast training.

    ``mode``: ``"dense"`` (exact BPTT, fused), ``"sparse"`` (SSGD: surrogate only where
    ``|v - theta| < band``, detached reset) or ``"rate"`` (rate-based backprop, memory
    independent of T).  ``example_inputs`` (time-major ``[T, B, ...]``) compiles now;
    omitted, the module compiles on its first call.  Any T and batch size work later
    (recompiling when the traced graph depended on the shapes).
    """
    if isinstance(model, CompiledSNN):
        model = model.source
    return CompiledSNN(model, mode, band, example_inputs)
