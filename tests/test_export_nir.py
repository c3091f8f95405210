"""NIR export and import: exact round trips, interoperability with nirtorch, snnTorch and Norse,
and clear errors on what NIR cannot hold or on damaged files."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest
import torch
from torch import nn

import snnopt
import snnopt.export as E
from snnopt.export import NetworkError, NetworkModule, to_network
from snnopt.export import nir as nir_export
from snnopt.spec import NeuronSpec

from .models import MLP, ConvNet, HandRecurrent, LoopConvNet, LoopMLP, neuron_kwargs, spikes

nir = pytest.importorskip("nir")

STEPS = 200


def _recurrent(reset="zero"):
    return nn.Sequential(nn.Linear(12, 16), snnopt.nn.Recurrent(snnopt.nn.LIF(0.9, reset=reset),
                                                                 nn.Linear(16, 16, bias=False)),
                         nn.Linear(16, 5), snnopt.nn.LI(0.8))


def _cuba():
    return nn.Sequential(nn.Linear(12, 16), snnopt.nn.CubaLIF(alpha=0.7, beta=0.85, reset="zero"),
                         nn.Linear(16, 6), snnopt.nn.IF(threshold=1.5, reset="zero"))


def _per_neuron():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(12, 16), snnopt.nn.LIF(torch.rand(16) * 0.5 + 0.45, torch.rand(16) + 0.5,
                                                          reset="zero"), nn.Linear(16, 5), snnopt.nn.LI(0.8))


MODELS = {
    "mlp": (lambda: MLP(reset="zero"), (12,)),
    "loop_mlp": (lambda: LoopMLP(reset="zero", surrogate="fast_sigmoid"), (12,)),
    "conv": (lambda: ConvNet(reset="zero"), (2, 12, 12)),
    "loop_conv": (lambda: LoopConvNet(reset="zero"), (2, 12, 12)),
    "recurrent": (_recurrent, (12,)),
    "cuba_if": (_cuba, (12,)),
    "per_neuron": (_per_neuron, (12,)),
}


def _random_state(module: NetworkModule, x, seed=0):
    """A non-zero state of every population (and delayed source) of ``module``'s network."""
    _, state = module.run(x[:1])
    g = torch.Generator().manual_seed(seed)

    def rand(v):
        return tuple(rand(t) for t in v) if isinstance(v, tuple) else torch.rand(v.shape, generator=g) * 1.2 - 0.2
    return {k: rand(v) for k, v in state.items()}


@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_reproduces_spikes_for_200_steps_from_non_zero_state(name, tmp_path):
    make, shape = MODELS[name]
    torch.manual_seed(0)
    model = make()
    x = spikes((STEPS, 3, *shape), p=0.3)
    path = E.export(model, tmp_path / "net.nir", dt=1e-3, example_inputs=(x,))
    assert nir.read(path, type_check=True) is not None  # the file passes nir's own type check on read
    original = NetworkModule(to_network(model, (x,)))
    loaded = snnopt.from_nir(path)
    assert torch.equal(loaded(x), model(x))  # from rest: the model itself
    state = _random_state(original, x)
    out_a, final_a = original.run(x, state)
    out_b, final_b = loaded.run(x, state)
    assert out_a.abs().sum() > 0
    assert torch.equal(out_a, out_b)
    for key in final_a:
        for a, b in zip(*(v if isinstance(v, tuple) else (v,) for v in (final_a[key], final_b[key]))):
            assert torch.equal(a, b), key


def test_parameters_come_back_bit_for_bit(tmp_path):
    model = _per_neuron()
    x = spikes((4, 2, 12))
    net = to_network(model, (x,))
    back = nir_export.read(nir_export.write(net, tmp_path / "p.nir", dt=2.5e-4))
    for name, node in net.nodes.items():
        other = back.nodes[name]
        assert type(other) is type(node)
        if isinstance(node, E.network.Neuron):
            for p in ("beta", "threshold"):
                if getattr(node, p) is not None:
                    assert torch.equal(getattr(node, p), getattr(other, p)), (name, p)
            assert other.spec.reset == node.spec.reset and other.spec.scale == 1.0 and other.input_scale is None
        if isinstance(node, E.network.Affine):
            assert torch.equal(node.weight, other.weight) and torch.equal(node.bias, other.bias)


