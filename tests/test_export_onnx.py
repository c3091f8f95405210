"""ONNX export (:mod:`snnopt.export.onnx`): onnxruntime against ``NetworkModule.run``.

Networks with exactly representable weights (random integers / 64), decays 0.5 / 0.75 /
0.875 and binary spike inputs keep every synaptic sum exact, so outputs, spikes and final
states must be bit-identical (``torch.equal``) over 100 steps from a non-zero initial
state.  With ordinary random float weights the synapses may round differently in
onnxruntime: membranes/readouts agree within atol 1e-5, rtol 1e-5, and spikes may differ
only where torch's membrane is within 1e-5 of the threshold (the comparison stops at
the first such step).
"""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

import snnopt.nn as snn
from snnopt.export import NetworkError, NetworkModule, to_network
from snnopt.export import network as N
from snnopt.export import onnx as X
from snnopt.spec import NeuronSpec

T, B = 100, 3
DECAYS = torch.tensor([0.5, 0.75, 0.875])


def spikes(shape, p=0.3):
    return (torch.rand(shape) < p).float()


def exact(shape, k=24):
    """Random multiples of 1/64 in [-k/64, k/64]."""
    return torch.randint(-k, k + 1, shape).float() / 64


def make_exact(model: nn.Module) -> nn.Module:
    """``model`` with weights of multiples of 1/64, drawn from [-a, 2a] with ``a`` about
    2 / fan-in, and biases in [0, 1/2]: a positive drive, so every layer fires."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                a = max(1, round(128 / m.weight[0].numel()))
                m.weight.copy_(torch.randint(-a, 2 * a + 1, m.weight.shape).float() / 64)
                if m.bias is not None:
                    m.bias.copy_(0.25 + exact(m.bias.shape, 16))
    return model


def initial_state(net: N.Network, batch: int = B) -> dict:
    """Non-zero initial states in the format of ``NetworkModule.run``: membranes and
    currents of multiples of 1/64, previous spikes for delayed edges."""
    shapes = net.shapes()
    state = {}
    for name, node in net.nodes.items():
        if isinstance(node, N.Neuron):
            v = exact((batch, *node.shape), 48)
            state[name] = (exact((batch, *node.shape)), v) if node.spec.has_current else v
    for src, _ in net.delayed_edges():
        state[f"{src}:out"] = spikes((batch, *shapes[src]), 0.5)
    return state


def flat(value) -> list:
    if isinstance(value, dict):
        return [t for key in sorted(value) for t in flat(value[key])]
    return [t for v in value for t in flat(v)] if isinstance(value, (tuple, list)) else [value]


def assert_identical(ref, got):
    assert sorted(ref[1]) == sorted(got[1]), "state keys differ"
    for a, b in zip(flat(ref), flat(got)):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert torch.equal(a, b), f"max difference {(a - b).abs().max().item():g}"


def torch_run(net, x, state=None):
    with torch.no_grad():
        return NetworkModule(net).run(x, state)


def check_exact(net: N.Network, x):
    """ONNX's outputs and final states equal torch's bit for bit, from a non-zero state;
    returns torch's ``(out, state)``."""
    state = initial_state(net)
    ref = torch_run(net, x, state)
    assert_identical(ref, X.run(X.to_onnx(net), x, state))
    return ref


def binary_rate(t: torch.Tensor) -> float:
    assert bool(((t == 0) | (t == 1)).all())
    return t.mean().item()


def assert_fires(t: torch.Tensor):
    """Spikes that make the comparison meaningful: some, but not all the time."""
    assert 0.02 < binary_rate(t) < 0.99


# -- models ---------------------------------------------------------------------------------------

class MLP(nn.Module):
    """Linear -> LIF -> Linear -> LI readout."""

    def __init__(self, n_in=10, n_hidden=16, n_out=4):
        super().__init__()
        self.fc1, self.lif = nn.Linear(n_in, n_hidden), snn.LIF(0.75)
        self.fc2, self.readout = nn.Linear(n_hidden, n_out), snn.LI(0.875)

    def forward(self, x):
        return self.readout(self.fc2(self.lif(self.fc1(x))))


