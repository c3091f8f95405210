r"""Check a network against a neuromorphic chip's constraints and quantize it for the chip.

``check(model, "speck")`` reads the :class:`~snnopt.export.network.Network` of ``model``
and lists **every** constraint of the target :class:`Profile` it breaks, each as a
:class:`Violation` naming the network node; ``quantize(model, "loihi2")`` returns the
network mapped to the target's integer grids.  Targets: :data:`PROFILES` (``"loihi2"``,
``"speck"``, ``"xylo"``), or any :class:`Profile`.

Rules (``Violation.rule``); those marked * are what :func:`quantize` fixes, so
``check(quantize(net, t), t)`` reports none of them where the fix is possible:

==================  ===========================================================
``layer_kind``      a node kind (or conv dimensionality) the target lacks
``scale`` *         a ``Scale`` node: folded into the adjacent weights
``pool_mode`` *     average pooling on a sum-pool target: ``1/k^2`` folded into the
                    weights after it
``kernel_shape``    a non-square convolution kernel where kernels must be square
``pool_shape``      a non-square pooling window where pools must be square
``structure``       weights that reach no neuron, or a neuron fed without weights
``neuron_kind``     a neuron kind the target lacks (e.g. a non-spiking readout on Speck)
``leak``            a leaky neuron on a target without leak (Speck's IAF)
``reset``           a reset mechanism the target lacks, or a reset value other than 0
``reset_timing``    a reset applied at the next step (snnTorch); chips reset at once
``v_rest``          a nonzero resting potential
``input_scale`` *   an input gain on a population: folded into its weights
``sharing``         a parameter that varies within a layer (or channel) where the
                    target holds one value per layer (or channel)
``decay`` *         a decay not on the target's grid (12-bit on Loihi 2, bit shifts
                    on Xylo)
``threshold`` *     a threshold that is not an integer in the target's range
``state``           a reset or resting value outside the membrane's range
``weight_bits`` *   weights that are not integers on the target's weight grid
``weight_precision`` weights whose dynamic range is too large for the bits: at the
                    best per-layer scale more than :data:`VANISHING_LIMIT` of the
                    nonzero weights round to 0
``bias`` / ``bias_bits`` *  a bias where the target has none / off the bias grid
``fan_in``          more input synapses per neuron than the target allows
``neurons``         a population, a core or the chip over its neuron budget
``memory``          layers that do not fit the cores' memories (Speck)
``delay``           recurrent (delayed) edges beyond the target's delays
==================  ===========================================================

**Integer units.**  :func:`check` reads a network as the chip would hold it: weights,
biases and thresholds are numbers in the chip's integer units, so a float network
reports ``weight_bits`` until :func:`quantize` maps it.  The neuron dynamics of
:mod:`snnopt.spec` are homogeneous of degree one in (input, membrane, threshold,
``v_reset``, ``v_rest``): dividing all of them by one factor ``s`` leaves every spike
unchanged.  :func:`quantize` uses this per *layer* (a population together with every
weight node feeding it):

.. math::

    W_q = \mathrm{round}_{grid}(W\,u / s), \quad b_q = \mathrm{round}(b / s), \quad
    \theta_q = \mathrm{round}(\theta / s), \quad v_{reset,q} = \mathrm{round}(v_{reset} / s)

where ``u`` is the unit of the weights' input (1 for spikes and network inputs, the
feeding layer's ``s`` for a non-spiking population's membrane), so before rounding
``v_q = v / s`` exactly at every step and the spikes are those of the float network;
the rounding (and the decays' grids) are the only changes.  ``s`` is the smallest
scale at which every weight, bias and threshold of the layer fits its range:
``s = max(max|W u| / w_max, max|b| / b_max, max theta / theta_max)``.  On Loihi 2 the
per-layer weight exponent ``e`` then divides ``s`` by ``2^e`` (weights ``m 2^e`` with an
even mantissa ``m``) as long as thresholds and biases still fit, which refines the
threshold grid without coarsening the weights.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass

import networkx as nx
import torch

from . import network as N
from .network import Network, NetworkError

log = logging.getLogger(__name__)

__all__ = ["Profile", "PROFILES", "Violation", "HardwareReport", "HardwareError", "check", "quantize", "RULES",
           "FIXED_BY_QUANTIZE", "VANISHING_LIMIT", "quantize_decay", "get_profile"]

RULES = ("layer_kind", "scale", "pool_mode", "kernel_shape", "pool_shape", "structure", "neuron_kind", "leak",
         "reset", "reset_timing", "v_rest", "input_scale", "sharing", "decay", "threshold", "state", "weight_bits",
         "weight_precision", "bias", "bias_bits", "fan_in", "neurons", "memory", "delay")
"""Every rule name a :class:`Violation` can carry (see the module docstring)."""

FIXED_BY_QUANTIZE = frozenset({"scale", "pool_mode", "input_scale", "decay", "threshold", "weight_bits",
                               "bias_bits"})
"""Rules :func:`quantize` fixes (where the fold is possible and the values fit the ranges)."""

VANISHING_LIMIT = 0.5
"""``weight_precision`` flags a weight node when more than this fraction of its nonzero
weights round to 0 at the best per-layer scale ``s = max|W| / w_max``, i.e. are smaller
than half a grid step.  For trained weights (roughly normal, the largest near 4 standard
deviations) about 1% vanish at 8 bits; a few outliers far above the rest make most of
them vanish, and the layer's sums then carry little of the trained function."""

SHARING_LEVELS = ("layer", "channel", "neuron")


