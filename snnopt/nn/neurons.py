"""snnopt's own neuron modules, usable without compiling (plain BPTT through autograd).

Multi-step modules (``LIF``, ``IF``, ``CubaLIF``, ``LI``) take time-major input
``[T, B, ...]`` and return ``[T, B, ...]``; single-step cells (``LIFCell``, ``IFCell``,
``CubaLIFCell``, ``LICell``) take ``(x_t, state)`` and return ``(out_t, state)`` with
``state=None`` meaning zeros, for models that loop over time.  State is the membrane
``v`` (``[B, ...]``), or ``(i, v)`` for ``CubaLIF``.  Dynamics: :mod:`snnopt.spec`
(reset at the same step, SpikingJelly's ordering).

``beta``/``alpha``/``threshold`` may be floats or tensors broadcastable to the feature
shape (per-neuron values); they are parameters when ``learn_*`` is set and buffers
otherwise, so they appear in ``state_dict`` either way.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .. import surrogate as _surrogate
from ..spec import NeuronSpec
from .functional import neuron_step

__all__ = ["LIF", "IF", "CubaLIF", "LI", "LIFCell", "IFCell", "CubaLIFCell", "LICell", "Neuron", "Recurrent"]


class _Neuron(nn.Module):
    kind = "lif"
    multi_step = True

    def __init__(self, *, beta=None, alpha=None, threshold=1.0, reset="subtract", detach_reset=False,
                 surrogate="atan", learn_beta=False, learn_alpha=False, learn_threshold=False,
                 return_state=False):
        super().__init__()
        self.reset_mechanism = reset
        self.detach_reset = bool(detach_reset)
        self.surrogate = _surrogate.get(surrogate)
        self.return_state = bool(return_state)
        self._learn = set()
        for name, value, learn in (("beta", beta, learn_beta), ("alpha", alpha, learn_alpha),
                                   ("threshold", threshold, learn_threshold)):
            if value is None:
                if learn:
                    raise ValueError(f"{type(self).__name__} has no {name} to learn")
                continue
            t = torch.as_tensor(value, dtype=torch.get_default_dtype()).clone()
            if learn:
                self.register_parameter(name, nn.Parameter(t))
                self._learn.add(name)
            else:
                self.register_buffer(name, t)
        self.spec()  # validate now, not at the first call

    def spec(self) -> NeuronSpec:
        """The full spec, with the values of scalar constant parameters."""
        def scalar(name):
            t = getattr(self, name, None)
            if t is None or name in self._learn or t.numel() != 1:
                return None
            return float(t)
        return self._structure(beta=1.0 if self.kind == "if" else scalar("beta"), alpha=scalar("alpha"),
                               threshold=scalar("threshold") if self.kind != "li" else None)

    def _structure(self, beta=None, alpha=None, threshold=None) -> NeuronSpec:
        attrs = tuple((n, n) for n in ("beta", "alpha", "threshold") if getattr(self, n, None) is not None)
        return NeuronSpec(kind=self.kind, beta=beta, alpha=alpha, threshold=threshold,
                          reset=self.reset_mechanism if self.kind != "li" else "none",
                          detach_reset=self.detach_reset, surrogate=self.surrogate,
                          learnable=frozenset(self._learn), param_attrs=attrs)

    def params(self):
        """``(beta, alpha, threshold)`` tensors, ``None`` where the kind has none."""
        return tuple(getattr(self, n, None) for n in ("beta", "alpha", "threshold"))

    def _split_state(self, state):
        if state is None:
            return None, None
        if self.kind in ("cuba_lif", "cuba_li"):
            i, v = state
            return v, i
        return state, None

    def _join_state(self, v, i):
        return (i, v) if self.kind in ("cuba_lif", "cuba_li") else v

    def _step(self, x, v, i, cfg):
        beta, alpha, threshold = self.params()
        return neuron_step(x, v, i, beta, alpha, threshold, cfg)

    def _drive(self, x):
        return x

    def _config(self):
        """The step's op config: the structure's (no parameter value read, so no device sync),
        or the full spec's for the Euler form, whose config holds the constant alpha."""
        structure = self._structure()
        return (self.spec() if structure.integration == "euler" else structure).config

    def forward(self, x, state=None):
        spec = self._config()
        x = self._drive(x)
        if self.multi_step:
            if x.dim() < 3:
                raise ValueError(f"{type(self).__name__} expects time-major input [T, B, features...]; got shape "
                                 f"{list(x.shape)}. Use the {type(self).__name__}Cell for one time step.")
            v, i = self._split_state(state)
            outs = []
            for t in range(x.shape[0]):
                o, v, i = self._step(x[t], v, i, spec)
                outs.append(o)
            out = torch.stack(outs)
            return (out, self._join_state(v, i)) if self.return_state else out
        v, i = self._split_state(state)
        o, v, i = self._step(x, v, i, spec)
        return o, self._join_state(v, i)

    def extra_repr(self):
        return self.spec().describe()


