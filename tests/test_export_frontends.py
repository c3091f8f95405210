"""Models written with snnTorch, SpikingJelly and Norse export to NIR and come back with
their spikes (in float64 where the NIR file has no extensions: SpikingJelly and Norse
order the charge arithmetic in their own way, which only ``snnopt_form`` keeps), and
keep their order of float operations in every format (float32, bit for bit)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import snnopt
from snnopt.export import NetworkError
from snnopt.export import network as N

from .models import spikes

pytest.importorskip("nir")


def _scaled(model, gain):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.mul_(gain)
    return model


def _assert_round_trip(model, x, path, dt, reset=lambda: None, **options):
    """Export to NIR and back: the loaded network gives the model's spikes (which are not all zero)."""
    loaded = snnopt.from_nir(snnopt.export(model, path, dt=dt, example_inputs=(x,), **options))
    reset()
    expected = model(x)
    assert expected.sum() > 0
    assert torch.equal(loaded(x), expected)


def test_snntorch_init_hidden_conv_net(tmp_path):
    snntorch = pytest.importorskip("snntorch")
    from snntorch import utils

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.AvgPool2d(2),
                                     snntorch.Leaky(beta=0.8, reset_mechanism="zero", init_hidden=True),
                                     nn.Flatten(), nn.Linear(4 * 5 * 5, 6),
                                     snntorch.Leaky(beta=0.7, reset_mechanism="zero", init_hidden=True, output=True))

        def forward(self, x):
            utils.reset(self.net)
            out = []
            for t in range(x.shape[0]):
                spk, _ = self.net(x[t])
                out.append(spk)
            return torch.stack(out)

    torch.manual_seed(0)
    model = _scaled(Net(), 3.0)
    _assert_round_trip(model, spikes((80, 2, 2, 10, 10), p=0.3), tmp_path / "snn.nir", dt=1e-4)


def test_spikingjelly_fires_on_ge_and_needs_the_extension(tmp_path, float64):
    pytest.importorskip("spikingjelly")
    from spikingjelly.activation_based import functional, layer, neuron

    torch.manual_seed(1)
    model = nn.Sequential(layer.Linear(12, 16), neuron.LIFNode(tau=2.0, v_reset=0.0),
                          layer.Linear(16, 5), neuron.IFNode(v_reset=0.0))
    functional.set_step_mode(model, "m")
    _scaled(model, 3.0)
    x = spikes((100, 3, 12), p=0.3).double()
    with pytest.raises(NetworkError, match="v >= threshold"):
        snnopt.export(model, tmp_path / "sj.nir", dt=1e-3, example_inputs=(x,))
    _assert_round_trip(model, x, tmp_path / "sj.nir", 1e-3, lambda: functional.reset_net(model), extensions=True)


def test_norse_cells(tmp_path, float64):
    norse = pytest.importorskip("norse.torch")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.lif1 = nn.Linear(12, 16), norse.LIFBoxCell()
            self.fc2, self.lif2 = nn.Linear(16, 5), norse.LIFBoxCell()

        def forward(self, x):
            s1 = s2 = None
            out = []
            for t in range(x.shape[0]):
                z, s1 = self.lif1(self.fc1(x[t]), s1)
                z, s2 = self.lif2(self.fc2(z), s2)
                out.append(z)
            return torch.stack(out)

    torch.manual_seed(2)
    model = _scaled(Net(), 20.0)
    _assert_round_trip(model, spikes((100, 3, 12), p=0.3).double(), tmp_path / "norse.nir", dt=1e-3)


def test_norse_euler_form_exports_and_quantizes(tmp_path, float64):
    """Norse's neurons compile in the Euler form; NIR without extensions states the decay form
    (the same spikes in float64), and quantization, which rescales the decays, makes it."""
    norse = pytest.importorskip("norse.torch")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.lif = nn.Linear(12, 16), norse.LIFCell(norse.LIFParameters(v_th=torch.as_tensor(0.3)))

        def forward(self, x):
            s, out = None, []
            for t in range(x.shape[0]):
                z, s = self.lif(self.fc(x[t]), s)
                out.append(z)
            return torch.stack(out)

    torch.manual_seed(3)
    model = _scaled(Net(), 20.0)
    x = spikes((60, 3, 12), p=0.3).double()
    _assert_round_trip(model, x, tmp_path / "lif.nir", dt=1e-3)
    for suffix in ("onnx", "json"):
        snnopt.export(model, tmp_path / f"lif.{suffix}", dt=1e-3, example_inputs=(x,))
    quantized = snnopt.export.quantize(model, "loihi2", example_inputs=(x,))
    assert all(n.spec.integration == "decay" for n in quantized.nodes.values() if hasattr(n, "spec"))


def test_spikingjelly_multi_step_conv_wrappers(tmp_path, float64):
    pytest.importorskip("spikingjelly")
    from spikingjelly.activation_based import functional, layer, neuron

    torch.manual_seed(3)
    model = nn.Sequential(layer.Conv2d(2, 4, 3, padding=1), layer.AvgPool2d(2), neuron.IFNode(v_reset=0.0),
                          layer.Flatten(), layer.Linear(4 * 6 * 6, 5), neuron.IFNode(v_reset=0.0))
    functional.set_step_mode(model, "m")
    _scaled(model, 6.0)
    _assert_round_trip(model, spikes((40, 2, 2, 12, 12), p=0.3).double(), tmp_path / "sjc.nir", 1e-3,
                       lambda: functional.reset_net(model), extensions=True)


