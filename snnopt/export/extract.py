"""`to_network`: read a PyTorch spiking model as a :class:`~snnopt.export.network.Network`.

The model is traced by the compiler's own front half (trace, ``canonicalize_neurons``,
``reroll_time``), so every model ``snnopt.compile`` accepts in multi-step form exports:
snnopt's modules, per-step loops, and the snnTorch / SpikingJelly / Norse neurons the
frontends read exactly.  The graph is then interpreted symbolically: each value is a
sum of network nodes' outputs with a batchless shape and a layout (``[T, B, ...]``, or
``[T*B, ...]`` between a ``flatten(0, 1)`` and its ``unflatten``), and

===========================================  ========================================
``nn.Linear``                                ``Affine``
``nn.Conv1d`` / ``nn.Conv2d`` (zero padding) ``Conv``
``nn.AvgPool2d`` (``divisor_override`` 1:    ``Pool`` avg (sum)
sum pooling)
``nn.Flatten``, ``flatten(x, d)`` on features ``Flatten`` (dims of the batchless shape)
``x * c``, ``x / c`` (c a number or a        ``Scale`` (``1 / c`` for a division: equal
per-feature tensor)                          to ``x / c`` up to rounding unless ``c`` is
                                             a power of two)
``a + b``                                    two edges into the consumer (fan-in sums)
``nn.BatchNorm*d`` in eval mode              folded into the Conv / Linear before it
``nn.Dropout``, ``nn.Identity``              nothing (export describes inference)
a neuron (``neuron_scan``)                   ``Neuron`` (spec + full-shape parameters)
``snnopt.nn.Recurrent``                      ``Neuron`` + ``Affine`` on a feedback cycle
===========================================  ========================================

A neuron in Norse's Euler form (``integration="euler"``) or SpikingJelly's divided form
(``integration="tau"``) keeps its form in the network: ONNX, the event graph and
:class:`~snnopt.export.runtime.NetworkModule` compute it in the library's order of float
operations; NIR states the decay form (see :mod:`snnopt.export.nir`).

Anything else raises :class:`~snnopt.export.network.NetworkError` naming the graph node
and the module or function, with what the model could use instead.  The model is read as
it computes in ``eval()``; BatchNorm or Dropout modules left in training mode are named
in a logged warning.

**Initial state.** A neuron's initial membrane becomes the population's ``v_init``
(``None`` when it is zero, the rest state): a state made in the model from constants
(``torch.zeros(B, N)``, ``x.new_zeros(...)``, ``torch.full_like(x, c)``) or, for a neuron
that keeps its state on the module (snnTorch ``init_hidden``, SpikingJelly), the state the
adapter's ``load_state`` gives for a batch no earlier run left on the module: SpikingJelly
starts at ``v_reset``, snnTorch at 0.  The initial state must be the same for every
sample; an initial synaptic current must be zero.  Any other initial state (computed from
the input, or a state left on the module by an earlier run) is refused.
"""

from __future__ import annotations

import logging
import math
import operator
import os
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.utils._pytree import tree_leaves

from .. import kernels
from ..passes.canonicalize import load_state
from ..nn.neurons import Recurrent
from . import network as N

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Seq:
    """A time-major value: the sum of the outputs of ``terms``."""

    terms: tuple
    shape: tuple
    flat: bool = False  # [T*B, ...] instead of [T, B, ...]


@dataclass(frozen=True)
class _Scan:
    name: str  # the population's network node
    node: fx.Node


@dataclass(frozen=True)
class _State:
    node: fx.Node


@dataclass(frozen=True)
class _Folded:
    node: fx.Node


@dataclass(frozen=True)
class _Indexed:
    """One step (or slice) of a spiking value: only a state loader may use it."""

    node: fx.Node


@dataclass(frozen=True)
class _Loaded:
    """An initial state filled with ``fill`` (``*_like`` of a spiking value), or part ``index``
    of what ``load_state`` reads from neuron ``module``."""

    fill: float | None = None
    module: nn.Module | None = None
    index: int | None = None


_LIKE = (torch.full_like, torch.zeros_like, torch.empty_like, torch.ones_like)
_NEW = ("new_zeros", "new_ones", "new_full", "new_empty")


