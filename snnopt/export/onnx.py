"""ONNX export of a :class:`~snnopt.export.network.Network`, and a runner for the files.

The model computes a whole sequence.  Its inputs are the network inputs ``[T, B, *shape]``
(``T`` and ``B`` symbolic) and one initial-state tensor ``[B, *shape]`` per state the
network carries; its outputs are the network outputs ``[T, B, *shape]`` and the final
states, so a sequence continues where the last one stopped.  State inputs are named after
the network node, as in the ``state`` dict of :meth:`NetworkModule.run
<snnopt.export.runtime.NetworkModule.run>`:

=====================  ==========================================================
``<neuron>:v``         a population's membrane ``v``
``<neuron>:i``         its synaptic current ``i`` (``cuba_lif``, ``cuba_li``)
``<source>:out``       the previous-step output of a delayed edge's source (cycles)
=====================  ==========================================================

and the final state outputs are the same names with ``:final`` appended.  A population
with an initial membrane ``v_init`` (:class:`~snnopt.export.network.Neuron`) has a default
for ``<neuron>:v``: an initializer of that name, ``[1, *shape]``, which the graph expands
to the batch (``Expand`` to ``[B, *shape]``, ``B`` from the first input), so a runtime that
does not feed the state starts there; the interface record lists these inputs under
``defaults``.  Every other state input must be fed (:func:`run` feeds zeros).

**Time.** One ``Scan`` runs over ``T``.  Its state variables are the states above; its
body computes one step, node by node in :meth:`Network.order`: a node's input is the sum
(a chain of ``Add`` in edge order) of its sources' outputs of this step, except that a
delayed edge reads the carried previous-step value.  The body reads the parameters from
the main graph's initializers.

**Nodes.**

=============  ===============================================================
``Affine``     ``Gemm(x, W, b, transB=1)``: ``y = x W^T + b``
``Conv``       ``Conv`` (1-d or 2-d; strides, pads, dilations, group)
``Pool`` avg   ``AveragePool(count_include_pad=1)``: window sum / window area
``Pool`` sum   ``Conv`` with a ones kernel, one group per channel: the window sum
               itself (no division and multiplication by the area, which rounds)
``Flatten``    ``Reshape`` to ``[B, *shape]`` (the batch dim is copied)
``Scale``      ``Mul`` by the full-shape scale
``Neuron``     a call of an ``ai.snnopt`` function (below)
``Output``     ``Identity`` of the summed input
=============  ===============================================================

**Neurons.** Each population calls an operator of the custom domain ``ai.snnopt``
(version 1): ``LIF``, ``CubaLIF``, ``IF``, ``LI`` or ``CubaLI``, followed, in this
order, by ``_ZeroReset`` / ``_NoReset`` (reset other than subtract), ``_ResetNext`` /
``_ResetSamePending`` (reset timing), ``_FireGe`` (fire ``">="``), ``_DiscardsInput``,
``_DecayAfter`` (``current_decay="after"``), ``_Scaled`` (``scale != 1``), ``_Rest``
(``v_rest != 0``), ``_Gain`` (an ``input_scale``) and ``_Euler`` / ``_Tau`` (Norse's Euler
or SpikingJelly's divided order of the charge, ``NeuronSpec.integration``), e.g.
``LIF_ZeroReset_ResetNext_FireGe``.  The operator is a model-local ``FunctionProto``
whose body uses default-domain ops only and repeats
:func:`snnopt.nn.functional.neuron_step` operation by operation, so float32 results
equal PyTorch's bit for bit; the equations are in :mod:`snnopt.spec`.  Its signature is

    ``(x, [i,] v, [alpha,] [beta,] [threshold,] [input_scale]) -> (y, [i_next,] v_next)``

with ``y`` the spikes (the membrane for ``LI``/``CubaLI``).  ``beta``, ``alpha``,
``threshold`` and ``input_scale`` are full-shape initializers; ``scale``, ``v_rest`` and
``v_reset`` are float attributes of the call, and so are the divided form's ``tau`` and the
Euler form's ``syn_rate = alpha - 1`` (those forms read no ``beta``, and the Euler form no
``alpha``).  The surrogate gradient and
``detach_reset`` only shape training and are not exported.  No ``NeuronSpec`` is refused;
a spec field outside :mod:`snnopt.spec`'s tables raises :class:`NetworkError` naming the
node.

**Precision.** The neurons, ``Scale`` and the fan-in sums round exactly as PyTorch does.
``Gemm``, ``Conv`` and the pools sum in onnxruntime's order, so they equal PyTorch's
results whenever the sums are exact (spike inputs and weights on a power-of-two grid)
and agree to float32 rounding otherwise.

The default opset is 18 (:data:`DEFAULT_OPSET`; any from 15, the first with model-local
functions, to the installed ``onnx``'s newest that the consumer supports).  The model
records the network's metadata (e.g. ``dt``) in ``metadata_props``, with its interface
under ``snnopt.interface`` (JSON), and passes ``onnx.checker.check_model(full_check=True)``.

:func:`run` executes a file or ``ModelProto`` with onnxruntime's CPU provider, taking and
returning states as :meth:`NetworkModule.run` does.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from pathlib import Path

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from ..spec import CURRENT_DECAYS, FIRES, INTEGRATIONS, KINDS, RESETS, TIMINGS, KindTraits
from . import network as N

logger = logging.getLogger(__name__)

DOMAIN = "ai.snnopt"
DOMAIN_VERSION = 1
DEFAULT_OPSET = 18
MIN_OPSET = 15
INTERFACE_KEY = "snnopt.interface"
PRODUCER = "snnopt"

__all__ = ["to_onnx", "write", "run", "DOMAIN", "DEFAULT_OPSET"]


# -- export ----------------------------------------------------------------------------------------

def to_onnx(net: N.Network, *, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """The ONNX model of ``net`` at default-domain ``opset`` (see the module docstring),
    checked with ``onnx.checker.check_model(full_check=True)``.  Raises
    :class:`NetworkError` naming the node for a network the model cannot hold."""
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= int(opset) <= newest:
        raise N.NetworkError(f"opset {opset} is not supported: use {MIN_OPSET} (model-local functions) to {newest}")
    opsets = [helper.make_opsetid("", int(opset)), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)]
    graph, functions, interface = _Exporter(net, opsets[:1]).build()
    model = helper.make_model(graph, opset_imports=opsets, functions=functions, producer_name=PRODUCER,
                              ir_version=max(8, helper.find_min_ir_version_for(opsets, ignore_unknown=True)),
                              doc_string="A spiking network exported by snnopt: a Scan over time whose body "
                                         "calls ai.snnopt neuron functions.")
    meta = {key: value if isinstance(value, str) else json.dumps(value, default=str)
            for key, value in net.metadata.items()}
    meta[INTERFACE_KEY] = json.dumps(interface)
    helper.set_model_props(model, meta)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise N.NetworkError(f"the exported model fails onnx.checker ({exc}); this is a bug in snnopt's ONNX "
                             "exporter, please report it with the network") from exc
    return model


def write(net: N.Network, path, **options) -> Path:
    """Write ``to_onnx(net, **options)`` to ``path``; returns the path."""
    path = Path(path)
    model = to_onnx(net, **options)
    onnx.save_model(model, str(path))
    logger.info("wrote %s: %d nodes, %d neuron functions, opset %d", path, len(net.nodes), len(model.functions),
                model.opset_import[0].version)
    return path


@dataclasses.dataclass(frozen=True)
class _Dynamics(KindTraits):
    """The structure of a population that shapes its function body (parameter values
    aside); fields that ``neuron_step`` ignores for the kind are normalised away, so
    equal dynamics share one function."""

    kind: str
    reset: str = "none"
    timing: str = "same"
    fire_ge: bool = False
    discards_input: bool = False
    decay_after: bool = False
    scaled: bool = False
    rest: bool = False
    gain: bool = False
    form: str = "decay"  # NeuronSpec.integration

    @property
    def leaky(self) -> bool:
        return self.kind != "if"

    @property
    def reads_beta(self) -> bool:
        return self.leaky and self.form == "decay"

    @property
    def reads_alpha(self) -> bool:
        return self.has_current and self.form != "euler"

    @property
    def attributes(self) -> list[str]:
        """The float attributes the body reads."""
        uses_reset_value = self.reset == "zero" and not self.discards_input
        return [a for a, used in (("scale", self.scaled and self.form != "tau"), ("tau", self.form == "tau"),
                                  ("syn_rate", self.has_current and self.form == "euler"), ("v_rest", self.rest),
                                  ("v_reset", uses_reset_value)) if used]

    @property
    def name(self) -> str:
        """The operator name: the kind, then a suffix per non-default piece of structure."""
        base = {"lif": "LIF", "cuba_lif": "CubaLIF", "if": "IF", "li": "LI", "cuba_li": "CubaLI"}[self.kind]
        parts = [base]
        parts += {"zero": ["ZeroReset"], "none": ["NoReset"]}.get(self.reset, []) if self.spiking else []
        parts += {"next": ["ResetNext"], "same_pending": ["ResetSamePending"]}.get(self.timing, [])
        for token, on in (("FireGe", self.fire_ge), ("DiscardsInput", self.discards_input),
                          ("DecayAfter", self.decay_after), ("Scaled", self.scaled), ("Rest", self.rest),
                          ("Gain", self.gain), ("Euler", self.form == "euler"), ("Tau", self.form == "tau")):
            if on:
                parts.append(token)
        return "_".join(parts)

    @property
    def inputs(self) -> list[str]:
        return ["x", *(["i"] if self.has_current else []), "v", *(["alpha"] if self.reads_alpha else []),
                *(["beta"] if self.reads_beta else []), *(["threshold"] if self.spiking else []),
                *(["input_scale"] if self.gain else [])]

    @property
    def outputs(self) -> list[str]:
        return ["y", *(["i_next"] if self.has_current else []), "v_next"]

    def describe(self) -> str:
        what = "the membrane" if not self.spiking else (
            f"the spikes H(h - threshold) with H(0) = {int(self.fire_ge)}; reset {self.reset}, timing {self.timing}"
            + (", the pending reset discarding the input" if self.discards_input else ""))
        form = {"euler": ", charging in Norse's Euler order", "tau": ", charging in SpikingJelly's divided order"}
        return (f"One time step of a {self.kind} population as snnopt.nn.functional.neuron_step (equations in "
                f"snnopt.spec){form.get(self.form, '')}: y = {what}; i_next/v_next the carried state.")


def _dynamics(name: str, node: N.Neuron) -> _Dynamics:
    """The :class:`_Dynamics` of population ``name``; raises :class:`NetworkError` for a
    spec field outside the values ``neuron_step`` defines (rather than guess)."""
    spec = node.spec
    for field, value, allowed in (("kind", spec.kind, KINDS), ("reset", spec.reset, RESETS),
                                  ("reset_timing", spec.reset_timing, TIMINGS), ("fire", spec.fire, FIRES),
                                  ("current_decay", spec.current_decay, CURRENT_DECAYS),
                                  ("integration", spec.integration, INTEGRATIONS)):
        if value not in allowed:
            raise N.NetworkError(f"node {name!r}: neuron {field}={value!r} has no ONNX form; the exporter knows "
                                 f"{field} in {allowed}; build the population from a valid NeuronSpec")
    d = _Dynamics(spec.kind, scaled=float(spec.scale) != 1.0, rest=spec.kind != "if" and float(spec.v_rest) != 0.0,
                  gain=node.input_scale is not None, decay_after=spec.has_current and spec.current_decay == "after",
                  form=spec.integration)
    if not d.spiking:
        return d
    timing = spec.reset_timing if spec.reset != "none" else "same"  # neuron_step: no reset, no timing
    discards = spec.reset_discards_input and spec.reset == "zero" and timing != "same"
    return dataclasses.replace(d, reset=spec.reset, timing=timing, fire_ge=spec.fire == ">=",
                               discards_input=discards)


class _Names:
    """Unique value names of one scope: user-facing names are reserved, others made fresh."""

    def __init__(self):
        self.used: set[str] = set()

    def reserve(self, name: str, what: str) -> str:
        if name in self.used:
            raise N.NetworkError(f"{what} needs the ONNX name {name!r}, which another input, output or state "
                                 "already has; rename the node")
        self.used.add(name)
        return name

    def fresh(self, hint: str) -> str:
        name, k = hint, 1
        while name in self.used:
            name, k = f"{hint}_{k}", k + 1
        self.used.add(name)
        return name


class _Builder:
    """Nodes of one graph or function body under construction, in SSA form."""

    def __init__(self, names: _Names):
        self.names = names
        self.nodes: list[onnx.NodeProto] = []
        self._consts: dict[tuple, str] = {}

    def op(self, op_type: str, *inputs: str, hint: str | list[str] | None = None, domain: str = "",
           name: str | None = None, **attrs):
        """Append ``op_type(inputs)``; returns its output name, or the list of them when
        ``hint`` lists one name hint per output."""
        hints = hint if isinstance(hint, list) else [hint or op_type.lower()]
        outs = [self.names.fresh(h) for h in hints]
        node = helper.make_node(op_type, list(inputs), outs, name=name, **attrs)
        if domain:
            node.domain = domain
        self.nodes.append(node)
        return outs if isinstance(hint, list) else outs[0]

    def const(self, value: float) -> str:
        """A float32 scalar constant (created once)."""
        key = ("value", float(value))
        if key not in self._consts:
            self._consts[key] = self.op("Constant", hint=f"c{value:g}", value_float=float(value))
        return self._consts[key]

    def attr(self, attribute: str) -> str:
        """A float32 scalar taken from the function's float ``attribute`` (created once)."""
        key = ("attribute", attribute)
        if key not in self._consts:
            out = self.names.fresh(attribute)
            node = helper.make_node("Constant", [], [out])
            node.attribute.append(helper.make_attribute_ref("value_float", onnx.AttributeProto.FLOAT,
                                                            ref_attr_name=attribute))
            self.nodes.append(node)
            self._consts[key] = out
        return self._consts[key]


