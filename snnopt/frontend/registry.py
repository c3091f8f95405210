"""The neuron adapter registry: module type -> how to read it as a :class:`NeuronSpec`.

An adapter maps a neuron module to a spec that reproduces it exactly, and states how
the module is called, so the compiler can replace the call:

``convention``  ``"multi"``: the input is time-major ``[T, B, ...]``;
                ``"cell"``: one step ``[B, ...]`` per call.
``inputs``      picks the input and the initial state out of the call's arguments.
``result``      rebuilds what the module returns from the op's outputs.
``stores_state``  the module keeps its state between calls (snnTorch, SpikingJelly):
                the first call of a forward reads it (``load_state``), later calls
                continue from the previous one, and the last call writes it back
                (``store_state``), exactly as the eager module would.

The default convention is snnopt's own: ``forward(x, state=None) -> out`` or
``(out, state)``, state ``v``, or ``(i, v)`` for kinds with a current.
``to_spec`` raises :class:`UnsupportedNeuron` with a reason when a configuration cannot
be reproduced; the module then stays an eager call and the compile report says why.
Adapters for snnTorch, SpikingJelly and Norse modules are loaded the first time a
module of that library is looked up, so importing snnopt never imports them.
"""

from __future__ import annotations

import importlib
from typing import Callable

from torch import fx, nn

from ..spec import NeuronSpec


class UnsupportedNeuron(Exception):
    """A neuron configuration the compiler cannot reproduce exactly."""


class NeuronAdapter:
    """How the compiler reads one neuron module type; subclass it for other calling conventions."""

    def __init__(self, to_spec: Callable[[nn.Module], NeuronSpec], convention="multi", returns_state=False):
        self._to_spec = to_spec
        self._convention = convention if callable(convention) else (lambda m, c=convention: c)
        self._returns_state = returns_state if callable(returns_state) else (lambda m, r=returns_state: r)

    def spec(self, module: nn.Module) -> NeuronSpec:
        return self._to_spec(module)

    def convention(self, module: nn.Module) -> str:
        return self._convention(module)

    def inputs(self, module: nn.Module, spec: NeuronSpec, node: fx.Node, b) -> tuple:
        """``(x, state_given, v0, i0)`` as graph values (``None``: zeros) for a call node.
        ``b`` is the pass's :class:`~snnopt.passes.infra.Builder` (for any node it must add)."""
        x = node.args[0] if node.args else node.kwargs.get("x", node.kwargs.get("input"))
        state = node.args[1] if len(node.args) > 1 else node.kwargs.get("state")
        if state is None:
            return x, False, None, None
        if not spec.has_current:
            if isinstance(state, (tuple, list)):
                raise UnsupportedNeuron("its state argument is a tuple but the neuron keeps one state tensor")
            return x, True, state, None
        i0, v0 = b.unpack(state, 2, node)
        return x, True, v0, i0

    def result(self, module: nn.Module, spec: NeuronSpec, out, v, i, node: fx.Node, b) -> fx.Node:
        """The module's return value built from the op's ``out``, final ``v`` and ``i``."""
        if self.convention(module) == "multi" and not self._returns_state(module):
            return out
        state = b.tuple((i, v), node) if spec.has_current else v
        return b.tuple((out, state), node)

    def stores_state(self, module: nn.Module) -> bool:
        return False

    def load_state(self, module: nn.Module, x_step):
        """``(v, i)`` kept on the module for a step input ``x_step`` (runtime)."""
        raise TypeError(f"{type(self).__name__} says {type(module).__name__} stores its state but does not load it")

    def store_state(self, module: nn.Module, v, i) -> None:
        """Keep the final ``(v, i)`` on the module (runtime)."""
        raise TypeError(f"{type(self).__name__} says {type(module).__name__} stores its state but does not store it")


_REGISTRY: dict[type, NeuronAdapter] = {}
_LAZY = {"snntorch": ".snntorch", "spikingjelly": ".spikingjelly", "norse": ".norse"}


