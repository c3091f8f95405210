"""SpikingJelly (2.x, ``activation_based``) neurons: ``LIFNode``, ``IFNode``, ``ParametricLIFNode``.

SpikingJelly charges, fires with ``H(v - v_threshold)`` (``H(0) = 1``) and resets in the
same step; the state ``v`` is post-reset.  With ``r = 0 if v_reset is None else v_reset``:

    LIFNode, decay_input     h = v + (x - (v - r)) / tau   ->  beta = 1 - 1/tau, scale = 1/tau, v_rest = r
    LIFNode, not decay_input h = v - (v - r) / tau + x     ->  beta = 1 - 1/tau, scale = 1, v_rest = r
    ParametricLIFNode        the same with 1/tau = sigmoid(w), learnable through w
    IFNode                   h = v + x
    reset: v_reset None -> subtract v_threshold; else -> zero to v_reset; detach_reset as set

The membrane is kept on the module (``functional.reset_net`` clears it, to ``v_reset``
or 0); the compiled model reads and writes it as the module would.  ``LIFNode`` uses the
spec's ``integration="tau"``, SpikingJelly's order of float operations (the division by
``tau`` included), and ``IFNode``'s ``v + x`` is the decay form's own, so their forward equals
SpikingJelly's bit for bit; ``ParametricLIFNode`` multiplies by ``sigmoid(w)`` where snnopt
scales by its decay tensors, so its membranes agree to float rounding.
Surrogates: ``Sigmoid(alpha)``, ``ATan(alpha)``,
``PiecewiseQuadratic(alpha)`` (a triangle of half-width ``1/alpha``).  Stays eager, with
the reason: ``store_v_seq=True``, a mixed-precision setting, other surrogates.

Its ``layer.*`` wrappers of torch layers are traced as single calls, so the passes see
a Linear / Conv2d / pooling layer, per step (``step_mode="s"``) or over ``[T, B, ...]``.
"""

from __future__ import annotations

import torch
from spikingjelly.activation_based import base, functional, layer, neuron
from spikingjelly.activation_based import surrogate as sj_surrogate
from torch import nn

from .. import surrogate as sg
from ..spec import NeuronSpec
from .registry import (NeuronAdapter, UnsupportedNeuron, register_layer_leaf, register_neuron, register_plane_pooling,
                       register_state_reset, register_time_major_layer)


def surrogate_of(fn) -> sg.Surrogate:
    kind = type(fn).__name__
    if type(fn).__module__ != sj_surrogate.__name__ or not getattr(fn, "spiking", True) or \
            kind not in ("Sigmoid", "ATan", "PiecewiseQuadratic") or not isinstance(fn.alpha, (int, float)):
        raise UnsupportedNeuron(f"its surrogate_function {kind} is not one snnopt reproduces "
                                "(supported: surrogate.Sigmoid, ATan, PiecewiseQuadratic with a float alpha)")
    alpha = float(fn.alpha)
    return {"Sigmoid": sg.sigmoid(alpha), "ATan": sg.atan(alpha), "PiecewiseQuadratic": sg.triangle(1 / alpha)}[kind]


def _plif_beta(module):
    return 1 - module.w.sigmoid()


def _plif_gain(module):
    return module.w.sigmoid()


def to_spec(m) -> NeuronSpec:
    if m.store_v_seq:
        raise UnsupportedNeuron("store_v_seq=True keeps the membrane sequence on the module; set it to False "
                                "to compile")
    if getattr(m, "_neuron_precision", None) is not None:
        raise UnsupportedNeuron("a neuron precision setting (reduced-precision state) is not reproduced")
    reset_value = 0.0 if m.v_reset is None else float(m.v_reset)
    common = dict(threshold=float(m.v_threshold), reset="subtract" if m.v_reset is None else "zero",
                  v_reset=reset_value, reset_timing="same", fire=">=", detach_reset=bool(m.detach_reset),
                  surrogate=surrogate_of(m.surrogate_function))
    if isinstance(m, neuron.ParametricLIFNode):
        attrs = (("beta", _plif_beta),) + ((("input_scale", _plif_gain),) if m.decay_input else ())
        return NeuronSpec(kind="lif", beta=None, v_rest=reset_value, learnable=frozenset({"beta"}),
                          param_attrs=attrs, **common)
    if isinstance(m, neuron.LIFNode):
        tau = float(m.tau)
        return NeuronSpec(kind="lif", beta=1 - 1 / tau, scale=1 / tau if m.decay_input else 1.0, v_rest=reset_value,
                          integration="tau", tau=tau, **common)
    return NeuronSpec(kind="if", beta=1.0, **common)


class SpikingJellyAdapter(NeuronAdapter):
    """``node(x)`` returns spikes; ``step_mode`` "s" takes ``[B, ...]``, "m" ``[T, B, ...]``;
    the membrane ``v`` lives in the module's memories."""

    def __init__(self):
        super().__init__(to_spec, convention=lambda m: "cell" if m.step_mode == "s" else "multi")

    def inputs(self, module, spec, node, b):
        return (node.args[0] if node.args else node.kwargs["x"]), False, None, None

    def result(self, module, spec, out, v, i, node, b):
        return out

    def stores_state(self, module):
        return True

    def load_state(self, module, x_step):
        v = module._memories["v"]
        if isinstance(v, torch.Tensor) and v.shape == x_step.shape:
            return v.to(x_step.dtype), None
        fill = v if not isinstance(v, torch.Tensor) else (module.v_reset if module.v_reset is not None else 0.0)
        return torch.full_like(x_step, float(fill)), None

    def store_state(self, module, v, i):
        module._memories["v"] = v


class _Refused(NeuronAdapter):
    def __init__(self):
        def refuse(m):
            raise UnsupportedNeuron(f"spikingjelly {type(m).__name__} has no snnopt adapter; describe it with "
                                    f"snnopt.register_neuron({type(m).__name__}, to_spec) (see "
                                    f"snnopt.frontend.registry)")
        super().__init__(refuse, convention=lambda m: "cell" if getattr(m, "step_mode", "s") == "s" else "multi")


_adapter = SpikingJellyAdapter()
for _cls in (neuron.LIFNode, neuron.IFNode, neuron.ParametricLIFNode):
    register_neuron(_cls, adapter=_adapter)
register_neuron(neuron.BaseNode, adapter=_Refused())
register_state_reset(functional, "reset_net")

_TORCH_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.AvgPool2d, nn.MaxPool2d,
                 nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout)
register_layer_leaf(lambda m: type(m).__module__.startswith(layer.__name__) and isinstance(m, _TORCH_LAYERS)
                    and not isinstance(m, base.MemoryModule))
register_plane_pooling(layer.AvgPool2d)  # step_mode "s": AvgPool2d's call; "m": the same over T x B planes
register_time_major_layer(lambda m: type(m).__module__.startswith(layer.__name__)
                          and getattr(m, "step_mode", "s") == "m")
