"""`NeuronSpec`: the complete discrete dynamics of one neuron population.

Every neuron node of the canonical IR carries ``node.meta["snn"] = NeuronSpec(...)``.
With input ``x_t``, synaptic current ``i_t``, membrane ``h_t`` (the value compared
with the threshold) and state ``v_t`` carried to the next step:

    current (cuba_lif, cuba_li), current_decay == "before" (the carried current is i_t):
               i_t = alpha * i_{t-1} + x_t,               in_t = scale * i_t
    current, current_decay == "after" (Norse; the carried current is alpha * I_t):
               I_t = i_{t-1} + x_t,  i_t = alpha * I_t,   in_t = scale * I_t
    no current (lif, if, li):                             in_t = scale * x_t
    charge:    h_t = beta * v_{t-1} + (1 - beta) * v_rest + in_t          (if: beta = 1)
    integration == "euler" (Norse's Euler step of the ODE, in its order of float operations;
    beta = 1 - scale, reset_timing "same"):
               h_t = v_{t-1} + scale * ((v_rest - v_{t-1}) + I_t)  with I_t = x_t without a current,
               and the carried current i_t = I_t + (alpha - 1) * I_t  (current_decay "after")
    integration == "tau" (SpikingJelly's LIF, in its order of float operations; a float tau > 1,
    beta = 1 - 1/tau, reset_timing "same"):
               scale == 1/tau (the input decays):  h_t = v_{t-1} + (x_t - (v_{t-1} - v_rest)) / tau
               scale == 1:                         h_t = v_{t-1} - (v_{t-1} - v_rest) / tau + x_t
    fire:      s_t = H(h_t - threshold)      with H(0) = 1 iff fire == ">="
    li, cuba_li: no spike; the output and the state are h_t

Reset, ``reset_timing == "same"`` (SpikingJelly, Norse; the state is post-reset):

    subtract:  v_t = h_t - threshold * s_t
    zero:      v_t = h_t * (1 - s_t) + v_reset * s_t
    none:      v_t = h_t

Reset, ``reset_timing == "next"`` (snnTorch's default; the state is the pre-reset
membrane, ``v_t = h_t``, and the pending reset ``r_t = H(v_{t-1} - threshold)`` is
applied at the next charge):

    subtract:  h_t = beta * v_{t-1} + ... + in_t - threshold * r_t
    zero:      h_t = beta * (v_{t-1} * (1 - r_t) + v_reset * r_t) + ... + in_t
    zero, reset_discards_input (snnTorch Synaptic):
               h_t = (beta * v_{t-1} + ... + in_t) * (1 - r_t)

Reset, ``reset_timing == "same_pending"`` (snnTorch ``reset_delay=False``): the charge is
that of ``"next"`` with the pending reset ``r_t`` of the post-reset state, and after
firing the state is

    subtract:  v_t = h_t - threshold * (s_t - r_t)
    zero:      v_t = h_t - h_t * (s_t - r_t)
    none:      v_t = h_t

``r_t`` carries no gradient in ``"next"`` when ``detach_reset`` and never in
``"same_pending"`` (there it only undoes a reset already applied); ``detach_reset`` stops
the gradient through the ``s`` used in any reset.  The spike output always has the surrogate
gradient ``ds/dh = f'(h - threshold)``.
``beta``/``alpha``/``threshold`` are floats when they are constant scalars and ``None``
when they are tensors computed from the source module (per-neuron, learnable or
derived, e.g. a clamped or sigmoid-parametrised decay); ``param_attrs`` maps each such
name to the module attribute holding it, or to a function of the module computing it.
``param_attrs`` may also hold ``"input_scale"``: a tensor the input is multiplied by
before the neuron (a learnable input gain, e.g. SpikingJelly's PLIF ``1/tau``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import surrogate as _surrogate

KINDS = ("lif", "cuba_lif", "if", "li", "cuba_li")
RESETS = ("subtract", "zero", "none")
TIMINGS = ("same", "next", "same_pending")
CURRENT_DECAYS = ("before", "after")
INTEGRATIONS = ("decay", "euler", "tau")
FIRES = (">", ">=")


class KindTraits:
    """What a neuron kind implies (for classes with a ``kind`` attribute)."""

    __slots__ = ()

    @property
    def spiking(self) -> bool:
        return self.kind not in ("li", "cuba_li")

    @property
    def has_current(self) -> bool:
        return self.kind in ("cuba_lif", "cuba_li")


@dataclass(frozen=True)
class NeuronSpec(KindTraits):
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
    reset_discards_input: bool = False
    current_decay: str = "before"
    integration: str = "decay"
    tau: float | None = None
    surrogate: _surrogate.Surrogate = field(default_factory=_surrogate.atan)
    learnable: frozenset = frozenset()
    param_attrs: tuple = ()

    def __post_init__(self):
        for name, value, allowed in (("kind", self.kind, KINDS), ("reset", self.reset, RESETS),
                                     ("reset_timing", self.reset_timing, TIMINGS), ("fire", self.fire, FIRES),
                                     ("current_decay", self.current_decay, CURRENT_DECAYS),
                                     ("integration", self.integration, INTEGRATIONS)):
            if value not in allowed:
                raise ValueError(f"NeuronSpec.{name} must be one of {allowed}, got {value!r}")
        if self.integration == "euler":
            self._check_euler()
        if self.integration == "tau":
            self._check_tau()
        elif self.tau is not None:
            raise ValueError(f"NeuronSpec.tau is the divisor of integration 'tau'; with integration "
                             f"{self.integration!r} leave it None (beta holds the decay)")
        if self.has_current and self.alpha is None and "alpha" not in dict(self.param_attrs):
            raise ValueError(f"a {self.kind} NeuronSpec needs alpha (a float or a tensor attribute)")
        if self.reset_discards_input and not (self.reset == "zero" and self.reset_timing != "same"):
            raise ValueError("reset_discards_input applies to a zero reset with reset_timing 'next' or 'same_pending'")
        unknown = set(self.learnable) - {"beta", "alpha", "threshold"}
        if unknown:
            raise ValueError(f"NeuronSpec.learnable may hold beta, alpha, threshold; got {sorted(unknown)}")

    @property
    def form_fixed(self) -> dict:
        """The parameters the Euler and divided forms fix, ``{name: value}``: ``beta``
        (``1 - scale``, ``1 - 1/tau``) and, in the Euler form of a kind with a current, its
        constant ``alpha`` (``syn_rate = alpha - 1`` in double, see :meth:`op_config`); empty in
        the decay form.  A module or network computing such a form takes these values from the
        spec, not from its (rounded) tensors."""
        if self.integration == "decay":
            return {}
        if self.integration == "tau":
            return {"beta": 1 - 1 / self.tau}
        alpha = {"alpha": self.alpha} if self.has_current and self.alpha is not None else {}
        return {"beta": 1 - self.scale, **alpha}

    def _check_euler(self) -> None:
        """The Euler form is Norse's: a leaky kind, ``beta = 1 - scale``, a same-step reset, a
        current decayed after use (by a constant ``alpha``, see :meth:`op_config`), nothing learnable."""
        problems = []
        if self.kind not in ("lif", "cuba_lif", "li", "cuba_li"):
            problems.append(f"kind {self.kind!r} (a leaky kind is needed)")
        if self.beta is not None and self.beta != self.form_fixed["beta"]:
            problems.append(f"beta {self.beta} (1 - scale = {self.form_fixed['beta']} is needed)")
        if self.has_current and self.current_decay != "after":
            problems.append("current_decay 'before' (a current decayed after use is needed)")
        if self.spiking and self.reset_timing != "same":
            problems.append(f"reset_timing {self.reset_timing!r} ('same' is needed)")
        if self.learnable:
            problems.append("learnable parameters")
        if problems:
            raise ValueError(f"NeuronSpec integration 'euler' does not apply to {'; '.join(problems)}")

    def _check_tau(self) -> None:
        """The divided form is SpikingJelly's LIF: kind lif, a float ``tau > 1`` with ``beta = 1 - 1/tau``
        (or None: a module's structure, the value in its buffer) and ``scale`` 1/tau or 1, a
        same-step reset, nothing learnable."""
        tau = self.tau
        if not isinstance(tau, (int, float)) or not tau > 1:
            raise ValueError(f"NeuronSpec integration 'tau' needs a float tau > 1, got {tau!r}")
        problems = []
        if self.kind != "lif":
            problems.append(f"kind {self.kind!r} ('lif' is needed)")
        if self.beta is not None and self.beta != self.form_fixed["beta"]:
            problems.append(f"beta {self.beta} (1 - 1/tau = {self.form_fixed['beta']} is needed)")
        if self.scale not in (1 / tau, 1.0):
            problems.append(f"scale {self.scale} (1/tau = {1 / tau} or 1 is needed)")
        if self.reset_timing != "same":
            problems.append(f"reset_timing {self.reset_timing!r} ('same' is needed)")
        if self.learnable:
            problems.append("learnable parameters")
        if problems:
            raise ValueError(f"NeuronSpec integration 'tau' does not apply to {'; '.join(problems)}")

    @property
    def config(self) -> "Config":
        return Config(self.op_config())

    def op_config(self) -> list:
        """The ``float[] cfg`` argument of the ``snnopt`` neuron ops:
        ``[kind, reset, timing, fire_ge, detach_reset, surrogate, surrogate_param,
        scale, v_reset, v_rest, reset_discards_input, current_decay, integration, form_constant]``
        (codes are indices into KINDS, RESETS, TIMINGS, CURRENT_DECAYS, INTEGRATIONS and
        :data:`snnopt.surrogate.NAMES`; ``form_constant`` is the Euler form's current decay
        ``syn_rate = alpha - 1`` (exact in double), the divided form's ``tau``, 0 otherwise)."""
        constant = self.tau if self.integration == "tau" else 0.0
        if self.integration == "euler" and self.has_current:
            if self.alpha is None:
                raise ValueError("NeuronSpec integration 'euler' needs a constant alpha (the op config holds its "
                                 "current decay alpha - 1)")
            constant = self.alpha - 1.0
        return [float(v) for v in (KINDS.index(self.kind), RESETS.index(self.reset),
                                   TIMINGS.index(self.reset_timing), self.fire == ">=", self.detach_reset,
                                   self.surrogate.code, self.surrogate.param, self.scale, self.v_reset,
                                   self.v_rest, self.reset_discards_input, CURRENT_DECAYS.index(self.current_decay),
                                   INTEGRATIONS.index(self.integration), constant)]

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
            if self.reset_discards_input:
                parts.append("reset_discards_input")
        if self.has_current and self.current_decay != "before":
            parts.append(f"current_decay={self.current_decay}")
        if self.scale != 1.0:
            parts.append(f"scale={self.scale:g}")
        if self.integration != "decay":
            parts.append(f"integration={self.integration}")
        if self.tau is not None:
            parts.append(f"tau={self.tau:g}")
        if "input_scale" in dict(self.param_attrs):
            parts.append("input_scale=tensor")
        if self.learnable:
            parts.append("learn=" + "+".join(sorted(self.learnable)))
        return " ".join(parts)


class Config(KindTraits):
    """The decoded ``cfg`` argument of the neuron ops (inverse of :meth:`NeuronSpec.op_config`)."""

    __slots__ = ("kind", "reset", "timing", "fire_ge", "detach", "sg_code", "sg_param", "scale", "v_reset", "v_rest",
                 "discards_input", "current_decay", "integration", "euler", "syn_rate", "tau", "values")

    def __init__(self, cfg):
        self.values = [float(v) for v in cfg]
        (kind, reset, timing, fire_ge, detach, sg_code, sg_param, scale, v_reset, v_rest, discards,
         current_decay, integration, constant) = cfg
        self.kind, self.reset, self.timing = KINDS[int(kind)], RESETS[int(reset)], TIMINGS[int(timing)]
        self.fire_ge, self.detach, self.sg_code, self.sg_param = bool(fire_ge), bool(detach), int(sg_code), sg_param
        self.scale, self.v_reset, self.v_rest = scale, v_reset, v_rest
        self.discards_input, self.current_decay = bool(discards), CURRENT_DECAYS[int(current_decay)]
        self.integration = INTEGRATIONS[int(integration)]
        self.euler = self.integration == "euler"
        self.syn_rate = constant if self.euler else 0.0
        self.tau = constant if self.integration == "tau" else None

    @property
    def scales_in_charge(self) -> bool:
        """The Euler and divided forms take the input unscaled: their charge applies ``scale``."""
        return self.integration != "decay"

    @property
    def generic(self) -> bool:
        """Dynamics outside the closed-form kernels (``same_pending`` timing, input-discarding
        reset): the reference runs them step by step and differentiates the recomputed
        steps with autograd."""
        return self.timing == "same_pending" or self.discards_input
