"""The constraint rules: :func:`check` lists every :class:`Violation` of a target's
:class:`Profile`."""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import networkx as nx
import torch

from .. import network as N
from ..network import Network, NetworkError
from .folds import _fold_avg_pool, _fold_scale
from ..extract import to_network
from .graph import SYNAPSES, _sinks, _sources
from .profiles import Profile, _decay_on_grid, _in_range, _on_grid, _weight_exponent, get_profile

log = logging.getLogger(__name__)

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


def _uniform_at(value: torch.Tensor, level: str) -> bool:
    """Whether ``value`` (a population's full-shape parameter) has one value per
    ``level``: ``"layer"``, ``"channel"`` (dim 0) or ``"neuron"``."""
    if level == "neuron" or value.numel() == 0:
        return True
    if level == "layer":
        return bool((value == value.reshape(-1)[0]).all())
    flat = value.reshape(value.shape[0], -1)
    return bool((flat == flat[:, :1]).all())


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
    net = to_network(model_or_network, example_inputs)
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
