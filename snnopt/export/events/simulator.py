"""The event-driven reference simulator of an event graph."""

from __future__ import annotations

import networkx as nx
import torch

from ...nn.functional import neuron_step
from .maps import _fan_out
from .validate import _Population, _Projection, _compile


class EventSimulator:
    """Runs an event graph event by event (algorithm in :mod:`snnopt.export.events`).

    ``run(x, state=None) -> (out, state)`` has :meth:`NetworkModule.run
    <snnopt.export.runtime.NetworkModule.run>`'s convention: ``x`` is time-major ``[T, B,
    *shape]`` (a tuple in port order for several inputs), ``out`` likewise; ``state`` maps a
    neuron population to ``v`` or ``(i, v)`` (``[B, *shape]``) and ``"<line>:out"`` to a
    delay line's value of the previous step, which is the network's ``"<source>:out"``;
    a missing population starts at its ``v_init`` (zeros without one; the current at
    zero), other missing entries are zeros.  After a run, ``stats`` holds ``events`` (non-zero source
    outputs processed) and ``synaptic_events`` (synapse additions made).
    """

    def __init__(self, graph: nx.DiGraph):
        self._model = _compile(graph, "event graph")
        self._outgoing: dict[str, list[_Projection]] = {n: [] for n in self._model.populations}
        for proj in self._model.projections:
            self._outgoing[proj.source].append(proj)
        self.stats = {"events": 0, "synaptic_events": 0}

    @property
    def inputs(self) -> list[str]:
        return list(self._model.inputs)

    @property
    def outputs(self) -> list[str]:
        return list(self._model.outputs)

    def run(self, x, state: dict | None = None):
        """Outputs and final state from ``state`` (see the class docstring)."""
        xs = self._check_inputs(x)
        steps, batch = xs[0].shape[:2]
        state = dict(state or {})
        line_keys = {f"{line}:out" for pop in self._model.populations.values() for line in pop.lines}
        unknown = set(state) - set(self._model.order) - line_keys
        if unknown:
            raise ValueError(f"state entries {sorted(unknown)} name no neuron population {self._model.order} and no "
                             f"delay line {sorted(line_keys)}")
        neurons = {n: self._initial(n, state, batch) for n in self._model.order}
        lines = self._initial_lines(state, batch)
        self.stats = {"events": 0, "synaptic_events": 0}
        outs = {n: [] for n in self._model.outputs}
        with torch.no_grad():
            for t in range(steps):
                values, lines = self._step([x[t] for x in xs], neurons, lines, batch)
                for n in outs:
                    outs[n].append(values[n].reshape(batch, *self._model.populations[n].shape))
        result = [torch.stack(outs[n]) if outs[n] else
                  xs[0].new_zeros((0, batch, *self._model.populations[n].shape)) for n in self._model.outputs]
        return (result[0] if len(result) == 1 else tuple(result)), self._final(neurons, lines, batch)

    def _check_inputs(self, x) -> list[torch.Tensor]:
        xs = list(x) if isinstance(x, (tuple, list)) else [x]
        names = self._model.inputs
        if len(xs) != len(names):
            raise ValueError(f"the graph has inputs {names}; pass a tuple of {len(names)} tensors")
        for name, value in zip(names, xs):
            shape = self._model.populations[name].shape
            if not isinstance(value, torch.Tensor) or value.dim() != len(shape) + 2 or tuple(value.shape[2:]) != shape:
                got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"input {name!r} must be time-major [T, B, {', '.join(map(str, shape))}]; got {got}")
        if len({tuple(v.shape[:2]) for v in xs}) != 1:
            raise ValueError(f"the inputs differ in [T, B]: {[list(v.shape[:2]) for v in xs]}")
        return [v.to(self._model.dtype) for v in xs]

    def _initial(self, name: str, state: dict, batch: int) -> list:
        """``[v, i]`` of a neuron population, flattened to ``[B, size]`` (``None``: zeros);
        without a given state, ``v`` is the population's ``v_init``."""
        pop = self._model.populations[name]
        value = state.get(name)
        if value is None:
            v_init = pop.params["v_init"]
            return [None if v_init is None else v_init.expand(batch, pop.size).clone(), None]
        if pop.cfg.has_current:
            if not (isinstance(value, (tuple, list)) and len(value) == 2):
                raise ValueError(f"the state of {pop.cfg.kind} population {name!r} is (i, v)")
            i, v = value
        else:
            i, v = None, value
        return [self._flat_state(v, pop, batch, name), self._flat_state(i, pop, batch, name)]

    def _flat_state(self, value, pop: _Population, batch: int, key: str):
        if value is None:
            return None
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != (batch, *pop.shape):
            got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"state {key!r} must be a tensor [{batch}, {', '.join(map(str, pop.shape))}], got {got}")
        return value.to(self._model.dtype).reshape(batch, pop.size)

    def _initial_lines(self, state: dict, batch: int) -> dict:
        lines = {}
        for pop in self._model.populations.values():
            for line in pop.lines:
                value = self._flat_state(state.get(f"{line}:out"), pop, batch, f"{line}:out")
                lines[(pop.name, line)] = value if value is not None else self._zeros(pop, batch)
        return lines

    def _final(self, neurons: dict, lines: dict, batch: int) -> dict:
        final = {}
        for name, (v, i) in neurons.items():
            pop = self._model.populations[name]
            if v is None:
                continue
            v = v.reshape(batch, *pop.shape)
            final[name] = (i.reshape(batch, *pop.shape), v) if pop.cfg.has_current else v
        for (target, line), value in lines.items():
            final[f"{line}:out"] = value.reshape(batch, *self._model.populations[target].shape)
        return final

    def _zeros(self, pop: _Population, batch: int) -> torch.Tensor:
        return torch.zeros(batch, pop.size, dtype=self._model.dtype)

    def _start(self, bias, pop: _Population, batch: int) -> torch.Tensor:
        return self._zeros(pop, batch) if bias is None else bias.expand(batch, pop.size).clone()

    def _step(self, xs: list, neurons: dict, lines: dict, batch: int):
        """One time step: returns the outputs' values by name and the delay lines' values for
        the next step; updates ``neurons`` in place."""
        pops = self._model.populations
        buffers = {n: self._start(p.bias, p, batch) for n, p in pops.items() if p.kind != "input"}
        next_lines = {}
        for target, line in lines:
            next_lines[(target, line)] = self._start(pops[target].lines[line][1], pops[target], batch)
        for name, x in zip(self._model.inputs, xs):
            self._emit(name, x.reshape(batch, -1), buffers, next_lines)
        for name in self._model.order:
            pop = pops[name]
            drive = self._summed(pop, buffers, lines)
            if pop.params["input_scale"] is not None:
                drive = drive * pop.params["input_scale"]
            state = neurons[name]
            out, state[0], state[1] = neuron_step(drive, state[0], state[1], pop.params["beta"],
                                                  pop.params["alpha"], pop.params["threshold"], pop.cfg)
            self._emit(name, out, buffers, next_lines)
        return {n: self._summed(pops[n], buffers, lines) for n in self._model.outputs}, next_lines

    @staticmethod
    def _summed(pop: _Population, buffers: dict, lines: dict) -> torch.Tensor:
        """The buffer (bias + delay-0 events) plus each line's previous value, ``count`` times."""
        x = buffers[pop.name]
        for line, (count, _) in pop.lines.items():
            for _ in range(count):
                x = x + lines[(pop.name, line)]
        return x

    def _emit(self, name: str, out: torch.Tensor, buffers: dict, next_lines: dict) -> None:
        """Deliver the events (non-zero entries) of ``out`` ``[B, size]`` along every outgoing
        projection: event ``(b, j, a)`` adds ``a * w`` at ``(b, post)`` for each synapse
        ``(j, post, w)``."""
        projections = self._outgoing[name]
        if not projections:
            return
        b, j = out.nonzero(as_tuple=True)
        self.stats["events"] += len(j)
        if not len(j):
            return
        amount = out[b, j]
        for proj in projections:
            which, syn = _fan_out(proj.start, j)
            target = buffers[proj.target] if proj.line is None else next_lines[(proj.target, proj.line)]
            n_post = target.shape[1]
            target.view(-1).index_add_(0, b[which] * n_post + proj.post[syn], amount[which] * proj.weight[syn])
            self.stats["synaptic_events"] += len(syn)
