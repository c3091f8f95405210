"""The ``binary_synapses`` pass: Linear / Conv2d on spikes or on a binary graph input become
``binary_synapse`` in every mode, with the values and gradients of the original model."""

from __future__ import annotations

import pytest
import torch

import snnopt
from snnopt import kernels

from .models import MLP, ConvNet, grads_of, spikes


def mlp():
    """Linear straight on the (binary) data input, then on hidden spikes."""
    return torch.nn.Sequential(torch.nn.Linear(12, 16), snnopt.nn.LIF(0.85), torch.nn.Linear(16, 5),
                               snnopt.nn.LIF(0.75))


def _synapses(compiled):
    program = next(iter(compiled._programs.values()))
    return [n for n in program.gm.graph.nodes if n.target is kernels.binary_synapse]


@pytest.mark.parametrize("mode", ["dense", "rate"])
def test_spike_and_binary_input_synapses_are_rewritten(mode):
    torch.manual_seed(0)
    compiled = snnopt.compile(mlp(), mode=mode, example_inputs=(spikes((6, 3, 12), p=0.1),))
    fed = {n.args[0].op for n in _synapses(compiled)}
    assert fed == {"placeholder", "call_function"}, compiled.report  # the data input and the hidden spikes
    assert sum("bit-packed" in note.detail for note in compiled.report.notes) == 2


def test_float_input_synapse_stays_a_module_call():
    torch.manual_seed(0)
    compiled = snnopt.compile(mlp(), example_inputs=(torch.randn(6, 3, 12),))
    assert [n.args[0].op for n in _synapses(compiled)] == ["call_function"]  # only the one on spikes


@pytest.mark.parametrize("model_cls,shape", [(mlp, (9, 4, 12)), (MLP, (9, 4, 12)), (ConvNet, (5, 2, 2, 12, 12))])
@pytest.mark.parametrize("p", [0.02, 0.5])
def test_dense_mode_equals_autograd_at_low_and_high_density(model_cls, shape, p):
    """Event-driven (sparse input) and matrix-product (dense input) synapses: outputs equal and
    gradients to rtol 1e-4 against autograd through the uncompiled model, on fresh inputs."""
    torch.manual_seed(1)
    model = model_cls()
    compiled = snnopt.compile(model, example_inputs=(spikes(shape, p=p, seed=0),))
    assert _synapses(compiled)
    x = spikes(shape, p=p, seed=1)
    want_out = model(x)
    want = grads_of(model, want_out)
    got_out = compiled(x)
    torch.testing.assert_close(got_out, want_out, rtol=1e-4, atol=1e-5)
    got = grads_of(model, got_out)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5 * float(want[name].abs().max()))


def test_binary_example_then_float_input_is_still_exact():
    """The program compiled for a binary example keeps a float input as floats for backward."""
    torch.manual_seed(2)
    model = mlp()
    compiled = snnopt.compile(model, example_inputs=(spikes((6, 3, 12), p=0.1),))
    x = torch.randn(6, 3, 12)
    want = grads_of(model, model(x))
    got = grads_of(model, compiled(x))
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6)


def test_dense_mode_off_the_cpu_leaves_synapses_to_the_blas():
    from snnopt.passes import pipeline

    def names(mode, device):
        return [p.__name__ for p in pipeline(mode, device=device)]

    assert "binary_synapses" in names("dense", "cpu")
    assert "binary_synapses" not in names("dense", "cuda")
    assert "binary_synapses" in names("sparse", "cuda") and "binary_synapses" in names("rate", "cuda")
