"""`NetworkModule`: a :class:`~snnopt.export.network.Network` as a PyTorch module.

The module is built from snnopt's own modules (``snnopt.nn.Neuron`` for populations,
``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.AvgPool2d`` / ``nn.Flatten`` for the
synapses), so it trains, compiles with :func:`snnopt.compile` and exports again.  It
takes a time-major input ``[T, B, *shape]`` with ``T >= 1`` (a tuple of them, in order, when
the network has several ``Input`` nodes) and returns the output ``[T, B, *shape]`` (a tuple
when there are several).

A network without cycles runs each node over the whole sequence (multi-step neurons);
a network with delayed edges runs step by step, each delayed edge delivering its
source's output of the previous step.

``run(x, state=None) -> (out, state)`` also takes and returns the state: ``state`` maps a
population's name to its state (``v``, or ``(i, v)`` for kinds with a current; each
``[B, *shape]``) and, for a network with cycles, ``"<source>:out"`` to the previous-step
output of a delayed edge's source; a missing population starts at its ``v_init`` (zeros
when it has none; the current at zero), other missing entries are zeros, and a key the
network does not carry or a tensor of the wrong shape raises ``ValueError``.  A
population's ``v_init`` is the module's buffer ``v_init_<name>``.  The final state
continues a sequence exactly: ``run(x[:k])`` then ``run(x[k:], state)`` equals ``run(x)``.
``forward(x)`` is ``run`` from its initial state (``v_init``, else rest), returning the
output only.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn.neurons import Neuron as NeuronModule
from . import network as N


class Scale(nn.Module):
    """``y = scale * x`` with a fixed elementwise ``scale`` (a buffer)."""

    def __init__(self, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())

    def forward(self, x):
        return x * self.scale


def _time_distributed(layer: nn.Module, x: torch.Tensor, batchless_rank: int) -> torch.Tensor:
    """Apply a per-sample layer to ``[T, B, ...]`` (or ``[B, ...]`` in a step) by merging T and B."""
    if x.dim() == batchless_rank + 1:
        return layer(x)
    return layer(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class NetworkModule(nn.Module):
    """Runs a :class:`Network`; see the module docstring for the calling convention."""

    def __init__(self, network: N.Network):
        super().__init__()
        self._shapes = network.validate()
        self._network_meta = dict(network.metadata)
        self._order = network.order()
        self._delayed = sorted(network.delayed_edges())
        self._sources = {n: network.predecessors(n) for n in network.nodes}
        self._kinds = {n: node.kind for n, node in network.nodes.items()}
        self._currents = {n: node.spec.has_current for n, node in network.nodes.items() if isinstance(node, N.Neuron)}
        self._inputs, self._outputs = network.inputs, network.outputs
        self._in_shapes = {n: self._shapes[srcs[0]] for n, srcs in self._sources.items() if srcs}
        self.multi_step = not self._delayed
        self.layers = nn.ModuleDict()
        keys = [_key(n) for n in network.nodes]
        if len(set(keys)) != len(keys):
            raise N.NetworkError(f"node names {list(network.nodes)} collide once dots become underscores; rename them")
        for name, node in network.nodes.items():
            layer = layer_for(node, self.multi_step)
            if layer is not None:
                self.layers[_key(name)] = layer
            if isinstance(node, N.Neuron) and node.v_init is not None:
                self.register_buffer(f"v_init_{_key(name)}", node.v_init.clone())

    def network(self) -> N.Network:
        """The network with the module's current parameter values (e.g. after training)."""
        net = N.Network(metadata=dict(self._network_meta))
        for name in self._kinds:
            net.nodes[name] = self._node(name)
        net.edges = [(s, t) for t in self._kinds for s in self._sources[t]]
        # keep the original edge order: sources are listed per target in edge order
        return net

    def _node(self, name: str) -> N.Node:
        kind = self._kinds[name]
        if kind == "input":
            return N.Input(self._shapes[name])
        if kind == "output":
            return N.Output()
        layer = self.layers[_key(name)]
        if kind == "neuron":
            params = {p: _value(layer, p) for p in N.NEURON_PARAMS if p != "v_init"}
            return N.Neuron(layer.spec(), self._shapes[name], **params, v_init=_detached(self._v_init(name)))
        if kind == "affine":
            return N.Affine(layer.weight.detach().clone(), _detached(layer.bias))
        if kind == "conv":
            return N.Conv(layer.weight.detach().clone(), _detached(layer.bias), layer.stride, layer.padding,
                          layer.dilation, layer.groups)
        if kind == "pool":
            return N.Pool("sum" if layer.divisor_override == 1 else "avg", layer.kernel_size, layer.stride,
                          layer.padding)
        if kind == "flatten":
            return N.Flatten(_batchless_dim(layer.start_dim), _batchless_dim(layer.end_dim))
        return N.Scale(layer.scale.clone())

    def forward(self, x):
        return self.run(x)[0]

    def run(self, x, state: dict | None = None):
        """Outputs and final state from ``state`` (see the module docstring)."""
        inputs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
        if len(inputs) != len(self._inputs):
            raise ValueError(f"the network has inputs {self._inputs}; pass a tuple of {len(self._inputs)} tensors")
        for name, x in zip(self._inputs, inputs):
            if x.dim() != len(self._shapes[name]) + 2 or tuple(x.shape[2:]) != self._shapes[name]:
                raise ValueError(f"input {name!r} must be time-major [T, B, {', '.join(map(str, self._shapes[name]))}]"
                                 f"; got shape {list(x.shape)}")
            N.check_steps(name, x.shape)
        state = self._start(dict(state or {}), inputs[0])
        if self.multi_step:
            values = dict(zip(self._inputs, inputs))
            final = {}
            for name in self._order:
                if name not in values:
                    values[name] = self._apply(name, self._sum(name, values), state, final)
            outs, final_state = [values[n] for n in self._outputs], final
        else:
            outs, final_state = self._run_steps(inputs, state)
        return (outs[0] if len(outs) == 1 else tuple(outs)), final_state

    def _v_init(self, name: str) -> torch.Tensor | None:
        return self._buffers.get(f"v_init_{_key(name)}")

    def _state_shapes(self) -> dict[str, tuple]:
        """Batchless shape of every state entry ``run`` takes."""
        shapes = {n: self._shapes[n] for n, kind in self._kinds.items() if kind == "neuron"}
        shapes.update({f"{src}:out": self._shapes[src] for src, _ in self._delayed})
        return shapes

    def _start(self, state: dict, like: torch.Tensor) -> dict:
        """``state`` checked (:meth:`_check_state`), with the populations it lacks at their ``v_init``."""
        batch = like.shape[1]
        self._check_state(state, batch)
        for name in self._currents:
            v_init = self._v_init(name)
            if name not in state and v_init is not None:
                v = v_init.to(like.dtype).expand(batch, *v_init.shape).clone()
                state[name] = (torch.zeros_like(v), v) if self._currents[name] else v
        return state

    def _check_state(self, state: dict, batch: int) -> None:
        """Raise ``ValueError`` for a key the network does not carry or a value not of the key's shape."""
        shapes = self._state_shapes()
        unknown = sorted(set(state) - set(shapes))
        if unknown:
            raise ValueError(f"unknown state entries {unknown}; the network carries {sorted(shapes)}")
        for key, value in state.items():
            dims = [batch, *shapes[key]]
            pair = self._currents.get(key, False)
            parts = tuple(value) if pair and isinstance(value, (tuple, list)) else (value,)
            if len(parts) != 1 + pair or any(not isinstance(p, torch.Tensor) or list(p.shape) != dims for p in parts):
                got = [list(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__ for p in parts]
                raise ValueError(f"state {key!r} must be {'(i, v), each ' if pair else ''}a tensor {dims}; got "
                                 f"{got if pair else got[0]}")

    def _run_steps(self, inputs, state):
        delayed = {}
        for src, _ in self._delayed:
            key = f"{src}:out"
            if key in state:
                delayed[src] = state[key]
        neuron_state = {n: state.get(n) for n in self._kinds if self._kinds[n] == "neuron"}
        steps = []
        for t in range(inputs[0].shape[0]):
            values = {n: x[t] for n, x in zip(self._inputs, inputs)}
            for name in self._order:
                if name in values:
                    continue
                terms = []
                for src in self._sources[name]:
                    if (src, name) in self._delayed:
                        terms.append(delayed.get(src))
                    else:
                        terms.append(values[src])
                values[name] = self._apply_step(name, terms, neuron_state, inputs[0])
            delayed = {src: values[src] for src, _ in self._delayed}
            steps.append([values[n] for n in self._outputs])
        outs = [torch.stack([s[k] for s in steps]) for k in range(len(self._outputs))]
        final = {n: v for n, v in neuron_state.items() if v is not None}
        final.update({f"{src}:out": v for src, v in delayed.items()})
        return outs, final

    def _sum(self, name, values):
        total = None
        for src in self._sources[name]:
            total = values[src] if total is None else total + values[src]
        return total

    def _apply(self, name, x, state, final):
        kind = self._kinds[name]
        if kind == "output":
            return x
        layer = self.layers[_key(name)]
        if kind == "neuron":
            out, final[name] = layer(x, state.get(name))
            return out
        if kind == "affine":
            return layer(x)
        return _time_distributed(layer, x, len(self._in_shapes[name]))

    def _apply_step(self, name, terms, neuron_state, like):
        known = [t for t in terms if t is not None]
        if not known:  # only delayed inputs, at the first step: zeros
            known = [like.new_zeros((like.shape[1], *self._in_shapes[name]))]
        x = known[0]
        for t in known[1:]:
            x = x + t
        kind = self._kinds[name]
        if kind == "output":
            return x
        layer = self.layers[_key(name)]
        if kind == "neuron":
            out, neuron_state[name] = layer(x, neuron_state[name])
            return out
        return layer(x)


def layer_for(node: N.Node, multi_step: bool = True) -> nn.Module | None:
    """The PyTorch module computing ``node`` (``None`` for inputs and outputs); neurons are
    multi-step modules or, with ``multi_step=False``, cells."""
    if isinstance(node, N.Affine):
        out_f, in_f = node.weight.shape
        layer = nn.Linear(in_f, out_f, bias=node.bias is not None)
    elif isinstance(node, N.Conv):
        cls = nn.Conv1d if node.dims == 1 else nn.Conv2d
        layer = cls(node.weight.shape[1] * node.groups, node.weight.shape[0], tuple(node.weight.shape[2:]),
                    node.stride, node.padding, node.dilation, node.groups, bias=node.bias is not None)
    elif isinstance(node, N.Pool):
        return nn.AvgPool2d(node.kernel_size, node.stride, node.padding,
                            divisor_override=1 if node.mode == "sum" else None)
    elif isinstance(node, N.Flatten):
        return nn.Flatten(node.start_dim + 1 if node.start_dim >= 0 else node.start_dim,
                          node.end_dim + 1 if node.end_dim >= 0 else node.end_dim)
    elif isinstance(node, N.Scale):
        return Scale(node.scale)
    elif isinstance(node, N.Neuron):
        # shared values as scalars: the specialised kernels and the sparse synapse fusion take them
        values = {n: node.uniform(n) if node.uniform(n) is not None else getattr(node, n)
                  for n in ("beta", "alpha", "threshold")}
        for name in node.spec.form_fixed:
            del values[name]  # the form's own value, which the network's tensor holds rounded
        return NeuronModule(node.spec, **values, input_scale=node.input_scale, multi_step=multi_step,
                            return_state=True)
    else:
        return None
    with torch.no_grad():
        layer.weight.copy_(node.weight)
        if node.bias is not None:
            layer.bias.copy_(node.bias)
    return layer


def _key(name: str) -> str:
    """A ModuleDict key for a node name (no dots, no clash with ModuleDict's attributes)."""
    key = name.replace(".", "_")
    return f"n_{key}" if not key or hasattr(nn.ModuleDict, key) else key


def _value(layer, name):
    t = getattr(layer, name, None)
    return None if t is None else t.detach().clone()


def _detached(t):
    return None if t is None else t.detach().clone()


def _batchless_dim(d: int) -> int:
    return d - 1 if d > 0 else d
