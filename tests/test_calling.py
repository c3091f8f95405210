"""How compiled modules are called: forward signatures, state inputs, constants changed after
compiling, and the models rate mode leaves to dense mode (with the reason)."""

import pytest
import torch
from torch import nn

import snnopt
import snnopt.nn as snn

from .models import MLP, grads_of, spikes

NUM_STEPS = 7


class Varargs(nn.Module):
    """``forward(self, *inputs)``: a generic wrapper signature."""

    def __init__(self):
        super().__init__()
        self.fc, self.lif = nn.Linear(12, 9), snn.LIFCell(0.8)

    def forward(self, *inputs):
        x, v, out = inputs[0], None, []
        for t in range(x.shape[0]):
            s, v = self.lif(3 * self.fc(x[t]), v)
            out.append(s)
        return torch.stack(out)


class OptionalState(nn.Module):
    """``forward(self, x, v=None)``: starts at rest unless a membrane is given; returns it."""

    def __init__(self):
        super().__init__()
        self.fc, self.lif = nn.Linear(12, 9), snn.LIFCell(0.8)

    def forward(self, x, v=None):
        out = []
        for t in range(x.shape[0]):
            s, v = self.lif(3 * self.fc(x[t]), v)
            out.append(s)
        return torch.stack(out), v