def test_nir_file_layout_full_shapes_conv_input_shape_flatten_dims(tmp_path):
    model = ConvNet(reset="zero")
    x = spikes((4, 2, 2, 12, 12))
    graph = nir_export.to_nir(to_network(model, (x,)), dt=1e-3)
    nodes = graph.nodes
    assert tuple(nodes["conv"].input_shape) == (12, 12)
    assert nodes["flatten"].start_dim == 0 and tuple(nodes["flatten"].input_type["input"]) == (4, 6, 6)
    assert nodes["lif1"].tau.shape == (4, 6, 6) and nodes["lif1"].v_threshold.shape == (4, 6, 6)
    assert nodes["lif1"].r.dtype == np.float64
    np.testing.assert_allclose(nodes["lif1"].tau, 1e-3 / (1 - np.float64(np.float32(0.8))))
    np.testing.assert_allclose(nodes["lif1"].r, nodes["lif1"].tau / 1e-3)
    assert isinstance(nodes["pool"], nir.AvgPool2d) and isinstance(nodes["scale"], nir.Scale)
    assert graph.metadata["dt"] == 1e-3


def test_sum_pooling_exports_as_sumpool(tmp_path):
    model = nn.Sequential(nn.Flatten(0, 1), nn.Conv2d(2, 3, 3), nn.AvgPool2d(2, divisor_override=1),
                          nn.Unflatten(0, (5, 2)), snnopt.nn.LIF(0.9, reset="zero"))
    x = spikes((5, 2, 2, 10, 10))
    net = to_network(_Wrapped(model), (x,))
    graph = nir_export.to_nir(net, dt=1e-3)
    assert any(isinstance(n, nir.SumPool2d) for n in graph.nodes.values())
    back = NetworkModule(nir_export.read(graph))
    assert torch.equal(back(x), model(x))


class _Wrapped(nn.Module):
    """Merges time and batch around a per-sample conv stack (SeqToANN style)."""

    def __init__(self, seq):
        super().__init__()
        self.conv, self.pool, self.lif = seq[1], seq[2], seq[4]

    def forward(self, x):
        T, B = x.shape[:2]
        return self.lif(self.pool(self.conv(x.flatten(0, 1))).unflatten(0, (T, B)))


def test_snntorch_next_step_zero_reset_exports_exactly(tmp_path):
    snntorch = pytest.importorskip("snntorch")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.lif1 = nn.Linear(12, 16), snntorch.Leaky(beta=0.8, reset_mechanism="zero")
            self.fc2, self.lif2 = nn.Linear(16, 5), snntorch.Leaky(beta=0.7, reset_mechanism="zero")

        def forward(self, x):
            m1, m2 = self.lif1.init_leaky(), self.lif2.init_leaky()
            out = []
            for t in range(x.shape[0]):
                s1, m1 = self.lif1(self.fc1(x[t]) * 2, m1)
                s2, m2 = self.lif2(self.fc2(s1) * 2, m2)
                out.append(s2)
            return torch.stack(out)

    torch.manual_seed(1)
    model = Net()
    x = spikes((STEPS, 3, 12), p=0.4)
    net = to_network(model, (x,))
    assert {n.spec.reset_timing for n in net.nodes.values() if n.kind == "neuron"} == {"next"}
    loaded = snnopt.from_nir(nir_export.write(net, tmp_path / "snn.nir", dt=1e-4))
    expected = model(x)
    assert expected.sum() > 0
    assert torch.equal(loaded(x), expected)


def test_subtractive_reset_is_refused_with_the_options():
    x = spikes((4, 2, 12))
    net = to_network(MLP(reset="subtract"), (x,))
    with pytest.raises(NetworkError, match=r"'lif1'.*subtractive reset.*reset='zero'.*extensions=True"):
        nir_export.to_nir(net, dt=1e-3)


@pytest.mark.parametrize("reset, fire, match", [("none", ">", "never resets"), ("zero", ">=", "v >= threshold")])
def test_other_inexpressible_neurons_are_refused(reset, fire, match):
    spec = NeuronSpec(kind="lif", beta=0.9, threshold=1.0, reset=reset, fire=fire)
    net = _single_population(spec)
    with pytest.raises(NetworkError, match=match):
        nir_export.to_nir(net, dt=1e-3)


