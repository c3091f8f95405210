"""torch.fx tracing specialised on the example inputs' shapes.

Every traced value carries a fake tensor (``node.meta["val"]``), computed as the graph is
recorded.  Shape queries (``x.shape``, ``x.size()``, ``len(x)``, ``x.dim()``, iteration
over dim 0) return concrete values, so Python loops such as
``for t in range(x.shape[0])`` unroll.  Neuron modules (anything in the adapter
registry) are leaves.  Data-dependent control flow still fails to trace, with the node
where tracing stopped.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math

import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.fx.experimental.symbolic_shapes import ShapeEnv
from torch.fx.node import has_side_effect, map_aggregate

from .registry import STATE_RESETS, is_layer_leaf, is_neuron, load_adapters

log = logging.getLogger(__name__)


class TraceFailure(RuntimeError):
    """Tracing failed; ``last_node`` names the last node recorded before the failure."""

    def __init__(self, message: str, last_node: str | None, graph: fx.Graph | None = None):
        super().__init__(message)
        self.last_node = last_node
        self.graph = graph


def _meta(value):
    return value.node.meta.get("val") if isinstance(value, fx.Proxy) else value


class ShapedProxy(fx.Proxy):
    """A proxy that answers shape questions from its fake value."""

    def _tensor(self) -> torch.Tensor:
        val = self.node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            cause = upstream_failure(self.node)
            raise fx.proxy.TraceError(f"the shape of `{self.node.name}` is not known while tracing ("
                                      + (cause or "its value could not be computed on fake tensors") + ")")
        self.tracer.shape_reads += 1
        return val

    @property
    def shape(self):
        return self._tensor().shape

    def size(self, dim=None):
        shape = self._tensor().shape
        return shape if dim is None else shape[dim]

    def dim(self):
        return self._tensor().dim()

    @property
    def ndim(self):
        return self._tensor().dim()

    def numel(self):
        return self._tensor().numel()

    @property
    def dtype(self):
        return self._tensor().dtype

    @property
    def device(self):
        return self._tensor().device

    def __len__(self):
        val = self.node.meta.get("val")
        if isinstance(val, (tuple, list)):
            return len(val)
        return self._tensor().shape[0]

    def __iter__(self):
        return iter([self[i] for i in range(len(self))])


@contextlib.contextmanager
def preserved_buffers(root: nn.Module):
    """Undo in-place updates of ``root``'s buffers (BatchNorm's running statistics and
    batch count change even when a module only runs to propagate shapes).  Only buffers
    whose version moved are written back, so autograd graphs that saved the others (an
    eager forward awaiting its backward) stay valid."""
    with unset_fake_temporarily():
        values = [(b, b._version, b.detach().clone()) for b in root.buffers() if b.numel()]
    try:
        yield
    finally:
        with unset_fake_temporarily(), torch.no_grad():
            for b, version, value in values:
                if b._version != version:
                    b.copy_(value)


@contextlib.contextmanager
def preserved_state(root: nn.Module, drop_new: bool = True):
    """Undo what running ``root`` writes into its modules: attributes and buffers it
    replaces (snnTorch and SpikingJelly neurons keep their membrane on the module) and
    buffers it updates in place; attributes it adds go too unless not ``drop_new`` (the
    tensor constants torch.fx keeps on the root it traces)."""
    saved = []
    for m in root.modules():
        dicts = [m.__dict__] + [d for d in (m.__dict__.get("_buffers"), m.__dict__.get("_memories"))
                                if isinstance(d, dict)]
        saved.append([(d, dict(d)) for d in dicts])
    try:
        with preserved_buffers(root):
            yield
    finally:
        for entries in saved:
            for d, copy in entries:
                if drop_new:
                    d.clear()
                d.update(copy)


def neuron_fake_value(module: nn.Module, args, kwargs, fake_mode: FakeTensorMode):
    """Run a neuron on zeros of its inputs' shapes (foreign neurons branch on their own
    buffers, which fake tensors cannot answer) and return fake copies of its results;
    the state the neuron writes into itself is undone."""
    def real(a):
        return torch.zeros(a.shape, dtype=a.dtype, device=a.device) if isinstance(a, torch.Tensor) else a
    with unset_fake_temporarily(), torch.no_grad(), preserved_state(module):
        result = module(*map_aggregate(args, real), **map_aggregate(kwargs, real))
    return map_aggregate(result, lambda r: fake_mode.from_tensor(r, static_shapes=True)
                         if isinstance(r, torch.Tensor) else r)


FAKE_LOG = logging.getLogger("torch._subclasses.fake_tensor")


@contextlib.contextmanager
def quiet(logger: logging.Logger):
    """Silence ``logger`` (fake tensors log every failing meta kernel as an error; the
    tracer reports the failure itself where it matters)."""
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


def _what(node: fx.Node) -> str:
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"`{node.name}` ({node.op} {target})"


def upstream_failure(node: fx.Node, own: bool = True) -> str | None:
    """Why the value of ``node`` (``own``) or of the nodes it is computed from is unknown:
    the message of the nearest node whose fake evaluation failed (a layer given an input
    of the wrong shape, say), or None."""
    seen, frontier = set(), [node] if own else list(node.all_input_nodes)
    while frontier:
        n = frontier.pop(0)
        if n in seen:
            continue
        seen.add(n)
        if "fake_error" in n.meta:
            return n.meta["fake_error"]
        if n.meta.get("val") is None:
            frontier.extend(n.all_input_nodes)
    return None


class SNNTracer(fx.Tracer):
    """fx tracer with neuron leaves and fake-tensor shape propagation."""

    def __init__(self, example_inputs):
        super().__init__(autowrap_modules=(math,))
        self.fake_mode = FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv())
        self.fake_inputs = [self.fake_mode.from_tensor(x, static_shapes=True) if isinstance(x, torch.Tensor) else x
                            for x in example_inputs]
        self._placeholder_index = 0
        self.shape_reads = 0
        self.last_node = None
        self._evaluating = False

    def call_module(self, m, forward, args, kwargs):
        if self._evaluating:  # computing a fake value: run the module, record nothing
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if self._evaluating:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_neuron(m) or is_layer_leaf(m) or super().is_leaf_module(m, qualname)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return ShapedProxy(node, self)

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        node.meta["origin"] = "trace"
        return node

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        node = proxy.node
        node.meta["val"] = self._fake_value(node)
        self.last_node = node.name
        return proxy

    def _fake_value(self, node: fx.Node):
        if node.op == "placeholder":
            i = self._placeholder_index
            if str(node.target).startswith("*"):  # forward(self, *inputs): the remaining inputs, as a tuple
                self._placeholder_index = len(self.fake_inputs)
                return tuple(self.fake_inputs[i:])
            self._placeholder_index += 1
            return self.fake_inputs[i] if i < len(self.fake_inputs) else None
        args = map_aggregate(node.args, lambda a: self._value_of(a) if isinstance(a, fx.Node) else a)
        kwargs = map_aggregate(node.kwargs, lambda a: self._value_of(a) if isinstance(a, fx.Node) else a)
        self._evaluating = True
        try:
            if node.op == "call_module" and is_neuron(self.root.get_submodule(node.target)):
                return neuron_fake_value(self.root.get_submodule(node.target), args, kwargs, self.fake_mode)
            with self.fake_mode, quiet(FAKE_LOG):
                if node.op == "call_function":
                    return node.target(*args, **kwargs)
                if node.op == "call_method":
                    return getattr(args[0], node.target)(*args[1:], **kwargs)
                if node.op == "call_module":
                    return self.root.get_submodule(node.target)(*args, **kwargs)
                if node.op == "get_attr":
                    return self._value_of(node)
        except Exception as exc:  # the value stays unknown; shape queries on it then fail clearly
            log.debug("no fake value for %s: %s", node.name, exc)
            node.meta["fake_error"] = f"{_what(node)} fails on its traced input: {str(exc).splitlines()[0]}"
            if node.op == "call_module" and is_neuron(self.root.get_submodule(node.target)):
                cause = upstream_failure(node, own=False)
                if cause:
                    raise fx.proxy.TraceError(cause) from exc
                if isinstance(exc, ValueError):
                    raise ValueError(f"neuron module `{node.target}`: {exc}") from exc
                raise fx.proxy.TraceError(f"neuron module `{node.target}` failed on its traced input: {exc}") from exc
        finally:
            self._evaluating = False
        return None

    def _value_of(self, node: fx.Node):
        """The fake value of ``node``; constants the tracer stored as attributes get one on demand."""
        if "val" not in node.meta and node.op == "get_attr":
            value = self._fetch_attr(node.target)
            node.meta["val"] = self.fake_mode.from_tensor(value, static_shapes=True) \
                if isinstance(value, torch.Tensor) else value
        return node.meta.get("val")

    def _fetch_attr(self, target: str):
        obj = self.root
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj


def _recording(tracer: SNNTracer, fn):
    """A stand-in for a state-reset function that records the call as a graph node."""
    def record(net, *args, **kwargs):
        def reset_state():
            return fn(net, *args, **kwargs)
        reset_state.__name__ = f"reset_state_{getattr(fn, '__name__', 'fn')}"
        has_side_effect(reset_state)
        node = tracer.create_node("call_function", reset_state, (), {})
        node.meta.update(snn_state_reset=True, snn_side_effect=True)
        return fn(net, *args, **kwargs)  # what it returns (e.g. the zeroed state) is traced as usual
    return record


@contextlib.contextmanager
def _recording_state_resets(tracer: SNNTracer):
    originals = []
    for owner, name in STATE_RESETS:
        originals.append((owner, name, getattr(owner, name)))
        setattr(owner, name, _recording(tracer, getattr(owner, name)))
    try:
        yield
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)


def _positional(model: nn.Module) -> list[inspect.Parameter]:
    return [p for p in inspect.signature(model.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def complete_inputs(model: nn.Module, inputs: tuple) -> tuple:
    """``inputs`` followed by the defaults of the positional ``forward`` arguments they
    leave out (``forward(self, x, state=None)`` called with ``x`` only); a left-out
    argument without a default is a ValueError naming it."""
    missing = _positional(model)[len(inputs):]
    for p in missing:
        if p.default is p.empty:
            raise ValueError(f"{type(model).__name__}.forward takes `{p.name}`, which the inputs do not give "
                             f"({len(inputs)} given); pass it in example_inputs and in every call")
    return tuple(inputs) + tuple(p.default for p in missing)


def concrete_arguments(model: nn.Module, inputs: tuple) -> dict:
    """The ``forward`` arguments the trace specialises on: those given as ``None``, so that
    ``if state is None:`` takes its branch while tracing (the compiled graph asserts the
    same value at run time, and the compiled module keys its programs on it)."""
    return {p.name: None for p, x in zip(_positional(model), inputs) if x is None}


def trace(model: nn.Module, example_inputs) -> tuple[fx.GraphModule, bool]:
    """Trace ``model`` on ``example_inputs``; returns the GraphModule (sharing the model's
    submodules and parameters) and whether the graph is specialised on the input shapes."""
    load_adapters(model)  # before tracing: their state resets must be recorded
    example_inputs = complete_inputs(model, tuple(example_inputs))
    tracer = SNNTracer(example_inputs)
    concrete = concrete_arguments(model, example_inputs)
    try:
        # what modules keep from the traced call (a proxy as a dropout mask) is undone
        with _recording_state_resets(tracer), preserved_state(model, drop_new=False):
            graph = tracer.trace(model, concrete_args=concrete or None)
    except ValueError as exc:
        if not isinstance(exc, fx.proxy.TraceError):  # snnopt's own input errors pass through
            raise
        where = f" after node `{tracer.last_node}`" if tracer.last_node else ""
        raise TraceFailure(f"cannot trace {type(model).__name__}{where}: {exc}", tracer.last_node,
                           tracer.graph if hasattr(tracer, "graph") else None) from exc
    except Exception as exc:
        where = f" after node `{tracer.last_node}`" if tracer.last_node else ""
        raise TraceFailure(f"cannot trace {type(model).__name__}{where}: {exc}", tracer.last_node,
                           tracer.graph if hasattr(tracer, "graph") else None) from exc
    name = type(model).__name__
    failed = next((n for n in graph.nodes if "fake_error" in n.meta), None)
    if failed is not None:  # every pass evaluates the graph on fake tensors: it would fail there
        raise TraceFailure(f"cannot trace {name}: {failed.meta['fake_error']}", failed.name, graph)
    gm = fx.GraphModule(tracer.root, graph, name)
    return gm, tracer.shape_reads > 0