class Static(nn.Module):
    """A static input ``[B, F]`` presented for a fixed number of steps (snnTorch tutorial 5)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.lif1 = nn.Linear(12, 16), snn.LIFCell(0.85)
        self.fc2, self.lif2 = nn.Linear(16, 5), snn.LIFCell(0.8)

    def forward(self, x):
        v1 = v2 = None
        out = []
        for _ in range(NUM_STEPS):
            s1, v1 = self.lif1(3 * self.fc1(x), v1)
            s2, v2 = self.lif2(3 * self.fc2(s1), v2)
            out.append(s2)
        return torch.stack(out)


def test_varargs_forward_runs_over_time():
    torch.manual_seed(0)
    model, x = Varargs(), spikes((10, 3, 12))
    compiled = snnopt.compile(model, example_inputs=(x,))
    assert torch.equal(compiled(x), model(x))
    assert not compiled.report.eager


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_optional_state_argument(mode):
    torch.manual_seed(1)
    model, x = OptionalState(), spikes((8, 3, 12))
    compiled = snnopt.compile(model, mode=mode, example_inputs=(x,))
    out, v = compiled(x)
    ref, v_ref = model(x)
    assert torch.equal(out, ref)
    torch.testing.assert_close(v, v_ref, rtol=1e-5, atol=1e-6)
    x2 = spikes((5, 3, 12), seed=2)
    out2, _ = compiled(x2, v_ref)  # the state given: a second program, same results as the model
    assert torch.equal(out2, model(x2, v_ref)[0])
    assert torch.equal(compiled(x2, None)[0], model(x2)[0])


def test_missing_argument_without_default_is_named():
    class TwoInputs(nn.Module):
        def forward(self, x, y):
            return x + y
    with pytest.raises(ValueError, match="`y`"):
        snnopt.compile(TwoInputs(), example_inputs=(spikes((4, 2, 3)),))


def test_state_tuples_do_not_recompile():
    norse = pytest.importorskip("norse.torch")
    torch.manual_seed(2)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.lif = nn.Linear(12, 9), norse.LIF(norse.LIFParameters(v_th=torch.as_tensor(0.3)))

        def forward(self, x, state=None):
            return self.lif(20 * self.fc(x), state)

    model, x = Net(), spikes((6, 3, 12))
    compiled = snnopt.compile(model, example_inputs=(x,))
    _, state = compiled(x)
    _, state_ref = model(x)
    for _ in range(3):
        out, state = compiled(x, state)
        ref, state_ref = model(x, state_ref)
        torch.testing.assert_close(out, ref)
    assert len(compiled._programs) == 2  # from rest, and from a given state


def test_constants_changed_after_compiling_are_followed():
    snntorch = pytest.importorskip("snntorch")
    torch.manual_seed(3)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.lif = nn.Linear(12, 16), snntorch.Leaky(beta=0.9, threshold=1.0)

        def forward(self, x):
            mem, out = self.lif.init_leaky(), []
            for t in range(x.shape[0]):
                s, mem = self.lif(2 * self.fc(x[t]), mem)
                out.append(s)
            return torch.stack(out)

    model, x = Net(), spikes((12, 4, 12))
    compiled = snnopt.compile(model, example_inputs=(x,))
    state = model.state_dict()
    state["lif.beta"], state["lif.threshold"] = torch.tensor(0.5), torch.tensor(0.4)
    model.load_state_dict(state)
    assert torch.equal(compiled(x), model(x))
    with torch.no_grad():
        model.lif.threshold.fill_(1.7)
    assert torch.equal(compiled(x), model(x))


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_torch_compile_of_a_compiled_module_follows_changed_constants(mode):
    """torch.compile over the compiled module: the compiled module's output and gradients
    (the model's output), and the per-call check of the neurons' constants still runs
    (between torch.compile's graphs), so a threshold changed in place is followed."""
    torch.manual_seed(5)
    model, x = MLP(), spikes((9, 3, 12))
    compiled = snnopt.compile(model, mode=mode, example_inputs=(x,))
    fast = torch.compile(compiled, backend="aot_eager")
    for threshold in (1.0, 0.6):
        with torch.no_grad():
            model.lif1.threshold.fill_(threshold)
        out, ref = fast(x), compiled(x)
        assert torch.equal(out, ref) and torch.equal(ref, model(x))
        got = torch.autograd.grad(out.sum(), list(model.parameters()))
        want = torch.autograd.grad(ref.sum(), list(model.parameters()))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_spikingjelly_attributes_changed_after_compiling_are_followed():
    pytest.importorskip("spikingjelly")
    from spikingjelly.activation_based import functional, layer, neuron
    torch.manual_seed(4)
    model = nn.Sequential(layer.Linear(12, 16), neuron.LIFNode(tau=2.0))
    functional.set_step_mode(model, "m")
    x = 3 * spikes((10, 4, 12))
    compiled = snnopt.compile(model, example_inputs=(x,))
    model[1].tau, model[1].v_threshold = 4.0, 0.3
    functional.reset_net(model)
    ref = model(x)
    functional.reset_net(model)
    assert torch.equal(compiled(x), ref)


def test_rate_mode_runs_a_static_input_model_at_one_step():
    """The loop's steps do not follow the input's first dim: rate mode runs its rate pass on the
    static input itself (``collapse_steps``; the gradients are checked in test_rate) and returns
    the model's values, in train and eval mode."""
    torch.manual_seed(5)
    model, x = Static(), torch.rand(8, 12)
    compiled = snnopt.compile(model, mode="rate", example_inputs=(x,))
    assert compiled.report.mode == "rate" and not compiled.report.fallback
    out = compiled(x)
    assert torch.equal(out, model(x)) and out.shape[0] == NUM_STEPS
    assert all(p.grad is None for p in model.parameters())
    grads_of(compiled, out)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    compiled.eval()
    assert torch.equal(compiled(x), model(x))


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_static_input_model_takes_other_batch_sizes(mode):
    """The static input repeated over the steps is expanded for whatever batch it has."""
    torch.manual_seed(5)
    model = Static()
    compiled = snnopt.compile(model, mode=mode, example_inputs=(torch.rand(8, 12),))
    for batch in (8, 3, 11):
        x = torch.rand(batch, 12)
        assert torch.equal(compiled(x), model(x))


def test_rate_mode_leaves_a_model_without_neurons_to_dense_mode():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.rand(6, 3, 12)
    compiled = snnopt.compile(model, mode="rate", example_inputs=(x,))
    assert "no compiled neuron" in compiled.report.fallback
    got, ref = grads_of(model, compiled(x)), grads_of(model, model(x))
    for name in ref:
        torch.testing.assert_close(got[name], ref[name])


@pytest.mark.parametrize("T,B,why", [(8, 3, "is not a time-major sequence"),
                                     (9, 9, "sets the initial state of `lif`")])  # [B, N] looks like [T, B]
def test_rate_mode_with_a_state_input_falls_back(T, B, why):
    torch.manual_seed(7)
    model, x = OptionalState(), spikes((T, B, 12))
    v = torch.rand(B, 9)
    compiled = snnopt.compile(model, mode="rate", example_inputs=(x, v))
    assert why in compiled.report.fallback
    assert torch.equal(compiled(x, v)[0], model(x, v)[0])


class TwoStreams(nn.Module):
    """Two time-major spike inputs summed into one population (e.g. two sensors)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(12, 16), nn.Linear(6, 16)
        self.lif, self.out = snn.LIF(0.9), nn.Linear(16, 4)

    def forward(self, x, y):
        return self.out(self.lif(3 * self.a(x) + 3 * self.b(y)))


def test_rate_mode_averages_every_sequence_input():
    """Each time-major input is averaged over time for the rate pass: at T = 1 the gradients
    are BPTT's (for both inputs' weights), at T = 8 the output is the model's."""
    torch.manual_seed(8)
    model = TwoStreams()
    for T in (1, 8):
        x, y = spikes((T, 5, 12), seed=T), spikes((T, 5, 6), seed=T + 1)
        compiled = snnopt.compile(model, mode="rate", example_inputs=(x, y))
        out = compiled(x, y)
        assert compiled.report.fallback is None and torch.equal(out, model(x, y))
        got, ref = grads_of(model, out), grads_of(model, model(x, y))
        assert got["b.weight"].abs().sum() > 0
        if T == 1:
            for name in ref:
                torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-6)