@dataclass(frozen=True)
class Profile:
    """What one chip can run.  Integer ranges are two's complement (``signed``) or
    ``[0, 2^bits - 1]``; ``None`` means no limit (or no such feature, for ``bias_bits``).

    ``weight_bits``/``weight_step``: weights are integers in the signed ``weight_bits``
    range that are multiples of ``weight_step`` (Loihi 2: 9 bits, step 2, i.e. the
    even values of ``[-256, 254]``, 256 levels).  ``weight_exponents``: the range of a
    per-layer exponent ``e`` (weights ``m * 2^e``), ``(0, 0)`` for none.
    ``decay``: ``"linear12"`` (``beta = 1 - d / 4096``, ``d`` an integer in
    ``[0, 4096]``), ``"shift"`` (``beta = 1 - 2^-k``, ``k`` in ``decay_shifts``) or
    ``"none"`` (no leak: ``beta = 1``).  ``sharing``: ``(parameter, level)`` pairs, a
    level of ``"layer"`` (one value per population) or ``"channel"`` (one per channel,
    i.e. per feature of a 1-d population); parameters not listed may vary per neuron.
    ``core_memories``: ``(kernel words, neuron words)`` per core where each weight
    layer takes one core (Speck).
    """

    name: str
    description: str
    weight_bits: int
    weight_step: int = 1
    weight_exponents: tuple = (0, 0)
    bias_bits: int | None = None
    bias_layers: tuple = ()
    threshold_bits: int = 16
    threshold_signed: bool = True
    state_bits: int = 16
    decay: str = "none"
    decay_shifts: tuple = (0, 15)
    neuron_kinds: tuple = ("lif",)
    resets: tuple = ("subtract", "zero")
    sharing: tuple = ()
    max_fan_in: int | None = None
    max_neurons_per_layer: int | None = None
    max_neurons_per_core: int | None = None
    cores: int | None = None
    core_memories: tuple = ()
    max_hidden_neurons: int | None = None
    max_output_neurons: int | None = None
    max_input_channels: int | None = None
    square_kernels: bool = False
    square_pools: bool = False
    layer_kinds: tuple = ("affine", "conv", "pool", "flatten")
    conv_dims: tuple = (1, 2)
    pool_modes: tuple = ("sum", "avg")
    max_delay: int | None = None

    def __post_init__(self):
        if self.decay not in ("linear12", "shift", "none"):
            raise ValueError(f"Profile.decay must be 'linear12', 'shift' or 'none', got {self.decay!r}")
        for param, level in self.sharing:
            if level not in SHARING_LEVELS:
                raise ValueError(f"Profile.sharing level of {param!r} must be one of {SHARING_LEVELS}, got {level!r}")

    @property
    def weight_range(self) -> tuple[int, int]:
        """``(lo, hi)``: the extreme weight mantissas (multiples of ``weight_step``)."""
        lo, hi = _int_range(self.weight_bits, True)
        return lo, hi - hi % self.weight_step

    @property
    def weight_levels(self) -> float:
        """Bits of weight resolution: ``log2`` of the number of weight mantissas."""
        lo, hi = self.weight_range
        return math.log2((hi - lo) // self.weight_step + 1)

    @property
    def threshold_range(self) -> tuple[int, int]:
        lo, hi = _int_range(self.threshold_bits, self.threshold_signed)
        return lo, min(hi, self.state_range[1])

    @property
    def state_range(self) -> tuple[int, int]:
        return _int_range(self.state_bits, True)

    @property
    def bias_range(self) -> tuple[int, int] | None:
        return None if self.bias_bits is None else _int_range(self.bias_bits, True)

    def sharing_level(self, param: str) -> str:
        return dict(self.sharing).get(param, "neuron")


def _int_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)


LOIHI2 = Profile(
    name="loihi2",
    description="Intel Loihi 2 through lava-dl netx: CUBA LIF neurons with 12-bit decays",
    weight_bits=9, weight_step=2, weight_exponents=(0, 7),
    bias_bits=13, bias_layers=("affine",),
    threshold_bits=17, threshold_signed=False, state_bits=18,
    decay="linear12",
    neuron_kinds=("lif", "cuba_lif", "if", "li", "cuba_li"), resets=("zero",),
    sharing=(("threshold", "layer"), ("beta", "channel"), ("alpha", "channel")),
    max_fan_in=4096, max_neurons_per_core=8192, cores=128,
    layer_kinds=("affine", "conv", "pool", "flatten"), conv_dims=(2,), pool_modes=("sum",),
    max_delay=62,
)
"""Loihi 2.  From the reference notes: 8-bit weights as the even values of ``[-256, 254]``
with a per-layer weight exponent, 12-bit decays (``beta = 1 - d/4096``), threshold
mantissa scale 64 (one integer unit of the quantized network is 64 LSBs of the
membrane, so the threshold mantissa is the integer threshold), delays up to 62 steps,
decays uniform per layer or channel, no convolution bias.  Where the notes are silent
the values are conservative and documented for Loihi and Lava: non-negative weight
exponents up to 7 (so quantized weights stay integers), a 17-bit unsigned threshold
mantissa and 24-bit signed membrane (Loihi 1's fixed-point widths, kept by Lava's
fixed-point LIF; 18 bits in units of 64 LSBs), a 13-bit signed bias mantissa (held as an integer of the same units),
one threshold per layer (Lava's LIF takes a scalar ``vth``), zero reset (Lava's LIF and
CUBA neurons set ``v`` to 0 after a spike), non-spiking readouts as CUBA neurons read by a
probe, 8192 neurons per core and 128 cores (Intel's Loihi 2 brief), a fan-in of 4096
(Loihi's input axons per core), 2-d convolutions and sum pooling (lava-dl's blocks)."""

SPECK = Profile(
    name="speck",
    description="SynSense Speck / DYNAP-CNN through sinabs: conv/linear layers of IAF neurons",
    weight_bits=8, bias_bits=8, bias_layers=("affine", "conv"),
    threshold_bits=16, threshold_signed=True, state_bits=16,
    decay="none",
    neuron_kinds=("if",), resets=("subtract", "zero"),
    sharing=(("threshold", "layer"),),
    core_memories=((16384, 65536),) * 3 + ((32768, 32768),) * 2 + ((65536, 16384),) * 2 + ((16384, 16384),) * 2,
    square_kernels=True, square_pools=True,
    layer_kinds=("affine", "conv", "pool", "flatten"), conv_dims=(2,), pool_modes=("sum",),
    max_delay=0,
)
"""Speck / DYNAP-CNN.  From the reference notes: Conv2d/Linear layers of IAF neurons (no
leak) with optional sum pooling, square kernels and pools, 8-bit weights and biases,
16-bit state and threshold, one threshold per layer, 9 cores of 16-64 K kernel words and
16-64 K neuron words.  Where the notes are silent: the per-core memories are those sinabs
lists for Speck (kernel 16K x3, 32K x2, 64K x2, 16K x2; neurons 64K x3, 32K x2, 16K x4), a
layer's memory is estimated with the chip's power-of-two address rounding (kernel words
``C_in * 2^(ceil(log2(kh*kw)) + ceil(log2 C_out))``, neuron words
``C_out * 2^(ceil(log2 H) + ceil(log2 W))``; a Linear counts as a 1x1 convolution), each
weight layer takes one core, both subtractive and zero reset are available (sinabs'
``return_to_zero`` switch), and no recurrent edges (sinabs maps feed-forward networks).
Average pooling is sum pooling with ``1/k^2`` moved into the next layer's weights, as
sinabs does."""

