"""Bad input: clear errors, eager fallbacks listed in the report, never a silent wrong answer."""

import pytest
import torch
from torch import nn

import snnopt
from snnopt.spec import NeuronSpec

from .models import MLP, LoopMLP, grads_of, spikes


class PerStepBatchNorm(nn.Module):
    """A loop with BatchNorm inside the recurrence: per-step batch statistics cannot be merged."""

    def __init__(self):
        super().__init__()
        self.fc, self.bn, self.lif = nn.Linear(12, 8), nn.BatchNorm1d(8), snnopt.nn.LIFCell(0.9)
        self.fc2, self.lif2 = nn.Linear(8, 4), snnopt.nn.LIFCell(0.9)

    def forward(self, x):
        v = v2 = None
        out = []
        for t in range(x.shape[0]):
            s, v = self.lif(self.bn(self.fc(x[t])) * 2, v)
            s2, v2 = self.lif2(self.fc2(s) * 3, v2)
            out.append(s2)
        return torch.stack(out)


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_unhandled_module_in_recurrence_stays_eager(mode):
    torch.manual_seed(0)
    model = PerStepBatchNorm()
    x = spikes((6, 5, 12))
    compiled = snnopt.compile(model, mode=mode, example_inputs=(x,))
    first, second = compiled.report.eager
    assert "`lif` stays per-step" in first.detail and "BatchNorm1d `bn`" in first.detail
    assert "batch statistics" in first.detail
    assert "`lif2` stays per-step" in second.detail and "comes from `lif`" in second.detail
    assert "[per-step x6]" in str(compiled.report)
    out = compiled(x)
    ref = model(x)
    assert torch.equal(out, ref)
    if mode == "dense":
        g_ref = grads_of(model, ref)
        g = grads_of(compiled, out)
        for name in g_ref:
            torch.testing.assert_close(g[name], g_ref[name], rtol=1e-4, atol=1e-6)


class Opaque(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("beta", torch.tensor(0.9))

    def forward(self, x):
        return (x > 1).float()


def test_refused_neuron_adapter_names_class_and_model_runs():
    def to_spec(module):
        raise snnopt.UnsupportedNeuron("its custom refractory period has no NeuronSpec field")
    snnopt.register_neuron(Opaque, to_spec)
    model = nn.Sequential(nn.Linear(12, 8), Opaque(), nn.Linear(8, 4), snnopt.nn.LIF(0.9))
    x = spikes((5, 2, 12))
    compiled = snnopt.compile(model, example_inputs=(x,))
    [entry] = compiled.report.eager
    assert "Opaque" in entry.detail and "refractory" in entry.detail
    assert torch.equal(compiled(x), model(x))


def test_input_without_time_axis_is_a_value_error():
    model = MLP()
    with pytest.raises(ValueError, match=r"\[T, B"):
        snnopt.compile(model, example_inputs=(spikes((4, 12)),))
    compiled = snnopt.compile(model, example_inputs=(spikes((6, 4, 12)),))
    with pytest.raises(ValueError, match=r"time-major input \[T, B, \.\.\.\]"):
        compiled(spikes((4, 12)))
    with pytest.raises(ValueError, match=r"\[T, B"):
        snnopt.compile(LoopMLP())(spikes((12,)))


@pytest.mark.parametrize("mode", ["dense", "sparse", "rate"])
def test_nan_inputs_do_not_crash(mode):
    model = MLP()
    x = spikes((6, 3, 12))
    x[2, 1, 4] = float("nan")
    compiled = snnopt.compile(model, mode=mode, example_inputs=(x,))
    out = compiled(x)
    assert out.shape == (6, 3, 5)
    out.sum().backward()


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        snnopt.compile(MLP(), mode="fast")
    with pytest.raises(ValueError, match="band"):
        snnopt.compile(MLP(), mode="sparse", band=0.0)
    with pytest.raises(ValueError, match="surrogate"):
        snnopt.nn.LIF(0.9, surrogate="magic")
    with pytest.raises(ValueError, match="reset"):
        NeuronSpec(reset="soft")


@pytest.mark.parametrize("neuron_after", [True, False])
def test_input_that_does_not_fit_a_layer_names_the_layer(neuron_after, caplog):
    layers = [nn.Linear(100, 16)] + ([snnopt.nn.LIF(0.9)] if neuron_after else [nn.ReLU()])
    model = nn.Sequential(*layers)
    with caplog.at_level("ERROR"), pytest.raises(snnopt.frontend.tracer.TraceFailure) as info:
        snnopt.compile(model, example_inputs=(spikes((5, 2, 50)),))
    assert "`_0` (call_module 0) fails on its traced input" in str(info.value)
    assert "[10, 50] X [100, 16]" in str(info.value)
    assert not [r for r in caplog.records if r.name.startswith("torch")]  # no fake-tensor tracebacks logged
