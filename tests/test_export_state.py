"""Initial and carried states across the export formats: a population's initial membrane
(``v_init``) is where every format starts, zero-filled initial states are rest, and
``NetworkModule.run`` checks the state it is given."""

from __future__ import annotations

import json
import logging

import onnx
import pytest
import torch
from torch import nn

import snnopt
import snnopt.export as E
from snnopt.export import NetworkError, NetworkModule, events, to_network
from snnopt.export import onnx as onnx_export

from .models import spikes

pytest.importorskip("nir")

STEPS = 120


def _exact(shape, k=32):
    """Random multiples of 1/64 in [-k/64, k/64]: every synaptic sum stays exact."""
    return torch.randint(-k, k + 1, shape).float() / 64


class _StartsAt(nn.Module):
    """A per-step loop whose neurons start from membranes the model makes from constants."""

    def __init__(self, start):
        super().__init__()
        self.start = start
        self.fc1, self.lif1 = nn.Linear(12, 16), snnopt.nn.LIFCell(0.75, reset="zero")
        self.fc2, self.lif2 = nn.Linear(16, 5), snnopt.nn.LIFCell(0.5, reset="zero")
        with torch.no_grad():
            for fc in (self.fc1, self.fc2):
                fc.weight.copy_(_exact(fc.weight.shape) + 0.125)
                fc.bias.copy_(_exact(fc.bias.shape, 8))

    def forward(self, x):
        v1 = self.start(x, 16)
        v2 = x.new_zeros(x.shape[1], 5)
        out = []
        for t in range(x.shape[0]):
            s1, v1 = self.lif1(self.fc1(x[t]), v1)
            s2, v2 = self.lif2(self.fc2(s1), v2)
            out.append(s2)
        return torch.stack(out)


def _per_neuron_start(values):
    return lambda x, n: values.expand(x.shape[1], n)


def test_initial_membrane_is_where_every_format_starts(tmp_path, caplog):
    torch.manual_seed(0)
    v0 = _exact((16,), 60)
    model = _StartsAt(_per_neuron_start(v0))
    x = spikes((STEPS, 3, 12), p=0.4)
    expected = model(x)
    assert expected.sum() > 0
    net = to_network(model, (x,))
    reference = NetworkModule(net)
    assert torch.equal(reference(x), expected)
    assert not torch.equal(NetworkModule(net).run(x, {"lif1": torch.zeros(3, 16)})[0], expected)  # v0 matters

    onnx_path = E.export(model, tmp_path / "net.onnx", example_inputs=(x,))
    assert torch.equal(onnx_export.run(onnx_path, x)[0], expected)
    interface = {p.key: p.value for p in onnx.load(onnx_path).metadata_props}[onnx_export.INTERFACE_KEY]
    entry = next(e for e in json.loads(interface)["state"] if e["key"] == "lif1")
    assert entry["defaults"] == ["lif1:v"]  # other runtimes learn where the state starts
    state = {"lif1": _exact((3, 16), 60), "lif2": _exact((3, 5), 60)}
    assert torch.equal(onnx_export.run(onnx_path, x, state)[0], reference.run(x, state)[0])  # a fed state wins

    graph_path = E.export(model, tmp_path / "net.json", example_inputs=(x,))
    assert torch.equal(E.EventSimulator(events.read(graph_path)).run(x)[0], expected)

    with pytest.raises(NetworkError, match=r"population 'lif1'.*starts from membrane v = .*NIR has no initial state"):
        E.export(model, tmp_path / "net.nir", dt=1e-3, example_inputs=(x,))
    nir_path = E.export(model, tmp_path / "net.nir", dt=1e-3, example_inputs=(x,), extensions=True)
    assert "lif1: the initial membrane" in caplog.text
    loaded = snnopt.from_nir(nir_path)
    assert torch.equal(loaded(x), expected)
    assert torch.equal(loaded.run(x, state)[0], reference.run(x, state)[0])


@pytest.mark.parametrize("start", [lambda x, n: torch.zeros(x.shape[1], n), lambda x, n: x.new_zeros(x.shape[1], n),
                                   lambda x, n: torch.full((x.shape[1], n), 0.0)])
def test_zero_filled_initial_states_are_rest(start, tmp_path):
    torch.manual_seed(1)
    model = _StartsAt(start)
    x = spikes((60, 2, 12), p=0.4)
    net = to_network(model, (x,))
    assert all(node.v_init is None for node in net.nodes.values() if node.kind == "neuron")
    path = E.export(model, tmp_path / "z.nir", dt=1e-3, example_inputs=(x,))  # rest: plain NIR holds it
    assert torch.equal(snnopt.from_nir(path)(x), model(x))


def test_initial_state_computed_from_the_input_is_refused():
    model = _StartsAt(lambda x, n: x[0].sum(-1, keepdim=True).expand(x.shape[1], n))
    with pytest.raises(NetworkError, match="spiking value"):
        to_network(model, (spikes((5, 2, 12)),))


def test_run_rejects_unknown_state_keys_and_wrong_shapes():
    model = nn.Sequential(nn.Linear(12, 16), snnopt.nn.CubaLIF(0.5, 0.75, reset="zero"), nn.Linear(16, 4),
                          snnopt.nn.LI(0.8))
    x = spikes((20, 2, 12))
    module = NetworkModule(to_network(model, (x,)))
    _, final = module.run(x)
    assert sorted(final) == ["1", "3"]
    i, v = (torch.rand(2, 16) for _ in range(2))
    assert not torch.equal(module.run(x, {"1": (i, v)})[0], module.run(x)[0])
    with pytest.raises(ValueError, match=r"unknown state entries \['lif1'\]; the network carries \['1', '3'\]"):
        module.run(x, {"lif1": v})
    with pytest.raises(ValueError, match=r"state '3' must be a tensor \[2, 4\]; got \[3, 4\]"):
        module.run(x, {"3": torch.zeros(3, 4)})
    with pytest.raises(ValueError, match=r"state '1' must be \(i, v\), each a tensor \[2, 16\]"):
        module.run(x, {"1": v})


def test_modules_left_in_training_mode_are_named(caplog):
    """Export reads the model as ``eval()`` computes it: BatchNorm and Dropout modules left in
    training mode are named in a warning (none once the model is in eval mode), and the
    model's own mode is left as it was."""
    class Net(nn.Sequential):
        def forward(self, x):  # BatchNorm1d over [T x B, 12]
            y = self[1](self[0](x.flatten(0, 1))).unflatten(0, x.shape[:2])
            return self[3](self[2](y))

    model = Net(nn.Linear(10, 12), nn.BatchNorm1d(12), nn.Dropout(0.2), snnopt.nn.LIF(0.8))
    x = (torch.rand(6, 3, 10) < 0.3).float()
    model[1].eval()
    with caplog.at_level(logging.WARNING, logger="snnopt.export.extract"):
        to_network(model, (x,))
    assert "`2` in training mode" in caplog.text and "`1`" not in caplog.text
    assert model.training and model[2].training
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="snnopt.export.extract"):
        to_network(model.eval(), (x,))
    assert "training mode" not in caplog.text