XYLO = Profile(
    name="xylo",
    description="SynSense Xylo through rockpool: LIF neurons with bit-shift decays",
    weight_bits=8, bias_bits=None,
    threshold_bits=16, threshold_signed=True, state_bits=16,
    decay="shift", decay_shifts=(0, 15),
    neuron_kinds=("lif", "cuba_lif", "li", "cuba_li"), resets=("subtract",),
    max_hidden_neurons=1000, max_output_neurons=8, max_input_channels=16,
    layer_kinds=("affine", "flatten"),
    max_delay=1,
)
"""Xylo.  From the reference notes: at most 1000 hidden and 8 output neurons, int8 weights,
int16 thresholds, bit-shift decays, at most 2 synaptic currents per neuron (a
population here has at most one).  Where the notes are silent: decays
``beta = 1 - 2^-k`` with a 4-bit shift ``k`` in ``[0, 15]`` (rockpool's ``dash`` parameters),
16 input channels, subtractive reset and per-neuron thresholds and decays (rockpool's
Xylo LIF), no biases and no convolution or pooling (dense input, recurrent and output
weights), recurrence through one-step recurrent weights, 16-bit membrane and
current, output neurons readable as membranes."""

PROFILES = {p.name: p for p in (LOIHI2, SPECK, XYLO)}
"""The built-in targets by name."""


def get_profile(target) -> Profile:
    """The :class:`Profile` ``target`` names (or ``target`` itself)."""
    if isinstance(target, Profile):
        return target
    if target not in PROFILES:
        raise ValueError(f"unknown hardware target {target!r}; use one of {sorted(PROFILES)} or a Profile")
    return PROFILES[target]


@dataclass(frozen=True)
class Violation:
    """One broken constraint: the network ``node`` (``None`` for the whole network), the
    ``rule`` (one of :data:`RULES`) and a ``detail`` saying what and how to fix it."""

    node: str | None
    rule: str
    detail: str


class HardwareError(NetworkError):
    """A network that does not fit a target; the message lists every violation."""


@dataclass
class HardwareReport:
    """The result of :func:`check`: the ``target`` name and every :class:`Violation`."""

    target: str
    violations: list

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def rules(self) -> set[str]:
        return {v.rule for v in self.violations}

    def __str__(self) -> str:
        if self.ok:
            return f"{self.target}: the network fits (no violations)"
        rows = [(v.node or "(network)", v.rule, v.detail) for v in self.violations]
        w0, w1 = (max(len(r[i]) for r in rows + [("node", "rule")]) for i in range(2))
        n = len(rows)
        lines = [f"{self.target}: {n} violation{'s' if n > 1 else ''}",
                 f"{'node'.ljust(w0)} | {'rule'.ljust(w1)} | detail", f"{'-' * w0}-+-{'-' * w1}-+-{'-' * 6}"]
        lines += [f"{a.ljust(w0)} | {b.ljust(w1)} | {c}" for a, b, c in rows]
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        """Raise one :class:`HardwareError` listing every violation (nothing when ``ok``)."""
        if not self.ok:
            raise HardwareError(f"the network does not fit {self.target}:\n{self}")


# -- graph helpers ----------------------------------------------------------------------

SYNAPSES = (N.Affine, N.Conv)
PASS_THROUGH = (N.Flatten, N.Pool, N.Scale)
"""Linear nodes without weights of their own: a value keeps its unit through them."""


def _as_network(model_or_network, example_inputs) -> Network:
    if isinstance(model_or_network, Network):
        return model_or_network
    from .extract import to_network

    return to_network(model_or_network, example_inputs)


def _succs(net: Network, name: str) -> list[str]:
    return [t for s, t in net.edges if s == name]


def _through(net: Network, name: str, step) -> list[str]:
    """The nodes ``step`` (predecessors or successors) reaches from ``name`` through
    pass-through nodes, in network order, each once; pass-through nodes are crossed, not
    listed."""
    found, seen, stack = [], set(), list(step(net, name))
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if isinstance(net.nodes[node], PASS_THROUGH):
            stack.extend(step(net, node))
        else:
            found.append(node)
    order = {n: k for k, n in enumerate(net.nodes)}
    return sorted(found, key=order.__getitem__)


def _sources(net: Network, name: str) -> list[str]:
    """The weight nodes, neurons and inputs whose values are summed into ``name``."""
    return _through(net, name, Network.predecessors)


def _sinks(net: Network, name: str) -> list[str]:
    """The weight nodes, neurons and outputs that ``name``'s output reaches."""
    return _through(net, name, _succs)


def _spiking(node: N.Node) -> bool:
    return isinstance(node, N.Neuron) and node.spec.spiking


def _fan_in(node: N.Node) -> int:
    """Input synapses per output neuron of a weight node."""
    if isinstance(node, N.Affine):
        return int(node.weight.shape[1])
    return int(math.prod(node.weight.shape[1:]))


def _kind(node: N.Neuron) -> str:
    """The neuron kind the dynamics amount to: a LIF without leak is an IF."""
    if node.spec.kind == "lif" and node.beta is not None and bool((node.beta == 1).all()):
        return "if"
    return node.spec.kind


def _fmt(x: float) -> str:
    return f"{x:.4g}"


# -- number grids -------------------------------------------------------------------------

def _on_grid(x: torch.Tensor, step: float = 1.0) -> bool:
    x = x.double()
    return bool((x == torch.round(x / step) * step).all())


def _in_range(x: torch.Tensor, lo: float, hi: float) -> bool:
    return x.numel() == 0 or (float(x.min()) >= lo and float(x.max()) <= hi)


def _weight_exponent(weight: torch.Tensor, p: Profile) -> int | None:
    """The smallest exponent ``e`` of the profile at which ``weight / 2^e`` are mantissas
    on the weight grid, else ``None``."""
    lo, hi = p.weight_range
    for e in range(p.weight_exponents[0], p.weight_exponents[1] + 1):
        m = weight.double() / 2 ** e
        if _on_grid(m, p.weight_step) and _in_range(m, lo, hi):
            return e
    return None


def _decay_on_grid(value: torch.Tensor, p: Profile) -> bool:
    v = value.double()
    if p.decay == "linear12":
        d = (1 - v) * 4096
        return _on_grid(d) and _in_range(d, 0, 4096)
    if p.decay == "shift":
        allowed = torch.tensor([1 - 2.0 ** -k for k in range(p.decay_shifts[0], p.decay_shifts[1] + 1)],
                               dtype=torch.float64)
        return bool(torch.isin(v, allowed).all())
    return bool((v == 1).all())


