"""The compiled module as a user meets it: integer spike inputs, empty time axes, NaN inputs
and input gradients in rate mode, hooks on submodules, and the checks on ``band``."""

import math

import pytest
import torch

import snnopt

from .models import MLP, LoopMLP, spikes


@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool])
@pytest.mark.parametrize("mode", ["dense", "sparse", "rate"])
def test_integer_and_bool_spike_inputs(mode, dtype):
    """A spike tensor stored as uint8 or bool gives the model's output in every mode (rate
    mode averages it over time in the default floating dtype)."""
    torch.manual_seed(0)
    model = MLP()
    x = spikes((6, 4, 12), seed=1)
    compiled = snnopt.compile(model, mode=mode, example_inputs=(x,))
    out = compiled(x.to(dtype))
    assert torch.equal(out, model(x.to(dtype)))
    out.sum().backward()
    assert model.fc1.weight.grad is not None


@pytest.mark.parametrize("mode", ["dense", "sparse", "rate"])
def test_nan_input_propagates_as_in_the_model(mode):
    """A NaN in the input gives the model's output, NaNs where the model has them, in
    train() (the rate pass's NaN rates do not leak into the spike pass's value) and eval()."""
    torch.manual_seed(0)
    model = MLP()
    x = spikes((6, 4, 12), seed=1)
    x[2, 1, 3] = float("nan")
    compiled = snnopt.compile(model, mode=mode, example_inputs=(x,))
    for train in (True, False):
        compiled.train(train)
        out, ref = compiled(x), model(x)
        assert torch.equal(out.isnan(), ref.isnan())
        assert torch.equal(out.nan_to_num(7.0), ref.nan_to_num(7.0))


def test_rate_mode_gives_the_input_gradient_in_eval():
    """In eval(), an input that requires grad gets rate mode's gradient, that of train()
    (the model has no train/eval-dependent layer)."""
    torch.manual_seed(0)
    model = MLP()
    x = spikes((6, 4, 12), seed=1)
    compiled = snnopt.compile(model, mode="rate", example_inputs=(x,))
    proj = torch.randn(6, 4, 5)
    grads = {}
    for train in (True, False):
        compiled.train(train)
        xg = x.clone().requires_grad_()
        (compiled(xg) * proj).sum().backward()
        grads[train] = xg.grad
    assert grads[False].abs().sum() > 0
    torch.testing.assert_close(grads[False], grads[True], rtol=1e-4, atol=1e-6)
    compiled.eval()
    assert not compiled(x).requires_grad


@pytest.mark.parametrize("mode", ["dense", "rate"])
def test_no_time_steps_is_a_clear_error(mode):
    compiled = snnopt.compile(MLP(), mode=mode, example_inputs=(spikes((6, 4, 12)),))
    with pytest.raises(ValueError, match=r"MLP: .*no time steps .*T >= 1"):
        compiled(torch.zeros(0, 4, 12))


def test_hooks_on_submodules_are_reported():
    model = MLP()
    model.lif1.register_forward_hook(lambda module, inputs, output: output * 0)
    compiled = snnopt.compile(model, example_inputs=(spikes((6, 4, 12)),))
    assert any(n.node == "lif1" and "forward hooks" in n.detail for n in compiled.report.warnings)
    calls = []
    compiled.register_forward_hook(lambda module, inputs, output: calls.append(output.shape))
    compiled(spikes((6, 4, 12)))
    assert calls == [torch.Size([6, 4, 5])]


@pytest.mark.parametrize("band", [0, -1, float("nan"), "0.1", None, True])
def test_band_must_be_a_positive_number(band):
    with pytest.raises(ValueError, match="band must be positive"):
        snnopt.compile(MLP(), mode="sparse", band=band)


def test_band_inf_is_the_dense_gradient():
    assert snnopt.compile(MLP(), mode="sparse", band=math.inf).band == math.inf


def test_a_recompile_keeps_a_pending_eager_backward_valid():
    """Compiling again for a new T between an eager forward and its backward leaves the
    buffers that forward saved untouched (beta, threshold), so the eager backward still runs
    and gives the compiled module's gradients."""
    torch.manual_seed(5)
    model = LoopMLP()
    compiled = snnopt.compile(model, mode="dense", example_inputs=(spikes((5, 2, 12)),))
    x = spikes((8, 3, 12), seed=2)
    ref_out = model(x)
    out = compiled(x)  # T = 8: a new specialisation, traced while ref_out awaits its backward
    ref_out.sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    out.sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-4, atol=1e-6)
