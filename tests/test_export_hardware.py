"""Hardware profiles: `check` lists every violation by node, `quantize` maps a network to a
chip's integer grids and keeps its spikes (exactly when the weights are already on the grid)."""

import dataclasses
import math

import pytest
import torch

import snnopt
from snnopt.export import NetworkModule, to_network
from snnopt.export import network as N
from snnopt.export.hardware import (FIXED_BY_QUANTIZE, PROFILES, HardwareError, Profile, check, quantize,
                                    quantize_decay)
from snnopt.spec import NeuronSpec

from .models import MLP, ConvNet, spikes

TARGETS = tuple(PROFILES)


def neuron(shape, kind="lif", beta=0.875, threshold=1.0, alpha=None, **spec):
    return N.Neuron(NeuronSpec(kind=kind, alpha=alpha, **spec), shape, beta=None if kind == "if" else beta,
                    alpha=alpha, threshold=threshold)


def affine(n_out, n_in, values=None, bias=None):
    weight = torch.randn(n_out, n_in) * 0.3 if values is None else values.float()
    return N.Affine(weight, bias)


def ints(shape, top, step=1, seed=0):
    """Integer mantissas in [-top, top] (multiples of step) with one entry at +top."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randint(-top // step, top // step + 1, shape, generator=g) * step
    m.view(-1)[0] = top
    return m.float()


def chain(*layers, input_shape):
    """A network input -> layers... -> output (each layer fed by the previous one)."""
    net = N.Network()
    prev = net.add("input", N.Input(input_shape))
    for name, node in layers:
        prev = net.add(name, node, [prev])
    net.add("output", N.Output(), [prev])
    return net


def found(report):
    return {(v.node, v.rule) for v in report.violations}


# -- deliberately bad networks: every violation, by node ---------------------------------------

def test_loihi2_flags_every_violation():
    torch.manual_seed(0)
    threshold = torch.linspace(0.5, 1.5, 10)
    net = chain(("fc", affine(10, 5000, bias=torch.rand(10))),
                ("lif", neuron((10,), threshold=threshold, beta=0.9, reset="subtract", reset_timing="next")),
                input_shape=(5000,))
    report = check(net, "loihi2")
    assert {("fc", "weight_bits"), ("fc", "bias_bits"), ("lif", "reset"), ("lif", "reset_timing"),
            ("lif", "sharing"), ("lif", "decay"), ("lif", "fan_in")} <= found(report)
    assert not report.ok


def test_loihi2_flags_layer_kinds_and_conv_bias():
    net = chain(("conv", N.Conv(torch.randn(4, 2, 3), torch.rand(4))), ("lif", neuron((4, 6), reset="zero")),
                ("flatten", N.Flatten()), ("fc", affine(3, 24)), ("out", neuron((3,), reset="zero", v_rest=0.5)),
                input_shape=(2, 8))
    assert {("conv", "layer_kind"), ("conv", "bias"), ("out", "v_rest")} <= found(check(net, "loihi2"))


def speck_bad():
    net = N.Network()
    x = net.add("input", N.Input((2, 9, 9)))
    conv = net.add("conv", N.Conv(torch.randn(4, 2, 3, 2) * 0.3), [x])            # 4 x 7 x 8, non-square kernel
    lif = net.add("lif", neuron((4, 7, 8), beta=0.9), [conv])                     # leak
    pool = net.add("pool", N.Pool("avg", (2, 3)), [lif])                          # 4 x 3 x 2, average, non-square
    flat = net.add("flatten", N.Flatten(), [pool])
    fc = net.add("fc", affine(5, 24), [flat])
    hidden = net.add("hidden", neuron((5,), kind="if"), [fc])
    rec = net.add("rec", affine(5, 5), [hidden])
    net.edges.append((rec, hidden))                                               # recurrence
    fc_out = net.add("fc_out", affine(3, 5), [hidden])
    readout = net.add("readout", neuron((3,), kind="li", threshold=None), [fc_out])  # no spikes
    net.add("output", N.Output(), [readout])
    return net


def test_speck_flags_every_violation():
    report = check(speck_bad(), "speck")
    assert {("conv", "kernel_shape"), ("conv", "weight_bits"), ("lif", "leak"), ("pool", "pool_mode"),
            ("pool", "pool_shape"), ("fc", "weight_bits"), ("hidden", "delay"), ("rec", "weight_bits"),
            ("readout", "neuron_kind")} <= found(report)
    assert [v.node for v in report.violations][:2] == ["conv", "conv"]  # in network order


def test_speck_core_memories():
    big = chain(("conv", N.Conv(torch.ones(128, 64, 5, 5))), ("lif", neuron((128, 4, 4), kind="if")),
                input_shape=(64, 8, 8))
    report = check(big, "speck")
    assert ("conv", "memory") in found(report)
    # ten small layers: each fits a core, together they need ten of the nine cores
    layers = []
    for k in range(10):
        layers += [(f"fc{k}", affine(4, 4, torch.ones(4, 4))), (f"if{k}", neuron((4,), kind="if", threshold=2.0))]
    report = check(chain(*layers, input_shape=(4,)), "speck")
    assert (None, "memory") in found(report)
    assert check(chain(*layers[:18], input_shape=(4,)), "speck").ok


def test_loihi2_core_budget():
    # 1024 x 1100 neurons: 138 cores of 8192 neurons, the chip has 128
    net = chain(("conv", N.Conv(torch.full((1, 1, 1, 1), 2.0))),
                ("lif", neuron((1, 1024, 1100), beta=1 - 410 / 4096, threshold=3.0, reset="zero")),
                input_shape=(1, 1024, 1100))
    assert found(check(net, "loihi2")) == {(None, "neurons")}


def test_xylo_flags_every_violation():
    net = N.Network()
    x = net.add("input", N.Input((20,)))
    fc = net.add("fc", affine(6, 20, bias=torch.rand(6)), [x])
    lif = net.add("lif", neuron((6,), beta=0.9, reset="zero"), [fc])
    scale = net.add("scale", N.Scale(torch.linspace(1, 2, 6)), [lif])  # on spikes, read out: cannot be folded
    fc_out = net.add("fc_out", affine(10, 6), [scale])
    out = net.add("out", neuron((10,)), [fc_out])
    net.add("output", N.Output(), [out])
    net.add("scaled_spikes", N.Output(), [scale])
    report = check(net, "xylo")
    assert {("input", "neurons"), ("fc", "weight_bits"), ("fc", "bias"), ("lif", "reset"), ("lif", "decay"),
            ("scale", "scale"), (None, "neurons")} <= found(report)  # 16 output neurons: lif and out
    detail = {v.node: v.detail for v in report.violations if v.rule == "scale"}["scale"]
    assert "cannot be folded" in detail
    # quantize keeps what it cannot fix, and says so through check
    assert {("scale", "scale"), ("fc", "bias"), (None, "neurons")} <= found(check(quantize(net, "xylo"), "xylo"))


def test_weight_precision_flags_a_large_dynamic_range():
    w = torch.full((4, 30), 0.01)
    w[0, 0] = 5.0  # one outlier: every other weight rounds to 0 at 8 bits
    net = chain(("fc", affine(4, 30, w)), ("lif", neuron((4,))), input_shape=(30,))
    assert ("fc", "weight_precision") in found(check(net, "speck"))
    assert ("fc", "weight_precision") not in found(check(chain(("fc", affine(4, 30)), ("lif", neuron((4,))),
                                                               input_shape=(30,)), "speck"))


def test_report_table_and_error_list_every_violation():
    report = check(speck_bad(), "speck")
    text = str(report)
    assert text.splitlines()[0] == f"speck: {len(report.violations)} violations"
    assert "node" in text.splitlines()[1] and "rule" in text.splitlines()[1]
    for v in report.violations:
        assert v.detail in text
    with pytest.raises(HardwareError) as info:
        report.raise_if_failed()
    for v in report.violations:
        assert v.detail in str(info.value)


# -- compliant networks pass ---------------------------------------------------------------

def loihi_ok():
    return chain(("fc", affine(6, 10, ints((6, 10), 254, step=2) * 4)),
                 ("lif", neuron((6,), kind="cuba_lif", beta=1 - 410 / 4096, alpha=1 - 1024 / 4096, threshold=300.0,
                                reset="zero")),
                 ("fc2", affine(3, 6, ints((3, 6), 100, step=2), bias=torch.tensor([3.0, -7.0, 0.0]))),
                 ("readout", neuron((3,), kind="li", beta=0.75, threshold=None)), input_shape=(10,))


def speck_ok():
    return chain(("conv", N.Conv(ints((4, 2, 3, 3), 127), torch.tensor([1.0, -2.0, 0.0, 5.0]), padding=1)),
                 ("if1", neuron((4, 8, 8), kind="if", threshold=200.0, reset="zero")),
                 ("pool", N.Pool("sum", 2)), ("flatten", N.Flatten()), ("fc", affine(5, 64, ints((5, 64), 50))),
                 ("if2", neuron((5,), kind="if", threshold=100.0)), input_shape=(2, 8, 8))


def xylo_ok():
    net = N.Network()
    x = net.add("input", N.Input((8,)))
    fc = net.add("fc", affine(12, 8, ints((12, 8), 127)), [x])
    hidden = net.add("hidden", neuron((12,), kind="cuba_lif", beta=1 - 2 ** -4, alpha=1 - 2 ** -2,
                                      threshold=torch.arange(100.0, 112.0)), [fc])
    rec = net.add("rec", affine(12, 12, ints((12, 12), 20, seed=1)), [hidden])
    net.edges.append((rec, hidden))
    fc_out = net.add("fc_out", affine(4, 12, ints((4, 12), 127, seed=2)), [hidden])
    out = net.add("out", neuron((4,), beta=0.5, threshold=60.0), [fc_out])
    net.add("output", N.Output(), [out])
    return net


@pytest.mark.parametrize("target, build", [("loihi2", loihi_ok), ("speck", speck_ok), ("xylo", xylo_ok)])
def test_compliant_network_passes(target, build):
    report = check(build(), target)
    assert report.ok, str(report)
    assert str(report) == f"{target}: the network fits (no violations)"
    report.raise_if_failed()


def test_profiles_differ_on_the_same_network():
    assert not check(speck_ok(), "xylo").ok   # convolution, pooling, bias, zero reset
    assert not check(xylo_ok(), "speck").ok   # leak, recurrence
    assert not check(speck_ok(), "loihi2").ok  # odd weights, subtractive reset on if2


def test_custom_profile_fan_in_and_layer_size():
    tight = dataclasses.replace(PROFILES["speck"], name="tight", max_fan_in=50, max_neurons_per_layer=100)
    assert {("if2", "fan_in"), ("if1", "neurons")} <= found(check(speck_ok(), tight))  # fan-in: 64 per if2 neuron
    with pytest.raises(ValueError, match="unknown hardware target"):
        check(speck_ok(), "truenorth")
    with pytest.raises(ValueError, match="decay"):
        Profile(name="x", description="", weight_bits=8, decay="exp")


# -- inputs: models, compiled models, network modules ----------------------------------------

def test_check_accepts_models_and_modules():
    torch.manual_seed(0)
    model, x = MLP(), spikes((5, 2, 12), seed=0)
    expected = found(check(to_network(model, x), "speck"))
    assert found(check(model, "speck", example_inputs=x)) == expected
    assert found(check(snnopt.compile(model, example_inputs=(x,)), "speck", example_inputs=x)) == expected
    assert found(check(NetworkModule(to_network(model, x)), "speck")) == expected
    with pytest.raises(N.NetworkError, match="example_inputs"):
        check(model, "speck")


# -- quantize ------------------------------------------------------------------------------

def float_models():
    torch.manual_seed(0)
    return {"mlp": (MLP(), spikes((8, 3, 12), seed=1)), "conv": (ConvNet(), spikes((8, 3, 2, 12, 12), seed=2))}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("which", ["mlp", "conv"])
def test_quantize_fixes_its_rules(target, which):
    model, x = float_models()[which]
    net = to_network(model, x)
    weights = {n: node.weight.clone() for n, node in net.nodes.items() if isinstance(node, (N.Affine, N.Conv))}
    before = check(net, target).rules
    assert before & FIXED_BY_QUANTIZE  # float weights at least
    quantized = quantize(net, target)
    after = check(quantized, target)
    assert not after.rules & FIXED_BY_QUANTIZE, str(after)
    assert after.rules <= before  # nothing new
    assert all(torch.equal(net.nodes[n].weight, w) for n, w in weights.items())  # the input is untouched
    assert not any(isinstance(n, N.Scale) for n in quantized.nodes.values())
    meta = quantized.metadata["quantization"]
    assert meta["target"] == target
    for name, node in quantized.nodes.items():
        if isinstance(node, (N.Affine, N.Conv)):
            assert torch.equal(node.weight, node.weight.round()) and name in meta["scales"]


def exact_network(p: Profile, seed=0):
    """Weights ``m / 64`` with ``m`` on the target's mantissa grid (one at the maximum),
    thresholds ``k / 64``, decays on the target's grid: quantization is exact."""
    top, step = p.weight_range[1], p.weight_step
    g = torch.Generator().manual_seed(seed)
    beta = 1.0 if p.decay == "none" else 0.875  # 1 - 512/4096 = 1 - 2^-3: on both grids
    kind = "if" if p.decay == "none" else "lif"
    net = N.Network()
    x = net.add("input", N.Input((12,)))
    fc1 = net.add("fc1", affine(16, 12, ints((16, 12), top, step, seed) / 64), [x])
    lif1 = net.add("lif1", neuron((16,), kind=kind, beta=beta, threshold=90 / 64, reset="zero"), [fc1])
    fc2 = net.add("fc2", affine(8, 16, ints((8, 16), top, step, seed + 1) / 64,
                                bias=torch.randint(-5, 6, (8,), generator=g) / 64), [lif1])
    lif2 = net.add("lif2", neuron((8,), kind=kind, beta=beta, threshold=120 / 64), [fc2])
    fc3 = net.add("fc3", affine(4, 8, ints((4, 8), top, step, seed + 2) / 64), [lif2])
    readout = net.add("readout", neuron((4,), kind="li", beta=0.875, threshold=None), [fc3])
    net.add("spikes", N.Output(), [lif2])
    net.add("membrane", N.Output(), [readout])
    return net