def register_neuron(cls: type, to_spec: Callable[[nn.Module], NeuronSpec] | None = None, *, convention="multi",
                    returns_state=False, adapter: NeuronAdapter | None = None) -> None:
    """Teach the compiler a neuron module type.

    Either ``to_spec`` (with ``convention`` and ``returns_state``, constants or functions
    of the module, for modules called like snnopt's own) or a full ``adapter``.
    """
    if (to_spec is None) == (adapter is None):
        raise TypeError("register_neuron takes either to_spec or adapter")
    _REGISTRY[cls] = adapter or NeuronAdapter(to_spec, convention, returns_state)


def _load_library_adapters(module: nn.Module) -> None:
    root = type(module).__module__.split(".")[0]
    if root in _LAZY:
        importlib.import_module(_LAZY.pop(root), __package__)


def load_adapters(model: nn.Module) -> None:
    """Load the adapters (layer leaves, state resets) of the libraries ``model`` uses."""
    for m in model.modules():
        _load_library_adapters(m)


def adapter_for(module: nn.Module) -> NeuronAdapter | None:
    _load_library_adapters(module)
    for cls in type(module).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    return None


def is_neuron(module: nn.Module) -> bool:
    return adapter_for(module) is not None


STATE_RESETS: list[tuple[object, str]] = []


def register_state_reset(owner, name: str) -> None:
    """``owner.name(net)`` clears the state neurons keep (``snntorch.utils.reset``,
    ``Leaky.init_leaky``, SpikingJelly's ``functional.reset_net``): called inside a traced
    forward it becomes a graph node that makes the same call at run time."""
    STATE_RESETS.append((owner, name))


_LAYER_LEAVES: list[Callable[[nn.Module], bool]] = []


def register_layer_leaf(predicate: Callable[[nn.Module], bool]) -> None:
    """Trace modules for which ``predicate`` holds as single calls (a library's wrappers
    of torch layers, so the passes see the layer itself)."""
    _LAYER_LEAVES.append(predicate)


def is_layer_leaf(module: nn.Module) -> bool:
    _load_library_adapters(module)
    return any(p(module) for p in _LAYER_LEAVES)


_TIME_MAJOR_LAYERS: list[Callable[[nn.Module], bool]] = []


def register_time_major_layer(predicate: Callable[[nn.Module], bool]) -> None:
    """Calls of layer leaves for which ``predicate`` holds take a time-major ``[T, B, ...]``
    input and apply the torch layer over the ``T x B`` samples (a library's multi-step
    wrapper); passes that read a layer's layout (a BatchNorm's channel dim) shift it by one."""
    _TIME_MAJOR_LAYERS.append(predicate)


def time_major_layer(module: nn.Module) -> bool:
    """Whether a call of ``module`` takes ``[T, B, ...]`` where its torch layer takes ``[B, ...]``."""
    _load_library_adapters(module)
    return any(p(module) for p in _TIME_MAJOR_LAYERS)


_PLANE_POOLS: set[type] = {nn.AvgPool2d}


def register_plane_pooling(cls: type) -> None:
    """Let the ``fast_pooling`` pass take calls of ``cls``: an ``nn.AvgPool2d`` subclass whose
    call pools every plane of its input exactly as ``nn.AvgPool2d`` does (a library's
    multi-step wrapper, over any leading dims)."""
    _PLANE_POOLS.add(cls)


def pools_planes(module: nn.Module) -> bool:
    """Whether a call of ``module`` is ``nn.AvgPool2d``'s on every plane of its input."""
    _load_library_adapters(module)
    return type(module) in _PLANE_POOLS


def _refuse_recurrent(module):
    raise UnsupportedNeuron("it feeds its spikes back through a recurrent weight at every step; it runs eagerly "
                            "(exact, uncompiled)")


def _register_builtin():
    from ..nn.neurons import Recurrent, _Neuron

    register_neuron(_Neuron, lambda m: m.spec(), convention=lambda m: "multi" if m.multi_step else "cell",
                    returns_state=lambda m: m.return_state)
    register_neuron(Recurrent, _refuse_recurrent)


_register_builtin()