def quantize_decay(value: torch.Tensor, p: Profile) -> torch.Tensor:
    """``value`` (a decay ``beta`` or ``alpha``) on the target's grid.

    ``linear12``: ``beta_q = 1 - round(4096 (1 - beta)) / 4096`` (the 12-bit decay
    ``d = 4096 (1 - beta)`` of Loihi's ``v <- v (4096 - d) / 4096``), ``d`` clamped to
    ``[0, 4096]``.  ``shift``: ``beta_q = 1 - 2^-k`` with ``k = round(log2(1 / (1 - beta)))``
    (the nearest time constant in log scale) clamped to ``decay_shifts``, Xylo's
    ``v <- v - (v >> k)``; ``beta = 1`` takes the longest shift.  ``none``: unchanged (a
    leak there is a ``leak`` violation, not a rounding)."""
    v = value.double()
    if p.decay == "linear12":
        return (1 - torch.round((1 - v) * 4096).clamp(0, 4096) / 4096).to(value.dtype)
    if p.decay == "shift":
        lo, hi = p.decay_shifts
        tau = 1 / (1 - v).clamp_min(2.0 ** -(hi + 1))
        k = torch.round(torch.log2(tau)).clamp(lo, hi)
        return (1 - 2.0 ** -k).to(value.dtype)
    return value.clone()


def _uniform_at(value: torch.Tensor, level: str) -> bool:
    """Whether ``value`` (a population's full-shape parameter) has one value per
    ``level``: ``"layer"``, ``"channel"`` (dim 0) or ``"neuron"``."""
    if level == "neuron" or value.numel() == 0:
        return True
    if level == "layer":
        return bool((value == value.reshape(-1)[0]).all())
    flat = value.reshape(value.shape[0], -1)
    return bool((flat == flat[:, :1]).all())


# -- check ----------------------------------------------------------------------------------

def check(model_or_network, target, *, example_inputs=None) -> HardwareReport:
    """Every constraint of ``target`` (a name in :data:`PROFILES` or a :class:`Profile`) the
    network of ``model_or_network`` breaks.

    ``model_or_network``: a :class:`Network`, a :class:`~snnopt.export.NetworkModule`, a
    :class:`~snnopt.CompiledSNN` or a plain snnopt model (then ``example_inputs``, a
    time-major ``[T, B, ...]`` input, is needed to trace it).  The values are read in the
    chip's integer units (see the module docstring), so run :func:`quantize` first to
    check a trained float network for what remains after quantization.
    """
    p = get_profile(target)
    net = _as_network(model_or_network, example_inputs)
    shapes = net.validate()
    violations = []
    for rule in (_check_layers, _check_neurons, _check_weights, _check_delays, _check_capacity):
        violations.extend(rule(net, shapes, p))
    order = {name: k for k, name in enumerate(net.nodes)}
    violations.sort(key=lambda v: order.get(v.node, len(order)))  # stable: rules keep their order per node
    for v in violations:
        log.debug("%s: %s %s: %s", p.name, v.node, v.rule, v.detail)
    return HardwareReport(p.name, violations)


def _check_layers(net: Network, shapes: dict, p: Profile):
    for name, node in net.nodes.items():
        if isinstance(node, N.Scale):
            reason = _fold_scale(copy.deepcopy(net), shapes, name)
            fix = ("quantize() folds it into the adjacent weights" if reason is None else
                   f"it cannot be folded ({reason}); move the factor into a Linear or Conv")
            yield Violation(name, "scale", f"a Scale node (y = s * x) has no hardware form; {fix}")
        elif isinstance(node, N.Conv) and ("conv" not in p.layer_kinds or node.dims not in p.conv_dims):
            dims = ", ".join(f"{d}-d" for d in p.conv_dims) if "conv" in p.layer_kinds else "no"
            yield Violation(name, "layer_kind", f"a {node.dims}-d convolution; {p.name} runs {dims} convolutions")
        elif isinstance(node, N.Pool) and "pool" not in p.layer_kinds:
            yield Violation(name, "layer_kind", f"{node.mode} pooling; {p.name} has no pooling layers")
        elif isinstance(node, N.Pool) and node.mode not in p.pool_modes:
            reason = _fold_avg_pool(copy.deepcopy(net), shapes, name)
            fix = ("quantize() makes it a sum pool and folds 1/k^2 into the weights after it" if reason is None else
                   f"1/k^2 cannot be folded ({reason}); use AvgPool2d(divisor_override=1) and scale the next weights")
            yield Violation(name, "pool_mode", f"{node.mode} pooling; {p.name} pools by "
                                               f"{' or '.join(p.pool_modes)}: {fix}")
        elif isinstance(node, N.Affine) and "affine" not in p.layer_kinds:
            yield Violation(name, "layer_kind", f"a fully connected layer; {p.name} has none")
        if isinstance(node, N.Conv) and p.square_kernels and node.dims == 2 and \
                node.weight.shape[2] != node.weight.shape[3]:
            yield Violation(name, "kernel_shape", f"kernel {tuple(node.weight.shape[2:])} is not square; {p.name} "
                                                  "takes k x k kernels")
        if isinstance(node, N.Pool) and p.square_pools and node.kernel_size[0] != node.kernel_size[1]:
            yield Violation(name, "pool_shape", f"pooling window {node.kernel_size} is not square; {p.name} takes "
                                                "k x k pools")
        if isinstance(node, SYNAPSES) and not any(isinstance(net.nodes[s], N.Neuron) for s in _sinks(net, name)):
            yield Violation(name, "structure", "its weighted sums reach no neuron population (only outputs); a "
                                               "hardware layer ends in neurons: add a readout neuron (e.g. LI)")


def _check_neurons(net: Network, shapes: dict, p: Profile):
    for name, node in net.nodes.items():
        if isinstance(node, N.Neuron):
            yield from _check_dynamics(name, node, p)
            yield from _check_neuron_values(name, node, p)
            yield from _check_neuron_inputs(net, shapes, name, node, p)


def _check_dynamics(name: str, node: N.Neuron, p: Profile):
    spec, kind = node.spec, _kind(node)
    if kind not in p.neuron_kinds:
        if kind == "lif" and "if" in p.neuron_kinds:
            yield Violation(name, "leak", f"leaky neurons (beta = {_describe(node.beta)}); {p.name} neurons "
                                          "integrate without leak: use snnopt.nn.IF (or beta = 1)")
        else:
            yield Violation(name, "neuron_kind", f"{kind} neurons; {p.name} runs {', '.join(p.neuron_kinds)}")
    if spec.spiking:
        if spec.reset not in p.resets:
            yield Violation(name, "reset", f"{spec.reset} reset; {p.name} resets by {' or '.join(p.resets)}")
        elif spec.reset == "zero" and spec.v_reset != 0:
            yield Violation(name, "reset", f"reset to v_reset = {_fmt(spec.v_reset)}; {p.name} resets to 0")
        if spec.reset_timing != "same":
            yield Violation(name, "reset_timing", f"reset_timing {spec.reset_timing!r} (the reset is applied at "
                                                  f"the next step); {p.name} resets in the step that spikes")
    if spec.v_rest != 0 and kind != "if":
        yield Violation(name, "v_rest", f"resting potential {_fmt(spec.v_rest)}; {p.name} membranes decay to 0")
    gain = spec.scale != 1 or (node.input_scale is not None and not bool((node.input_scale == 1).all()))
    if gain:
        yield Violation(name, "input_scale", "an input gain (NeuronSpec.scale / input_scale); quantize() folds it "
                                             "into the weights feeding the population")