def _single_population(spec, n=6):
    from snnopt.export import network as N

    net = N.Network()
    net.add("input", N.Input((n,)))
    net.add("fc", N.Affine(torch.randn(n, n), torch.zeros(n)), ["input"])
    net.add("pop", N.Neuron(spec, (n,), beta=spec.beta, threshold=spec.threshold), ["fc"])
    net.add("output", N.Output(), ["pop"])
    return net


@pytest.mark.parametrize("name", ["mlp", "recurrent"])
def test_extension_keeps_subtractive_reset_for_snnopt_and_says_so(name, tmp_path, caplog):
    make = {"mlp": lambda: MLP(**neuron_kwargs("subtract", surrogate="triangle", learn=True)),
            "recurrent": lambda: _recurrent("subtract")}[name]
    torch.manual_seed(2)
    model = make()
    x = spikes((STEPS, 3, 12), p=0.3)
    with caplog.at_level(logging.WARNING, logger="snnopt.export.nir"):
        path = E.export(model, tmp_path / "ext.nir", dt=1e-3, example_inputs=(x,), extensions=True)
    assert "readers other than snnopt" in caplog.text
    graph = nir.read(path)
    assert "snnopt_extensions" in graph.metadata
    lif = next(n for n in graph.nodes.values() if isinstance(n, nir.LIF))
    assert json.loads(lif.metadata["snnopt_spec"])["reset"] == "subtract"
    original = NetworkModule(to_network(model, (x,)))
    loaded = snnopt.from_nir(path)
    state = _random_state(original, x, seed=5)
    assert torch.equal(original.run(x, state)[0], loaded.run(x, state)[0])
    specs = [n.spec for n in loaded.network().nodes.values() if n.kind == "neuron" and n.spec.spiking]
    assert all(s.reset == "subtract" for s in specs)
    if name == "mlp":  # training fields come back: surrogate and learnable parameters
        assert all(s.surrogate.name == "triangle" and s.learnable == {"beta", "threshold"} for s in specs)


def test_dt_is_required_and_read_back(tmp_path):
    x = spikes((4, 2, 12))
    net = to_network(MLP(reset="zero"), (x,))
    with pytest.raises(NetworkError, match="dt="):
        nir_export.write(net, tmp_path / "a.nir")
    with pytest.raises(NetworkError, match="positive"):
        nir_export.to_nir(net, dt=-1.0)
    path = nir_export.write(net, tmp_path / "a.nir", dt=5e-4)
    assert nir_export.read(path).metadata["dt"] == 5e-4
    graph = nir.read(path)
    graph.metadata = {}
    with pytest.raises(NetworkError, match="does not record its time step"):
        nir_export.read(graph)
    # read at another dt: same taus, other discrete decay
    slow = nir_export.read(graph, dt=1e-4)
    assert slow.nodes["lif1"].uniform("beta") == pytest.approx(1 - 1e-4 / (5e-4 / (1 - 0.85)), rel=1e-6)


