"""The event graph (snnopt.export.events): projections, files, and the event-driven simulator.

Inputs are fresh random draws each run; a failure message names the seed to replay it.
With exactly representable weights (integers / 64) and binary inputs every current is
exact in any summation order, so the simulator must match PyTorch bit for bit
(``torch.equal``); the one test with ordinary float weights states its tolerance.
"""

from __future__ import annotations

import json
import random

import networkx as nx
import pytest
import torch
from torch import nn

import snnopt.export
import snnopt.nn as snn
from snnopt.export import NetworkModule, events, to_network
from snnopt.export import network as N
from snnopt.export.network import NetworkError
from snnopt.spec import NeuronSpec
from tests import models


@pytest.fixture
def seed():
    value = random.SystemRandom().randrange(2**31)
    torch.manual_seed(value)
    return value


def spikes(*shape, p=0.3):
    return (torch.rand(shape) < p).float()


def exact_(model: nn.Module) -> nn.Module:
    """Weights and biases to random integers / 64 (exact in float32, as are their sums)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randint(-32, 33, p.shape) / 64)
    return model


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a.detach(), b.detach())
    return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))


def assert_same_state(got: dict, want: dict, seed):
    assert set(got) == set(want), f"seed {seed}"
    for key in want:
        assert same(got[key], want[key]), f"state {key!r} differs, seed {seed}"


def random_state(template: dict) -> dict:
    """A non-zero state shaped like ``template`` (membranes around the threshold, currents)."""
    def draw(t):
        return tuple(draw(x) for x in t) if isinstance(t, tuple) else torch.rand_like(t) * 1.5 - 0.25
    return {k: draw(v) for k, v in template.items()}


def check_event_simulation(model, x, seed):
    """The simulator against the model, NetworkModule from rest and from a non-zero state,
    and a run split in two continued through the state; returns the outputs from rest."""
    net = to_network(model, (x,))
    reference = NetworkModule(net)
    sim = events.EventSimulator(events.to_graph(net))
    out, state = sim.run(x)
    with torch.no_grad():
        assert same(out, model(x)), f"simulator != model, seed {seed}"
    ref_out, ref_state = reference.run(x)
    assert same(out, ref_out), f"simulator != NetworkModule, seed {seed}"
    assert_same_state(state, ref_state, seed)

    start = random_state(ref_state)
    out, state = sim.run(x, start)
    ref_out, ref_state = reference.run(x, start)
    assert same(out, ref_out), f"simulator != NetworkModule from a non-zero state, seed {seed}"
    assert_same_state(state, ref_state, seed)

    k = x.shape[0] // 3
    first, mid = sim.run(x[:k], start)
    second, end = sim.run(x[k:], mid)
    assert same(torch.cat([first, second]), out), f"a split run differs, seed {seed}"
    assert_same_state(end, state, seed)
    return ref_out


def assert_spiking(s: torch.Tensor, seed):
    """Guard against a vacuous comparison: some spikes, not all."""
    rate = float(s.detach().float().mean())
    assert 0.0 < rate < 1.0, f"spike rate {rate}, seed {seed}"


class Readout(nn.Module):
    """input * 2 -> Linear -> hidden neuron -> Linear -> LI readout (its membrane is the output)."""

    def __init__(self, hidden: nn.Module, n_in=20, n_hidden=32, n_out=6):
        super().__init__()
        self.fc1, self.hidden = nn.Linear(n_in, n_hidden), hidden
        self.fc2, self.readout = nn.Linear(n_hidden, n_out), snn.LI(0.875)

    def forward(self, x):
        s = self.hidden(self.fc1(x * 2.0))
        return self.readout(self.fc2(s))


class Recurrent(nn.Module):
    def __init__(self, n_in=10, n=24, bias=False):
        super().__init__()
        self.fc = nn.Linear(n_in, n)
        self.rec = snn.Recurrent(snn.LIF(0.75), nn.Linear(n, n, bias=bias))

    def forward(self, x):
        return self.rec(self.fc(x * 2.0))


# -- bit-exact agreement with the dense model -----------------------------------------------

def test_mlp_with_li_readout(seed):
    model = exact_(Readout(snn.LIF(0.75)))
    x = spikes(100, 4, 20)
    out = check_event_simulation(model, x, seed)
    assert out.abs().sum() > 0 and out.std() > 0, f"readout is constant, seed {seed}"
    assert_spiking(model.hidden(model.fc1(x * 2.0)), seed)


def test_conv_net(seed):
    model = exact_(models.ConvNet())
    x = spikes(100, 2, 2, 12, 12)
    out = check_event_simulation(model, x, seed)
    assert_spiking(out, seed)


def test_recurrent_feedback_with_delay(seed):
    model = exact_(Recurrent())
    x = spikes(100, 3, 10)
    out = check_event_simulation(model, x, seed)
    assert_spiking(out, seed)
    g = events.to_graph(to_network(model, (x,)))
    (key, attrs), = ((k, a) for _, _, k, a in g.edges("rec", keys=True, data=True) if a["delay"] == 1)
    assert key == "delay1:rec_recurrent" and attrs["line"] == "rec_recurrent" and attrs["kind"] == "dense"
    assert len(attrs["pre"]) == 24 * 24


def test_recurrent_bias_moves_into_the_feeding_layer(seed):
    """The model adds the recurrent bias from the first step on (``recurrent(0) = bias``);
    a delayed edge delivers zeros at the first step, so the export moves the bias into the
    Linear feeding the population, and the simulation reproduces the model from rest."""
    model = exact_(Recurrent(bias=True))
    x = spikes(100, 3, 10)
    net = to_network(model, (x,))
    assert net.nodes["rec_recurrent"].bias is None
    assert torch.equal(net.nodes["fc"].bias, model.fc.bias.detach() + model.rec.recurrent.bias.detach())
    out, _ = events.EventSimulator(events.to_graph(net)).run(x)
    with torch.no_grad():
        assert same(out, model(x)), f"seed {seed}"


@pytest.mark.parametrize("spec", [
    dict(reset="subtract"),
    dict(reset="zero", v_reset=0.25),
    dict(reset="subtract", reset_timing="next"),
    dict(reset="zero", reset_timing="next", reset_discards_input=True),
    dict(reset="subtract", reset_timing="same_pending", fire=">="),
    dict(kind="cuba_lif", alpha=0.5),
    dict(kind="cuba_lif", alpha=0.75, current_decay="after", reset="zero"),
    dict(kind="if", beta=None),
], ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_neuron_dynamics(spec, seed):
    spec = dict(spec)
    beta = spec.pop("beta", 0.75)
    neuron = snn.Neuron(NeuronSpec(beta=beta, **spec))
    model = exact_(Readout(neuron))
    x = spikes(100, 4, 20)
    check_event_simulation(model, x, seed)
    with torch.no_grad():
        assert_spiking(neuron(model.fc1(x * 2.0)), seed)


def hand_built_network() -> N.Network:
    """What models rarely produce: two paths into one population (merged into one projection),
    a delayed edge straight from a population and listed twice, per-neuron parameters,
    input_scale, v_rest, a Scale, sum pooling and two outputs."""
    def w(*shape):
        return torch.randint(-32, 33, shape) / 64

    net = N.Network(metadata={"dt": 1e-3})
    net.add("input", N.Input((1, 8, 8)))
    net.add("pool", N.Pool("sum", 2), ["input"])
    net.add("flat", N.Flatten(), ["pool"])
    net.add("fc_a", N.Affine(w(12, 16), w(12)), ["flat"])
    net.add("fc_b", N.Affine(w(12, 16)), ["flat"])
    net.add("gain", N.Scale(torch.full((12,), 0.5)), ["fc_b"])
    beta = torch.tensor([0.5, 0.75, 0.875])[torch.randint(0, 3, (12,))]
    net.add("lif1", N.Neuron(NeuronSpec(v_rest=0.125, reset="zero"), (12,), beta=beta,
                             threshold=1.0 + torch.randint(0, 4, (12,)) / 4,
                             input_scale=torch.tensor([0.5, 1.0, 2.0])[torch.randint(0, 3, (12,))]),
            ["fc_a", "gain"])
    net.add("fc2", N.Affine(w(12, 12), w(12)), ["lif1"])
    net.add("lif2", N.Neuron(NeuronSpec(beta=0.75), (12,), beta=0.75, threshold=0.5), ["fc2"])
    net.edges += [("lif2", "lif1"), ("lif2", "lif1")]
    net.add("out_spikes", N.Output(), ["lif2"])
    net.add("out_current", N.Output(), ["fc2"])
    return net


def test_hand_built_network(seed):
    net = hand_built_network()
    g = events.to_graph(net)
    merged = g.edges["input", "lif1", "delay0"]
    assert merged["paths"] == 2 and merged["kind"] == "composite"
    assert g.nodes["lif1"]["lines"]["lif2"]["count"] == 2
    assert g.graph["metadata"] == {"dt": 1e-3}
    sim, reference = events.EventSimulator(g), NetworkModule(net)
    x = spikes(100, 3, 1, 8, 8)
    (s, current), state = sim.run(x)
    (ref_s, ref_current), ref_state = reference.run(x)
    assert same(s, ref_s) and same(current, ref_current), f"seed {seed}"
    assert_same_state(state, ref_state, seed)
    assert_spiking(s, seed)
    start = random_state(ref_state)
    assert same(sim.run(x, start)[0], reference.run(x, start)[0]), f"seed {seed}"


def test_float_weights_agree_to_rounding(seed):
    """Ordinary float weights and real-valued input currents: the currents reach LI readouts
    (no threshold to amplify a rounding difference) and agree with NetworkModule within
    rtol = atol = 1e-5 (float32 rounding of different summation orders; 1/9 pooling)."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.pool = nn.Conv2d(2, 3, 3, padding=1), nn.AvgPool2d(3)
            self.fc, self.li1 = nn.Linear(3 * 3 * 3, 7), snn.LI(0.9)
            self.skip, self.li2 = nn.Linear(2 * 9 * 9, 7), snn.LI(0.8)

        def forward(self, x):
            T, B = x.shape[:2]
            y = self.pool(self.conv(x.flatten(0, 1) * 0.3)).unflatten(0, (T, B))
            return self.li1(self.fc(y.flatten(2)) + self.skip(x.flatten(2)))

    model = Net()
    x = torch.randn(50, 3, 2, 9, 9)
    net = to_network(model, (x,))
    out, _ = events.EventSimulator(events.to_graph(net)).run(x)
    ref, _ = NetworkModule(net).run(x)
    torch.testing.assert_close(out, ref.detach(), rtol=1e-5, atol=1e-5, msg=lambda m: f"{m}\nseed {seed}")


