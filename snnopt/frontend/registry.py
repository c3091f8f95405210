"""The neuron adapter registry: module type -> how to read it as a :class:`NeuronSpec`.

An adapter maps a neuron module to a spec that reproduces it exactly, and states the
module's calling convention so the compiler can replace the call:

``multi``  ``forward(x [T, B, ...], state=None) -> out`` (or ``(out, state)`` when the
           module's ``return_state`` is set)
``cell``   ``forward(x_t [B, ...], state=None) -> (out_t, state)``

State is ``v``, or ``(i, v)`` for ``cuba_lif``.  ``to_spec`` raises
:class:`UnsupportedNeuron` with a reason when a configuration cannot be reproduced;
the module then stays an eager call and the compile report says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..spec import NeuronSpec


class UnsupportedNeuron(Exception):
    """A neuron configuration the compiler cannot reproduce exactly."""


@dataclass(frozen=True)
class NeuronAdapter:
    to_spec: Callable[[nn.Module], NeuronSpec]
    convention: Callable[[nn.Module], str]
    returns_state: Callable[[nn.Module], bool]


_REGISTRY: dict[type, NeuronAdapter] = {}


def register_neuron(cls: type, to_spec: Callable[[nn.Module], NeuronSpec], *, convention="multi",
                    returns_state=False) -> None:
    """Teach the compiler a neuron module type.

    ``convention`` and ``returns_state`` may be constants or functions of the module.
    """
    conv = convention if callable(convention) else (lambda m, c=convention: c)
    rets = returns_state if callable(returns_state) else (lambda m, r=returns_state: r)
    _REGISTRY[cls] = NeuronAdapter(to_spec, conv, rets)


def adapter_for(module: nn.Module) -> NeuronAdapter | None:
    for cls in type(module).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    return None


def is_neuron(module: nn.Module) -> bool:
    return adapter_for(module) is not None


def _register_builtin():
    from ..nn.neurons import _Neuron

    register_neuron(_Neuron, lambda m: m.spec(), convention=lambda m: "multi" if m.multi_step else "cell",
                    returns_state=lambda m: m.return_state)


_register_builtin()