class _Doubled(nn.Module):
    """``fc2(s + s)``: one population feeding the next twice (two equal edges)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.lif1 = nn.Linear(12, 16), snnopt.nn.LIF(0.75, reset="zero")
        self.fc2, self.lif2 = nn.Linear(16, 5), snnopt.nn.LIF(0.5, reset="zero")

    def forward(self, x):
        s = self.lif1(self.fc1(x) * 3)
        return self.lif2(self.fc2(s + s))


def test_an_edge_taken_twice_is_one_nir_edge_through_a_scale(tmp_path):
    torch.manual_seed(1)
    model = _Doubled()
    x = spikes((STEPS, 3, 12))
    path = E.export(model, tmp_path / "d.nir", dt=1e-3, example_inputs=(x,))
    graph = nir.read(path)
    assert len(set(graph.edges)) == len(graph.edges)
    assert any(isinstance(n, nir.Scale) and np.all(n.scale == 2) for n in graph.nodes.values())
    with torch.no_grad():
        want = model(x)
    assert 0 < float(want.mean()) < 1
    assert torch.equal(snnopt.from_nir(path)(x), want)


def test_from_nir_module_compiles_and_trains(tmp_path):
    torch.manual_seed(0)
    model = ConvNet(reset="zero")
    x = spikes((6, 4, 2, 12, 12))
    loaded = snnopt.from_nir(E.export(model, tmp_path / "c.nir", dt=1e-3, example_inputs=(x,)))
    for mode in ("dense", "sparse"):
        fast = snnopt.compile(loaded, mode=mode, example_inputs=(x,))
        assert torch.equal(fast(x), model(x))
        loaded.zero_grad()
        (fast(x) * torch.randn(6, 4, 5)).sum().backward()
        assert all(p.grad is not None for p in loaded.parameters())
    assert not fast.report.eager


def test_nirtorch_with_snnopt_node_map_runs_the_file(tmp_path):
    nirtorch = pytest.importorskip("nirtorch")
    for name in ("conv", "recurrent"):
        make, shape = MODELS[name]
        torch.manual_seed(4)
        model = make()
        x = spikes((60, 3, *shape), p=0.3)
        path = E.export(model, tmp_path / f"{name}.nir", dt=1e-3, example_inputs=(x,))
        module = nirtorch.nir_to_torch(nir.read(path), nir_export.nirtorch_node_map(1e-3))
        out, state = module(x[0])
        outs = [out]
        for t in range(1, x.shape[0]):
            out, state = module(x[t], state)
            outs.append(out)
        assert torch.equal(torch.stack(outs), model(x)), name


def _plain_mlp():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(12, 16), snnopt.nn.LIF(0.85, reset="zero"), nn.Linear(16, 5),
                          snnopt.nn.LIF(0.75, reset="zero"))
    with torch.no_grad():
        model[0].weight.mul_(6)
        model[2].weight.mul_(6)
    return model


def test_snntorch_importer_gives_the_same_spikes(tmp_path):
    pytest.importorskip("snntorch")
    from snntorch.import_nir import import_from_nir

    model = _plain_mlp()
    x = spikes((STEPS, 3, 12), p=0.3)
    path = E.export(model, tmp_path / "m.nir", dt=1e-4, example_inputs=(x,))  # snnTorch assumes dt = 1e-4 s
    module = import_from_nir(nir.read(path))
    out, state = module(x[0])
    outs = [out]
    for t in range(1, STEPS):
        out, state = module(x[t], state)
        outs.append(out)
    expected = model(x)
    assert expected.sum() > 20
    assert torch.equal(torch.stack(outs), expected)


def test_norse_importer_differs_only_by_ignoring_r(tmp_path, caplog):
    """Norse's importer ignores NIR's ``r`` (it warns that r should be 1): it integrates
    ``v <- beta v + (1 - beta) x`` where the file says ``v <- beta v + x``.  With the input
    scale ``1 - beta`` snnopt's import of the same file gives Norse's spikes exactly."""
    norse = pytest.importorskip("norse.torch")
    model = _plain_mlp()
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.mul_(5)
    x = spikes((STEPS, 3, 12), p=0.3)
    path = E.export(model, tmp_path / "m.nir", dt=1e-4, example_inputs=(x,))
    caplog.set_level(logging.ERROR)  # Norse warns about r on the root logger
    module = norse.from_nir(nir.read(path), dt=1e-4)
    state, outs = None, []
    for t in range(STEPS):
        out, state = module(x[t], state)
        outs.append(out)
    net = nir_export.read(path)
    for node in net.nodes.values():
        if node.kind == "neuron":
            node.spec = dataclasses.replace(node.spec, scale=float(np.float32(1 - node.uniform("beta"))))
    expected = NetworkModule(net)(x)
    assert expected.sum() > 20
    assert torch.equal(torch.stack(outs), expected)
    assert not torch.equal(expected, model(x))  # and the difference is real


# -- bad input -------------------------------------------------------------------------------

def test_damaged_files_give_clear_errors(tmp_path):
    x = spikes((4, 2, 12))
    good = E.export(MLP(reset="zero"), tmp_path / "good.nir", dt=1e-3, example_inputs=(x,))
    data = good.read_bytes()
    (tmp_path / "truncated.nir").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.nir").write_bytes(b"\x00not a nir file" * 50)
    for name in ("truncated.nir", "garbage.nir"):
        with pytest.raises(NetworkError, match=f"cannot read NIR file .*{name}"):
            snnopt.from_nir(tmp_path / name)
    with pytest.raises(NetworkError, match="does not exist"):
        snnopt.from_nir(tmp_path / "missing.nir")
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(NetworkError, match="not a NIR graph"):
        snnopt.from_nir(tmp_path / "other.h5")


def test_unsupported_nir_nodes_are_named():
    graph = nir.NIRGraph(nodes={"input": nir.Input(input_type={"input": np.array([4])}),
                                "wait": nir.Delay(delay=np.ones(4)),
                                "output": nir.Output(output_type={"output": np.array([4])})},
                         edges=[("input", "wait"), ("wait", "output")], metadata={"dt": 1e-3}, type_check=False)
    with pytest.raises(NetworkError, match="'wait' is a Delay"):
        snnopt.from_nir(graph)
    lif = nir.LIF(tau=np.full(4, 0.01), r=np.full(4, 10.0), v_leak=np.array([0.0, 0.1, 0.0, 0.0]),
                  v_threshold=np.ones(4), v_reset=np.zeros(4))
    graph = nir.NIRGraph(nodes={"input": nir.Input(input_type={"input": np.array([4])}), "lif": lif,
                                "output": nir.Output(output_type={"output": np.array([4])})},
                         edges=[("input", "lif"), ("lif", "output")], metadata={"dt": 1e-3})
    with pytest.raises(NetworkError, match="'lif': per-neuron v_leak"):
        snnopt.from_nir(graph)
    graph.edges.append(("ghost", "lif"))
    with pytest.raises(NetworkError, match="unknown node 'ghost'"):
        snnopt.from_nir(graph)


def test_models_without_a_nir_form_are_refused_with_the_node_named(tmp_path):
    model = nn.Sequential(nn.Flatten(0, 1), nn.Conv2d(2, 3, 3), nn.MaxPool2d(2), nn.Unflatten(0, (4, 2)),
                          snnopt.nn.LIF(0.9, reset="zero"))
    with pytest.raises(NetworkError, match="max pooling"):
        E.export(_Wrapped(model), tmp_path / "m.nir", dt=1e-3, example_inputs=(spikes((4, 2, 2, 10, 10)),))
    with pytest.raises(NetworkError, match=r"'lif1'.*beta must lie in \[0, 1\)"):
        nir_export.to_nir(_beta_negative(), dt=1e-3)
    with pytest.raises(ValueError, match="suffix"):
        E.export(MLP(), tmp_path / "m.xyz", example_inputs=(spikes((4, 2, 12)),))
    with pytest.raises(NetworkError, match="example_inputs"):
        E.export(MLP(), tmp_path / "m.nir", dt=1e-3)


def test_a_directory_is_not_taken_for_a_missing_nir_file(tmp_path):
    E.export(MLP(reset="zero"), tmp_path / "net.nir", dt=1e-3, example_inputs=(spikes((4, 2, 12)),))
    with pytest.raises(NetworkError, match=r"is a directory, not a NIR file: pass the path of a \.nir file.*"
                                           r"it holds net\.nir"):
        snnopt.from_nir(tmp_path)


def test_a_network_without_neurons_exports_with_a_warning(tmp_path, caplog):
    """A graph of synapses only is legal in every format: it is written, and a warning names the model."""
    model = nn.Sequential(nn.Linear(12, 5))
    x = spikes((4, 2, 12))
    for suffix in ("nir", "onnx", "json"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="snnopt.export"):
            E.export(model, tmp_path / f"m.{suffix}", dt=1e-3, example_inputs=(x,))
        assert "the network of Sequential holds no spiking neuron (only affine nodes)" in caplog.text
        assert "snnopt.nn.LIF" in caplog.text
    torch.testing.assert_close(snnopt.from_nir(tmp_path / "m.nir")(x), model(x))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="snnopt.export"):
        E.export(MLP(reset="zero"), tmp_path / "n.nir", dt=1e-3, example_inputs=(x,))
    assert "no spiking neuron" not in caplog.text


def test_hand_written_recurrence_points_to_recurrent(tmp_path):
    x = spikes((4, 2, 12))
    with pytest.raises(NetworkError, match=r"neuron `lif` is called step by step with its own output of the "
                                           r"previous step fed back into its input \(through `rec`\).*"
                                           r"snnopt\.nn\.Recurrent\(neuron, nn\.Linear\(16, 16\)\)"):
        E.export(HandRecurrent(reset="zero"), tmp_path / "r.nir", dt=1e-3, example_inputs=(x,))
    hand = HandRecurrent(reset="zero")
    fixed = nn.Sequential(hand.fc, snnopt.nn.Recurrent(snnopt.nn.LIF(0.9, reset="zero"), hand.rec))
    path = E.export(fixed, tmp_path / "r.nir", dt=1e-3, example_inputs=(x,))  # the form the message names
    x = spikes((30, 2, 12))
    assert torch.equal(snnopt.from_nir(path)(x), hand(x))


def test_linear_on_several_feature_dims_suggests_flattening(tmp_path):
    x = spikes((4, 2, 5, 6))
    model = nn.Sequential(nn.Linear(6, 4), snnopt.nn.LIF(0.9, reset="zero"))
    with pytest.raises(NetworkError, match=r"graph node .*nn\.Linear `0` \(6 -> 4\) gets features \(5, 6\).*"
                                           r"nn\.Flatten\(start_dim=2\) \(or x\.flatten\(2\)\).*"
                                           r"in_features=30"):
        E.export(model, tmp_path / "l.nir", dt=1e-3, example_inputs=(x,))
    fixed = nn.Sequential(nn.Flatten(start_dim=2), nn.Linear(30, 4), snnopt.nn.LIF(0.9, reset="zero"))
    path = E.export(fixed, tmp_path / "l.nir", dt=1e-3, example_inputs=(x,))  # the fix the message names
    assert torch.equal(snnopt.from_nir(path)(x), fixed(x))


def _beta_negative():
    net = to_network(MLP(reset="zero"), (spikes((4, 2, 12)),))
    net.nodes["lif1"].beta.fill_(-0.5)
    return net


def test_compiled_module_exports_its_source_network(tmp_path):
    torch.manual_seed(7)
    model = MLP(reset="zero")
    x = spikes((30, 2, 12))
    fast = snnopt.compile(model, mode="sparse", example_inputs=(x,))
    path = E.export(fast, tmp_path / "fast.nir", dt=1e-3, example_inputs=(x,))
    assert torch.equal(snnopt.from_nir(path)(x), model(x))


# -- what NIR states its own way -------------------------------------------------------------

def _continued(original, loaded, x, k):
    """Both modules continue ``x[k:]`` from the state ``original`` reached after ``x[:k]``."""
    _, state = original.run(x[:k])
    return original.run(x[k:], state)[0], loaded.run(x[k:], state)[0]


STATE_CONVENTIONS = {
    "reset_timing": NeuronSpec(kind="lif", beta=0.9, threshold=1.0, reset="zero", reset_timing="next"),
    "current_decay": NeuronSpec(kind="cuba_lif", alpha=0.7, beta=0.9, threshold=1.0, reset="zero",
                                current_decay="after"),
}


@pytest.mark.parametrize("field", list(STATE_CONVENTIONS))
def test_state_convention_is_kept_with_extensions_and_warned_about_without(field, tmp_path, caplog):
    spec = STATE_CONVENTIONS[field]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), snnopt.nn.Neuron(spec), nn.Linear(16, 5), snnopt.nn.Neuron(spec))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.mul_(3)
    x = spikes((STEPS, 3, 12), p=0.3)
    original = NetworkModule(to_network(model, (x,)))
    with caplog.at_level(logging.WARNING, logger="snnopt.export.nir"):
        plain = snnopt.from_nir(E.export(model, tmp_path / "plain.nir", dt=1e-3, example_inputs=(x,)))
    assert f"{field}=" in caplog.text and "NIR's convention" in caplog.text
    assert torch.equal(plain(x), model(x))  # from rest the file gives the same spikes
    expected, differs = _continued(original, plain, x, STEPS // 2)
    assert expected.sum() > 0 and not torch.equal(differs, expected)  # a carried state is NIR's
    exact = snnopt.from_nir(E.export(model, tmp_path / "ext.nir", dt=1e-3, example_inputs=(x,), extensions=True))
    assert torch.equal(_continued(original, exact, x, STEPS // 2)[1], expected)
    assert {getattr(n.spec, field) for n in exact.network().nodes.values() if n.kind == "neuron"} == {
        getattr(spec, field)}


def test_imported_cuba_current_is_nirs_own_current(float64):
    """The current state of an imported CubaLI is NIR's ``I``: compared with a float64 Euler
    integration of NIR's equations, ``I`` updated first."""
    n, dt, steps = 6, 1e-3, 40
    rng = np.random.default_rng(0)
    tau_syn, w_in = rng.uniform(2e-3, 8e-3, n), rng.uniform(0.5, 3.0, n)
    tau_mem, r, v_leak = np.full(n, rng.uniform(2e-3, 8e-3)), np.full(n, rng.uniform(0.5, 2.0)), np.zeros(n)
    graph = nir.NIRGraph(nodes={"input": nir.Input(input_type={"input": np.array([n])}),
                                "cuba": nir.CubaLI(tau_syn=tau_syn, tau_mem=tau_mem, r=r, v_leak=v_leak, w_in=w_in),
                                "output": nir.Output(output_type={"output": np.array([n])})},
                         edges=[("input", "cuba"), ("cuba", "output")], metadata={"dt": dt})
    x = rng.normal(size=(steps, 2, n))
    current, v = np.zeros((2, n)), np.zeros((2, n))
    for t in range(steps):
        current = current + dt / tau_syn * (-current + w_in * x[t])
        v = v + dt / tau_mem * (v_leak - v + r * current)
    _, state = snnopt.from_nir(graph).run(torch.from_numpy(x))
    i_final, v_final = state["cuba"]
    np.testing.assert_allclose(i_final.numpy(), current, rtol=1e-10)
    np.testing.assert_allclose(v_final.numpy(), v, rtol=1e-10)