def _check_neuron_values(name: str, node: N.Neuron, p: Profile):
    for param in ("beta", "alpha", "threshold"):
        value = getattr(node, param)
        level = p.sharing_level(param)
        if value is not None and not _uniform_at(value, level):
            yield Violation(name, "sharing", f"{param} varies within a {level}; {p.name} holds one {param} per "
                                             f"{level}")
    for param in ("beta", "alpha"):
        value = getattr(node, param)
        if value is None or p.decay == "none" or _decay_on_grid(value, p):
            continue
        grid = ("1 - d/4096 (12-bit d)" if p.decay == "linear12" else
                f"1 - 2^-k (k in {p.decay_shifts[0]}..{p.decay_shifts[1]})")
        yield Violation(name, "decay", f"{param} = {_describe(value)} is not of the form {grid}; quantize() rounds "
                                       "it")
    if node.threshold is not None:
        lo, hi = p.threshold_range
        if not (_on_grid(node.threshold) and _in_range(node.threshold, lo, hi)):
            yield Violation(name, "threshold", f"threshold {_describe(node.threshold)} is not an integer in "
                                               f"[{lo}, {hi}]; quantize() expresses it in weight units")
    lo, hi = p.state_range
    for field in ("v_reset", "v_rest"):
        value = getattr(node.spec, field)
        if not lo <= value <= hi:
            yield Violation(name, "state", f"{field} = {_fmt(value)} is outside the {p.state_bits}-bit membrane "
                                           f"[{lo}, {hi}]")


def _check_neuron_inputs(net: Network, shapes: dict, name: str, node: N.Neuron, p: Profile):
    sources = _sources(net, name)
    raw = [s for s in sources if not isinstance(net.nodes[s], SYNAPSES)]
    if raw:
        yield Violation(name, "structure", f"fed by {', '.join(map(repr, raw))} without weights; hardware neurons "
                                           "take weighted inputs: insert a Linear (or Conv)")
    fan_in = sum(_fan_in(net.nodes[s]) if isinstance(net.nodes[s], SYNAPSES) else 1 for s in sources)
    if p.max_fan_in is not None and fan_in > p.max_fan_in:
        yield Violation(name, "fan_in", f"{fan_in} input synapses per neuron; {p.name} allows {p.max_fan_in}")
    size = math.prod(node.shape)
    if p.max_neurons_per_layer is not None and size > p.max_neurons_per_layer:
        yield Violation(name, "neurons", f"{size} neurons; {p.name} allows {p.max_neurons_per_layer} per layer")


def _check_weights(net: Network, shapes: dict, p: Profile):
    for name, node in net.nodes.items():
        if isinstance(node, SYNAPSES):
            yield from _check_weight_grid(name, node, p)
            yield from _check_bias(name, node, p)


def _check_weight_grid(name: str, node, p: Profile):
    w = node.weight.detach()
    if _weight_exponent(w, p) is not None:
        return
    lo, hi = p.weight_range
    grid = f"integers in [{lo}, {hi}]" + (f", multiples of {p.weight_step}" if p.weight_step > 1 else "")
    if p.weight_exponents != (0, 0):
        grid += f", times 2^e for one e in {p.weight_exponents[0]}..{p.weight_exponents[1]}"
    yield Violation(name, "weight_bits", f"weights (max |w| = {_fmt(float(w.abs().max()))}) are not {grid}; "
                                         "quantize() maps them with one scale per layer")
    vanishing = _vanishing_fraction(w, p)
    if vanishing > VANISHING_LIMIT:
        yield Violation(name, "weight_precision",
                        f"the dynamic range is too large for {p.weight_levels:g}-bit weights: at the best scale "
                        f"max|w| / {hi}, {vanishing:.0%} of the nonzero weights round to 0; retrain with a weight "
                        "penalty or clip the outliers")


def _vanishing_fraction(w: torch.Tensor, p: Profile) -> float:
    """The fraction of nonzero weights that round to 0 at ``s = max|W| / w_max``."""
    w = w.double()
    nonzero = w[w != 0]
    if nonzero.numel() == 0:
        return 0.0
    s = float(nonzero.abs().max()) / p.weight_range[1]
    return float((torch.round(nonzero / (s * p.weight_step)) == 0).double().mean())


def _check_bias(name: str, node, p: Profile):
    b = node.bias
    if b is None or not bool(b.any()):
        return
    if p.bias_range is None or node.kind not in p.bias_layers:
        where = "no biases" if p.bias_range is None else f"biases only on {', '.join(p.bias_layers)} layers"
        yield Violation(name, "bias", f"a bias ({node.kind} layer); {p.name} has {where}: retrain without it "
                                      "(bias=False)")
        return
    lo, hi = p.bias_range
    if not (_on_grid(b) and _in_range(b, lo, hi)):
        yield Violation(name, "bias_bits", f"bias (max |b| = {_fmt(float(b.abs().max()))}) is not integers in "
                                           f"[{lo}, {hi}]; quantize() maps it with the layer's weight scale")


def _check_delays(net: Network, shapes: dict, p: Profile):
    if p.max_delay is None or p.max_delay >= 1:
        return
    for s, t in sorted(net.delayed_edges()):
        yield Violation(t, "delay", f"recurrent edge {s!r} -> {t!r} (a one-step delay); {p.name} runs "
                                    "feed-forward networks only")


def _check_capacity(net: Network, shapes: dict, p: Profile):
    populations = {n: math.prod(node.shape) for n, node in net.nodes.items() if isinstance(node, N.Neuron)}
    if p.max_neurons_per_core is not None and p.cores is not None:
        needed = sum(math.ceil(size / p.max_neurons_per_core) for size in populations.values())
        if needed > p.cores:
            yield Violation(None, "neurons", f"{needed} cores of {p.max_neurons_per_core} neurons needed; "
                                             f"{p.name} has {p.cores}")
    outputs = {n for n in populations if any(isinstance(net.nodes[s], N.Output) for s in _sinks(net, n))}
    for limit, members, what in ((p.max_hidden_neurons, set(populations) - outputs, "hidden"),
                                 (p.max_output_neurons, outputs, "output")):
        total = sum(populations[n] for n in members)
        if limit is not None and total > limit:
            node = next(iter(members)) if len(members) == 1 else None
            yield Violation(node, "neurons", f"{total} {what} neurons ({', '.join(sorted(members))}); {p.name} has "
                                             f"{limit}")
    if p.max_input_channels is not None:
        for name in net.inputs:
            size = math.prod(shapes[name])
            if size > p.max_input_channels:
                yield Violation(name, "neurons", f"{size} input channels; {p.name} takes {p.max_input_channels}")
    if p.core_memories:
        yield from _check_core_memories(net, shapes, p)