# -- event-driven work ----------------------------------------------------------------------

def test_work_is_proportional_to_events(seed):
    net = N.Network()
    net.add("input", N.Input((200,)))
    net.add("fc", N.Affine(torch.randint(-32, 33, (100, 200)) / 64 + 0.25), ["input"])
    net.add("lif", N.Neuron(NeuronSpec(beta=0.75), (100,), beta=0.75, threshold=1.0), ["fc"])
    net.add("output", N.Output(), ["lif"])
    sim = events.EventSimulator(events.to_graph(net))

    sim.run(torch.zeros(50, 4, 200))
    assert sim.stats == {"events": 0, "synaptic_events": 0}

    x = spikes(50, 4, 200, p=0.02)
    out, _ = sim.run(x)
    n_in, n_spikes = int(x.count_nonzero()), int(out.count_nonzero())
    assert n_spikes > 0, f"seed {seed}"
    # every input event reaches its 100 synapses, every spike its one output unit
    assert sim.stats == {"events": n_in + n_spikes, "synaptic_events": 100 * n_in + n_spikes}, f"seed {seed}"
    dense = 50 * 4 * (200 * 100 + 100)
    assert sim.stats["synaptic_events"] < dense / 10, f"seed {seed}"


# -- the graph and its files ----------------------------------------------------------------

