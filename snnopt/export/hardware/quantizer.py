"""Quantization: one scale per layer (see the package docstring) and :func:`quantize`."""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass

import torch

from .. import network as N
from ..network import Network, NetworkError
from .folds import _fold_all
from ..extract import to_network
from .graph import SYNAPSES, _sources
from .profiles import Profile, _weight_exponent, get_profile, quantize_decay

log = logging.getLogger(__name__)

ONE = "<unit>"
"""The group of values in unit 1: network inputs and spikes."""


def _spiking(node: N.Node) -> bool:
    return isinstance(node, N.Neuron) and node.spec.spiking


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
      ``v_init_q = round(v_init / s)``,
    * decays on the target's grid (:func:`quantize_decay`),

    so that ``v_q = v / s`` before rounding and the spikes match the float network up to
    the rounding.  A population fed without weights (by inputs or spikes directly) keeps
    ``s = 1``.  Weights, biases and thresholds are stored as float tensors holding the
    integer values.  ``metadata["quantization"]`` records ``target``, ``scales`` (node ->
    ``s`` for weight nodes and populations: a float value is ``s`` times the integer one),
    ``weight_exponents`` (weight node -> ``e``) and ``output_scales`` (output -> the unit
    of its values: 1 for spikes, ``s`` for a readout membrane).

    Populations in Norse's Euler or SpikingJelly's divided form become the decay form (their
    float rounding order means nothing on an integer grid).

    What quantization cannot fix (neuron kinds, leak on Speck, sizes, ...) stays;
    :func:`check` on the result reports it.  The input is not modified.
    """
    p = get_profile(target)
    net = copy.deepcopy(to_network(model_or_network, example_inputs))
    for node in net.nodes.values():
        if isinstance(node, N.Neuron):
            node.to_decay_form()  # the chips' integer arithmetic has no float order to keep
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
    """Thresholds, the initial membrane and reset/rest values divided by ``s`` and rounded; decays on the grid."""
    for param in ("threshold", "v_init"):
        value = getattr(node, param)
        if value is not None:
            setattr(node, param, torch.round(value.double() / s).to(value.dtype))
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