def _neuron_function(d: _Dynamics, opsets) -> onnx.FunctionProto:
    """The ``ai.snnopt`` function of dynamics ``d``; the body is :func:`_neuron_body`."""
    names = _Names()
    for n in d.inputs:
        names.reserve(n, "a function input")
    b = _Builder(names)
    y, i_next, v_next = _neuron_body(b, d)
    rename = {v_next: "v_next", **({i_next: "i_next"} if d.has_current else {})}
    if y == v_next:  # non-spiking: the output is the membrane
        b.op("Identity", v_next, hint="y")
        rename[b.nodes[-1].output[0]] = "y"
    else:
        rename[y] = "y"
    for node in b.nodes:
        node.input[:] = [rename.get(v, v) for v in node.input]
        node.output[:] = [rename.get(v, v) for v in node.output]
    return helper.make_function(DOMAIN, d.name, d.inputs, d.outputs, b.nodes, opsets, attributes=d.attributes,
                                doc_string=d.describe())


def _neuron_body(b: _Builder, d: _Dynamics) -> tuple[str, str | None, str]:
    """One step, the ops of ``neuron_step`` in its order; returns ``(y, i_next, v_next)``.

    ``in = scale * drive``; ``drive = i_t`` (``i_t = alpha*i + x``) or, with
    ``current_decay == "after"``, ``I_t = i + x`` (carrying ``alpha*I_t``, in the Euler form
    ``I_t + syn_rate*I_t``), else ``x`` (``x`` multiplied by ``input_scale`` first).  ``h =
    leak(v) + in`` with ``leak(u) = beta*u + (1 - beta)*v_rest``, or the charge of the Euler /
    divided form (:func:`snnopt.nn.functional.form_charge`) from the unscaled drive;
    ``s = H(h - threshold)``; then the reset of the timing.
    """
    x = b.op("Mul", "x", "input_scale", hint="x_scaled") if d.gain else "x"
    i_next = None
    if d.has_current:
        if d.decay_after:
            drive = b.op("Add", "i", x, hint="total")
            i_next = (b.op("Add", drive, b.op("Mul", b.attr("syn_rate"), drive), hint="i_decayed")
                      if d.form == "euler" else b.op("Mul", "alpha", drive, hint="i_decayed"))
        else:
            drive = b.op("Add", b.op("Mul", "alpha", "i"), x, hint="total")
            i_next = drive
    else:
        drive = x
    inp = b.op("Mul", b.attr("scale"), drive, hint="inp") if d.scaled and d.form == "decay" else drive

    def leak(u: str) -> str:
        if not d.leaky:
            return u
        out = b.op("Mul", "beta", u, hint="leak")
        if d.rest:
            out = b.op("Add", out, b.op("Mul", b.op("Sub", b.const(1), "beta"), b.attr("v_rest")), hint="leak")
        return out

    def charge(u: str) -> str:
        """The same-step charge ``h`` from the carried membrane ``u``."""
        if d.form == "euler":  # u + scale * ((v_rest - u) + I)
            step = b.op("Add", b.op("Sub", b.attr("v_rest") if d.rest else b.const(0), u), inp)
            return b.op("Add", u, b.op("Mul", b.attr("scale"), step) if d.scaled else step, hint="h")
        if d.form == "tau":  # u + (I - (u - v_rest)) / tau, or u - (u - v_rest) / tau + I
            off = b.op("Sub", u, b.attr("v_rest")) if d.rest else u
            if d.scaled:
                return b.op("Add", u, b.op("Div", b.op("Sub", inp, off), b.attr("tau")), hint="h")
            return b.op("Add", b.op("Sub", u, b.op("Div", off, b.attr("tau"))), inp, hint="h")
        return b.op("Add", leak(u), inp, hint="h")

    def spike(u: str, hint: str) -> str:
        fired = b.op("GreaterOrEqual" if d.fire_ge else "Greater", u, b.const(0))
        return b.op("Cast", fired, hint=hint, to=TensorProto.FLOAT)

    def complement(s: str) -> str:
        return b.op("Sub", b.const(1), s)

    if not d.spiking:
        h = charge("v")
        return h, i_next, h
    if d.timing == "same":
        h = charge("v")
        s = spike(b.op("Sub", h, "threshold"), "s")
        if d.reset == "subtract":
            v = b.op("Sub", h, b.op("Mul", "threshold", s))
        elif d.reset == "zero":
            v = b.op("Add", b.op("Mul", h, complement(s)), b.op("Mul", b.attr("v_reset"), s))
        else:
            v = h
        return s, i_next, v
    # "next" and "same_pending": the pending reset r of the carried state enters the charge
    r = spike(b.op("Sub", "v", "threshold"), "r")
    if d.reset == "subtract":
        h = b.op("Sub", b.op("Add", leak("v"), inp), b.op("Mul", "threshold", r), hint="h")
    elif d.discards_input:
        h = b.op("Add", leak("v"), inp, hint="h")
        h = b.op("Sub", h, b.op("Mul", h, r), hint="h")
    else:
        v_reset = b.op("Add", b.op("Mul", "v", complement(r)), b.op("Mul", b.attr("v_reset"), r))
        h = b.op("Add", leak(v_reset), inp, hint="h")
    s = spike(b.op("Sub", h, "threshold"), "s")
    if d.timing == "next":
        return s, i_next, h
    undo = b.op("Sub", s, r)
    if d.reset == "subtract":
        return s, i_next, b.op("Sub", h, b.op("Mul", undo, "threshold"))
    return s, i_next, b.op("Sub", h, b.op("Mul", undo, h))