def test_synapse_counts_and_conv_geometry():
    class Net(nn.Module):
        def __init__(self, padding):
            super().__init__()
            self.conv, self.lif1 = nn.Conv2d(2, 3, 3, padding=padding), snn.LIF(0.75)
            self.fc, self.lif2 = nn.Linear(3 * 10 * 10 if padding == 0 else 3 * 12 * 12, 5), snn.LIF(0.75)

        def forward(self, x):
            T, B = x.shape[:2]
            s = self.lif1(self.conv(x.flatten(0, 1)).unflatten(0, (T, B)))
            return self.lif2(self.fc(s.flatten(2)))

    for padding in (0, 1):
        x = torch.zeros(2, 1, 2, 12, 12)
        g = events.to_graph(to_network(Net(padding), (x,)))
        conv = g.edges["input", "lif1", "delay0"]
        assert conv["kind"] == "conv" and conv["kernel"] == (3, 3) and conv["padding"] == (padding, padding)
        assert (conv["in_channels"], conv["out_channels"], conv["groups"]) == (2, 3, 1)
        # each output position reads the kernel taps that fall inside the input: 3 per axis,
        # 2 at a padded border; 10 (unpadded) or 12 (padded) positions per axis
        per_axis = 10 * 3 if padding == 0 else 12 * 3 - 2
        assert len(conv["pre"]) == 3 * 2 * per_axis ** 2
        n_hidden = 3 * (10 if padding == 0 else 12) ** 2
        fc = g.edges["lif1", "lif2", "delay0"]
        assert fc["kind"] == "dense" and len(fc["pre"]) == fc["weight"].numel() == 5 * n_hidden  # in * out
        assert g.nodes["lif1"]["bias"].shape == (n_hidden,)


