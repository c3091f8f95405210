"""Chip profiles: what each target can run, and its number grids (integer ranges, decays,
weight exponents)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

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
