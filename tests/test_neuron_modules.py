"""`snnopt.nn.Neuron` (any NeuronSpec) and `snnopt.nn.Recurrent` (spikes fed back)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import snnopt
from snnopt.nn import LIF, Neuron, Recurrent
from snnopt.nn.functional import neuron_step
from snnopt.spec import NeuronSpec

from .models import spikes


def test_neuron_from_spec_equals_the_named_module_and_its_gradients():
    torch.manual_seed(0)
    x = torch.randn(30, 4, 7, requires_grad=True)
    lif = LIF(0.8, threshold=0.7, reset="zero", surrogate="fast_sigmoid")
    general = Neuron(lif.spec())
    a, b = lif(x), general(x)
    assert torch.equal(a, b)
    ga, = torch.autograd.grad(a.sum(), x)
    gb, = torch.autograd.grad(b.sum(), x)
    assert torch.equal(ga, gb)


def test_neuron_applies_reset_value_rest_scale_and_input_gain():
    torch.manual_seed(1)
    spec = NeuronSpec(kind="lif", beta=0.9, threshold=1.0, reset="zero", v_reset=-0.2, v_rest=0.1, scale=1.5)
    gain = torch.rand(5) + 0.5
    module = Neuron(spec, beta=torch.full((5,), 0.8), input_scale=gain)
    x = torch.randn(20, 3, 5)
    out = module(x)
    cfg = dataclasses.replace(spec, beta=None, param_attrs=(("beta", "beta"),)).config
    v, expected = None, []
    for t in range(20):
        s, v, _ = neuron_step(x[t] * gain, v, None, torch.full((5,), 0.8), None, 1.0, cfg)
        expected.append(s)
    assert torch.equal(out, torch.stack(expected))
    assert module.spec().learnable == frozenset()
    learn = Neuron(dataclasses.replace(spec, learnable=frozenset({"beta"})))
    assert isinstance(learn.beta, nn.Parameter)


@pytest.mark.parametrize("mode", ["dense", "sparse", "rate"])
@pytest.mark.parametrize("gain", [2.0, "tensor"])
def test_compiled_neuron_keeps_its_input_gain(mode, gain):
    """A Neuron with an ``input_scale`` (what ``from_nir`` builds for a NIR ``r``) compiles
    with its gain: the same spikes as the module, and in dense mode the same gradients."""
    torch.manual_seed(3)
    gain = torch.rand(12) + 0.5 if gain == "tensor" else gain
    model = nn.Sequential(nn.Linear(10, 12), Neuron(NeuronSpec("lif", beta=0.75, reset="zero"), input_scale=gain))
    x = spikes((40, 3, 10))
    compiled = snnopt.compile(model, mode=mode, example_inputs=(x,))
    want, got = model(x), compiled(x)
    assert 0 < float(want.detach().mean()) < 1
    assert torch.equal(got, want)
    if mode == "dense":
        w = torch.randn(want.shape)
        for a, b in zip(torch.autograd.grad((got * w).sum(), list(model.parameters())),
                        torch.autograd.grad((want * w).sum(), list(model.parameters()))):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_recurrent_feeds_back_the_previous_spikes():
    torch.manual_seed(2)
    rec = Recurrent(LIF(0.85), nn.Linear(6, 6))
    x = torch.randn(25, 3, 6) * 1.5
    out = rec(x)
    cell = LIF(0.85)
    # an explicit loop with the state carried
    s, v, outs = torch.zeros(3, 6), None, []
    cfg = cell.spec().config
    for t in range(25):
        s, v, _ = neuron_step(x[t] + rec.recurrent(s), v, None, cell.beta, None, cell.threshold, cfg)
        outs.append(s)
    assert torch.equal(out, torch.stack(outs))
    rec_state = Recurrent(LIF(0.85), rec.recurrent, return_state=True)
    first, state = rec_state(x[:10])
    second, _ = rec_state(x[10:], state)
    assert torch.equal(torch.cat([first, second]), out)


def test_recurrent_stays_eager_with_a_reason_and_rejects_bad_parts():
    model = nn.Sequential(nn.Linear(4, 6), Recurrent(LIF(0.9), nn.Linear(6, 6, bias=False)))
    x = spikes((12, 2, 4))
    fast = snnopt.compile(model, example_inputs=(x,))
    assert torch.equal(fast(x), model(x))
    assert any("recurrent weight" in e.detail for e in fast.report.eager)
    with pytest.raises(TypeError, match="square"):
        Recurrent(LIF(0.9), nn.Linear(6, 5))
    with pytest.raises(TypeError, match="spiking"):
        Recurrent(snnopt.nn.LI(0.9), nn.Linear(6, 6))


@pytest.mark.parametrize("fields,problem", [
    (dict(kind="if", beta=1.0, scale=0.1), "kind 'if'"),
    (dict(kind="lif", beta=0.5, scale=0.1), "1 - scale"),
    (dict(kind="cuba_lif", beta=0.9, scale=0.1, alpha=0.8), "current_decay 'before'"),
    (dict(kind="lif", beta=0.9, scale=0.1, reset_timing="next"), "reset_timing 'next'"),
    (dict(kind="lif", beta=0.9, scale=0.1, learnable=frozenset({"threshold"})), "learnable"),
])
def test_euler_integration_is_refused_where_it_is_not_norse_form(fields, problem):
    """``integration="euler"`` is Norse's step; a spec it cannot describe is a ValueError
    naming what is wrong, while a Norse-form spec builds and runs as a module."""
    with pytest.raises(ValueError, match=f"integration 'euler' does not apply to .*{problem}"):
        NeuronSpec(integration="euler", **fields)
    spec = NeuronSpec(kind="cuba_lif", beta=1 - 0.125, scale=0.125, alpha=0.75, current_decay="after",
                      integration="euler", v_rest=0.25, reset="zero")
    assert "integration=euler" in spec.describe()
    x = 4 * spikes((6, 2, 5))
    v, i, outs = torch.full((2, 5), 0.25), torch.zeros(2, 5), []
    for t in range(6):  # Norse's LIF step with dt * tau_mem_inv = 0.125, dt * tau_syn_inv = 0.25
        i = i + x[t]
        h = v + 0.125 * ((0.25 - v) + i)
        i = i + -0.25 * i
        s = (h > 1.0).float()
        v = (1 - s) * h
        outs.append(s)
    out = Neuron(spec)(x, (torch.zeros(2, 5), torch.full((2, 5), 0.25)))  # state (i, v)
    assert torch.equal(out, torch.stack(outs)) and out.any()
    with pytest.raises(ValueError, match="fixes alpha"):
        Neuron(spec, alpha=0.5)
    # the module keeps the form's alpha itself, not its float32 rounding in the buffer
    assert Neuron(dataclasses.replace(spec, alpha=0.8)).spec().alpha == 0.8


TAU = 1.7


@pytest.mark.parametrize("fields,problem", [
    (dict(kind="if", beta=1.0), "kind 'if'"),
    (dict(kind="lif", beta=0.5, scale=1 / TAU), "1 - 1/tau"),
    (dict(kind="lif", beta=1 - 1 / TAU, scale=0.5), "scale 0.5"),
    (dict(kind="lif", beta=1 - 1 / TAU, reset_timing="next"), "reset_timing 'next'"),
    (dict(kind="lif", beta=1 - 1 / TAU, learnable=frozenset({"threshold"})), "learnable"),
])
def test_tau_integration_is_refused_where_it_is_not_spikingjelly_form(fields, problem):
    """``integration="tau"`` is SpikingJelly's LIF; a spec it cannot describe, a tau that is no
    time constant or a tau given to another form is a ValueError naming what is wrong, while a
    SpikingJelly-form spec builds and runs as a module in SpikingJelly's order of operations."""
    with pytest.raises(ValueError, match=f"integration 'tau' does not apply to .*{problem}"):
        NeuronSpec(integration="tau", tau=TAU, **fields)
    with pytest.raises(ValueError, match="tau > 1"):
        NeuronSpec(integration="tau", tau=0.5, beta=-1.0, scale=2.0)
    with pytest.raises(ValueError, match="leave it None"):
        NeuronSpec(beta=1 - 1 / TAU, tau=TAU)
    spec = NeuronSpec(kind="lif", beta=1 - 1 / TAU, scale=1 / TAU, integration="tau", tau=TAU, v_rest=-0.2,
                      reset="zero", v_reset=-0.2, fire=">=")
    assert "integration=tau tau=1.7" in spec.describe()
    x = 3 * spikes((6, 2, 5))
    v, outs = torch.full((2, 5), -0.2), []
    for t in range(6):  # SpikingJelly's LIFNode(tau=1.7, v_reset=-0.2) step
        h = v + (x[t] - (v - -0.2)) / TAU
        s = (h >= 1.0).float()
        v = s * -0.2 + (1 - s) * h
        outs.append(s)
    out = Neuron(spec)(x, torch.full((2, 5), -0.2))
    assert torch.equal(out, torch.stack(outs)) and out.any()
    with pytest.raises(ValueError, match="fixes beta"):
        Neuron(spec, beta=0.5)
