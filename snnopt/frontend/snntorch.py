"""snnTorch neurons: ``Leaky`` and ``Synaptic``.

snnTorch 0.9+/1.x semantics (``reset_delay=True``, the default): the module keeps the
pre-reset membrane ``mem``; the reset of a spike is applied at the next call, computed
from ``mem`` and detached:

    r = H(mem - threshold)                               (no gradient)
    Leaky     mem = beta.clamp(0, 1) * mem + x - r * threshold           (subtract)
              mem = beta.clamp(0, 1) * (mem * (1 - r)) + x               (zero)
    Synaptic  syn = alpha.clamp(0, 1) * syn + x
              mem = beta.clamp(0, 1) * mem + syn - r * threshold         (subtract)
              mem = (beta.clamp(0, 1) * mem + syn) * (1 - r)             (zero)
    spk = H(mem - threshold)  with H(0) = 0

That is ``reset_timing="next"``, ``detach_reset=True`` (and ``reset_discards_input`` for
Synaptic's zero reset).  ``reset_delay=False`` also resets in the same call, by
``spk - r`` with the spike *not* detached:

    subtract  mem = mem - (spk - r) * threshold
    zero      mem = mem - (spk - r) * mem

which is ``reset_timing="same_pending"`` with ``detach_reset=False`` (``r`` stays detached).
The clamps are part of the graph, so learnable beta / alpha get snnTorch's gradient.

A neuron called without ``mem`` continues from the state it keeps (``init_hidden``
or not); a ``mem`` whose shape differs from the input counts as zeros, like
``init_leaky()``'s empty tensor.  The compiled model writes the final state back, so
``snntorch.utils.reset`` and ``detach_hidden`` work as before.

Surrogates: ``atan(alpha)``, ``fast_sigmoid(slope)``, ``sigmoid(slope)``,
``triangular(threshold)`` and ``straight_through_estimator()``.  Not reproduced (the
module stays eager, with the reason): ``inhibition``, ``state_quant``,
``graded_spikes_factor != 1``, ``surrogate_disable``, other surrogates, and the
recurrent ``RLeaky`` / ``RSynaptic``.
"""

from __future__ import annotations

import inspect

import snntorch
import snntorch.utils
import torch
from snntorch._neurons.neurons import SpikingNeuron

from .. import surrogate as sg
from ..spec import NeuronSpec
from .registry import NeuronAdapter, UnsupportedNeuron, register_neuron, register_state_reset

# snnTorch surrogate factory -> (snnopt surrogate, its parameter's name in the closure)
_SURROGATES = {"atan": ("atan", "alpha"), "fast_sigmoid": ("fast_sigmoid", "slope"), "sigmoid": ("sigmoid", "slope"),
               "triangular": ("snntorch_triangular", "threshold"),
               "straight_through_estimator": ("straight_through", None)}


def surrogate_of(fn) -> sg.Surrogate:
    """The snnopt surrogate equal to an snnTorch ``spike_grad`` closure."""
    factory = getattr(fn, "__qualname__", "").split(".<locals>")[0]
    if getattr(fn, "__module__", None) != "snntorch.surrogate" or factory not in _SURROGATES:
        raise UnsupportedNeuron(f"its spike_grad {getattr(fn, '__qualname__', fn)!r} is not one snnopt reproduces "
                                f"(supported: {', '.join('snntorch.surrogate.' + k for k in _SURROGATES)})")
    name, key = _SURROGATES[factory]
    param = inspect.getclosurevars(fn).nonlocals.get(key, sg.DEFAULT_PARAM[name]) if key else 1.0
    return sg.Surrogate(name, float(param))


def _clamped(attr):
    def param(module):
        return getattr(module, attr).clamp(0, 1)
    param.__name__ = f"snntorch_{attr}_clamped"
    return param


def _scalar(module, attr, clamp=False):
    """A float for a constant scalar, None for a tensor the graph reads from the module."""
    t = getattr(module, attr)
    if isinstance(t, torch.nn.Parameter) or t.numel() != 1:
        return None
    value = float(t)
    return min(max(value, 0.0), 1.0) if clamp else value


