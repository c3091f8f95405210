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

import torch
from torch import nn

from .. import surrogate as _surrogate
from ..spec import NeuronSpec
from .functional import neuron_step

__all__ = ["LIF", "IF", "CubaLIF", "LI", "LIFCell", "IFCell", "CubaLIFCell", "LICell"]


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

    def forward(self, x, state=None):
        spec = self._structure().config
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