def test_beta_zero_round_trips_and_beta_one_in_part_of_a_population_is_refused(tmp_path):
    torch.manual_seed(4)
    beta = torch.rand(16) * 0.9 * (torch.arange(16) % 2)  # every other neuron has beta = 0: tau = dt
    model = nn.Sequential(nn.Linear(12, 16), snnopt.nn.LIF(beta, reset="zero"))
    x = spikes((STEPS, 3, 12), p=0.4) * 2
    loaded = snnopt.from_nir(E.export(model, tmp_path / "b.nir", dt=1e-3, example_inputs=(x,)))
    original = NetworkModule(to_network(model, (x,)))
    state = _random_state(original, x)
    expected = original.run(x, state)[0]
    assert expected.sum() > 0 and torch.equal(loaded.run(x, state)[0], expected)
    mixed = nn.Sequential(nn.Linear(12, 16), snnopt.nn.LIF(torch.tensor([0.5] * 15 + [1.0]), reset="zero"))
    with pytest.raises(NetworkError, match=r"'1': beta is 1 in 1 of its 16 neurons.*infinite.*ONNX or the event"):
        E.export(mixed, tmp_path / "m.nir", dt=1e-3, example_inputs=(x,))


def _lif_chain(n, rng):
    return {"fc": nir.Affine(weight=rng.normal(size=(n, n)) * 2, bias=rng.uniform(0, 0.5, n)),
            "lif": nir.LIF(tau=np.full(n, 5e-3), r=np.full(n, 5.0), v_leak=np.zeros(n), v_threshold=np.ones(n),
                           v_reset=np.zeros(n))}