def _float_info(name: str, dims: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


@dataclasses.dataclass
class _State:
    """A carried state: its ``state`` dict key, graph inputs, graph outputs, dims and the
    default value of each input (``None``: none)."""

    key: str
    inputs: list[str]
    outputs: list[str]
    dims: list
    defaults: list


class _Exporter:
    """Builds the main graph (inputs, initializers, the Scan) and the body of one step."""

    def __init__(self, net: N.Network, opsets):
        self.net, self.opsets = net, opsets
        self.shapes = net.validate()
        self.order = net.order()
        self.delayed = net.delayed_edges()
        self.dynamics = {n: _dynamics(n, node) for n, node in net.nodes.items() if isinstance(node, N.Neuron)}
        self.names = _Names()
        self.initializers: list[onnx.TensorProto] = []
        self.functions: dict[str, onnx.FunctionProto] = {}
        self.body = _Builder(self.names)
        self.main = _Builder(self.names)

    def build(self):
        net = self.net
        for name in net.inputs + net.outputs:
            self.names.reserve(name, f"node {name!r}")
        states = self._states()
        body_in = {name: self.names.fresh(f"step/{name}") for name in net.inputs}
        state_in = {s.key: [self.names.fresh(f"step/{g}") for g in s.inputs] for s in states}
        next_state, outputs = self._step(body_in, state_in)
        initial = self._initial_states(states)
        body = helper.make_graph(
            self.body.nodes, "step",
            [_float_info(v, s.dims) for s in states for v in state_in[s.key]]
            + [_float_info(body_in[n], ["B", *self.shapes[n]]) for n in net.inputs],
            [_float_info(v, s.dims) for s in states for v in next_state[s.key]]
            + [_float_info(outputs[n], ["B", *self.shapes[n]]) for n in net.outputs])
        scan = helper.make_node("Scan", [initial.get(g, g) for s in states for g in s.inputs] + net.inputs,
                                [f for s in states for f in s.outputs] + net.outputs,
                                name="time", body=body, num_scan_inputs=len(net.inputs))
        graph = helper.make_graph(
            self.main.nodes + [scan], "snnopt",
            [_float_info(n, ["T", "B", *self.shapes[n]]) for n in net.inputs]
            + [_float_info(g, s.dims) for s in states for g in s.inputs],
            [_float_info(n, ["T", "B", *self.shapes[n]]) for n in net.outputs]
            + [_float_info(f, s.dims) for s in states for f in s.outputs],
            self.initializers)
        interface = {"inputs": net.inputs, "outputs": net.outputs,
                     "state": [{"key": s.key, "inputs": s.inputs, "outputs": s.outputs,
                                "defaults": [g for g, d in zip(s.inputs, s.defaults) if d is not None]}
                               for s in states]}
        return graph, list(self.functions.values()), interface

    def _states(self) -> list[_State]:
        """The carried states, in the order of ``NetworkModule.run``'s state dict:
        populations, then delayed sources."""
        keys = [(n, n, ["i", "v"] if d.has_current else ["v"]) for n, d in self.dynamics.items()]
        keys += [(f"{src}:out", src, ["out"]) for src in sorted({s for s, _ in self.delayed})]
        states = []
        for key, node, parts in keys:
            what = f"the state of node {node!r}"
            inputs = [self.names.reserve(f"{node}:{p}", what) for p in parts]
            v_init = self.net.nodes[node].v_init if key == node else None
            states.append(_State(key, inputs, [self.names.reserve(f"{g}:final", what) for g in inputs],
                                 ["B", *self.shapes[node]], [v_init if p == "v" else None for p in parts]))
        return states

    def _initial_states(self, states: list[_State]) -> dict[str, str]:
        """Main-graph nodes expanding each defaulted state input (an initializer ``[1, *shape]``
        of the input's name) to ``[B, *shape]``; returns ``{input: expanded value}``."""
        initial = {}
        first = self.net.inputs[0]
        for state in states:
            for name, default in zip(state.inputs, state.defaults):
                if default is None:
                    continue
                value = default.detach().to("cpu", torch.float32).unsqueeze(0).contiguous().numpy()
                self.initializers.append(numpy_helper.from_array(value, name))
                batch = self.main.op("Shape", first, hint=f"{name}/batch", start=1, end=2)
                shape = self.main.op("Concat", batch, self._init(f"{name}/shape", np.array(state.dims[1:], np.int64)),
                                     hint=f"{name}/dims", axis=0)
                initial[name] = self.main.op("Expand", name, shape, hint=f"{name}/start")
        return initial

    def _step(self, body_in: dict, state_in: dict):
        """The body's nodes for one step; returns the next states and the outputs (body names)."""
        values = dict(body_in)
        next_state = {}
        for name in self.order:
            node = self.net.nodes[name]
            if isinstance(node, N.Input):
                continue
            terms = [state_in[f"{src}:out"][0] if (src, name) in self.delayed else values[src]
                     for src in self.net.predecessors(name)]
            x = terms[0]
            for term in terms[1:]:
                x = self.body.op("Add", x, term, hint=f"step/{name}/sum")
            if isinstance(node, N.Neuron):
                values[name], next_state[name] = self._neuron(name, node, x, state_in[name])
            else:
                values[name] = self._synapse(name, node, x)
        for src in sorted({s for s, _ in self.delayed}):
            next_state[f"{src}:out"] = [self.body.op("Identity", values[src], hint=f"step/{src}:out:next")]
        return next_state, {n: values[n] for n in self.net.outputs}

    def _init(self, hint: str, value) -> str:
        """A float32 (or int64 for shapes) initializer of the main graph."""
        name = self.names.fresh(hint)
        if isinstance(value, torch.Tensor):
            value = value.detach().to("cpu", torch.float32).contiguous().numpy()
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def _synapse(self, name: str, node: N.Node, x: str) -> str:
        b, hint = self.body, f"step/{name}"
        if isinstance(node, N.Output):
            return b.op("Identity", x, hint=hint, name=name)
        if isinstance(node, N.Affine):
            args = [x, self._init(f"{name}.weight", node.weight)]
            args += [self._init(f"{name}.bias", node.bias)] if node.bias is not None else []
            return b.op("Gemm", *args, hint=hint, name=name, transB=1)
        if isinstance(node, N.Conv):
            args = [x, self._init(f"{name}.weight", node.weight)]
            args += [self._init(f"{name}.bias", node.bias)] if node.bias is not None else []
            return b.op("Conv", *args, hint=hint, name=name, kernel_shape=list(node.weight.shape[2:]),
                        strides=list(node.stride), pads=list(node.padding) * 2, dilations=list(node.dilation),
                        group=node.groups)
        if isinstance(node, N.Pool):
            window = dict(strides=list(node.stride), pads=list(node.padding) * 2)
            if node.mode == "avg":
                return b.op("AveragePool", x, hint=hint, name=name, kernel_shape=list(node.kernel_size),
                            count_include_pad=1, **window)
            channels = self.shapes[self.net.predecessors(name)[0]][0]
            ones = self._init(f"{name}.ones", torch.ones(channels, 1, *node.kernel_size))
            return b.op("Conv", x, ones, hint=hint, name=name, kernel_shape=list(node.kernel_size),
                        group=channels, **window)
        if isinstance(node, N.Flatten):
            shape = self._init(f"{name}.shape", np.array([0, *self.shapes[name]], dtype=np.int64))
            return b.op("Reshape", x, shape, hint=hint, name=name)
        if isinstance(node, N.Scale):
            return b.op("Mul", x, self._init(f"{name}.scale", node.scale), hint=hint, name=name)
        raise N.NetworkError(f"node {name!r}: a {type(node).__name__} node has no ONNX form")

    def _neuron(self, name: str, node: N.Neuron, x: str, state: list[str]):
        d = self.dynamics[name]
        if d.name not in self.functions:
            self.functions[d.name] = _neuron_function(d, self.opsets)
        params = {p: self._init(f"{name}.{p}", getattr(node, p)) for p in d.inputs if p in N.NEURON_PARAMS}
        spec = node.spec
        values = {"scale": spec.scale, "tau": spec.tau, "v_rest": spec.v_rest, "v_reset": spec.v_reset,
                  "syn_rate": spec.alpha - 1 if "syn_rate" in d.attributes else None}
        attrs = {a: float(values[a]) for a in d.attributes}
        args = [x, *state, *(params[p] for p in d.inputs if p in params)]
        hints = [f"step/{name}"] + [f"step/{name}:{part}:next" for part in (["i", "v"] if d.has_current else ["v"])]
        outs = self.body.op(d.name, *args, hint=hints, domain=DOMAIN, name=name, **attrs)
        return outs[0], outs[1:]


# -- running ---------------------------------------------------------------------------------------

def run(source, x, state: dict | None = None):
    """Run the exported model ``source`` (a path or a ``ModelProto``) on ``x`` with
    onnxruntime's CPU provider; returns ``(out, state)`` as :meth:`NetworkModule.run
    <snnopt.export.runtime.NetworkModule.run>`: ``x`` is ``[T, B, *shape]`` (a tuple for
    several inputs), ``state`` maps a population to ``v`` (``(i, v)`` with a current) and
    ``"<source>:out"`` to a delayed edge's previous output; a missing entry starts at the
    input's default (a population's ``v_init``) where the file has one, else at zeros.

    onnxruntime's graph rewrites are off, so the file runs as written (a fusion may fold a
    constant into weights and change float32 rounding).  Raises :class:`NetworkError` naming the file when it
    is missing, unreadable, damaged or not an snnopt export, and ``ValueError`` for
    inputs or states that do not fit."""
    model, where = _load(source)
    interface = _interface(model, where)
    session = _session(model, where)
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.input}
    feeds = _feeds(interface, dims, x, state)
    try:
        results = session.run(None, feeds)
    except _ort_errors() as exc:
        raise N.NetworkError(f"{where}: onnxruntime failed to run the model: {exc}") from exc
    produced = dict(zip((o.name for o in session.get_outputs()), results))
    outs = [torch.from_numpy(produced[n]) for n in interface["outputs"]]
    final = {}
    for entry in interface["state"]:
        parts = tuple(torch.from_numpy(produced[f]) for f in entry["outputs"])
        final[entry["key"]] = parts if len(parts) > 1 else parts[0]
    return (outs[0] if len(outs) == 1 else tuple(outs)), final