def to_spec(m: SpikingNeuron) -> NeuronSpec:
    if m.inhibition:
        raise UnsupportedNeuron("inhibition (winner-take-all firing) couples neurons within a step")
    if m.state_quant:
        raise UnsupportedNeuron("state_quant quantizes the membrane inside the recurrence")
    if m.surrogate_disable:
        raise UnsupportedNeuron("surrogate_disable=True has no surrogate gradient to reproduce")
    g = m.graded_spikes_factor
    if isinstance(g, torch.nn.Parameter) or g.numel() != 1 or float(g) != 1.0:
        raise UnsupportedNeuron("graded_spikes_factor other than a constant 1 scales the spikes")
    synaptic = isinstance(m, snntorch.Synaptic)
    reset = m.reset_mechanism
    attrs = [("beta", _clamped("beta")), ("threshold", "threshold")]
    if synaptic:
        attrs.append(("alpha", _clamped("alpha")))
    learnable = {n for n in ("beta", "alpha", "threshold") if isinstance(getattr(m, n, None), torch.nn.Parameter)}
    beta, threshold = _scalar(m, "beta", True), _scalar(m, "threshold")
    alpha = _scalar(m, "alpha", True) if synaptic else None
    values = {"beta": beta, "alpha": alpha, "threshold": threshold}
    return NeuronSpec(kind="cuba_lif" if synaptic else "lif", beta=beta, alpha=alpha, threshold=threshold,
                      reset=reset, reset_timing="next" if m.reset_delay else "same_pending",
                      detach_reset=bool(m.reset_delay), reset_discards_input=synaptic and reset == "zero",
                      fire=">", surrogate=surrogate_of(m.spike_grad), learnable=frozenset(learnable),
                      param_attrs=tuple((n, a) for n, a in attrs if values[n] is None))


class SnnTorchAdapter(NeuronAdapter):
    """``Leaky(x, mem=None)``, ``Synaptic(x, syn=None, mem=None)``: one step per call;
    returns ``spk`` (``init_hidden`` without ``output``), else ``(spk, mem)`` or
    ``(spk, syn, mem)``."""

    def __init__(self):
        super().__init__(to_spec, convention="cell")

    def inputs(self, module, spec, node, b):
        names = ("input_", "syn", "mem") if spec.has_current else ("input_", "mem")
        values = dict(zip(names, node.args))
        values.update({k: v for k, v in node.kwargs.items() if k in names})
        x = values["input_"]
        states = [values.get(n) for n in names[1:]]
        if all(s is None for s in states):
            return x, False, None, None
        if any(s is None for s in states):
            raise UnsupportedNeuron("it is given only part of its state (syn without mem or the reverse)")
        shape = x.meta["val"].shape
        # snnTorch replaces a state of another shape (init_leaky()'s empty tensor) by zeros
        zeroed = [s if s.meta.get("val") is None or s.meta["val"].shape == shape else None for s in states]
        return (x, True, zeroed[-1], zeroed[0]) if spec.has_current else (x, True, zeroed[0], None)

    def result(self, module, spec, out, v, i, node, b):
        if module.init_hidden and not module.output:
            return out
        return b.tuple((out, i, v) if spec.has_current else (out, v), node)

    def stores_state(self, module):
        return True

    def load_state(self, module, x_step):
        def kept(t):
            return t if t.shape == x_step.shape else torch.zeros_like(x_step)
        return kept(module.mem), (kept(module.syn) if isinstance(module, snntorch.Synaptic) else None)

    def store_state(self, module, v, i):
        module.mem = v
        if isinstance(module, snntorch.Synaptic):
            module.syn = i


class _Refused(NeuronAdapter):
    def __init__(self, reason):
        def refuse(m):
            raise UnsupportedNeuron(reason(m))
        super().__init__(refuse, convention="cell")


_adapter = SnnTorchAdapter()
register_neuron(snntorch.Leaky, adapter=_adapter)
register_neuron(snntorch.Synaptic, adapter=_adapter)
for _cls in (snntorch.RLeaky, snntorch.RSynaptic):
    register_neuron(_cls, adapter=_Refused(lambda m: f"{type(m).__name__} feeds its spikes back through a recurrent "
                                                     "weight inside the step; it runs eagerly (exact, uncompiled)"))
register_neuron(SpikingNeuron, adapter=_Refused(
    lambda m: f"snntorch.{type(m).__name__} has no snnopt adapter; describe it with "
              f"snnopt.register_neuron({type(m).__name__}, to_spec) (see snnopt.frontend.registry)"))
register_state_reset(snntorch.utils, "reset")


def _state_resets(cls: type) -> list[str]:
    """The methods of ``cls`` that zero the state the neuron keeps (``init_leaky``,
    ``init_alpha``, ``reset_mem``, ...), eager neurons' included: a compiled model must
    make those calls at run time, or an eager neuron would start from the last call's state."""
    return [name for name, fn in vars(cls).items()
            if (name.startswith("init_") or name == "reset_mem") and inspect.isfunction(fn)]


for _cls in dict.fromkeys(c for c in vars(snntorch).values() if inspect.isclass(c) and issubclass(c, SpikingNeuron)):
    for _name in _state_resets(_cls):
        register_state_reset(_cls, _name)
