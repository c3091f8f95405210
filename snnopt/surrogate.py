"""Surrogate gradients for the Heaviside spike function.

The forward pass of every spiking neuron is ``s = H(u)`` with ``u = h - theta``
(``H(0)`` is 0 for the ``>`` fire condition and 1 for ``>=``).  Its backward
replaces the Dirac delta ``H'(u)`` by a smooth pseudo-derivative ``f'(u)``:

==============  ===========  ==========================================================
name            parameter    f'(u)
==============  ===========  ==========================================================
atan            alpha=2      alpha / 2 / (1 + (pi/2 * alpha * u)^2)
fast_sigmoid    slope=25     1 / (slope*|u| + 1)^2                (SuperSpike)
sigmoid         slope=25     slope * sig(slope*u) * (1 - sig(slope*u))
triangle        width=1      max(0, 1 - |u|/width) / width
rectangle       width=1      1[|u| < width/2] / width
straight_through  (unused)   1
snntorch_triangular  k=1     k if u < 0 else -k    (snnTorch's ``triangular``, as it is)
==============  ===========  ==========================================================

Each surrogate is identified by a small integer code (its index in
:data:`NAMES`) so that kernels can select it with a switch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

NAMES = ("atan", "fast_sigmoid", "sigmoid", "triangle", "rectangle", "straight_through", "snntorch_triangular")
DEFAULT_PARAM = {"atan": 2.0, "fast_sigmoid": 25.0, "sigmoid": 25.0, "triangle": 1.0, "rectangle": 1.0,
                 "straight_through": 1.0, "snntorch_triangular": 1.0}
ALIASES = {"superspike": "fast_sigmoid", "arctan": "atan", "triangular": "triangle", "boxcar": "rectangle",
           "ste": "straight_through"}


@dataclass(frozen=True)
class Surrogate:
    """A surrogate derivative: ``name`` (one of :data:`NAMES`) and its parameter."""

    name: str
    param: float

    def __post_init__(self):
        if self.name not in NAMES:
            raise ValueError(f"unknown surrogate {self.name!r}; choose one of {', '.join(NAMES)}")
        if not (self.param > 0 and math.isfinite(self.param)):
            raise ValueError(f"surrogate {self.name!r} needs a positive finite parameter, got {self.param}")

    @property
    def code(self) -> int:
        return NAMES.index(self.name)

    def grad(self, u: torch.Tensor) -> torch.Tensor:
        """The pseudo-derivative f'(u), elementwise."""
        return surrogate_grad(u, self.code, self.param)

    def __call__(self, u: torch.Tensor, fire_ge: bool = False) -> torch.Tensor:
        """Heaviside forward with this surrogate's backward (autograd-aware)."""
        return SpikeFunction.apply(u, self.code, self.param, fire_ge)


def atan(alpha: float = 2.0) -> Surrogate:
    return Surrogate("atan", float(alpha))


def fast_sigmoid(slope: float = 25.0) -> Surrogate:
    return Surrogate("fast_sigmoid", float(slope))


superspike = fast_sigmoid


def sigmoid(slope: float = 25.0) -> Surrogate:
    return Surrogate("sigmoid", float(slope))


def triangle(width: float = 1.0) -> Surrogate:
    return Surrogate("triangle", float(width))


def rectangle(width: float = 1.0) -> Surrogate:
    return Surrogate("rectangle", float(width))


def get(surrogate: str | Surrogate) -> Surrogate:
    """Resolve a surrogate given by name (with its default parameter) or object."""
    if isinstance(surrogate, Surrogate):
        return surrogate
    if isinstance(surrogate, str):
        name = ALIASES.get(surrogate.lower(), surrogate.lower())
        if name not in NAMES:
            raise ValueError(f"unknown surrogate {surrogate!r}; choose one of {', '.join(NAMES)} "
                             f"or pass a snnopt.surrogate.Surrogate")
        return Surrogate(name, DEFAULT_PARAM[name])
    raise TypeError(f"surrogate must be a name or a snnopt.surrogate.Surrogate, got {type(surrogate).__name__}")


def surrogate_grad(u: torch.Tensor, code: int, param: float) -> torch.Tensor:
    """f'(u) for the surrogate with integer ``code`` and parameter ``param``."""
    if code == 0:
        return (param / 2) / (1 + (math.pi / 2 * param * u) ** 2)
    if code == 1:
        return 1 / (param * u.abs() + 1) ** 2
    if code == 2:
        sg = torch.sigmoid(param * u)
        return param * sg * (1 - sg)
    if code == 3:
        return (1 - u.abs() / param).clamp_min(0) / param
    if code == 4:
        return (u.abs() < param / 2).to(u.dtype) / param
    if code == 5:
        return torch.ones_like(u)
    if code == 6:
        return torch.where(u >= 0, -param, param).to(u.dtype)
    raise ValueError(f"unknown surrogate code {code}")


def heaviside(u: torch.Tensor, fire_ge: bool) -> torch.Tensor:
    """H(u) as a float tensor: ``u >= 0`` when ``fire_ge`` else ``u > 0``."""
    return (u >= 0 if fire_ge else u > 0).to(u.dtype)


class SpikeFunction(torch.autograd.Function):
    """s = H(u) forward, ds/du = f'(u) backward."""

    @staticmethod
    def forward(ctx, u, code, param, fire_ge):
        ctx.save_for_backward(u)
        ctx.code, ctx.param = code, param
        return heaviside(u, fire_ge)

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        return grad * surrogate_grad(u, ctx.code, ctx.param), None, None, None