def test_projection_weights_are_the_composite(seed):
    """A projection's connectivity list is the dense matrix of its chain."""
    model = exact_(models.ConvNet())
    net = to_network(model, (torch.zeros(1, 1, 2, 12, 12),))
    g = events.to_graph(net)
    p = g.edges["input", "lif1", "delay0"]
    dense = torch.zeros(4 * 6 * 6, 2 * 12 * 12)
    dense[p["post"], p["pre"]] = p["weight"]
    eye = torch.eye(2 * 12 * 12).reshape(-1, 2, 12, 12)
    with torch.no_grad():
        chain = model.pool(nn.functional.conv2d(eye * 2.0, model.conv.weight, padding=1))  # x * 2, conv, pool
    assert torch.equal(dense, chain.reshape(len(eye), -1).T), f"seed {seed}"
    assert torch.equal(g.nodes["lif1"]["bias"], model.conv.bias.detach().repeat_interleave(36)), f"seed {seed}"


def assert_same_graph(a: nx.MultiDiGraph, b: nx.MultiDiGraph):
    assert a.graph["format"] == b.graph["format"] and a.graph["metadata"] == b.graph["metadata"]
    assert list(a.nodes) == list(b.nodes)
    assert sorted(a.edges(keys=True)) == sorted(b.edges(keys=True))
    for name in a.nodes:
        assert_same_attrs(a.nodes[name], b.nodes[name], name)
    for s, t, k in a.edges(keys=True):
        assert_same_attrs(a.edges[s, t, k], b.edges[s, t, k], (s, t, k))


def assert_same_attrs(x: dict, y: dict, where):
    assert set(x) == set(y), where
    for key, value in x.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == y[key].dtype and torch.equal(value, y[key]), (where, key)
        elif isinstance(value, dict):  # delay lines
            assert set(value) == set(y[key]), (where, key)
            for line in value:
                assert_same_attrs(value[line], y[key][line], (where, key, line))
        else:
            assert value == y[key], (where, key)


@pytest.mark.parametrize("suffix", [".graphml", ".json"])
def test_file_round_trip(suffix, tmp_path, seed):
    for model, shape in ((exact_(Recurrent(bias=True)), (10,)), (exact_(models.ConvNet()), (2, 12, 12))):
        x = spikes(60, 2, *shape)
        net = to_network(model, (x,))
        g = events.to_graph(net)
        path = events.write(net, tmp_path / f"net{suffix}")
        back = events.read(path)
        assert_same_graph(g, back)
        start = random_state(NetworkModule(net).run(x)[1])
        out, state = events.EventSimulator(back).run(x, start)
        ref_out, ref_state = events.EventSimulator(g).run(x, start)
        assert same(out, ref_out), f"seed {seed}"
        assert_same_state(state, ref_state, seed)
    for name, d in back.nodes(data=True):
        if d["kind"] == "neuron":
            assert d["surrogate"] == "atan" and d["surrogate_param"] == 2.0 and d["reset"] == "subtract"