class ConvNet(nn.Module):
    """Conv2d -> AvgPool2d -> LIF -> grouped, strided Conv2d -> sum pool -> Scale -> LIF
    -> Flatten -> Linear -> LIF, on [T, B, 2, 12, 12]."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.lif1 = snn.LIF(0.75)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2)
        self.sum_pool = nn.AvgPool2d(2, divisor_override=1)
        self.lif2 = snn.LIF(0.5, reset="zero")
        self.fc = nn.Linear(6 * 3 * 3, 5)
        self.lif3 = snn.LIF(0.875)

    def forward(self, x):
        T, B = x.shape[:2]
        s = self.lif1(self.pool(self.conv1(x.flatten(0, 1))).unflatten(0, (T, B)))
        y = self.sum_pool(self.conv2(s.flatten(0, 1))).unflatten(0, (T, B))
        s = self.lif2(y * 0.5)
        return self.lif3(self.fc(s.flatten(2)))


class Conv1dNet(nn.Module):
    """Strided, dilated Conv1d -> IF -> Flatten -> Linear -> LIF on [T, B, 3, 20]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3, stride=2, padding=1, dilation=2)
        self.lif1 = snn.IF(threshold=1.0)
        self.fc = nn.Linear(4 * 9, 5)
        self.lif2 = snn.LIF(0.5)

    def forward(self, x):
        T, B = x.shape[:2]
        s = self.lif1(self.conv(x.flatten(0, 1)).unflatten(0, (T, B)))
        return self.lif2(self.fc(s.flatten(2)))


class RecurrentNet(nn.Module):
    """Linear -> Recurrent(LIF, Linear) -> Linear -> LIF."""

    def __init__(self, n_in=10, n_hidden=12, n_out=8):
        super().__init__()
        self.fc1 = nn.Linear(n_in, n_hidden)
        self.rec = snn.Recurrent(snn.LIF(0.75), nn.Linear(n_hidden, n_hidden))
        self.fc2 = nn.Linear(n_hidden, n_out)
        self.lif = snn.LIF(0.5)

    def forward(self, x):
        return self.lif(self.fc2(self.rec(self.fc1(x))))


class Chain(nn.Module):
    """Linear -> neuron -> Linear -> neuron, for the given neuron modules."""

    def __init__(self, first: nn.Module, second: nn.Module, n_in=10, n_hidden=16, n_out=6):
        super().__init__()
        self.fc1, self.n1, self.fc2, self.n2 = nn.Linear(n_in, n_hidden), first, nn.Linear(n_hidden, n_out), second

    def forward(self, x):
        return self.n2(self.fc2(self.n1(self.fc1(x))))


def network_of(model: nn.Module, x) -> N.Network:
    return to_network(make_exact(model), (x,))


def exact_recurrent_net() -> RecurrentNet:
    """A :class:`RecurrentNet` with exact weights, the feedback balanced (zero mean) so
    the recurrent population neither saturates nor falls silent."""
    model = make_exact(RecurrentNet())
    with torch.no_grad():
        model.rec.recurrent.weight.copy_(exact(model.rec.recurrent.weight.shape, 16))
    return model


# -- equality with torch --------------------------------------------------------------------------

def test_mlp_matches_torch():
    x = spikes((T, B, 10))
    net = network_of(MLP(), x)
    check_exact(net, x)
    hidden, _ = torch_run(_prefix(net, "lif"), x)
    assert_fires(hidden)


def test_conv_net_matches_torch():
    x = spikes((T, B, 2, 12, 12))
    net = network_of(ConvNet(), x)
    kinds = {node.kind for node in net.nodes.values()}
    assert {"conv", "pool", "scale", "flatten"} <= kinds
    assert {n.mode for n in net.nodes.values() if isinstance(n, N.Pool)} == {"sum", "avg"}
    out, _ = check_exact(net, x)
    assert_fires(out)


def test_conv1d_net_matches_torch():
    x = spikes((T, B, 3, 20))
    net = network_of(Conv1dNet(), x)
    assert any(isinstance(n, N.Conv) and n.dims == 1 for n in net.nodes.values())
    out, _ = check_exact(net, x)
    assert_fires(out)


