"""Dense mode reproduces the uncompiled model exactly: outputs bit-identical; gradients to
rtol 1e-4 with atol 1e-5 * max|grad| (fp32 sums taken in another order)."""

import copy
import io

import pytest
import torch

import snnopt
from snnopt.profiling import SavedTensorMeter

from .devices import DEVICES
from .models import MLP, ConvNet, LoopConvNet, LoopMLP, grads_of, neuron_kwargs, spikes

RTOL = 1e-4


def close(got, ref, name=""):
    atol = 1e-5 * float(ref.abs().max()) + 1e-7
    torch.testing.assert_close(got, ref, rtol=RTOL, atol=atol, msg=lambda m: f"{name}: {m}")


def assert_same(model, x, mode="dense", device="cpu", exact_forward=True, **compile_kw):
    """``exact_forward`` False: forward to the gradients' tolerance (see :func:`test_conv`).
    cuDNN runs deterministic and in full float32 (no TF32) here."""
    model, x = model.to(device), x.to(device)
    with torch.backends.cudnn.flags(enabled=True, deterministic=True, benchmark=False, allow_tf32=False):
        ref_out = model(x)
        ref = grads_of(model, ref_out)
        compiled = snnopt.compile(model, mode=mode, example_inputs=(x,), **compile_kw)
        out = compiled(x)
        got = grads_of(compiled, out)
    if exact_forward:
        assert torch.equal(out, ref_out), "forward differs"
    else:
        close(out, ref_out, "forward")
    assert got.keys() == ref.keys()
    for name in ref:
        close(got[name], ref[name], name)
    return compiled


@pytest.mark.parametrize("cls", [MLP, LoopMLP])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_mlp_resets(cls, reset, detach_reset, device):
    torch.manual_seed(1)
    model = cls(**neuron_kwargs(reset=reset, detach_reset=detach_reset))
    assert_same(model, spikes((20, 4, 12)), device=device)


@pytest.mark.parametrize("surrogate", ["atan", "fast_sigmoid", "sigmoid", "triangle", "rectangle"])
def test_every_surrogate(surrogate):
    torch.manual_seed(2)
    assert_same(LoopMLP(**neuron_kwargs(surrogate=surrogate)), spikes((15, 3, 12)))


@pytest.mark.parametrize("cls", [MLP, LoopMLP])
def test_learnable_beta_threshold(cls):
    torch.manual_seed(3)
    model = cls(**neuron_kwargs(learn=True, reset="zero"))
    compiled = assert_same(model, spikes((12, 3, 12)))
    names = dict(compiled.named_parameters())
    assert {"lif1.beta", "lif1.threshold", "lif2.beta", "lif2.threshold"} <= names.keys()


@pytest.mark.parametrize("cls", [ConvNet, LoopConvNet])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("device", DEVICES)
def test_conv(cls, reset, device):
    """On CUDA the per-step loop's convolutions, rerolled into one call over T x B samples,
    round differently: cuDNN picks its algorithm by batch size."""
    torch.manual_seed(4)
    exact = device == "cpu" or cls is ConvNet
    assert_same(cls(**neuron_kwargs(reset=reset)), spikes((8, 3, 2, 12, 12)), device=device, exact_forward=exact)


@pytest.mark.parametrize("device", DEVICES)
def test_cuba_if_li_and_per_neuron_params(device):
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), snnopt.nn.CubaLIF(alpha=torch.rand(8), beta=0.9,
                                                                          learn_alpha=True, learn_beta=True),
                                torch.nn.Linear(8, 8), snnopt.nn.IF(threshold=torch.rand(8) + 0.5),
                                torch.nn.Linear(8, 3), snnopt.nn.LI(beta=0.8, learn_beta=True))
    assert_same(model, 3 * spikes((10, 2, 6)), device=device)


def test_other_shapes_after_compiling():
    """Compiled at T = 25, B = 8; exact at T = 60, B = 3 (per-step loop and multi-step)."""
    for cls in (LoopMLP, MLP):
        torch.manual_seed(6)
        model = cls()
        compiled = snnopt.compile(model, example_inputs=(spikes((25, 8, 12)),))
        x = spikes((60, 3, 12))
        ref_out = model(x)
        ref = grads_of(model, ref_out)
        out = compiled(x)
        assert torch.equal(out, ref_out)
        got = grads_of(compiled, out)
        for name in ref:
            close(got[name], ref[name], name)


def test_lazy_compile_and_report():
    model = LoopMLP()
    compiled = snnopt.compile(model, mode="dense")
    assert compiled.report is None
    x = spikes((9, 2, 12))
    assert torch.equal(compiled(x), model(x))
    text = str(compiled.report)
    assert "lif1" in text and "lif2" in text and "reroll_time" in text
    assert len(compiled.report.neurons) == 2 and not compiled.report.eager


def test_shares_parameters_state_dict_and_survives_save():
    torch.manual_seed(7)
    model = MLP(**neuron_kwargs(learn=True))
    x = spikes((10, 2, 12))
    compiled = snnopt.compile(model, example_inputs=(x,))
    assert compiled.state_dict().keys() == model.state_dict().keys()
    assert all(a is b for a, b in zip(compiled.parameters(), model.parameters()))
    opt = torch.optim.SGD(compiled.parameters(), lr=0.5)
    compiled(x).sum().backward()
    opt.step()
    assert torch.equal(compiled(x), model(x))  # the step changed the shared weights

    buf = io.BytesIO()
    torch.save(compiled.state_dict(), buf)
    buf.seek(0)
    fresh = MLP(**neuron_kwargs(learn=True))
    fresh_c = snnopt.compile(fresh, example_inputs=(x,))
    fresh_c.load_state_dict(torch.load(buf))
    assert torch.equal(fresh_c(x), compiled(x))

    buf = io.BytesIO()
    torch.save(compiled, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded(x), compiled(x))
    clone = copy.deepcopy(compiled)
    assert torch.equal(clone(x), compiled(x))


def test_train_eval_and_eval_saves_nothing():
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Dropout(0.5), snnopt.nn.LIF(0.9),
                                torch.nn.Linear(16, 4), snnopt.nn.LIF(0.9))
    x = 3 * spikes((10, 4, 12))
    compiled = snnopt.compile(model, example_inputs=(x,))
    compiled.eval()
    assert not model.training and not model[1].training
    with SavedTensorMeter() as meter:
        out = compiled(x)
    assert meter.bytes == 0 and not out.requires_grad
    assert torch.equal(out, model(x))
    compiled.train()
    with SavedTensorMeter() as meter:
        out = compiled(x)
    assert meter.bytes > 0 and out.requires_grad