@pytest.mark.parametrize("edges", [[("in", "sub"), ("sub", "out")], [("in", "sub.i"), ("sub.o", "out")]],
                         ids=["graph", "graph.node"])
def test_nested_graphs_are_inlined(edges, tmp_path):
    n = 5
    chain = _lif_chain(n, np.random.default_rng(1))

    def ports(inp, out):
        return {inp: nir.Input(input_type={"input": np.array([n])}),
                out: nir.Output(output_type={"output": np.array([n])})}

    flat = nir.NIRGraph(nodes={**ports("in", "out"), **chain}, edges=[("in", "fc"), ("fc", "lif"), ("lif", "out")],
                        metadata={"dt": 1e-3})
    inner = nir.NIRGraph(nodes={**ports("i", "o"), **chain}, edges=[("i", "fc"), ("fc", "lif"), ("lif", "o")],
                         type_check=False)
    nested = nir.NIRGraph(nodes={**ports("in", "out"), "sub": inner}, edges=edges, metadata={"dt": 1e-3},
                          type_check=False)
    nir.write(tmp_path / "nested.nir", nested)
    x = torch.randn(40, 2, n)
    expected = snnopt.from_nir(flat)(x)
    assert expected.sum() > 0
    assert torch.equal(snnopt.from_nir(nested)(x), expected)
    assert torch.equal(snnopt.from_nir(tmp_path / "nested.nir")(x), expected)