def test_recurrent_net_matches_torch():
    """The cycle rec -> rec_recurrent -> rec, with the recurrent population an output too."""
    x = spikes((T, B, 10))
    net = to_network(exact_recurrent_net(), (x,))
    assert net.delayed_edges() == {("rec_recurrent", "rec")}
    net.add("hidden", N.Output(), ["rec"])
    (out, hidden), state = check_exact(net, x)
    assert "rec_recurrent:out" in state
    assert_fires(hidden)
    assert out.sum() > 0


@pytest.mark.parametrize("first, second", [
    (snn.LIF(0.75, reset="subtract"), snn.LIF(0.5, reset="zero")),
    (snn.Neuron(NeuronSpec(reset_timing="next"), beta=0.75),
     snn.Neuron(NeuronSpec(reset="zero", reset_timing="next"), beta=0.875)),
    (snn.CubaLIF(alpha=0.5, beta=0.75), snn.CubaLIF(alpha=0.875, beta=0.5, threshold=4.0, reset="zero")),
    (snn.IF(threshold=1.5), snn.IF(reset="zero")),
], ids=["subtract-zero", "snntorch-next", "cuba_lif", "if"])
def test_neuron_modules_match_torch(first, second):
    x = spikes((T, B, 10))
    net = network_of(Chain(first, second), x)
    out, _ = check_exact(net, x)
    assert_fires(out)


def check_model_exact(model: nn.Module, x):
    """The network exported from ``model`` (exact weights, drawn again, up to ten times, until
    its spikes are informative: some, but not all) computes its spikes, and ONNX the
    network's outputs and states."""
    for _ in range(10):
        with torch.no_grad():
            want = make_exact(model)(x)
        if 0.02 < binary_rate(want) < 0.99:
            break
    net = to_network(model, (x,))
    got, _ = torch_run(net, x)
    assert_fires(want)
    assert torch.equal(got, want)
    check_exact(net, x)


def test_a_neurons_input_gain_is_exported():
    """``Neuron(spec, input_scale=...)`` (what ``from_nir`` builds for a NIR ``r``): the
    exported network computes the model's spikes, and ONNX the network's."""
    x = spikes((T, B, 10))
    gain = torch.randint(2, 7, (12,)).float() / 4
    check_model_exact(nn.Sequential(nn.Linear(10, 12), snn.Neuron(NeuronSpec("lif", beta=0.75, reset="zero"),
                                                                  input_scale=gain)), x)


class Reshaped(nn.Module):
    """Conv -> LIF -> a features flatten written three ways -> ``/ 4`` -> Linear -> LIF."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.conv, self.lif1 = nn.Conv2d(2, 3, 3), snn.LIF(0.75)
        self.flat, self.fc, self.lif2 = nn.Flatten(2), nn.Linear(3 * 4 * 4, 5), snn.LIF(0.5)

    def forward(self, x):
        T, B = x.shape[:2]
        s = self.lif1(self.conv(x.flatten(0, 1)).unflatten(0, (T, B)))
        s = self.flat(s) if self.how == "module" else s.view(T, B, -1) if self.how == "view" else s.flatten(2)
        return self.lif2(self.fc(s / 4) * 4)


@pytest.mark.parametrize("how", ["module", "view", "function"])
def test_feature_flattens_and_division_by_a_constant_export(how):
    """``nn.Flatten(2)`` and ``view(T, B, -1)`` flatten the features as ``flatten(2)`` does;
    ``x / 4`` is a Scale: the exported network computes the model's spikes."""
    check_model_exact(Reshaped(how), spikes((T, B, 2, 6, 6)))


def _prefix(net: N.Network, last: str) -> N.Network:
    """``net`` up to node ``last``, whose output becomes the network's output."""
    keep = [n for n in net.order() if not isinstance(net.nodes[n], N.Output)]
    keep = keep[:keep.index(last) + 1]
    sub = N.Network({n: net.nodes[n] for n in keep}, [e for e in net.edges if e[0] in keep and e[1] in keep])
    sub.add("out", N.Output(), [last])
    return sub