@torch.no_grad()
@pytest.mark.parametrize("target", TARGETS)
def test_weights_on_the_grid_reproduce_the_spikes_exactly(target):
    p = PROFILES[target]
    net = exact_network(p)
    quantized = quantize(net, target)
    x = spikes((30, 8, 12), p=0.4, seed=3)
    s_float, v_float = NetworkModule(net)(x)
    s_q, v_q = NetworkModule(quantized)(x)
    assert s_float.sum() > 0 and torch.equal(s_float, s_q)
    meta = quantized.metadata["quantization"]
    assert meta["output_scales"]["spikes"] == 1.0
    assert torch.equal(v_q * meta["output_scales"]["membrane"], v_float)
    mantissa = quantized.nodes["fc1"].weight / 2 ** meta["weight_exponents"]["fc1"]
    assert torch.equal(mantissa * meta["scales"]["fc1"] * 2 ** meta["weight_exponents"]["fc1"],
                       net.nodes["fc1"].weight)


@torch.no_grad()
def test_quantization_error_is_small_at_8_bits():
    """Weight, bias and threshold rounding at 8 bits (decays on every grid, so only the
    rounding differs): the readout stays within 10% and the decisions agree."""
    torch.manual_seed(0)
    net = N.Network()
    x_name = net.add("input", N.Input((40,)))
    fc1 = net.add("fc1", affine(64, 40, torch.randn(64, 40) * 0.4, bias=torch.randn(64) * 0.05), [x_name])
    lif = net.add("lif", neuron((64,), beta=0.875), [fc1])
    fc2 = net.add("fc2", affine(10, 64, torch.randn(10, 64) * 0.2), [lif])
    readout = net.add("readout", neuron((10,), kind="li", beta=0.875, threshold=None), [fc2])
    net.add("output", N.Output(), [readout])
    x = spikes((40, 32, 40), p=0.2, seed=4)
    v_float = NetworkModule(net)(x)
    for target in TARGETS:
        quantized = quantize(net, target)
        v_q = NetworkModule(quantized)(x) * quantized.metadata["quantization"]["output_scales"]["output"]
        error = float((v_q - v_float).norm() / v_float.norm())
        assert error < 0.1, (target, error)
        agree = (v_q.mean(0).argmax(1) == v_float.mean(0).argmax(1)).float().mean()
        assert agree >= 0.9, (target, agree)


