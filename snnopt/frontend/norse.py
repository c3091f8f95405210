"""Norse neurons: ``LIFCell``, ``LIFBoxCell``, ``LICell``, ``LIBoxCell``, ``IAFCell`` and the
multi-step ``LIF``, ``LIFBox``, ``LI``, ``IAF``.

Norse integrates one Euler step of ``dt`` (``k = dt * tau_mem_inv``):

    LIF      I = i + x;  h = v + k * ((v_leak - v) + I);  i' = I - dt * tau_syn_inv * I
             z = H(h - v_th) (H(0) = 0);  v' = (1 - z) h + z v_reset      (z not detached)
    LIFBox   h = v + k * (x + v_leak - v), the same reset (``reset_value`` or ``reset_subtract``)
    LI       LIF's current and membrane, no spike: the output is h
    LIBox    h = v + k * ((v_leak - v) + x)
    IAF      h = v + x;  z = H(h - v_th);  v' = (1 - z) h + z v_reset

so ``beta = 1 - k``, ``scale = k``, ``v_rest = v_leak``, ``alpha = 1 - dt * tau_syn_inv`` with
the current decayed after use (``current_decay="after"``), same-step reset.  The state
is the module's NamedTuple (``LIFFeedForwardState(v, i)``, ...), passed explicitly; a call
without one starts from Norse's initial state (``v = v_leak`` or ``v_reset``, ``i = 0``).
Norse's ``super`` threshold has the gradient ``1 / (|u| + 1)^2`` whatever its ``alpha``
(``fast_sigmoid(1)``).  The leaky kinds use the spec's ``integration="euler"``, Norse's
order of float operations (``k`` and ``dt * tau_syn_inv`` rounded in the parameters' dtype
as Norse rounds them), so the forward equals Norse's bit for bit.  Stays eager,
with the reason: other threshold methods, per-neuron parameter tensors, sparse inputs.
"""

from __future__ import annotations

import torch
from norse.torch.functional.iaf import IAFFeedForwardState
from norse.torch.functional.leaky_integrator import LIState
from norse.torch.functional.leaky_integrator_box import LIBoxState
from norse.torch.functional.lif import LIFFeedForwardState
from norse.torch.functional.lif_box import LIFBoxFeedForwardState
from norse.torch.functional.reset import reset_subtract, reset_value
from norse.torch.module import iaf, leaky_integrator, leaky_integrator_box, lif, lif_box
from norse.torch.module.snn import SNN, SNNCell

from .. import surrogate as sg
from ..spec import NeuronSpec
from .registry import NeuronAdapter, UnsupportedNeuron, register_neuron


def _param(p, name) -> torch.Tensor:
    """Parameter ``name`` of the record ``p`` as a constant scalar tensor.  Norse's defaults
    may carry ``requires_grad`` (``IAFParameters.v_reset``) without being trained; an
    ``nn.Parameter`` in the record is taken as trained and left eager."""
    t = getattr(p, name)
    if isinstance(t, torch.nn.Parameter):
        raise UnsupportedNeuron(f"its parameter {name} is an nn.Parameter (trained); snnopt reproduces constant "
                                "Norse parameters")
    t = torch.as_tensor(t).detach()
    if t.numel() != 1:
        raise UnsupportedNeuron(f"its parameter {name} is a per-neuron tensor; only scalars are reproduced")
    return t


def _float(p, name) -> float:
    return float(_param(p, name))


def _spiking(p) -> dict:
    if p.method != "super":
        raise UnsupportedNeuron(f"its threshold method {p.method!r} is not reproduced (supported: 'super')")
    return dict(threshold=_float(p, "v_th"), v_reset=_float(p, "v_reset"), fire=">", reset_timing="same",
                detach_reset=False, surrogate=sg.fast_sigmoid(1.0))


def _leak(m) -> dict:
    k = float(m.dt * _param(m.p, "tau_mem_inv"))  # rounded in the parameter's dtype, as Norse computes it
    return dict(beta=1 - k, scale=k, v_rest=_float(m.p, "v_leak"), integration="euler")


def _current(m) -> dict:
    return dict(alpha=1 + float(-m.dt * _param(m.p, "tau_syn_inv")), current_decay="after")


