"""`NeuronSpec`: the complete discrete dynamics of one neuron population.

Every neuron node of the canonical IR carries ``node.meta["snn"] = NeuronSpec(...)``.
With input ``x_t``, synaptic current ``i_t``, membrane ``h_t`` (the value compared
with the threshold) and state ``v_t`` carried to the next step:

    cuba_lif:  i_t = alpha * i_{t-1} + scale * x_t,      in_t = i_t
    others:                                               in_t = scale * x_t
    charge:    h_t = beta * v_{t-1} + (1 - beta) * v_rest + in_t          (if: beta = 1)
    fire:      s_t = H(h_t - threshold)      with H(0) = 1 iff fire == ">="
    li:        no spike; the output and the state are h_t

Reset, ``reset_timing == "same"`` (SpikingJelly; the state is post-reset):

    subtract:  v_t = h_t - threshold * s_t
    zero:      v_t = h_t * (1 - s_t) + v_reset * s_t
    none:      v_t = h_t

Reset, ``reset_timing == "next"`` (snnTorch; the state is the pre-reset membrane,
``v_t = h_t``, and the previous spike ``s_{t-1} = H(v_{t-1} - threshold)`` is
applied at the next charge):

    subtract:  h_t = beta * v_{t-1} + ... + in_t - threshold * s_{t-1}
    zero:      h_t = beta * (v_{t-1} * (1 - s_{t-1}) + v_reset * s_{t-1}) + ... + in_t

``detach_reset`` stops the gradient through the ``s`` used in the reset; the spike
output always has the surrogate gradient ``ds/dh = f'(h - threshold)``.
``beta``/``alpha``/``threshold`` are floats when they are constant scalars and ``None``
when they are tensors held by the source module (per-neuron or learnable); the
names of those tensors are in ``param_attrs``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import surrogate as _surrogate

KINDS = ("lif", "cuba_lif", "if", "li")
RESETS = ("subtract", "zero", "none")
TIMINGS = ("same", "next")
FIRES = (">", ">=")


@dataclass(frozen=True)
class NeuronSpec:
    kind: str = "lif"
    beta: float | None = 0.9
    alpha: float | None = None
    threshold: float | None = 1.0
    scale: float = 1.0
    v_reset: float = 0.0
    v_rest: float = 0.0
    reset: str = "subtract"
    reset_timing: str = "same"
    fire: str = ">"
    detach_reset: bool = False
    surrogate: _surrogate.Surrogate = field(default_factory=_surrogate.atan)
    learnable: frozenset = frozenset()
    param_attrs: tuple = ()

    def __post_init__(self):
        for name, value, allowed in (("kind", self.kind, KINDS), ("reset", self.reset, RESETS),
                                     ("reset_timing", self.reset_timing, TIMINGS), ("fire", self.fire, FIRES)):
            if value not in allowed:
                raise ValueError(f"NeuronSpec.{name} must be one of {allowed}, got {value!r}")
        if self.kind == "cuba_lif" and self.alpha is None and "alpha" not in dict(self.param_attrs):
            raise ValueError("a cuba_lif NeuronSpec needs alpha (a float or a tensor attribute)")
        unknown = set(self.learnable) - {"beta", "alpha", "threshold"}
        if unknown:
            raise ValueError(f"NeuronSpec.learnable may hold beta, alpha, threshold; got {sorted(unknown)}")

    @property
    def spiking(self) -> bool:
        return self.kind != "li"

    @property
    def has_current(self) -> bool:
        return self.kind == "cuba_lif"

    def op_config(self) -> list:
        """The ``float[] cfg`` argument of the ``snnopt`` neuron ops:
        ``[kind, reset, timing, fire_ge, detach_reset, surrogate, surrogate_param,
        scale, v_reset, v_rest]`` (codes are indices into KINDS, RESETS, TIMINGS and
        :data:`snnopt.surrogate.NAMES`)."""
        return [float(v) for v in (KINDS.index(self.kind), RESETS.index(self.reset),
                                   TIMINGS.index(self.reset_timing), self.fire == ">=", self.detach_reset,
                                   self.surrogate.code, self.surrogate.param, self.scale, self.v_reset,
                                   self.v_rest)]

    def describe(self) -> str:
        def num(v):
            return "tensor" if v is None else f"{v:g}"
        parts = [self.kind, f"beta={num(self.beta)}"]
        if self.has_current:
            parts.append(f"alpha={num(self.alpha)}")
        if self.spiking:
            parts += [f"theta={num(self.threshold)}", f"reset={self.reset}/{self.reset_timing}",
                      f"fire'{self.fire}'", f"surrogate={self.surrogate.name}({self.surrogate.param:g})"]
            if self.detach_reset:
                parts.append("detach_reset")
        if self.scale != 1.0:
            parts.append(f"scale={self.scale:g}")
        if self.learnable:
            parts.append("learn=" + "+".join(sorted(self.learnable)))
        return " ".join(parts)


class Config:
    """The decoded ``cfg`` argument of the neuron ops (inverse of :meth:`NeuronSpec.op_config`)."""

    __slots__ = ("kind", "reset", "timing", "fire_ge", "detach", "sg_code", "sg_param", "scale", "v_reset", "v_rest")

    def __init__(self, cfg):
        kind, reset, timing, fire_ge, detach, sg_code, sg_param, scale, v_reset, v_rest = cfg
        self.kind, self.reset, self.timing = KINDS[int(kind)], RESETS[int(reset)], TIMINGS[int(timing)]
        self.fire_ge, self.detach, self.sg_code, self.sg_param = bool(fire_ge), bool(detach), int(sg_code), sg_param
        self.scale, self.v_reset, self.v_rest = scale, v_reset, v_rest

    @property
    def spiking(self) -> bool:
        return self.kind != "li"