def test_loihi2_weights_are_even_mantissas_with_an_exponent():
    model, x = float_models()["mlp"]
    quantized = quantize(model, "loihi2", example_inputs=x)
    exponents = quantized.metadata["quantization"]["weight_exponents"]
    for name in ("fc1", "fc2"):
        mantissa = quantized.nodes[name].weight / 2 ** exponents[name]
        assert torch.equal(mantissa % 2, torch.zeros_like(mantissa))
        assert mantissa.min() >= -256 and mantissa.max() <= 254 and mantissa.abs().max() >= 250
        assert 0 <= exponents[name] <= 7
    # odd integers are fine on Speck, not on Loihi 2
    odd = chain(("fc", affine(3, 4, torch.tensor([[1.0, 3, -5, 7]] * 3))), ("lif", neuron((3,), kind="if",
                                                                                    threshold=4.0)), input_shape=(4,))
    assert ("fc", "weight_bits") in found(check(odd, "loihi2"))
    assert ("fc", "weight_bits") not in found(check(odd, "speck"))


def test_decay_grids():
    beta = torch.tensor([0.9, 0.97, 0.5, 1.0, 0.0])
    xylo = quantize_decay(beta, PROFILES["xylo"])
    assert torch.allclose(xylo, torch.tensor([1 - 2 ** -3, 1 - 2 ** -5, 0.5, 1 - 2 ** -15, 0.0]))
    loihi = quantize_decay(beta, PROFILES["loihi2"])
    assert torch.allclose(loihi, 1 - torch.tensor([410, 123, 2048, 0, 4096]) / 4096)
    assert torch.equal(quantize_decay(beta, PROFILES["speck"]), beta)
    model, x = float_models()["mlp"]
    quantized = quantize(model, "xylo", example_inputs=x)
    for name in ("lif1", "lif2"):
        k = -torch.log2(1 - quantized.nodes[name].beta)
        assert torch.equal(k, k.round())
    assert "decay" not in check(quantized, "xylo").rules