@functools.cache
def _ort_errors() -> tuple:
    """Every error class of onnxruntime's binding."""
    from onnxruntime.capi import onnxruntime_pybind11_state as errors

    return tuple(v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, Exception))


def _load(source) -> tuple[onnx.ModelProto, str]:
    """The model and how to name it in errors."""
    if isinstance(source, onnx.ModelProto):
        return source, "the given ONNX model"
    path = Path(source)
    where = f"ONNX file {str(path)!r}"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise N.NetworkError(f"{where}: no such file") from None
    except OSError as exc:
        raise N.NetworkError(f"{where}: cannot be read: {exc.strerror or exc}") from None
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise N.NetworkError(f"{where}: not a readable ONNX model (damaged or truncated?): {exc}") from None
    return model, where


def _interface(model: onnx.ModelProto, where: str) -> dict:
    """The ``snnopt.interface`` record, checked against the graph."""
    props = {p.key: p.value for p in model.metadata_props}
    if model.producer_name != PRODUCER or INTERFACE_KEY not in props:
        raise N.NetworkError(f"{where}: not an snnopt export (producer {model.producer_name!r}, no "
                             f"{INTERFACE_KEY!r} metadata); write it with snnopt.export.onnx.write")
    try:
        interface = json.loads(props[INTERFACE_KEY])
        declared_in = set(interface["inputs"]) | {g for s in interface["state"] for g in s["inputs"]}
        declared_out = set(interface["outputs"]) | {f for s in interface["state"] for f in s["outputs"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise N.NetworkError(f"{where}: its {INTERFACE_KEY!r} metadata is damaged ({exc}); export the model "
                             "again") from None
    graph_in, graph_out = {v.name for v in model.graph.input}, {v.name for v in model.graph.output}
    if declared_in != graph_in or declared_out != graph_out:
        raise N.NetworkError(f"{where}: its graph inputs/outputs do not match its {INTERFACE_KEY!r} metadata "
                             "(damaged or edited after export); export the model again")
    return interface


def _session(model: onnx.ModelProto, where: str):
    import onnxruntime as ort

    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise N.NetworkError(f"{where}: not a valid ONNX model: {exc}") from None
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3  # errors only: a state default is an initializer named like its input, by design
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except _ort_errors() as exc:
        raise N.NetworkError(f"{where}: onnxruntime cannot load the model: {exc}") from None


def _feeds(interface: dict, dims: dict, x, state: dict | None) -> dict:
    """The session's input arrays: ``x``, then the states (zeros where missing)."""
    names = interface["inputs"]
    inputs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    if len(inputs) != len(names):
        raise ValueError(f"the network has inputs {names}; pass a tuple of {len(names)} tensors")
    feeds = {}
    for name, value in zip(names, inputs):
        value = _array(value)
        if value.ndim != len(dims[name]) or list(value.shape[2:]) != dims[name][2:]:
            raise ValueError(f"input {name!r} must be time-major [T, B, {', '.join(map(str, dims[name][2:]))}]; "
                             f"got shape {list(value.shape)}")
        N.check_steps(name, value.shape)
        feeds[name] = value
    lead = {v.shape[:2] for v in feeds.values()}
    if len(lead) > 1:
        raise ValueError(f"the inputs disagree on [T, B]: {sorted(lead)}")
    batch = next(iter(lead))[1]
    state = dict(state or {})
    for entry in interface["state"]:
        given = state.pop(entry["key"], None)
        parts = [None] * len(entry["inputs"]) if given is None else (
            list(given) if isinstance(given, (tuple, list)) else [given])
        if len(parts) != len(entry["inputs"]):
            raise ValueError(f"state {entry['key']!r} has {len(entry['inputs'])} parts "
                             f"({', '.join(entry['inputs'])}); got {len(parts)}")
        for graph_name, part in zip(entry["inputs"], parts):
            shape = [batch, *dims[graph_name][1:]]
            if part is None and graph_name in entry.get("defaults", ()):
                continue  # the model's default initializer
            part = np.zeros(shape, np.float32) if part is None else _array(part)
            if list(part.shape) != shape:
                raise ValueError(f"state {graph_name!r} must have shape {shape}; got {list(part.shape)}")
            feeds[graph_name] = part
    if state:
        raise ValueError(f"unknown state entries {sorted(state)}; the model carries "
                         f"{[e['key'] for e in interface['state']]}")
    return feeds


def _array(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.to(torch.float32).numpy() if value.dtype != torch.float32 else value.numpy()
    return np.asarray(value, dtype=np.float32)