def _conv_model(conv):
    with torch.no_grad():
        conv.weight.copy_(torch.randint(-8, 17, conv.weight.shape).float() / 64)  # exact sums
    return _Wrapped(nn.Sequential(nn.Flatten(0, 1), conv, nn.Identity(), nn.Identity(),
                                  snnopt.nn.LIF(0.75, reset="zero")))


def test_grouped_conv_is_written_ungrouped_and_non_square_kernel_is_refused(tmp_path, caplog):
    torch.manual_seed(5)
    model = _conv_model(nn.Conv2d(4, 6, 3, groups=2))
    x = spikes((40, 2, 4, 8, 8), p=0.4)
    with caplog.at_level(logging.WARNING, logger="snnopt.export.nir"):
        path = E.export(model, tmp_path / "g.nir", dt=1e-3, example_inputs=(x,))
    assert "ungrouped" in caplog.text
    conv = nir.read(path).nodes["conv"]  # nir's own reader, with its type check, takes the file
    assert conv.groups == 1 and conv.weight.shape == (6, 4, 3, 3)
    expected = model(x)
    assert expected.sum() > 0 and torch.equal(snnopt.from_nir(path)(x), expected)
    with pytest.raises(NetworkError, match=r"'conv'.*kernel \(3, 1\).*square kernel"):
        E.export(_conv_model(nn.Conv2d(4, 6, (3, 1))), tmp_path / "k.nir", dt=1e-3, example_inputs=(x,))