SPECS = [dict(kind=kind, reset=reset, reset_timing=timing, fire=fire)
         for kind in ("lif", "cuba_lif", "if") for reset in ("subtract", "zero", "none")
         for timing in ("same", "next", "same_pending") for fire in (">", ">=")]
SPECS += [
    dict(kind="li"), dict(kind="cuba_li"), dict(kind="cuba_li", current_decay="after"),
    dict(kind="lif", v_rest=0.25), dict(kind="lif", v_rest=-0.5, reset="zero", v_reset=0.125),
    dict(kind="if", v_rest=0.5, reset="zero", v_reset=-0.25),
    dict(kind="lif", reset="zero", reset_timing="next", v_reset=0.375),
    dict(kind="lif", reset="zero", reset_timing="same_pending", v_reset=0.375),
    dict(kind="lif", scale=0.5), dict(kind="cuba_lif", scale=2.0, current_decay="after"),
    dict(kind="cuba_lif", current_decay="after", reset_timing="next", fire=">="),
    dict(kind="lif", reset="zero", reset_timing="next", reset_discards_input=True),
    dict(kind="cuba_lif", reset="zero", reset_timing="same_pending", reset_discards_input=True),
]


def _spec_id(kw: dict) -> str:
    return "-".join(f"{v}" for v in kw.values())


@pytest.mark.parametrize("kw", SPECS, ids=[_spec_id(kw) for kw in SPECS])
@pytest.mark.parametrize("per_neuron", [False, True], ids=["shared", "per-neuron"])
def test_every_neuron_configuration_matches_torch(kw, per_neuron):
    """Each NeuronSpec configuration as a Network built directly: Input -> Affine ->
    Neuron (-> Output), the spikes or membranes bit-identical to torch's."""
    n_in, n = 8, 12
    spec = NeuronSpec(**kw, alpha=0.5 if kw["kind"].startswith("cuba") else None)
    params = dict(beta=0.75, alpha=0.5, threshold=1.0)
    if per_neuron:
        params = dict(beta=DECAYS[torch.randint(0, 3, (n,))], alpha=DECAYS[torch.randint(0, 3, (n,))],
                      threshold=torch.tensor([1.0, 1.5])[torch.randint(0, 2, (n,))],
                      input_scale=torch.tensor([0.5, 1.0, 2.0])[torch.randint(0, 3, (n,))])
    if not spec.has_current:
        params.pop("alpha")
    if spec.kind == "if":
        params.pop("beta")
    net = N.Network()
    net.add("x", N.Input((n_in,)))
    net.add("fc", N.Affine(exact((n, n_in), 40), 0.375 + exact((n,), 16)), ["x"])
    net.add("pop", N.Neuron(spec, (n,), **params), ["fc"])
    net.add("y", N.Output(), ["pop"])
    x = spikes((T, B, n_in), 0.4)
    out, _ = check_exact(net, x)
    if spec.spiking:
        rate = binary_rate(out)
        assert rate > 0.01 and (rate < 0.99 or spec.reset == "none")


FORMS = [
    dict(kind="lif", beta=0.9, scale=0.1, integration="euler", reset="zero"),
    dict(kind="lif", beta=0.9, scale=0.1, integration="euler", v_rest=0.25),
    dict(kind="cuba_lif", beta=0.9, scale=0.1, alpha=0.8, current_decay="after", integration="euler", fire=">="),
    dict(kind="li", beta=0.7, scale=0.3, integration="euler"),
    dict(kind="cuba_li", beta=0.7, scale=0.3, alpha=0.6, current_decay="after", integration="euler", v_rest=-0.5),
    dict(kind="lif", beta=1 - 1 / 1.7, scale=1 / 1.7, integration="tau", tau=1.7),
    dict(kind="lif", beta=1 - 1 / 1.7, integration="tau", tau=1.7, v_rest=-0.2, reset="zero", v_reset=-0.2,
         fire=">="),
]