def _layer_memory(net: Network, shapes: dict, name: str) -> tuple[int, int]:
    """``(kernel words, neuron words)`` of a weight layer with power-of-two address rounding
    (see :data:`SPECK`); a Linear counts as a 1x1 convolution."""
    node = net.nodes[name]
    if isinstance(node, N.Affine):
        c_out, c_in, kernel, spatial = node.weight.shape[0], node.weight.shape[1], 1, (1, 1)
    else:
        c_out, c_in = node.weight.shape[0], node.weight.shape[1]
        kernel, spatial = math.prod(node.weight.shape[2:]), (tuple(shapes[name][1:]) + (1, 1))[:2]

    def log2up(n):
        return math.ceil(math.log2(n)) if n > 1 else 0
    kernel_words = c_in * 2 ** (log2up(kernel) + log2up(c_out))
    neuron_words = c_out * 2 ** (log2up(spatial[0]) + log2up(spatial[1]))
    return kernel_words, neuron_words


def _check_core_memories(net: Network, shapes: dict, p: Profile):
    layers = [n for n, node in net.nodes.items() if isinstance(node, SYNAPSES)]
    memory = {n: _layer_memory(net, shapes, n) for n in layers}
    fits = {n: [c for c, (kw, nw) in enumerate(p.core_memories) if memory[n][0] <= kw and memory[n][1] <= nw]
            for n in layers}
    for n in layers:
        if not fits[n]:
            yield Violation(n, "memory", f"needs {memory[n][0]} kernel and {memory[n][1]} neuron words; no "
                                         f"{p.name} core holds that (largest: {max(k for k, _ in p.core_memories)} "
                                         f"kernel, {max(m for _, m in p.core_memories)} neuron words)")
    g = nx.Graph()
    g.add_nodes_from(layers)
    g.add_edges_from((n, ("core", c)) for n in layers for c in fits[n])
    matched = nx.bipartite.hopcroft_karp_matching(g, top_nodes=layers) if g.number_of_edges() else {}
    placed = [n for n in layers if fits[n]]
    unplaced = [n for n in placed if n not in matched]
    if unplaced:
        yield Violation(None, "memory", f"{len(layers)} weight layers do not fit {p.name}'s {len(p.core_memories)} "
                                        f"cores together (one layer per core); {', '.join(unplaced)} find no core")


def _describe(value: torch.Tensor) -> str:
    lo, hi = float(value.min()), float(value.max())
    return _fmt(lo) if lo == hi else f"{_fmt(lo)}..{_fmt(hi)}"


# -- folding: exact rewrites that remove what the chips lack ------------------------------

def _fold_into_producers(net: Network, shapes: dict, name: str, factor: torch.Tensor) -> str | None:
    """Multiply the input of ``name`` (the sum of its predecessors) by ``factor`` (of that
    input's shape) by changing the predecessors' parameters; returns why not, or ``None``.
    Each predecessor must feed ``name`` alone."""
    for pred in dict.fromkeys(net.predecessors(name)):
        others = [t for t in _succs(net, pred) if t != name]
        if others:
            return f"{pred!r} also feeds {others[0]!r}"
        reason = _scale_output(net, shapes, pred, factor)
        if reason:
            return reason
    return None


def _fold_into_consumers(net: Network, shapes: dict, name: str, factor: torch.Tensor) -> str | None:
    """Multiply the value ``name`` passes to each consumer by ``factor`` (of ``name``'s output
    shape) by changing the consumers' parameters; each consumer must take ``name`` alone."""
    for succ in dict.fromkeys(_succs(net, name)):
        others = [s for s in net.predecessors(succ) if s != name]
        if others:
            return f"{succ!r} also sums {others[0]!r}"
        reason = _scale_input(net, shapes, succ, factor)
        if reason:
            return reason
    return None


def _channel_factor(factor: torch.Tensor, what: str) -> tuple[torch.Tensor | None, str | None]:
    """The per-channel values of ``factor`` (dim 0) when it is uniform within each channel."""
    flat = factor.reshape(factor.shape[0], -1)
    if not bool((flat == flat[:, :1]).all()):
        return None, f"the factor varies within a channel of {what!r}"
    return flat[:, 0], None


def _scale_output(net: Network, shapes: dict, name: str, factor: torch.Tensor) -> str | None:
    """Multiply the output of ``name`` by ``factor``: rows of a weight node (per output
    channel for a Conv), or further back through a Flatten or Pool (per channel)."""
    node = net.nodes[name]
    if isinstance(node, N.Affine):
        node.weight = node.weight * factor.reshape(-1, 1)
        node.bias = None if node.bias is None else node.bias * factor.reshape(-1)
        return None
    if isinstance(node, N.Conv):
        per_channel, reason = _channel_factor(factor, name)
        if reason:
            return reason
        node.weight = node.weight * per_channel.reshape(-1, *([1] * (node.weight.dim() - 1)))
        node.bias = None if node.bias is None else node.bias * per_channel
        return None
    if isinstance(node, N.Scale):
        node.scale = node.scale * factor
        return None
    if isinstance(node, N.Flatten):
        return _fold_into_producers(net, shapes, name, factor.reshape(shapes[net.predecessors(name)[0]]))
    if isinstance(node, N.Pool):
        per_channel, reason = _channel_factor(factor, name)
        if reason:
            return reason
        in_shape = shapes[net.predecessors(name)[0]]
        return _fold_into_producers(net, shapes, name, per_channel.reshape(-1, 1, 1).expand(in_shape))
    return f"{name!r} ({node.kind}) has no weights to take the factor"