def test_folds_keep_the_function():
    """Scale nodes and the average pool fold exactly: with a 16-bit profile the quantized
    ConvNet spikes as the float one."""
    fine = dataclasses.replace(PROFILES["speck"], name="speck16", weight_bits=16, bias_bits=16, threshold_bits=24,
                               state_bits=24)
    model, x = float_models()["conv"]
    net = to_network(model, x)
    quantized = quantize(net, fine)
    assert {n.kind for n in quantized.nodes.values()} == {"input", "conv", "pool", "neuron", "flatten", "affine",
                                                          "output"}
    assert quantized.nodes["pool"].mode == "sum"
    assert (NetworkModule(net)(x) == NetworkModule(quantized)(x)).float().mean() > 0.99


def test_neuron_input_scale_is_folded():
    net = chain(("fc", affine(5, 6)), ("lif", N.Neuron(NeuronSpec(kind="lif", scale=2.0), (5,), beta=0.875,
                                                       threshold=1.0, input_scale=torch.linspace(0.5, 1.5, 5))),
                input_shape=(6,))
    assert ("lif", "input_scale") in found(check(net, "xylo"))
    quantized = quantize(net, "xylo")
    lif = quantized.nodes["lif"]
    assert lif.input_scale is None and lif.spec.scale == 1.0
    assert "input_scale" not in check(quantized, "xylo").rules