def _shape_only(graph: fx.Graph) -> set:
    """Nodes whose values are used only for their shape (to make a zero state, or by a
    state loader): they are not part of the network."""
    found: set = set()
    for node in reversed(graph.nodes):
        if node.users and all(_uses_shape_only(u, node, found) for u in node.users):
            found.add(node)
    return found


def _uses_shape_only(user: fx.Node, node: fx.Node, found: set) -> bool:
    if user in found:
        return True
    if user.op == "call_function" and user.target in _LIKE or user.op == "call_method" and user.target in _NEW:
        return user.args[0] is node and node not in user.args[1:]
    if user.op == "call_function" and user.target is load_state:  # load_state(module, step): sized by the step
        return user.args[1] is node
    return False


def to_network(model: nn.Module | N.Network | str | os.PathLike, example_inputs=None) -> N.Network:
    """The network ``model`` computes, read from a trace at the shapes of ``example_inputs``
    (time-major ``[T, B, ...]``; only the feature shape matters).  A ``CompiledSNN`` is read
    through its source model, a ``NetworkModule`` gives its network directly, a path to a
    ``.nir`` file its network (:func:`snnopt.export.nir.read`), and a ``Network`` is
    returned as it is."""
    from ..compiler import CompiledSNN
    from .runtime import NetworkModule

    if isinstance(model, N.Network):
        return model
    if isinstance(model, (str, os.PathLike)):
        return _read_file(model)
    if isinstance(model, CompiledSNN):
        model = model.source
    if isinstance(model, NetworkModule):
        return model.network()
    inputs = _example(example_inputs)
    gm = _canonical_graph(model, inputs)
    return _Reader(gm, model).read()


def _read_file(path) -> N.Network:
    if str(path).lower().endswith(".nir"):
        from . import nir

        return nir.read(path)
    raise N.NetworkError(f"{str(path)!r}: a network is read from a .nir file; pass a model (with example_inputs) "
                         "for other sources")