def test_spikingjelly_starts_at_v_reset_in_every_format(tmp_path, float64):
    pytest.importorskip("spikingjelly")
    from spikingjelly.activation_based import functional, layer, neuron

    from snnopt.export import EventSimulator, NetworkModule, events, to_network

    torch.manual_seed(1)
    model = nn.Sequential(layer.Linear(12, 16), neuron.LIFNode(tau=3.0, v_reset=-0.3))
    functional.set_step_mode(model, "m")
    _scaled(model, 3.0)
    x = spikes((150, 3, 12), p=0.3).double()
    functional.reset_net(model)
    expected = model(x)
    functional.reset_net(model)
    assert expected.sum() > 0
    assert torch.equal(NetworkModule(to_network(model, (x,)))(x), expected)
    graph = events.read(snnopt.export(model, tmp_path / "sj.json", example_inputs=(x,)))
    assert torch.equal(EventSimulator(graph).run(x)[0], expected)
    with pytest.raises(NetworkError, match=r"'1'.*v >= threshold.*starts from membrane v = -0.3"):
        snnopt.export(model, tmp_path / "sj.nir", dt=1e-3, example_inputs=(x,))
    _assert_round_trip(model, x, tmp_path / "sj.nir", 1e-3, lambda: functional.reset_net(model), extensions=True)
    model(x[:, :1])  # a state of batch 1 left on the module by an earlier run
    with pytest.raises(NetworkError, match="keeps a state from an earlier run; reset it"):
        to_network(model, (x,))


def _exact_weights(model, gain):
    """Weights on a grid of 1/64 times ``gain`` (a few bits, e.g. 2.5 or 0.75): with binary
    inputs every synaptic sum is exact in every runtime, so only the neurons' arithmetic can
    round differently."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randint(-16, 33, m.weight.shape) / 64 * gain)
                m.bias.zero_()
    return model


def _assert_every_format_keeps_the_order(model, x, tmp_path, expected, dt=1e-3, reset=lambda: None):
    """The exported network, its ONNX file, its event graph and its NIR file (with
    extensions) compute ``expected`` — the library's own outputs and final membranes —
    bit for bit in float32; the same network in the decay form does not."""
    from snnopt.export import EventSimulator, NetworkModule, events, to_network
    from snnopt.export import onnx as X

    reset()
    net = to_network(model, (x,))
    graph = events.read(snnopt.export(model, tmp_path / "m.json", example_inputs=(x,)))
    nir_file = snnopt.export(model, tmp_path / "m.nir", dt=dt, example_inputs=(x,), extensions=True)
    runs = {"network": NetworkModule(net).run(x), "onnx": X.run(X.to_onnx(net), x),
            "events": EventSimulator(graph).run(x), "nir": snnopt.from_nir(nir_file).run(x)}
    decay = copy.deepcopy(net)
    for node in decay.nodes.values():
        if isinstance(node, N.Neuron):
            node.to_decay_form()
    runs["decay form"] = NetworkModule(decay).run(x)
    out, membranes = expected
    assert out.abs().sum() > 0
    for how, (got, state) in runs.items():
        final = {name: s[-1] if isinstance(s, (tuple, list)) else s for name, s in state.items()}
        same = torch.equal(got, out) and all(torch.equal(final[n], v) for n, v in membranes.items())
        assert same == (how != "decay form"), how


def test_norse_euler_form_round_trips_bit_for_bit_in_float32(tmp_path):
    """Norse's LIFCell and LICell (currents decayed after use, Euler order) in every format."""
    norse = pytest.importorskip("norse.torch")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.lif = nn.Linear(12, 32), norse.LIFCell()
            self.fc2, self.li = nn.Linear(32, 6), norse.LICell()

        def forward(self, x):
            s1 = s2 = None
            out = []
            for t in range(x.shape[0]):
                z, s1 = self.lif(self.fc1(x[t]), s1)
                v, s2 = self.li(self.fc2(z), s2)
                out.append(v)
            self.final = {"lif": s1.v, "li": s2.v}
            return torch.stack(out)

    model = _exact_weights(Net(), 8.0)
    x = spikes((100, 4, 12), p=0.3)
    with torch.no_grad():
        out = model(x)
    _assert_every_format_keeps_the_order(model, x, tmp_path, (out, model.final))


@pytest.mark.parametrize("decay_input", [True, False])
@pytest.mark.parametrize("v_reset", [None, -0.25])
def test_spikingjelly_divided_form_round_trips_bit_for_bit_in_float32(tmp_path, decay_input, v_reset):
    """SpikingJelly's LIFNode (``v + (x - (v - v_reset)) / tau`` and the form without input
    decay, subtract and hard reset) in every format."""
    pytest.importorskip("spikingjelly")
    from spikingjelly.activation_based import functional, layer, neuron

    model = nn.Sequential(layer.Linear(12, 32), neuron.LIFNode(tau=3.0, decay_input=decay_input, v_reset=v_reset),
                          layer.Linear(32, 6), neuron.LIFNode(tau=1.5, decay_input=decay_input, v_reset=v_reset))
    functional.set_step_mode(model, "m")
    _exact_weights(model, 2.5 if decay_input else 0.75)
    x = spikes((100, 4, 12), p=0.3)
    functional.reset_net(model)
    with torch.no_grad():
        out = model(x)
    expected = (out, {"1": model[1].v.clone(), "3": model[3].v.clone()})
    _assert_every_format_keeps_the_order(model, x, tmp_path, expected, reset=lambda: functional.reset_net(model))