def _box_reset(p) -> str:
    method = getattr(p, "reset_method", reset_value)
    if method is reset_value:
        return "zero"
    if method is reset_subtract:
        return "subtract"
    raise UnsupportedNeuron(f"its reset_method {getattr(method, '__name__', method)} is not reproduced")


_KINDS = {  # module -> (spec builder, state NamedTuple, initial membrane attribute)
    lif.LIFCell: (lambda m: NeuronSpec(kind="cuba_lif", reset="zero", **_spiking(m.p), **_leak(m), **_current(m)),
                  LIFFeedForwardState, "v_leak"),
    lif_box.LIFBoxCell: (lambda m: NeuronSpec(kind="lif", reset=_box_reset(m.p), **_spiking(m.p), **_leak(m)),
                         LIFBoxFeedForwardState, "v_leak"),
    leaky_integrator.LICell: (lambda m: NeuronSpec(kind="cuba_li", reset="none", **_leak(m), **_current(m)),
                              LIState, "v_leak"),
    leaky_integrator_box.LIBoxCell: (lambda m: NeuronSpec(kind="li", reset="none", **_leak(m)), LIBoxState, "v_leak"),
    iaf.IAFCell: (lambda m: NeuronSpec(kind="if", beta=1.0, reset="zero", **_spiking(m.p)), IAFFeedForwardState,
                  "v_reset"),
}
_MULTI = {lif.LIF: lif.LIFCell, leaky_integrator.LI: leaky_integrator.LICell, iaf.IAF: iaf.IAFCell}
if hasattr(lif_box, "LIFBox"):
    _MULTI[lif_box.LIFBox] = lif_box.LIFBoxCell


def _kind(m):
    for cls in type(m).__mro__:
        if cls in _KINDS:
            return _KINDS[cls]
        if cls in _MULTI:
            return _KINDS[_MULTI[cls]]
    raise UnsupportedNeuron(f"norse {type(m).__name__} has no snnopt adapter")


class NorseAdapter(NeuronAdapter):
    """``cell(x, state=None) -> (out, state)``; the multi-step modules take ``[T, B, ...]``
    and return ``(out_seq, final_state)``; states are Norse NamedTuples ``(v[, i])``."""

    def __init__(self):
        super().__init__(lambda m: _kind(m)[0](m), convention=lambda m: "multi" if isinstance(m, SNN) else "cell")

    def inputs(self, module, spec, node, b):
        if getattr(module, "record_states", False):
            raise UnsupportedNeuron("record_states=True returns every step's state")
        x = node.args[0] if node.args else node.kwargs["input_tensor"]
        state = node.args[1] if len(node.args) > 1 else node.kwargs.get("state")
        if state is None:  # Norse's initial state: v at v_leak (v_reset for IAF), no current
            _, _, v_attr = _kind(module)
            step = x if self.convention(module) == "cell" else b.call(_first, (x,), from_=[node])
            v0 = b.call(torch.full_like, (step, _float(module.p, v_attr)), from_=[node])
            return x, True, v0, None
        if spec.has_current:
            v0, i0 = b.unpack(state, 2, node)
            return x, True, v0, i0
        (v0,) = b.unpack(state, 1, node)
        return x, True, v0, None

    def result(self, module, spec, out, v, i, node, b):
        _, state_cls, _ = _kind(module)
        state = b.tuple((v, i) if spec.has_current else (v,), node, cls=state_cls)
        return b.tuple((out, state), node)


def _first(x):
    return x[0]


class _Refused(NeuronAdapter):
    def __init__(self):
        def refuse(m):
            raise UnsupportedNeuron(f"norse {type(m).__name__} has no snnopt adapter; describe it with "
                                    f"snnopt.register_neuron({type(m).__name__}, adapter=...) (see "
                                    f"snnopt.frontend.registry)")
        super().__init__(refuse, convention=lambda m: "multi" if isinstance(m, SNN) else "cell")


_adapter = NorseAdapter()
for _cls in list(_KINDS) + list(_MULTI):
    register_neuron(_cls, adapter=_adapter)
register_neuron(SNNCell, adapter=_Refused())
register_neuron(SNN, adapter=_Refused())