def _example(example_inputs) -> tuple:
    if example_inputs is None:
        raise N.NetworkError("pass example_inputs=(x,) with a time-major input [T, B, ...] so the model can be traced")
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    out = []
    for x in inputs:
        if not isinstance(x, torch.Tensor) or x.dim() < 3:
            raise N.NetworkError(f"example inputs must be time-major tensors [T, B, features...]; got "
                                 f"{list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        out.append(torch.zeros((3, 1, *x.shape[2:]), dtype=x.dtype))  # 3 steps: per-step loops fold
    return tuple(out)


def _canonical_graph(model: nn.Module, inputs) -> fx.GraphModule:
    from ..frontend.tracer import TraceFailure, trace
    from ..passes import PassManager, canonicalize_neurons, dce, reroll_time, verify

    _note_training_modules(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            gm, _ = trace(model, inputs)
            return PassManager([canonicalize_neurons, reroll_time, dce], verifier=verify)(gm, inputs)
    except TraceFailure as exc:
        raise N.NetworkError(f"{exc}{_input_hint(model, inputs[0].shape[2:])}") from exc
    finally:
        model.train(was_training)


_MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def _note_training_modules(model: nn.Module) -> None:
    """Log a warning naming the submodules in training mode that behave otherwise in
    ``eval()``: the network is exported as the model computes in ``eval()`` (running
    statistics folded, dropout off), not as a call in training mode would."""
    names = [name or type(model).__name__ for name, m in model.named_modules()
             if m.training and isinstance(m, _MODE_DEPENDENT)]
    if names:
        log.warning("%s in training mode: exported as in eval() (BatchNorm with its running statistics, no "
                    "dropout); call model.eval() before exporting to say that is meant",
                    ", ".join(f"`{n}`" for n in names))


def _input_hint(model: nn.Module, features: tuple) -> str:
    """What the model's first Linear or Conv takes, when the example's features ``[T, B, *features]`` do not fit it."""
    layer = next(((n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))),
                 None)
    if layer is None:
        return ""
    name, m = layer
    if isinstance(m, nn.Linear):
        if features and m.in_features in (features[-1], math.prod(features)):
            return ""
        takes = f"{m.in_features} features"
    else:
        rank = 2 if isinstance(m, nn.Conv1d) else 3
        if len(features) == rank and features[0] == m.in_channels:
            return ""
        takes = f"{m.in_channels} channels ({'C, L' if rank == 2 else 'C, H, W'})"
    return (f"; the example input has features {tuple(features)} per step while the model's first layer {name!r} "
            f"({type(m).__name__}) takes {takes}: check example_inputs (or --input-shape)")


def _where(node: fx.Node) -> str:
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"graph node {node.name!r} ({node.op} {target})"


def _is_scan(node) -> bool:
    """Whether ``node`` is a neuron call (``neuron_scan``)."""
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target is kernels.neuron_scan


def _earlier_steps(scan: fx.Node) -> set:
    """The neuron calls whose state ``scan`` continues, step after step back (a per-step loop's earlier steps)."""
    steps = set()
    state = scan.args[1]
    while isinstance(state, fx.Node) and state.target is operator.getitem and _is_scan(state.args[0]):
        steps.add(state.args[0])
        state = state.args[0].args[1]
    return steps


def _path_back(start: fx.Node, targets: set) -> list | None:
    """The graph nodes from one of ``targets`` to ``start`` along the data flow, or None when ``start``
    does not depend on any of them."""
    parent, queue = {start: None}, [start]
    for node in queue:
        if node in targets:
            path = []
            while node is not None:
                path.append(node)
                node = parent[node]
            return path
        for arg in node.all_input_nodes:
            if arg not in parent:
                parent[arg] = node
                queue.append(arg)
    return None


def _refuse_feedback(graph: fx.Graph) -> None:
    """Raise :class:`NetworkError` for a neuron called step by step whose input depends on its own
    output at an earlier step: a recurrence written by hand in ``forward``, which stays a per-step
    loop; :class:`~snnopt.nn.Recurrent` is the form that exports (as a feedback cycle)."""
    for node in graph.nodes:
        earlier = _earlier_steps(node) if _is_scan(node) and isinstance(node.args[0], fx.Node) else set()
        path = _path_back(node.args[0], earlier) if earlier else None
        if path is not None:
            raise N.NetworkError(_feedback_message(node, path))


def _feedback_message(scan: fx.Node, path: list) -> str:
    """The refusal of neuron call ``scan`` fed back through ``path``: the modules on it, and the exportable form."""
    module = scan.meta.get("snn_module", scan.name)
    layers = [f"`{n.target}`" for n in path if n.op == "call_module"]
    via = ", ".join(layers) if layers else "graph nodes " + ", ".join(n.name for n in path)
    val = scan.args[0].meta.get("val")
    n = math.prod(val.shape[2:]) if isinstance(val, torch.Tensor) and val.dim() > 2 else "n"
    return (f"{_where(scan)}: neuron `{module}` is called step by step with its own output of the previous step fed "
            f"back into its input (through {via}): "
            f"a recurrence written by hand in forward has no exportable form. Write the population as "
            f"snnopt.nn.Recurrent(neuron, nn.Linear({n}, {n})) — a multi-step neuron such as snnopt.nn.LIF(...) and "
            f"the recurrent weight, called once on the whole sequence [T, B, {n}] — which exports as a feedback "
            "cycle carrying the previous step's spikes")


def _linear_on_rows(node: fx.Node, m: nn.Linear, x: _Seq) -> str:
    """Why the Linear ``m`` at ``node``, applied to features of more than one dim, does not export, and the fix."""
    flatten = "nn.Flatten() (or x.flatten(1))" if x.flat else "nn.Flatten(start_dim=2) (or x.flatten(2))"
    layout = "[T*B, " if x.flat else "[T, B, "
    return (f"{_where(node)}: nn.Linear `{node.target}` ({m.in_features} -> {m.out_features}) gets features "
            f"{x.shape} per sample and acts on the last dim only; the export formats hold a Linear over one feature "
            f"dim (Affine on {layout}F]). Flatten the features first with {flatten} on the {layout}...] value and "
            f"give the Linear in_features={math.prod(x.shape)} (a different layer than one shared across the "
            f"{math.prod(x.shape[:-1])} positions: retrain it)")


class _Reader:
    def __init__(self, gm: fx.GraphModule, model: nn.Module):
        self.gm, self.model = gm, model
        self.net = N.Network()
        self.env: dict[fx.Node, object] = {}
        self.T = self.B = None
        self.dtype = torch.get_default_dtype()

    def read(self) -> N.Network:
        _refuse_feedback(self.gm.graph)
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        shape_only = _shape_only(self.gm.graph)
        for node in self.gm.graph.nodes:
            if node in shape_only and node.op != "placeholder":
                self.env[node] = None
                continue
            try:
                self.env[node] = self._visit(node, len(placeholders))
            except N.NetworkError:
                raise
            except (TypeError, ValueError, AttributeError, IndexError) as exc:
                raise N.NetworkError(f"{_where(node)}: cannot be exported: {exc}") from exc
        self.net.validate()
        return self.net

    # -- values -------------------------------------------------------------------------
    def _value(self, arg, user: fx.Node):
        if isinstance(arg, fx.Node):
            value = self.env[arg]
            if isinstance(value, _Folded):
                raise N.NetworkError(f"{_where(user)} uses {arg.name!r}, the output of a layer whose BatchNorm was "
                                     "folded into it; a layer feeding a BatchNorm may feed nothing else")
            if isinstance(value, _Indexed):
                raise N.NetworkError(f"{_where(user)} uses {arg.name!r}, an index into a spiking value (a per-step "
                                     "loop the compiler could not fold into multi-step form, or a slice); export "
                                     "takes multi-step models")
            if isinstance(value, _State):
                raise N.NetworkError(f"{_where(user)} uses the final state of neuron {value.node.name!r}; the "
                                     "exported network carries spikes between layers, not neuron states")
            return value
        if isinstance(arg, (tuple, list)):
            return type(arg)(self._value(a, user) for a in arg)
        return arg

    def _seq(self, arg, user: fx.Node) -> _Seq:
        value = self._value(arg, user)
        if not isinstance(value, _Seq):
            raise N.NetworkError(f"{_where(user)}: expected a spiking tensor, got {type(value).__name__} {value!r}")
        return value

    def _node(self, name: str, node: N.Node, source: _Seq) -> _Seq:
        shape = node.out_shape(name, source.shape)
        name = self.net.add(name, node, source.terms)
        return _Seq((name,), shape, source.flat)

    # -- dispatch -----------------------------------------------------------------------
    def _visit(self, node: fx.Node, n_inputs: int):
        if node.op == "placeholder":
            return self._placeholder(node, n_inputs)
        if node.op == "get_attr":
            return _attr(self.gm, node.target)
        if node.op == "output":
            return self._output(node)
        if node.op == "call_module":
            return self._module(node, self.gm.get_submodule(node.target))
        if node.op == "call_function" and node.target is kernels.neuron_scan:
            return self._neuron(node)
        if node.meta.get("snn_side_effect"):
            return None  # store_state: the neuron's state kept on the module
        if node.op == "call_function" and node.target is load_state:
            return _Loaded(module=self.env[node.args[0]])
        if node.op == "call_function" and node.target in _LIKE:
            return self._like(node)
        target = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
        handler = getattr(self, f"_op_{target}", None)
        if handler is None:
            return self._constant(node)
        return handler(node, *(self._value(a, node) for a in node.args),
                       **{k: self._value(v, node) for k, v in node.kwargs.items()})

    def _constant(self, node: fx.Node):
        """Ops on constants only (shapes, parameter expressions) are evaluated; anything
        touching the spiking values has no network primitive."""
        args = self._value(node.args, node)
        kwargs = {k: self._value(v, node) for k, v in node.kwargs.items()}
        if any(isinstance(a, (_Seq, _Scan)) for a in tree_leaves((args, kwargs))):
            raise N.NetworkError(f"{_where(node)} acts on a spiking value and has no exportable form; exportable: "
                                 "Linear, Conv1d/2d, AvgPool2d, Flatten, BatchNorm (eval, after a Conv/Linear), "
                                 "scaling by a constant, sums, neurons")
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return node.target(*args, **kwargs)

    def _like(self, node):
        """``zeros_like(x)``, ``ones_like(x)``, ``full_like(x, c)`` of a spiking value: a state
        filled with one number (``empty_like`` is refused: its values are undefined)."""
        fill = {torch.zeros_like: 0.0, torch.ones_like: 1.0, torch.empty_like: None}.get(
            node.target, node.args[1] if len(node.args) > 1 else node.kwargs.get("fill_value"))
        if fill is None:
            raise N.NetworkError(f"{_where(node)} makes a state with undefined values (empty_like); start the "
                                 "neuron from torch.zeros_like or torch.full_like")
        return _Loaded(fill=float(fill))

    def _op_new_zeros(self, node, x, *size, **kwargs):
        """``x.new_zeros(size)`` (likewise ``new_ones``, ``new_full``): a constant of the model's dtype."""
        if not (x is None or isinstance(x, _Seq)):
            return self._constant(node)
        make = {"new_zeros": torch.zeros, "new_ones": torch.ones, "new_full": torch.full}.get(node.target)
        if make is None:
            raise N.NetworkError(f"{_where(node)} makes a state with undefined values ({node.target}); start the "
                                 "neuron from zeros or a constant")
        kwargs = {k: v for k, v in kwargs.items() if k in ("size", "fill_value")}
        return make(*size, **kwargs, dtype=self.dtype)

    _op_new_ones = _op_new_full = _op_new_empty = _op_new_zeros

    def _placeholder(self, node, n_inputs):
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise N.NetworkError(f"model input {node.name!r} is not a tensor; export takes tensor inputs only")
        self.T, self.B, self.dtype = int(val.shape[0]), int(val.shape[1]), val.dtype
        shape = tuple(int(s) for s in val.shape[2:])
        name = self.net.add("input" if n_inputs == 1 else f"input_{node.name}", N.Input(shape))
        return _Seq((name,), shape)

    def _output(self, node):
        outs = [self._value(a, node) for a in tree_leaves(node.args)]
        for k, value in enumerate(outs):
            if not isinstance(value, _Seq):
                raise N.NetworkError(f"model output {k} is {type(value).__name__}, not a spiking tensor; export "
                                     "describes networks whose outputs are spike or membrane sequences")
            if value.flat:
                raise N.NetworkError(f"model output {k} has time and batch merged ([T*B, ...]); unflatten it")
            self.net.add("output" if len(outs) == 1 else f"output_{k}", N.Output(), value.terms)
        return None

    # -- modules ------------------------------------------------------------------------
    def _module(self, node: fx.Node, m: nn.Module):
        if isinstance(m, Recurrent):
            return self._recurrent(node, m)
        x = self._seq(node.args[0], node)
        if len(node.args) > 1 or node.kwargs:
            raise N.NetworkError(f"{_where(node)}: {type(m).__name__} called with extra arguments")
        name = node.target.replace(".", "_")
        if isinstance(m, (nn.Dropout, nn.Identity)) or type(m).__name__ in ("Dropout", "Dropout2d", "Identity"):
            return x
        if isinstance(m, nn.Linear):
            if len(x.shape) > 1:
                raise N.NetworkError(_linear_on_rows(node, m, x))
            return self._node(name, N.Affine(m.weight.detach().clone(), _clone(m.bias)), x)
        multi = getattr(m, "step_mode", "s") == "m"  # SpikingJelly's multi-step layer wrappers
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            self._per_sample(node, m, x, multi)
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise N.NetworkError(f"{_where(node)}: {type(m).__name__} with padding={m.padding!r}, "
                                     f"padding_mode={m.padding_mode!r}; export takes numeric zero padding")
            return self._node(name, N.Conv(m.weight.detach().clone(), _clone(m.bias), m.stride, m.padding,
                                           m.dilation, m.groups), x)
        if isinstance(m, nn.AvgPool2d):
            self._per_sample(node, m, x, multi)
            if m.ceil_mode or (not m.count_include_pad and _any(m.padding)) or m.divisor_override not in (None, 1):
                raise N.NetworkError(f"{_where(node)}: AvgPool2d with ceil_mode, count_include_pad=False or a "
                                     "divisor_override other than 1 has no exportable form")
            return self._node(name, N.Pool("sum" if m.divisor_override == 1 else "avg", m.kernel_size, m.stride,
                                           m.padding), x)
        if isinstance(m, nn.Flatten):  # its dims count one leading batch dim, also in a multi-step wrapper
            if x.flat or multi:
                return self._flatten(node, x, m.start_dim, m.end_dim, 1, name)
            if 0 <= m.start_dim < 2:
                raise N.NetworkError(f"{_where(node)}: nn.Flatten(start_dim={m.start_dim}) on a time-major value "
                                     "[T, B, ...] flattens the batch; flatten features with nn.Flatten(2) or "
                                     "x.flatten(2), or merge time and batch first")
            return self._flatten(node, x, m.start_dim, m.end_dim, 2, name)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return self._batch_norm(node, m, x)
        if isinstance(m, nn.MaxPool2d):
            raise N.NetworkError(f"{_where(node)}: max pooling has no primitive in the export formats; use "
                                 "nn.AvgPool2d (or AvgPool2d(divisor_override=1) for sum pooling)")
        raise N.NetworkError(f"{_where(node)}: {type(m).__name__} has no exportable form")

    def _per_sample(self, node, m, x: _Seq, multi: bool):
        if not (x.flat or multi):
            raise N.NetworkError(f"{_where(node)}: {type(m).__name__} on a time-major value [T, B, ...]; merge time "
                                 "and batch around it (x.flatten(0, 1) ... .unflatten(0, (T, B)))")

    def _batch_norm(self, node, m, x: _Seq):
        if m.training and not m.track_running_stats or m.running_mean is None:
            raise N.NetworkError(f"{_where(node)}: BatchNorm without running statistics cannot be exported")
        producer = x.terms[0] if len(x.terms) == 1 else None
        layer = self.net.nodes.get(producer)
        if not isinstance(layer, (N.Conv, N.Affine)) or any(s == producer for s, _ in self.net.edges):
            raise N.NetworkError(f"{_where(node)}: a BatchNorm is exported folded into the Conv or Linear right "
                                 "before it, used by nothing else")
        inv = torch.rsqrt(m.running_var.detach() + m.eps)
        gain = inv * (m.weight.detach() if m.affine else 1.0)
        shift = (m.bias.detach() if m.affine else 0.0) - m.running_mean.detach() * gain
        bias = layer.bias if layer.bias is not None else torch.zeros(layer.weight.shape[0])
        layer.weight = layer.weight * gain.reshape(-1, *([1] * (layer.weight.dim() - 1)))
        layer.bias = bias * gain + shift
        self.env[node.args[0]] = _Folded(node.args[0])
        return x

    def _recurrent(self, node, m: Recurrent):
        x = self._seq(node.args[0], node)
        if len(node.args) > 1 or node.kwargs:
            raise N.NetworkError(f"{_where(node)}: Recurrent called with an initial state; export describes the "
                                 "network from rest")
        if m.return_state:
            raise N.NetworkError(f"{_where(node)}: Recurrent(return_state=True) returns its state; export takes "
                                 "spike outputs")
        if m.recurrent.bias is not None:
            self._fold_bias(node, x, m.recurrent.bias.detach())
        base = node.target.replace(".", "_")
        spec = m.neuron.spec()
        params = {n: _tensor(getattr(m.neuron, n, None), x.shape, self.dtype) for n in N.NEURON_PARAMS}
        if spec.kind == "if":
            params["beta"] = None
        neuron = N.Neuron(spec, x.shape, **params)
        name = self.net.add(base, neuron, x.terms)
        rec = self.net.add(f"{base}_recurrent", N.Affine(m.recurrent.weight.detach().clone()), [name])
        self.net.edges.append((rec, name))
        return _Seq((name,), x.shape)

    def _fold_bias(self, node, x: _Seq, bias: torch.Tensor) -> None:
        """Move the recurrent Linear's bias into the layer feeding the population: the model
        adds it from the first step on (``recurrent(0) = bias``), while a delayed edge
        delivers zeros at the first step."""
        layer = self.net.nodes.get(x.terms[0]) if len(x.terms) == 1 else None
        if not isinstance(layer, N.Affine) or any(s == x.terms[0] for s, _ in self.net.edges):
            raise N.NetworkError(f"{_where(node)}: a recurrent Linear with a bias is exported by moving the bias into "
                                 "the Linear right before the Recurrent (used by nothing else); give the recurrent "
                                 "Linear bias=False or feed the Recurrent from one Linear")
        layer.bias = bias.clone() if layer.bias is None else layer.bias + bias
        self.env[node.args[0]] = _Folded(node.args[0])

    # -- neurons ------------------------------------------------------------------------
    def _neuron(self, node: fx.Node):
        x = self._seq(node.args[0], node)
        if x.flat:
            raise N.NetworkError(f"{_where(node)}: a neuron's input has time and batch merged")
        spec = node.meta["snn"]
        v_init = self._initial_state(node, node.args[1], x.shape)
        if self._initial_state(node, node.args[2], x.shape) is not None:
            raise N.NetworkError(f"{_where(node)}: the neuron starts from a non-zero synaptic current; the exported "
                                 "network starts a current at zero (give other states to the simulators)")
        params = {}
        for name, arg in zip(("beta", "alpha", "threshold"), node.args[3:6]):
            value = self._value(arg, node)
            params[name] = None if value is None else _tensor(value, x.shape, self.dtype)
        if spec.kind == "if":
            params["beta"] = None
        module = node.meta.get("snn_module", node.name)
        name = self.net.add(str(module).replace(".", "_"), N.Neuron(spec, x.shape, **params, v_init=v_init),
                            x.terms)
        return _Scan(name, node)

    def _initial_state(self, node: fx.Node, arg, shape: tuple) -> torch.Tensor | None:
        """The batchless initial state ``arg`` of neuron ``node``, ``None`` when it is zero
        (see the module docstring)."""
        value = self.env[arg] if isinstance(arg, fx.Node) else arg
        if isinstance(value, _Loaded):
            value = self._loaded(node, value, shape)
        if value is None:
            return None
        if not isinstance(value, torch.Tensor):
            raise N.NetworkError(f"{_where(node)}: the neuron starts from a state computed in the model from its "
                                 "input; the exported network starts from a fixed state (give other states to the "
                                 "simulators)")
        value = value.detach().to(self.dtype)
        try:
            rows = value.expand(*value.shape[:max(value.dim() - len(shape), 0)], *shape).reshape(-1, *shape)
        except RuntimeError:
            raise N.NetworkError(f"{_where(node)}: an initial state of shape {list(value.shape)} does not fit the "
                                 f"population's [B, {', '.join(map(str, shape))}]") from None
        if not bool((rows == rows[:1]).all()):
            raise N.NetworkError(f"{_where(node)}: the initial state differs between samples; the exported network "
                                 "starts every sample from one state")
        return rows[0].clone() if bool(rows.any()) else None

    def _loaded(self, node: fx.Node, value: _Loaded, shape: tuple) -> torch.Tensor | None:
        """The state of ``value`` at the first step: the fill, or ``load_state`` probed at
        batch sizes 1 and 2 (a state an earlier run left on the module fits at most one of
        them, so the two agree only on the module's reset state)."""
        if value.module is None:
            return torch.full(shape, value.fill, dtype=self.dtype)
        probes = [load_state(value.module, torch.zeros((b, *shape), dtype=self.dtype))[value.index] for b in (1, 2)]
        if any(p is None for p in probes):
            return None
        rows = torch.cat([p.detach().reshape(-1, *shape) for p in probes])
        if not bool((rows == rows[:1]).all()):
            raise N.NetworkError(f"{_where(node)}: neuron module {type(value.module).__name__} keeps a state from an "
                                 "earlier run; reset it before exporting (SpikingJelly functional.reset_net(model), "
                                 "snnTorch utils.reset(model))")
        return rows[0]

    def _op_getitem(self, node, value, index):
        if isinstance(value, _Scan):
            if index == 0:
                return _Seq((value.name,), self.net.nodes[value.name].shape)
            if index == 3:
                raise N.NetworkError(f"{_where(node)}: the model records the membrane trace of neuron "
                                     f"{value.node.name!r}; export takes spike outputs (or an LI readout's membrane)")
            return _State(value.node)
        if isinstance(value, _Seq):
            return _Indexed(node)
        if isinstance(value, _Loaded):
            return _Loaded(value.fill, value.module, index)
        return value[index]

    # -- functions and methods on spiking values -----------------------------------------
    def _op_flatten(self, node, x, start_dim=0, end_dim=-1):
        if not isinstance(x, _Seq):
            return self._constant(node)
        rank = len(x.shape) + (1 if x.flat else 2)
        start, end = (d + rank if d < 0 else d for d in (start_dim, end_dim))
        if not x.flat and (start, end) == (0, 1):
            return _Seq(x.terms, x.shape, flat=True)
        return self._flatten(node, x, start_dim, end_dim, 1 if x.flat else 2)

    def _flatten(self, node, x: _Seq, start_dim, end_dim, lead: int, name: str = "flatten"):
        rank = len(x.shape) + lead
        start, end = (d + rank if d < 0 else d for d in (start_dim, end_dim))
        if start < lead:
            raise N.NetworkError(f"{_where(node)}: flattening dims {start_dim}..{end_dim} mixes time/batch with "
                                 "features")
        if start == end:
            return x
        return self._node(name, N.Flatten(start - lead, end - lead), x)

    def _op_unflatten(self, node, x, dim, sizes):
        if not isinstance(x, _Seq):
            return self._constant(node)
        if x.flat and dim == 0 and tuple(sizes) == (self.T, self.B):
            return _Seq(x.terms, x.shape, flat=False)
        raise N.NetworkError(f"{_where(node)}: unflatten({dim}, {sizes}) of a spiking value; export takes "
                             "unflatten(0, (T, B)) after a flatten(0, 1)")

    def _op_view(self, node, x, *shape):
        if not isinstance(x, _Seq):
            return self._constant(node)
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)) else shape
        lead = (self.T * self.B,) if x.flat else (self.T, self.B)
        if shape.count(-1) == 1:  # the inferred size
            known = -math.prod(shape)
            if known and math.prod(lead + x.shape) % known == 0:
                shape = tuple(math.prod(lead + x.shape) // known if d == -1 else d for d in shape)
        for flat, head in ((False, (self.T, self.B)), (True, (self.T * self.B,))):
            if tuple(shape[:len(head)]) == head and math.prod(shape[len(head):]) == math.prod(x.shape):
                rest = tuple(shape[len(head):])
                moved = _Seq(x.terms, x.shape, flat)
                if rest == x.shape:
                    return moved
                if len(rest) == 1:
                    return self._flatten(node, moved, len(head), -1, len(head))
        raise N.NetworkError(f"{_where(node)}: reshape of a spiking value {lead + x.shape} to {shape} has no "
                             "exportable form")

    _op_reshape = _op_view

    def _op_contiguous(self, node, x, *args):
        return x if isinstance(x, _Seq) else self._constant(node)

    def _op_mul(self, node, a, b):
        if isinstance(a, _Seq) and isinstance(b, _Seq):
            raise N.NetworkError(f"{_where(node)}: a product of two spiking values has no exportable form")
        x, c = (a, b) if isinstance(a, _Seq) else (b, a)
        if not isinstance(x, _Seq):
            return self._constant(node)
        return self._node("scale", N.Scale(_tensor(c, x.shape, self.dtype)), x)

    _op_mul_ = _op_mul

    def _op_truediv(self, node, a, b):
        if isinstance(b, _Seq):
            raise N.NetworkError(f"{_where(node)}: dividing by a spiking value has no exportable form")
        if not isinstance(a, _Seq):
            return self._constant(node)
        return self._node("scale", N.Scale(1 / _tensor(b, a.shape, self.dtype)), a)

    _op_div = _op_truediv

    def _op_add(self, node, a, b, alpha=1):
        if isinstance(a, _Seq) and isinstance(b, _Seq) and alpha == 1:
            if a.shape != b.shape or a.flat != b.flat:
                raise N.NetworkError(f"{_where(node)}: adding values of shapes {a.shape} and {b.shape}")
            return _Seq(a.terms + b.terms, a.shape, a.flat)
        if isinstance(a, _Seq) or isinstance(b, _Seq):
            raise N.NetworkError(f"{_where(node)}: adding a constant to a spiking value has no exportable form; "
                                 "give the Linear or Conv before it a bias")
        return self._constant(node)

    _op_iadd = _op_add
    _op_add_ = _op_add


def _attr(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj.detach() if isinstance(obj, torch.Tensor) else obj


def _tensor(value, shape: tuple, dtype):
    if value is None:
        return None
    t = torch.as_tensor(value).detach()
    if t.dim() > len(shape) or tuple(torch.broadcast_shapes(t.shape, shape)) != tuple(shape):
        raise N.NetworkError(f"a parameter of shape {tuple(t.shape)} does not broadcast to the features {shape}")
    return t.to(dtype).expand(shape).clone()


def _clone(t):
    return None if t is None else t.detach().clone()


def _any(v) -> bool:
    return any(v) if isinstance(v, (tuple, list)) else bool(v)