@pytest.mark.parametrize("kw", FORMS, ids=[_spec_id(kw) for kw in FORMS])
@pytest.mark.parametrize("per_neuron", [False, True], ids=["shared", "per-neuron"])
def test_euler_and_divided_forms_match_torch(kw, per_neuron):
    """Norse's Euler and SpikingJelly's divided order of the charge (``_Euler`` / ``_Tau``
    functions) with constants that round: bit-identical to torch, which the same network in
    the decay form is not."""
    n_in, n = 8, 12
    spec = NeuronSpec(**kw)
    params = {**spec.form_fixed, "threshold": 1.0}
    if per_neuron:
        params.update(threshold=torch.tensor([1.0, 1.5])[torch.randint(0, 2, (n,))],
                      input_scale=torch.tensor([0.5, 1.0, 2.0])[torch.randint(0, 3, (n,))])
    if not spec.spiking:
        params.pop("threshold")
    gain = 4 if spec.integration == "euler" else 1  # the Euler form's membrane settles at v_rest + I
    net = N.Network()
    net.add("x", N.Input((n_in,)))
    net.add("fc", N.Affine(gain * exact((n, n_in), 40), gain * (0.375 + exact((n,), 16))), ["x"])
    net.add("pop", N.Neuron(spec, (n,), **params), ["fc"])
    net.add("y", N.Output(), ["pop"])
    x = spikes((T, B, n_in), 0.4)
    state = initial_state(net)
    out, final = check_exact(net, x)
    name = X._dynamics("pop", net.nodes["pop"]).name
    assert name.endswith("_Euler" if spec.integration == "euler" else "_Tau")
    if spec.spiking:
        assert 0.01 < binary_rate(out) < 0.99
    net.nodes["pop"].to_decay_form()
    decay_out, decay_final = torch_run(net, x, state)
    assert not (torch.equal(decay_out, out) and torch.equal(decay_final["pop"][-1], final["pop"][-1]))


def test_fan_in_sums_and_several_inputs_and_outputs():
    """Two inputs summed into one population, a skip connection into a second, two outputs."""
    net = N.Network()
    net.add("a", N.Input((6,)))
    net.add("b", N.Input((6,)))
    net.add("fa", N.Affine(exact((8, 6)), None), ["a"])
    net.add("fb", N.Affine(exact((8, 6)), exact((8,))), ["b"])
    net.add("p", N.Neuron(NeuronSpec(), (8,), beta=0.75, threshold=0.5), ["fa", "fb"])
    net.add("s", N.Scale(exact((8,), 64)), ["p"])
    net.add("q", N.Neuron(NeuronSpec(reset="zero"), (8,), beta=0.5, threshold=0.25), ["s", "fa", "p"])
    net.add("out_p", N.Output(), ["p"])
    net.add("out_q", N.Output(), ["q"])
    x = (spikes((T, B, 6)), spikes((T, B, 6)))
    (p, q), _ = check_exact(net, x)
    assert_fires(p)
    assert_fires(q)


def test_float_weights_match_within_tolerance():
    """Ordinary float weights and inputs: readout within atol/rtol 1e-5; hidden spikes may
    differ only where torch's membrane is within 1e-5 of the threshold."""
    model = MLP()
    x = torch.randn(T, B, 10)
    net = to_network(model, (x,))
    net = N.Network(dict(net.nodes), list(net.edges))
    net.add("hidden", N.Output(), ["lif"])
    module = NetworkModule(net)
    state = initial_state(net)
    (ref_out, ref_hidden), ref_final = torch_run(net, x, state)
    (out, hidden), final = X.run(X.to_onnx(net), x, state)
    steps = T
    differ = (hidden != ref_hidden).flatten(1).any(1).nonzero()
    if len(differ):
        steps = int(differ[0])
        membrane = _membranes(module, x, state, "lif", steps + 1)[steps]
        where = hidden[steps] != ref_hidden[steps]
        assert bool(((membrane - 1.0).abs()[where] < 1e-5).all())
    assert steps > T // 2
    torch.testing.assert_close(out[:steps], ref_out[:steps], atol=1e-5, rtol=1e-5)
    if steps == T:
        for key in ref_final:
            torch.testing.assert_close(final[key], ref_final[key], atol=1e-5, rtol=1e-5)
    assert_fires(ref_hidden)