def test_rate_mode_still_runs_time_major_models():
    compiled = snnopt.compile(MLP(), mode="rate", example_inputs=(spikes((8, 3, 12)),))
    assert compiled.report.fallback is None


class BatchFirst(nn.Module):
    """Steps taken from dim 1 (``x[:, t]``): batch-first data."""

    def __init__(self):
        super().__init__()
        self.fc, self.lif = nn.Linear(12, 9), snn.LIFCell(0.8)

    def forward(self, x):
        v, out = None, []
        for t in range(x.shape[1]):
            s, v = self.lif(3 * self.fc(x[:, t]), v)
            out.append(s)
        return torch.stack(out)


@pytest.mark.parametrize("mode", ["dense", "rate"])
def test_batch_first_loop_stays_per_step_and_says_how_to_fix(mode):
    torch.manual_seed(8)
    model, x = BatchFirst(), spikes((3, 10, 12))
    compiled = snnopt.compile(model, mode=mode, example_inputs=(x,))
    assert torch.equal(compiled(x), model(x))
    reasons = " ".join(note.detail for note in compiled.report.eager)
    assert "takes the steps from dim 1" in reasons and "x.transpose(0, 1)" in reasons
    if mode == "rate":
        assert "stays per-step" in compiled.report.fallback


@pytest.mark.parametrize("mode", ["dense", "sparse", "rate"])
@pytest.mark.parametrize("conv", [False, True])
def test_autocast_computes_in_the_region_dtype(mode, conv):
    """Inside ``torch.autocast`` the fused synapses take their inputs in the region's dtype,
    as the modules' own Linear / Conv2d calls do: the output equals the model's under the
    same region, dtype included; the parameters' gradients stay float32 (dense mode: the
    model's within bfloat16 rounding, 2e-2 of the largest)."""
    from .models import ConvNet
    torch.manual_seed(3)
    model = ConvNet() if conv else nn.Sequential(nn.Linear(12, 16), snn.LIF(0.85), nn.Linear(16, 5), snn.LIF(0.75))
    x = spikes((10, 4, 2, 12, 12) if conv else (10, 4, 12), p=0.05)  # sparse: event-driven synapses
    compiled = snnopt.compile(model, mode=mode, example_inputs=(x,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = model(x)
        want_grads = grads_of(model, want.float())
        got = compiled(x)
        got_grads = grads_of(compiled, got.float())
    assert got.dtype == want.dtype == torch.bfloat16
    assert torch.equal(got, want)
    for name, g in got_grads.items():
        assert g.dtype == torch.float32 and torch.isfinite(g).all(), name
        if mode == "dense":
            scale = float(want_grads[name].abs().max())
            torch.testing.assert_close(g, want_grads[name], rtol=0, atol=2e-2 * scale)


class StateFed(nn.Module):
    """A Linear straight into a cell whose membrane the caller passes in."""

    def __init__(self):
        super().__init__()
        self.fc, self.lif = nn.Linear(12, 9), snn.LIFCell(0.8, threshold=0.3)

    def forward(self, x, v):
        out = []
        for t in range(x.shape[0]):
            s, v = self.lif(self.fc(x[t]), v)
            out.append(s)
        return torch.stack(out), v


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_autocast_keeps_a_wider_state_wide(mode):
    """A float32 membrane fed a bfloat16 current (autocast) stays float32, as ``beta * v + x``
    makes it in the model: spikes, final state and their dtypes equal the model's, and
    gradients reach the weights and the state."""
    torch.manual_seed(8)
    model = StateFed()
    x, v = spikes((30, 4, 12), p=0.05), torch.rand(4, 9)
    compiled = snnopt.compile(model, mode=mode, example_inputs=(x, v))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, want_v = model(x, v)
        state = v.clone().requires_grad_()
        got, got_v = compiled(x, state)
    assert got.dtype == want.dtype == got_v.dtype == want_v.dtype == torch.float32
    assert torch.equal(got, want) and torch.equal(got_v, want_v)
    (got.sum() + got_v.sum()).backward()
    assert torch.isfinite(state.grad).all() and model.fc.weight.grad.abs().sum() > 0