def _scale_input(net: Network, shapes: dict, name: str, factor: torch.Tensor) -> str | None:
    """Multiply the input of ``name`` by ``factor``: columns of a weight node (per input
    channel for a Conv, zero padding stays zero), or further on through a Flatten or Pool."""
    node = net.nodes[name]
    if isinstance(node, N.Affine):
        node.weight = node.weight * factor.reshape(1, -1)
        return None
    if isinstance(node, N.Conv):
        per_channel, reason = _channel_factor(factor, name)
        if reason:
            return reason
        c_out, c_in_group = node.weight.shape[:2]
        group = torch.arange(c_out) // (c_out // node.groups)
        channel = group.reshape(-1, 1) * c_in_group + torch.arange(c_in_group).reshape(1, -1)
        node.weight = node.weight * per_channel[channel].reshape(c_out, c_in_group, *([1] * node.dims))
        return None
    if isinstance(node, N.Scale):
        node.scale = node.scale * factor
        return None
    if isinstance(node, N.Flatten):
        start, end = (d + factor.dim() if d < 0 else d for d in (node.start_dim, node.end_dim))
        return _fold_into_consumers(net, shapes, name, factor.flatten(start, end))
    if isinstance(node, N.Pool):
        per_channel, reason = _channel_factor(factor, name)
        if reason:
            return reason
        return _fold_into_consumers(net, shapes, name, per_channel.reshape(-1, 1, 1).expand(shapes[name]))
    return f"{name!r} ({node.kind}) has no weights to take the factor"


def _transaction(net: Network, fold) -> str | None:
    """Run ``fold(trial)`` on a copy of ``net``; keep the result only if it succeeds."""
    trial = copy.deepcopy(net)
    reason = fold(trial)
    if reason is None:
        net.nodes, net.edges = trial.nodes, trial.edges
    return reason


def _fold_scale(net: Network, shapes: dict, name: str) -> str | None:
    """Remove the Scale node ``name``, multiplying its factor into the weights before it
    (each feeding it alone) or else after it (each taking it alone); returns why not."""
    scale = net.nodes[name].scale
    reason = _transaction(net, lambda t: _fold_into_producers(t, shapes, name, scale))
    if reason is not None:
        second = _transaction(net, lambda t: _fold_into_consumers(t, shapes, name, scale))
        if second is not None:
            return f"before it: {reason}; after it: {second}"
    preds = net.predecessors(name)
    edges = []
    for s, t in net.edges:
        if t == name:
            continue
        edges.extend([(p, t) for p in preds] if s == name else [(s, t)])
    net.edges = edges
    del net.nodes[name]
    return None


def _fold_avg_pool(net: Network, shapes: dict, name: str) -> str | None:
    """Make the average pool ``name`` a sum pool, multiplying ``1 / (kh kw)`` into the weights
    after it (or before it); returns why not."""
    node = net.nodes[name]
    inv = 1.0 / math.prod(node.kernel_size)
    out = torch.full(shapes[name], inv)
    reason = _transaction(net, lambda t: _fold_into_consumers(t, shapes, name, out))
    if reason is not None:
        before = torch.full(shapes[net.predecessors(name)[0]], inv)
        second = _transaction(net, lambda t: _fold_into_producers(t, shapes, name, before))
        if second is not None:
            return f"after it: {reason}; before it: {second}"
    net.nodes[name].mode = "sum"
    return None


def _fold_input_scale(net: Network, shapes: dict, name: str) -> str | None:
    """Move the input gain of population ``name`` (``spec.scale * input_scale``) into the
    weights feeding it; returns why not."""
    node = net.nodes[name]
    gain = torch.full(node.shape, float(node.spec.scale))
    if node.input_scale is not None:
        gain = gain * node.input_scale
    reason = _transaction(net, lambda t: _fold_into_producers(t, shapes, name, gain))
    if reason is None:
        node = net.nodes[name]
        node.spec = dataclasses.replace(node.spec, scale=1.0)
        node.input_scale = None
    return reason


def _fold_all(net: Network, p: Profile) -> None:
    """Apply every fold the target needs, logging the ones that are impossible."""
    shapes = net.validate()
    for name in [n for n, node in net.nodes.items() if isinstance(node, N.Scale)]:
        reason = _fold_scale(net, shapes, name)
        if reason:
            log.warning("quantize: Scale node %r stays (%s)", name, reason)
    if "avg" not in p.pool_modes:
        for name in [n for n, node in net.nodes.items() if isinstance(node, N.Pool) and node.mode == "avg"]:
            reason = _fold_avg_pool(net, shapes, name)
            if reason:
                log.warning("quantize: average pool %r stays (%s)", name, reason)
    for name, node in list(net.nodes.items()):
        if isinstance(node, N.Neuron) and (node.spec.scale != 1 or node.input_scale is not None):
            reason = _fold_input_scale(net, shapes, name)
            if reason:
                log.warning("quantize: the input gain of %r stays (%s)", name, reason)


# -- quantize -------------------------------------------------------------------------------

ONE = "<unit>"
"""The group of values in unit 1: network inputs and spikes."""