class LIF(_Neuron):
    """Leaky integrate-and-fire, multi-step: ``h = beta*v + x``, ``s = H(h - threshold)``, then reset."""

    kind = "lif"

    def __init__(self, beta=0.9, threshold=1.0, reset="subtract", detach_reset=False, surrogate="atan",
                 learn_beta=False, learn_threshold=False, return_state=False):
        super().__init__(beta=beta, threshold=threshold, reset=reset, detach_reset=detach_reset,
                         surrogate=surrogate, learn_beta=learn_beta, learn_threshold=learn_threshold,
                         return_state=return_state)


class IF(_Neuron):
    """Integrate-and-fire (no leak), multi-step: ``h = v + x``."""

    kind = "if"

    def __init__(self, threshold=1.0, reset="subtract", detach_reset=False, surrogate="atan",
                 learn_threshold=False, return_state=False):
        super().__init__(threshold=threshold, reset=reset, detach_reset=detach_reset, surrogate=surrogate,
                         learn_threshold=learn_threshold, return_state=return_state)


class CubaLIF(_Neuron):
    """Current-based LIF, multi-step: ``i = alpha*i + x``, ``h = beta*v + i``; state ``(i, v)``."""

    kind = "cuba_lif"

    def __init__(self, alpha=0.8, beta=0.9, threshold=1.0, reset="subtract", detach_reset=False,
                 surrogate="atan", learn_alpha=False, learn_beta=False, learn_threshold=False,
                 return_state=False):
        super().__init__(beta=beta, alpha=alpha, threshold=threshold, reset=reset, detach_reset=detach_reset,
                         surrogate=surrogate, learn_beta=learn_beta, learn_alpha=learn_alpha,
                         learn_threshold=learn_threshold, return_state=return_state)


class LI(_Neuron):
    """Leaky integrator readout (non-spiking), multi-step: returns the membrane ``h = beta*h + x``."""

    kind = "li"

    def __init__(self, beta=0.9, learn_beta=False, return_state=False):
        super().__init__(beta=beta, threshold=None, learn_beta=learn_beta, return_state=return_state)


def _cell(base, doc):
    cls = type(base.__name__ + "Cell", (base,), {"multi_step": False, "__doc__": doc,
                                                  "__module__": __name__})
    return cls


LIFCell = _cell(LIF, "Single-step LIF: ``(x_t, v) -> (s_t, v)``.")
IFCell = _cell(IF, "Single-step IF: ``(x_t, v) -> (s_t, v)``.")
CubaLIFCell = _cell(CubaLIF, "Single-step current-based LIF: ``(x_t, (i, v)) -> (s_t, (i, v))``.")
LICell = _cell(LI, "Single-step leaky integrator: ``(x_t, v) -> (v_t, v)``.")