def _membranes(module: NetworkModule, x, state, name: str, steps: int) -> torch.Tensor:
    """Torch's membrane ``h`` of LIF ``name`` (subtract reset, threshold 1) per step:
    the post-reset state plus the spikes."""
    hs, state = [], dict(state)
    with torch.no_grad():
        for t in range(steps):
            (_, s), state = module.run(x[t:t + 1], state)
            hs.append(state[name] + s[0])
    return torch.stack(hs)


# -- state ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", [exact_recurrent_net,
                                   lambda: make_exact(Chain(snn.CubaLIF(0.5, 0.75), snn.LI(0.875)))],
                         ids=["recurrent", "cuba_lif-li"])
def test_final_state_continues_the_sequence(model, tmp_path):
    x = spikes((T, B, 10))
    net = to_network(model(), (x,))
    path = X.write(net, tmp_path / "net.onnx")
    state = initial_state(net)
    whole = X.run(path, x, state)
    assert_identical(torch_run(net, x, state), whole)
    first = X.run(path, x[:37], state)
    second = X.run(path, x[37:], first[1])
    assert torch.equal(torch.cat([first[0], second[0]]), whole[0])
    assert_identical((whole[0][37:], whole[1]), second)


def test_missing_state_is_zero():
    x = spikes((T, B, 10))
    net = to_network(exact_recurrent_net(), (x,))
    model = X.to_onnx(net)
    assert_identical(torch_run(net, x), X.run(model, x))
    state = initial_state(net)
    partial = {k: v for k, v in state.items() if k.endswith(":out")}
    assert_identical(torch_run(net, x, partial), X.run(model, x, partial))


# -- the model's form -----------------------------------------------------------------------------

def test_model_structure(tmp_path):
    import snnopt.export

    x = spikes((5, 2, 10))
    path = snnopt.export(make_exact(RecurrentNet()), tmp_path / "rec.onnx", dt=1e-3, example_inputs=(x,))
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.producer_name == "snnopt"
    assert {o.domain: o.version for o in model.opset_import} == {"": X.DEFAULT_OPSET, X.DOMAIN: 1}
    assert float({p.key: p.value for p in model.metadata_props}["dt"]) == 1e-3
    (scan,) = model.graph.node
    assert scan.op_type == "Scan"
    body = onnx.helper.get_attribute_value(scan.attribute[0])
    neurons = [n for n in body.node if n.domain == X.DOMAIN]
    assert {n.op_type for n in neurons} == {"LIF"} and len(neurons) == 2
    functions = {f.name: f for f in model.functions}
    assert set(functions) == {"LIF"}
    assert all(node.domain in ("", "ai.onnx") for f in functions.values() for node in f.node)
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.input}
    assert dims["input"] == ["T", "B", 10]
    assert dims["rec:v"] == ["B", 12] and dims["rec_recurrent:out"] == ["B", 12]
    assert {o.name for o in model.graph.output} == {"output", "rec:v:final", "rec_recurrent:out:final", "lif:v:final"}


def test_function_names_and_attributes():
    specs = {"LIF_ZeroReset_ResetNext_FireGe": NeuronSpec(reset="zero", reset_timing="next", fire=">="),
             "CubaLIF_DecayAfter_Scaled": NeuronSpec(kind="cuba_lif", alpha=0.5, current_decay="after", scale=2.0),
             "LIF_Rest": NeuronSpec(v_rest=0.25)}
    net = N.Network()
    net.add("x", N.Input((4,)))
    for name, spec in specs.items():
        net.add(name, N.Neuron(spec, (4,), beta=0.5, alpha=0.5, threshold=1.0), ["x"])
        net.add(f"{name}_out", N.Output(), [name])
    model = X.to_onnx(net, opset=21)
    assert {f.name for f in model.functions} == set(specs)
    body = onnx.helper.get_attribute_value(model.graph.node[0].attribute[0])
    attrs = {n.op_type: {a.name: a.f for a in n.attribute} for n in body.node if n.domain == X.DOMAIN}
    assert attrs["LIF_ZeroReset_ResetNext_FireGe"] == {"v_reset": 0.0}
    assert attrs["CubaLIF_DecayAfter_Scaled"] == {"scale": 2.0}
    assert attrs["LIF_Rest"] == {"v_rest": 0.25}