def test_hand_built_round_trip_and_export_entry_point(tmp_path, seed):
    net = hand_built_network()
    x = spikes(40, 2, 1, 8, 8)
    for suffix in (".graphml", ".json"):
        back = events.read(events.write(events.to_graph(net), tmp_path / f"hand{suffix}"))
        assert same(events.EventSimulator(back).run(x)[0], NetworkModule(net).run(x)[0]), f"seed {seed}"
    model = exact_(Readout(snn.LIF(0.75)))
    x = spikes(30, 2, 20)
    path = snnopt.export(model, tmp_path / "model.graphml", example_inputs=(x,), dt=1e-3)
    back = events.read(path)
    assert back.graph["metadata"]["dt"] == 1e-3
    with torch.no_grad():
        assert same(events.EventSimulator(back).run(x)[0], model(x)), f"seed {seed}"


# -- bad input ------------------------------------------------------------------------------

def good_file(tmp_path, suffix=".json"):
    net = to_network(exact_(Readout(snn.LIF(0.75))), (torch.zeros(2, 1, 20),))
    return events.write(net, tmp_path / f"good{suffix}")


@pytest.mark.parametrize("suffix", [".graphml", ".json"])
def test_missing_garbage_and_truncated_files(suffix, tmp_path):
    missing = tmp_path / f"missing{suffix}"
    with pytest.raises(NetworkError, match=r"missing\.\w+: no such file"):
        events.read(missing)
    garbage = tmp_path / f"garbage{suffix}"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(NetworkError, match=r"garbage\.\w+: not a readable"):
        events.read(garbage)
    text = good_file(tmp_path, suffix).read_text()
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_text(text[: len(text) // 2])
    with pytest.raises(NetworkError, match=r"truncated\.\w+: not a readable .* truncated"):
        events.read(truncated)
    other = tmp_path / f"other{suffix}"
    if suffix == ".json":
        other.write_text(json.dumps(nx.node_link_data(nx.path_graph(3), edges="edges")))
    else:
        nx.write_graphml(nx.path_graph(3), other)
    with pytest.raises(NetworkError, match="not an snnopt event graph"):
        events.read(other)


def edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def node_of(data, name):
    return next(n for n in data["nodes"] if n["id"] == name)


def test_missing_or_bad_attributes_are_named(tmp_path):
    hidden = r"population 'hidden'"
    cases = [
        (lambda d: node_of(d, "hidden").pop("threshold"), hidden + r".*lacks the required attribute 'threshold'"),
        (lambda d: node_of(d, "hidden").update(reset="sideways"), hidden + r": invalid neuron: .*reset"),
        (lambda d: node_of(d, "hidden").update(beta=[0.5, 0.5]), hidden + r".*'beta' must be a 1-d array of 32"),
        (lambda d: node_of(d, "input").pop("shape"), r"population 'input': lacks the required attribute 'shape'"),
        (lambda d: d["edges"][0].pop("weight"), r"projection .*lacks the required attribute 'weight'"),
        (lambda d: d["edges"][0].update(pre="[1, 2"), r"projection .*'pre' is not valid JSON"),
        (lambda d: d["edges"][0].update(post=[10**6] * len(d["edges"][0]["post"])), r"post indices must lie in"),
        (lambda d: d["edges"][0].update(delay=2), r"delay must be 0 or 1"),
        (lambda d: d["graph"].update(dtype="complex"), r"'dtype' must name a float dtype"),
    ]
    for edit, message in cases:
        path = edit_json(good_file(tmp_path), edit)
        with pytest.raises(NetworkError, match=rf"good\.json: .*{message}"):
            events.read(path)


def test_in_memory_graph_is_checked(tmp_path):
    g = events.read(good_file(tmp_path))
    del g.nodes["hidden"]["threshold"]
    with pytest.raises(NetworkError, match="event graph: population 'hidden'.*'threshold'"):
        events.EventSimulator(g)
    with pytest.raises(NetworkError, match="'threshold'"):
        events.write(g, tmp_path / "bad.graphml")
    assert not (tmp_path / "bad.graphml").exists()
    with pytest.raises(ValueError, match=r"\.graphml or \.json"):
        events.write(events.read(good_file(tmp_path)), tmp_path / "net.txt")
    sim = events.EventSimulator(events.read(good_file(tmp_path)))
    with pytest.raises(ValueError, match=r"input 'input' must be time-major \[T, B, 20\]"):
        sim.run(torch.zeros(5, 20))
    with pytest.raises(ValueError, match=r"state entries \['hiden'\] name no neuron population"):
        sim.run(torch.zeros(5, 2, 20), {"hiden": torch.zeros(2, 32)})
    with pytest.raises(ValueError, match=r"state 'hidden' must be a tensor \[2, 32\], got \[2, 31\]"):
        sim.run(torch.zeros(5, 2, 20), {"hidden": torch.zeros(2, 31)})


def test_delay_into_a_synaptic_node_is_refused():
    net = N.Network()
    net.add("input", N.Input((4,)))
    net.add("fc", N.Affine(torch.ones(4, 4)), ["input"])
    net.add("lif", N.Neuron(NeuronSpec(beta=0.5), (4,), beta=0.5, threshold=1.0), ["fc"])
    net.add("feedback", N.Affine(torch.ones(4, 4)), ["lif"])
    net.edges.append(("feedback", "fc"))
    net.add("output", N.Output(), ["lif"])
    with pytest.raises(NetworkError, match="delayed edge 'feedback' -> 'fc'.*ends at a affine node"):
        events.to_graph(net)


EULER = NeuronSpec(kind="cuba_lif", beta=1 - 0.1, scale=0.1, alpha=0.8, current_decay="after", integration="euler",
                   reset="zero")
DIVIDED = NeuronSpec(kind="lif", beta=1 - 1 / 1.7, scale=1 / 1.7, integration="tau", tau=1.7, fire=">=")


def form_network(spec: NeuronSpec, **params) -> N.Network:
    """Input(20) -> Affine (weights on a 1/64 grid) -> a population of ``spec`` -> Output."""
    net = N.Network()
    net.add("input", N.Input((20,)))
    net.add("fc", N.Affine(torch.randint(-8, 25, (8, 20)) / 64), ["input"])
    net.add("hidden", N.Neuron(spec, (8,), **{**spec.form_fixed, "threshold": 1.0, **params}), ["fc"])
    net.add("out", N.Output(), ["hidden"])
    return net


@pytest.mark.parametrize("spec", [EULER, DIVIDED], ids=["euler", "divided"])
def test_a_populations_order_of_operations_travels_in_the_file(tmp_path, spec):
    """Norse's Euler and SpikingJelly's divided form survive the file (the Euler form's alpha
    and the divided form's tau exactly) and simulate as PyTorch does, bit for bit; a file
    whose beta or alpha disagree with the form, or that lacks its constant, is refused
    naming the population, and so is such a network."""
    net = form_network(spec)
    path = events.write(net, tmp_path / "form.json")
    graph = events.read(path)
    assert graph.nodes["hidden"]["integration"] == spec.integration
    x = models.spikes((60, 3, 20), p=0.4)
    want, want_state = NetworkModule(net).run(x)
    got, got_state = events.EventSimulator(graph).run(x)
    assert want.any() and torch.equal(got, want)
    assert all(torch.equal(a, b) for a, b in zip(got_state["hidden"], want_state["hidden"]))
    constant = "euler_alpha" if spec.integration == "euler" else "tau"
    for edit, message in [(lambda d: node_of(d, "hidden").pop(constant), f"lacks the required attribute '{constant}'"),
                          (lambda d: node_of(d, "hidden").update(beta=[0.5] * 8),
                           f"integration '{spec.integration}' fixes beta")]:
        with pytest.raises(NetworkError, match=rf"population 'hidden'.*{message}"):
            events.read(edit_json(events.write(net, tmp_path / "bad.json"), edit))
    with pytest.raises(NetworkError, match="has beta .* everywhere"):
        form_network(spec, beta=0.5)


def test_a_file_without_integration_is_read_in_the_decay_form(tmp_path):
    """Files written before populations carried ``integration`` read as the decay form."""
    path = good_file(tmp_path)
    good = events.read(path)
    old = events.read(edit_json(path, lambda d: node_of(d, "hidden").pop("integration")))
    x = models.spikes((40, 2, 20))
    assert torch.equal(events.EventSimulator(old).run(x)[0], events.EventSimulator(good).run(x)[0])