class _Groups:
    """Layers that share one scale (union-find over node names and :data:`ONE`): a
    population with every weight node whose sums reach it, and whatever is summed
    together (the terms of one sum must share a unit)."""

    def __init__(self, net: Network):
        self.net, self.parent = net, {}
        for name, node in net.nodes.items():
            if isinstance(node, N.Neuron) or isinstance(node, SYNAPSES):
                self.find(name)
            if isinstance(node, (N.Neuron, N.Output) + SYNAPSES):
                terms = [self.root_of(s) for s in _sources(net, name)]
                if isinstance(node, N.Neuron):
                    terms.append(name)
                for t in terms[1:]:
                    self.union(terms[0], t)

    def root_of(self, source: str) -> str:
        """The element a source's value belongs to: spikes and inputs are in unit 1, a
        weight node's sums and a membrane in their layer's scale."""
        node = self.net.nodes[source]
        return ONE if isinstance(node, N.Input) or _spiking(node) else source

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        keep, drop = (rb, ra) if rb == ONE else (ra, rb)  # ONE stays a root
        if keep != drop:
            self.parent[drop] = keep

    def unit_of_sum(self, name: str) -> str:
        """The group of the values summed into ``name``."""
        roots = {self.find(self.root_of(s)) for s in _sources(self.net, name)}
        if len(roots) != 1:
            raise NetworkError(f"node {name!r} sums values in different units; quantize needs one unit per sum")
        return roots.pop()

    def members(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name in self.net.nodes:
            if name in self.parent:
                out.setdefault(self.find(name), []).append(name)
        return out


@dataclass
class _Layer:
    """One scale group: its weight nodes and populations, the chosen scale ``s`` and weight
    exponent ``e``, and the unit of each weight node's input."""

    synapses: list
    neurons: list
    scale: float | None = None
    exponent: int = 0
    units: dict | None = None


class _Scaler:
    """Chooses every layer's scale; a layer fed by a non-spiking population's membrane
    needs that population's scale first (its weights' input unit)."""

    def __init__(self, net: Network, p: Profile):
        self.net, self.p, self.groups = net, p, _Groups(net)
        self.layers = {}
        for root, members in self.groups.members().items():
            self.layers[root] = _Layer([m for m in members if isinstance(net.nodes[m], SYNAPSES)],
                                       [m for m in members if isinstance(net.nodes[m], N.Neuron)],
                                       scale=1.0 if root == ONE else None)
        self._resolving = set()
        for root in self.layers:
            self.resolve(root)

    def unit(self, root: str) -> float:
        return 1.0 if root == ONE else self.resolve(root).scale

    def resolve(self, root: str) -> _Layer:
        layer = self.layers[root]
        if layer.units is not None:
            return layer
        if root in self._resolving:
            raise NetworkError(f"the non-spiking population(s) {layer.neurons} feed back into their own input; "
                               "quantize cannot choose their scale")
        self._resolving.add(root)
        layer.units = {s: self.unit(self.groups.unit_of_sum(s)) for s in layer.synapses}
        if root != ONE:
            layer.scale, layer.exponent = _choose_scale(self.net, layer, self.p)
        self._resolving.discard(root)
        return layer


def _choose_scale(net: Network, layer: _Layer, p: Profile) -> tuple[float, int]:
    """``(s, e)``: the smallest scale at which the layer's weights, biases, thresholds and
    reset/rest values fit their ranges, then divided by ``2^e`` for the largest weight
    exponent ``e`` at which thresholds and biases still fit."""
    w = max((float(net.nodes[s].weight.abs().max()) * layer.units[s] for s in layer.synapses
             if net.nodes[s].weight.numel()), default=0.0)
    need_w = w / p.weight_range[1]
    others = [0.0]
    for s in layer.synapses:
        bias = net.nodes[s].bias
        if bias is not None and p.bias_range is not None and bias.numel():
            others.append(float(bias.abs().max()) / p.bias_range[1])
    for n in layer.neurons:
        node = net.nodes[n]
        if node.threshold is not None:
            others.append(float(node.threshold.abs().max()) / p.threshold_range[1])
        others.append(max(abs(node.spec.v_reset), abs(node.spec.v_rest)) / p.state_range[1])
    need_other = max(others)
    if need_w == 0 and need_other == 0:
        return 1.0, 0
    exponent = p.weight_exponents[0]
    if need_w <= need_other:
        return need_other, exponent
    # a finer threshold grid is the exponent's only use; a readout's membrane would grow with it
    spiking = any(net.nodes[n].threshold is not None for n in layer.neurons)
    while spiking and exponent < p.weight_exponents[1] and need_w / 2 ** (exponent + 1) >= need_other:
        exponent += 1
    return need_w / 2 ** exponent, exponent


def quantize(model_or_network, target, *, example_inputs=None) -> Network:
    """The network of ``model_or_network`` on the integer grids of ``target``.

    First the exact rewrites the chips need: ``Scale`` nodes, neuron input gains and (on
    sum-pool targets) the ``1/k^2`` of average pools are multiplied into adjacent weights.
    Then each layer (a population and the weight nodes feeding it; see the module
    docstring) gets one scale ``s`` and

    * ``W_q = grid(W u / s)``: ``u`` the unit of the weights' input, ``grid`` rounding to
      the nearest multiple of ``weight_step * 2^e`` (``e`` the layer's weight exponent, 0
      except on Loihi 2),
    * ``b_q = round(b / s)``, ``threshold_q = round(threshold / s)``,
      ``v_reset_q = round(v_reset / s)``, ``v_rest_q = round(v_rest / s)``,
    * decays on the target's grid (:func:`quantize_decay`),

    so that ``v_q = v / s`` before rounding and the spikes match the float network up to
    the rounding.  A population fed without weights (by inputs or spikes directly) keeps
    ``s = 1``.  Weights, biases and thresholds are stored as float tensors holding the
    integer values.  ``metadata["quantization"]`` records ``target``, ``scales`` (node ->
    ``s`` for weight nodes and populations: a float value is ``s`` times the integer one),
    ``weight_exponents`` (weight node -> ``e``) and ``output_scales`` (output -> the unit
    of its values: 1 for spikes, ``s`` for a readout membrane).

    What quantization cannot fix (neuron kinds, leak on Speck, sizes, ...) stays;
    :func:`check` on the result reports it.  The input is not modified.
    """
    p = get_profile(target)
    net = copy.deepcopy(_as_network(model_or_network, example_inputs))
    _fold_all(net, p)
    scaler = _Scaler(net, p)
    for layer in scaler.layers.values():
        _quantize_layer(net, layer, p)
    layers = scaler.layers.values()
    net.metadata["quantization"] = {
        "target": p.name,
        "scales": {n: layer.scale for layer in layers for n in layer.synapses + layer.neurons},
        "weight_exponents": {n: layer.exponent for layer in layers for n in layer.synapses},
        "output_scales": {o: scaler.unit(scaler.groups.unit_of_sum(o)) for o in net.outputs},
    }
    return net


def _quantize_layer(net: Network, layer: _Layer, p: Profile) -> None:
    s, e = layer.scale, layer.exponent
    step = p.weight_step * 2 ** e
    for name in layer.synapses:
        node = net.nodes[name]
        scaled = node.weight.double() * layer.units[name] / s
        node.weight = (torch.round(scaled / step) * step).to(node.weight.dtype)
        if node.bias is not None:
            node.bias = torch.round(node.bias.double() / s).to(node.bias.dtype)
        if _weight_exponent(node.weight, p) is None:
            log.warning("quantize %s: the weights of %r do not fit the weight grid at the layer's scale %g (the "
                        "layer also sums unweighted inputs); check() reports them", p.name, name, s)
        log.info("quantize %s: %r scale %.6g, exponent %d, max |w_q| %d", p.name, name, s, e,
                 int(node.weight.abs().max()) if node.weight.numel() else 0)
    for name in layer.neurons:
        _quantize_neuron(net.nodes[name], s, p)


def _quantize_neuron(node: N.Neuron, s: float, p: Profile) -> None:
    """Thresholds and reset/rest values divided by ``s`` and rounded; decays on the grid."""
    if node.threshold is not None:
        node.threshold = torch.round(node.threshold.double() / s).to(node.threshold.dtype)
    for param in ("beta", "alpha"):
        value = getattr(node, param)
        if value is not None:
            setattr(node, param, quantize_decay(value, p))
    spec = dataclasses.replace(node.spec, v_reset=float(round(node.spec.v_reset / s)),
                               v_rest=float(round(node.spec.v_rest / s)))
    node.spec = _with_scalars(spec, node)


def _with_scalars(spec, node: N.Neuron):
    """``spec`` with its scalar ``beta``/``alpha``/``threshold`` matching the node's tensors
    where those are uniform (they are ignored otherwise, see :class:`~snnopt.export.network.Neuron`)."""
    values = {}
    for param in ("beta", "alpha", "threshold"):
        uniform = node.uniform(param)
        if uniform is not None:
            values[param] = uniform
    return dataclasses.replace(spec, **values)