def test_unweighted_input_keeps_unit_scale():
    net = N.Network()
    x = net.add("input", N.Input((4,)))
    fc = net.add("fc", affine(4, 4, torch.eye(4) * 2), [x])
    lif = net.add("lif", neuron((4,), beta=0.875, threshold=3.0), [fc, x])  # sums weights and the raw input
    net.add("output", N.Output(), [lif])
    assert ("lif", "structure") in found(check(net, "xylo"))
    quantized = quantize(net, "xylo")
    assert quantized.metadata["quantization"]["scales"]["lif"] == 1.0
    assert torch.equal(quantized.nodes["fc"].weight, torch.eye(4) * 2)


# -- accuracy: the demo network, quantized for each chip --------------------------------------

def test_quantized_accuracy_close_to_float():
    from bench.quantize import format_table, measure

    rows = measure(epochs=3, hidden=32, n_steps=15, batch_size=32, lr=2e-2,
                   dataset_kwargs={"n_train_per_class": 50, "n_test_per_class": 20})
    assert [r["target"] for r in rows] == list(TARGETS)
    for r in rows:
        assert r["float_acc"] > 0.8  # chance: 0.1
        assert abs(r["change"]) <= 0.05, r  # 8-bit weights: within 5 points
        assert r["weight_bits"] == 8 and r["violations_after"] < r["violations_before"]
    lines = format_table(rows).splitlines()
    assert lines[0].split("|")[0].strip() == "target" and len(lines) == 2 + len(TARGETS)
    assert math.isclose(rows[0]["float_acc"], rows[1]["float_acc"])