# -- bad input ------------------------------------------------------------------------------------

@pytest.fixture
def onnx_file(tmp_path):
    x = spikes((4, 1, 10))
    return X.write(network_of(MLP(), x), tmp_path / "mlp.onnx")


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(NetworkError, match="garbage.onnx"):
        X.run(path, spikes((4, 1, 10)))


def test_truncated_file(onnx_file, tmp_path):
    data = onnx_file.read_bytes()
    for cut in (len(data) // 3, len(data) // 2, len(data) - 7):
        path = tmp_path / f"cut{cut}.onnx"
        path.write_bytes(data[:cut])
        with pytest.raises(NetworkError, match=f"cut{cut}.onnx"):
            X.run(path, spikes((4, 1, 10)))


def test_missing_file(tmp_path):
    with pytest.raises(NetworkError, match="nothing.onnx.*no such file"):
        X.run(tmp_path / "nothing.onnx", spikes((4, 1, 10)))


def test_not_an_snnopt_export(tmp_path):
    h = onnx.helper
    graph = h.make_graph([h.make_node("Identity", ["a"], ["b"])], "g",
                         [h.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [1])],
                         [h.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [1])])
    path = tmp_path / "other.onnx"
    onnx.save(h.make_model(graph), str(path))
    with pytest.raises(NetworkError, match="other.onnx.*not an snnopt export"):
        X.run(path, spikes((4, 1, 1)))


def test_wrong_inputs_and_states(onnx_file):
    with pytest.raises(ValueError, match=r"input 'input' must be time-major \[T, B, 10\]"):
        X.run(onnx_file, spikes((4, 1, 9)))
    with pytest.raises(ValueError, match="unknown state entries"):
        X.run(onnx_file, spikes((4, 1, 10)), {"nonsense": torch.zeros(1, 16)})
    with pytest.raises(ValueError, match="state 'lif:v' must have shape"):
        X.run(onnx_file, spikes((4, 2, 10)), {"lif": torch.zeros(1, 16)})


def test_an_input_without_time_steps_is_a_value_error(onnx_file):
    """T = 0 is refused by onnxruntime's runner and by ``NetworkModule.run`` alike, naming the layout."""
    x = spikes((0, 2, 10))
    module = NetworkModule(to_network(MLP(), spikes((4, 1, 10))))
    for runner in (lambda: X.run(onnx_file, x), lambda: module.run(x), lambda: module(x)):
        with pytest.raises(ValueError, match=r"input 'input' of shape \[0, 2, 10\] has no time steps.*"
                                             r"\[T, B, \.\.\.\] and T must be >= 1"):
            runner()


def test_unknown_neuron_configuration_names_the_node():
    spec = NeuronSpec()
    object.__setattr__(spec, "reset", "soft")  # a value no neuron_step defines
    net = N.Network()
    net.add("x", N.Input((4,)))
    net.add("odd_population", N.Neuron(spec, (4,), beta=0.5, threshold=1.0), ["x"])
    net.add("y", N.Output(), ["odd_population"])
    with pytest.raises(NetworkError, match="odd_population.*reset='soft'"):
        X.to_onnx(net)


def test_name_collision_and_opset_are_refused():
    net = N.Network()
    net.add("x", N.Input((4,)))
    net.add("p", N.Neuron(NeuronSpec(), (4,), beta=0.5, threshold=1.0), ["x"])
    net.add("p:v", N.Output(), ["p"])
    with pytest.raises(NetworkError, match="'p:v'.*rename"):
        X.to_onnx(net)
    with pytest.raises(NetworkError, match="opset 11"):
        X.to_onnx(network_of(MLP(), spikes((4, 1, 10))), opset=11)