def test_export_arguments_are_checked_before_tracing(tmp_path):
    x = spikes((4, 2, 12))
    with pytest.raises(NetworkError, match="dt must be a positive number of seconds.*'1ms'"):
        E.export(MLP(reset="zero"), tmp_path / "a.nir", dt="1ms", example_inputs=(x,))
    with pytest.raises(ValueError, match="folder .*missing.* does not exist"):
        E.export(MLP(reset="zero"), tmp_path / "missing" / "a.nir", dt=1e-3, example_inputs=(x,))
    assert not (tmp_path / "missing").exists()


def test_a_nir_file_is_checked_and_converted_without_example_inputs(tmp_path):
    torch.manual_seed(8)
    model = MLP(reset="zero")
    x = spikes((30, 2, 12))
    path = E.export(model, tmp_path / "m.nir", dt=1e-3, example_inputs=(x,))
    found = E.check(path, "speck").violations  # no example_inputs: the file has the shapes
    expected = E.check(model, "speck", example_inputs=(x,)).violations
    assert found and sorted(map(str, found)) == sorted(map(str, expected))
    onnx_path = E.export(str(path), tmp_path / "m.onnx")
    torch.testing.assert_close(E.onnx.run(onnx_path, x)[0], model(x))


EULER_LIF = NeuronSpec(kind="lif", beta=1 - 0.1, scale=0.1, integration="euler", reset="zero")


def test_order_of_float_operations_needs_extensions_and_is_checked_on_import(tmp_path, caplog):
    """A population in Norse's Euler form: without extensions the export warns and the file
    reads back in the decay form; with them ``snnopt_form`` brings the form back exactly, and
    a file whose time constants were changed afterwards is refused naming the node."""
    model = nn.Sequential(nn.Linear(12, 16), snnopt.nn.Neuron(EULER_LIF))
    x = spikes((STEPS, 3, 12), p=0.3)
    with caplog.at_level(logging.WARNING, logger="snnopt.export.nir"):
        plain = snnopt.from_nir(E.export(model, tmp_path / "plain.nir", dt=1e-3, example_inputs=(x,)))
    assert "Norse's Euler order" in caplog.text and "extensions=True" in caplog.text
    assert {n.spec.integration for n in plain.network().nodes.values() if n.kind == "neuron"} == {"decay"}
    path = E.export(model, tmp_path / "ext.nir", dt=1e-3, example_inputs=(x,), extensions=True)
    specs = [n.spec for n in snnopt.from_nir(path).network().nodes.values() if n.kind == "neuron"]
    assert [(s.integration, s.scale, s.beta) for s in specs] == [("euler", 0.1, 1 - 0.1)]
    graph = nir.read(path)
    name, node = next((k, n) for k, n in graph.nodes.items() if isinstance(n, nir.LIF))
    node.tau = node.tau * 2
    nir.write(tmp_path / "edited.nir", graph)
    with pytest.raises(NetworkError, match=rf"NIR node '{name}': metadata snnopt_form .* remove the metadata"):
        snnopt.from_nir(tmp_path / "edited.nir")