class Neuron(_Neuron):
    """Any dynamics a :class:`~snnopt.spec.NeuronSpec` states: reset value, resting
    potential, input scale, fire condition and reset timing included.

    ``spec`` gives the structure; ``beta``/``alpha``/``threshold`` (floats or per-neuron
    tensors) override its scalar fields, and ``input_scale`` (a tensor) multiplies the
    input before the neuron.  ``multi_step=False`` makes it a cell ``(x_t, state) ->
    (out_t, state)``.  Parameters named in ``spec.learnable`` are ``nn.Parameter`` s.
    This is the module the importers build (:func:`snnopt.from_nir`).
    """

    def __init__(self, spec: NeuronSpec, beta=None, alpha=None, threshold=None, input_scale=None,
                 multi_step=True, return_state=False):
        overridden = [n for n, v in (("beta", beta), ("alpha", alpha)) if v is not None and n in spec.form_fixed]
        if overridden:
            raise ValueError(f"Neuron: integration {spec.integration!r} fixes {' and '.join(overridden)} in the "
                             f"spec (NeuronSpec.form_fixed); leave {' and '.join(overridden)} out")
        self.kind = spec.kind
        self.multi_step = bool(multi_step)
        self._base = spec  # the structure; the values are this module's tensors
        values = {"beta": spec.beta if beta is None else beta, "alpha": spec.alpha if alpha is None else alpha,
                  "threshold": spec.threshold if threshold is None else threshold}
        if spec.kind == "if":
            values["beta"] = None
        if not spec.spiking:
            values["threshold"] = None
        if not spec.has_current:
            values["alpha"] = None
        learn = {f"learn_{n}": n in spec.learnable for n in values}
        super().__init__(**values, reset=spec.reset, detach_reset=spec.detach_reset, surrogate=spec.surrogate,
                         return_state=return_state, **learn)
        if input_scale is not None:
            self.register_buffer("input_scale", torch.as_tensor(input_scale, dtype=torch.get_default_dtype()).clone())
        else:
            self.input_scale = None

    def _structure(self, beta=None, alpha=None, threshold=None) -> NeuronSpec:
        generic = super()._structure(beta, alpha, threshold)
        gain = (("input_scale", "input_scale"),) if getattr(self, "input_scale", None) is not None else ()
        fixed = self._base.form_fixed  # the form's own values, not their rounding in the buffers
        beta, alpha = fixed.get("beta", beta), fixed.get("alpha", alpha)
        return dataclasses.replace(self._base, beta=beta, alpha=alpha, threshold=threshold,
                                   learnable=generic.learnable, param_attrs=generic.param_attrs + gain)

    def _drive(self, x):
        return x if self.input_scale is None else x * self.input_scale


class Recurrent(nn.Module):
    """A neuron population with a recurrent projection of its own spikes:
    ``out_t = neuron(x_t + recurrent(s_{t-1}), state)`` with ``s_{-1} = 0``.

    ``neuron`` is a multi-step snnopt neuron (``LIF``, ``CubaLIF``, ``IF``, ``Neuron``) and
    ``recurrent`` a square ``nn.Linear`` over its features.  Time-major ``[T, B, N]`` in and
    out; ``state`` is ``(neuron_state, last_spikes)`` and is returned too when
    ``return_state``.  The compiler keeps it eager (the recurrence needs each step's
    spikes before the next step's input); the exporters write it as a cycle
    ``neuron -> recurrent -> neuron`` whose feedback edge carries the previous step.
    """

    def __init__(self, neuron: _Neuron, recurrent: nn.Linear, return_state=False):
        super().__init__()
        if not isinstance(neuron, _Neuron) or not neuron.multi_step:
            raise TypeError(f"Recurrent takes a multi-step snnopt neuron, got {type(neuron).__name__}")
        if not isinstance(recurrent, nn.Linear) or recurrent.in_features != recurrent.out_features:
            raise TypeError(f"Recurrent takes a square nn.Linear, got {recurrent}")
        if not neuron._structure().spiking:
            raise TypeError("Recurrent needs a spiking neuron (its spikes are fed back)")
        self.neuron, self.recurrent = neuron, recurrent
        self.return_state = bool(return_state)

    def forward(self, x, state=None):
        if x.dim() < 3:
            raise ValueError(f"Recurrent expects time-major input [T, B, features]; got shape {list(x.shape)}")
        neuron_state, s = (None, None) if state is None else state
        s = torch.zeros_like(x[0]) if s is None else s
        n = self.neuron
        cfg = n._config()
        v, i = n._split_state(neuron_state)
        outs = []
        for t in range(x.shape[0]):
            s, v, i = n._step(n._drive(x[t] + self.recurrent(s)), v, i, cfg)
            outs.append(s)
        out = torch.stack(outs)
        return (out, (n._join_state(v, i), s)) if self.return_state else out
