"""Rate mode (rate-based backprop): exact at T = 1, spike-pass values, eligibility, RateBN, memory flat in T."""

import pytest
import torch
import torch.nn.functional as F

import snnopt
from snnopt import compiler, kernels
from snnopt.frontend.tracer import trace
from snnopt.kernels.reference.rate import rate_batch_norm_backward
from snnopt.passes import PassManager, canonicalize_neurons, collapse_steps, reroll_time, verify
from snnopt.passes.lower import batch_stats
from snnopt.profiling import SavedTensorMeter

from .devices import DEVICES
from .models import MLP, ConvNet, HandRecurrent, LoopMLP, grads_of, spikes
from .test_ops import CASES, make


def close(a, b, scale=None):
    """rtol 1e-4; atol 1e-5 of the gradient scale (a parameter whose exact gradient is 0,
    like a bias before BatchNorm, holds only rounding noise)."""
    scale = float(b.abs().max()) if scale is None else scale
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale + 1e-7)


class BNConv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.BatchNorm2d(4)
        self.lif1 = snnopt.nn.LIF(0.8)
        self.fc, self.lif2 = torch.nn.Linear(4 * 8 * 8, 5), snnopt.nn.LIF(0.8)

    def forward(self, x):
        T, B = x.shape[:2]
        y = self.bn(self.conv(x.flatten(0, 1))).unflatten(0, (T, B))
        return self.lif2(self.fc(self.lif1(y * 2).flatten(2)) * 3)


@pytest.mark.parametrize("cls", [MLP, LoopMLP, ConvNet, BNConv])
@pytest.mark.parametrize("device", DEVICES)
def test_t1_gradients_equal_bptt(cls, device):
    torch.manual_seed(0)
    model = cls().to(device)
    x = spikes((1, 6, 2, 8 if cls is BNConv else 12, 8 if cls is BNConv else 12)) if cls in (ConvNet, BNConv) \
        else spikes((1, 6, 12))
    x = x.to(device)
    ref_model = cls().to(device)
    ref_model.load_state_dict(model.state_dict())
    ref_out = ref_model(x)
    ref = grads_of(ref_model, ref_out)
    compiled = snnopt.compile(model, mode="rate", example_inputs=(x,))
    out = compiled(x)
    assert torch.equal(out, ref_out)
    got = grads_of(compiled, out)
    scale = max(float(g.abs().max()) for g in ref.values())
    for name in ref:
        close(got[name], ref[name], scale)


def test_forward_value_equals_model_and_training_lowers_loss():
    torch.manual_seed(1)
    model = LoopMLP()
    x, y = spikes((25, 16, 12)), torch.randint(0, 5, (16,))
    compiled = snnopt.compile(model, mode="rate", example_inputs=(x,))
    assert torch.equal(compiled(x), model(x))
    opt = torch.optim.Adam(compiled.parameters(), lr=0.02)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(compiled(x).mean(0) * 5, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


GENERIC_CASES = [("lif", "zero", "same_pending", True, "before"),
                 ("cuba_lif", "subtract", "same_pending", False, "after")]


@pytest.mark.parametrize("kind,reset,timing,detach,decay", CASES + GENERIC_CASES)
def test_eligibility_is_sum_of_rate_derivatives(kind, reset, timing, detach, decay):
    """e = sum_k dr/dx_k and, for the recorded membrane, e_v = sum_k dv_bar/dx_k under
    surrogate BPTT, checked with autograd through the dense scan."""
    spec, x, v0, i0, beta, alpha, th = make(kind, reset, timing, detach, T=9, decay=decay)
    x = x.detach().requires_grad_()
    out, _, _, v_seq = kernels.neuron_scan(x, None, None, beta, alpha, th, spec.op_config(), record=True)
    (grad,) = torch.autograd.grad(out.mean(0).sum(), x, retain_graph=True)
    (grad_v,) = torch.autograd.grad(v_seq.mean(0).sum(), x)
    d = lambda t: None if t is None else t.detach()  # noqa: E731
    stats = kernels.neuron_rate_stats(x.detach(), None, None, d(beta), d(alpha), d(th), spec.op_config(), record=True)
    _, _, _, v_seq2, r, e, v_bar, e_v = stats
    torch.testing.assert_close(r, out.mean(0).detach())
    assert torch.equal(v_seq2, v_seq.detach())
    torch.testing.assert_close(v_bar, v_seq2.mean(0))
    close(e, grad.sum(0))
    close(e_v, grad_v.sum(0))


def test_rate_bn_backward_is_batch_norm_backward():
    torch.manual_seed(2)
    x = torch.randn(8, 4, 5, 5, requires_grad=True)
    w, b = torch.randn(4, requires_grad=True), torch.randn(4, requires_grad=True)
    var, mean = torch.var_mean(x.detach(), dim=(0, 2, 3), correction=0)
    g = torch.randn_like(x)
    y = kernels.rate_batch_norm(x, mean, var, w, b, 1e-5)
    got = torch.autograd.grad((y * g).sum(), (x, w, b))
    y_ref = F.batch_norm(x, None, None, w, b, training=True, eps=1e-5)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    ref = torch.autograd.grad((y_ref * g).sum(), (x, w, b))
    for a, r in zip(got, ref):
        close(a, r)
    # with spike-pass statistics that differ from the batch's, it is the closed form's gradient
    mean_s, var_s = mean + 0.3, var * 1.7
    y = kernels.rate_batch_norm(x, mean_s, var_s, w, b, 1e-5)
    gx = torch.autograd.grad((y * g).sum(), x)[0]
    sd = torch.sqrt(var_s + 1e-5).view(1, -1, 1, 1)
    x_hat = (x.detach() - mean_s.view(1, -1, 1, 1)) / sd
    dims = (0, 2, 3)
    expected = w.detach().view(1, -1, 1, 1) / sd * (g - g.mean(dims, keepdim=True)
                                                    - x_hat * (g * x_hat).mean(dims, keepdim=True))
    close(gx, expected)
    assert torch.allclose(rate_batch_norm_backward(g, x.detach(), mean_s, var_s, w.detach(), 1e-5)[0], expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channel", [1, 2])
def test_batch_stats_are_the_biased_var_mean(dtype, channel):
    """The spike pass's BatchNorm statistics: per channel, over every other dim; a constant
    channel has variance 0."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(5, 4, 3, 6, 7, generator=g, dtype=dtype) * 2 + 5).flatten(0, 1 - (channel - 1))
    x.select(channel, 1).fill_(2.5)
    var, mean = batch_stats(x, channel)
    dims = [d for d in range(x.dim()) if d != channel]
    want_var, want_mean = torch.var_mean(x, dims, correction=0)
    assert var.dtype == mean.dtype == dtype and float(var[1]) == 0
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(var, want_var, rtol=rtol, atol=0)
    torch.testing.assert_close(mean, want_mean, rtol=rtol, atol=0)


def test_saved_memory_flat_in_t():
    torch.manual_seed(3)
    model = MLP(n_in=64, n_hidden=64, n_out=10)
    saved = {}
    for T in (4, 32):
        x = spikes((T, 8, 64))
        compiled = snnopt.compile(model, mode="rate", example_inputs=(x,))
        with SavedTensorMeter() as meter:
            compiled(x)
        saved[T] = meter.bytes
    assert saved[4] > 0 and abs(saved[32] - saved[4]) <= 0.1 * saved[4], saved


@pytest.mark.parametrize("cls", [MLP, LoopMLP])
def test_time_sum_readout_scaled_by_t(cls):
    """A sum over time has T times the gradient of the mean, also where the one-step trace of a
    loop records its single step with ``torch.stack``."""
    torch.manual_seed(4)

    class Readout(torch.nn.Module):
        def __init__(self, reduce):
            super().__init__()
            self.reduce, self.mlp = reduce, cls()

        def forward(self, x):
            s = self.mlp(x)
            return s.sum(0) if self.reduce == "sum" else s.mean(0)

    x = spikes((10, 4, 12))
    grads = {}
    for reduce in ("sum", "mean"):
        m = Readout(reduce)
        m.mlp.load_state_dict(cls().state_dict() if not grads else grads["state"])
        grads.setdefault("state", m.mlp.state_dict())
        compiled = snnopt.compile(m, mode="rate", example_inputs=(x,))
        out = compiled(x)
        assert torch.equal(out, m(x))
        grads[reduce] = grads_of(compiled, out)
    for name in grads["sum"]:
        close(grads["sum"][name], 10 * grads["mean"][name])


def test_rate_pass_takes_the_input_average_from_the_spike_pass(monkeypatch):
    """A binary input read by a Linear: the spike pass returns its time average (counted from
    the bits that Linear packs anyway) and the rate pass takes it instead of averaging the
    input once more; the gradients are those of the plain average."""
    torch.manual_seed(5)
    model = _spike_fed_mlp()
    x = spikes((20, 6, 12), p=0.1)
    compiled = snnopt.compile(model, mode="rate", example_inputs=(x,))
    program = next(iter(compiled._programs.values()))
    with torch.no_grad():
        _, aux = program.gm(x)
    assert torch.equal(aux["mean:0"], x.mean(0, keepdim=True))
    got = grads_of(compiled, compiled(x))
    monkeypatch.setattr(compiler, "_rate_input", lambda x, _: x.mean(0, keepdim=True))
    want = grads_of(compiled, compiled(x))
    for name in want:
        assert torch.equal(got[name], want[name]), name


def _spike_fed_mlp():
    return torch.nn.Sequential(torch.nn.Linear(12, 16), snnopt.nn.LIF(0.85), torch.nn.Linear(16, 5),
                               snnopt.nn.LIF(0.75))


@pytest.mark.parametrize("cls", [MLP, _spike_fed_mlp, ConvNet])
def test_input_gradient(cls, monkeypatch):
    """An input that requires grad gets the rate gradient: at T = 1 the BPTT input gradient,
    at T > 1 the rate pass's gradient w.r.t. the time-averaged input, divided by T, at every
    step (the average's derivative)."""
    torch.manual_seed(6)
    shape = (2, 12, 12) if cls is ConvNet else (12,)
    model = cls()  # (a Linear reading the spikes: the spike pass also returns their average)
    compiled = snnopt.compile(model, mode="rate", example_inputs=(spikes((9, 5, *shape)),))
    g = torch.Generator().manual_seed(1)
    for T in (1, 9):
        x = spikes((T, 5, *shape)).requires_grad_()
        out = compiled(x)
        proj = torch.randn(out.shape, generator=g)
        (out * proj).sum().backward()
        if T == 1:
            ref_x = x.detach().clone().requires_grad_()
            (model(ref_x) * proj).sum().backward()
            close(x.grad, ref_x.grad)
            continue
        x_bar = x.detach().mean(0, keepdim=True).requires_grad_()
        monkeypatch.setattr(compiler, "_rate_input", lambda x, _: x_bar)
        (compiled(x.detach()) * proj).sum().backward()
        monkeypatch.undo()
        assert x.grad.abs().sum() > 0
        close(x.grad, (x_bar.grad / T).expand_as(x))


class Between(torch.nn.Module):
    """``op`` between two LIF layers, after a Linear whose weight passes through ``exp``."""

    def __init__(self, op):
        super().__init__()
        self.op = op
        self.fc1, self.lif1 = torch.nn.Linear(12, 16), snnopt.nn.LIF(0.9)
        self.log_w, self.lif2 = torch.nn.Parameter(torch.randn(16, 16) * 0.1), snnopt.nn.LIF(0.9)

    def forward(self, x):
        return self.lif2(self.op(self.lif1(self.fc1(x)) @ self.log_w.exp().t()))


@pytest.mark.parametrize("op,flagged", [(torch.nn.ReLU(), True), (torch.nn.LayerNorm(16), True),
                                        (lambda h: F.group_norm(h.flatten(0, 1), 4).view_as(h), True),
                                        (lambda h: h.exp(), True), (lambda h: h @ h.transpose(-1, -2) @ h, True),
                                        (torch.nn.Identity(), False),
                                        (lambda h: 2 * h + 1, False)])
def test_non_affine_ops_are_reported(op, flagged):
    """Activations and per-sample normalisations of the data between neurons are listed;
    affine ops and functions of parameters alone (``exp`` of a weight) are not."""
    compiled = snnopt.compile(Between(op), mode="rate", example_inputs=(spikes((5, 2, 12)),))
    assert any("non-affine" in w.detail for w in compiled.report.warnings) == flagged, str(compiled.report)


@pytest.mark.parametrize("op,named", [(torch.nn.ReLU(), "ReLU `op`"), (lambda h: h.exp(), "exp (node `exp")])
def test_a_non_affine_op_is_named_as_the_model_names_it(op, named):
    """The warning names a module by its class and attribute path, a function by its name and
    node, and says what keeps the rate gradient consistent."""
    compiled = snnopt.compile(Between(op), mode="rate", example_inputs=(spikes((5, 2, 12)),))
    warning = next(w.detail for w in compiled.report.warnings if "non-affine" in w.detail)
    assert f"non-affine op {named}" in warning and "average instead of max pooling" in warning


class Masked(torch.nn.Module):
    """``h * mask`` between neurons: a mask made from the data's shape only (a dropout mask
    kept for the sequence) is affine; ``gated`` multiplies two spike tensors instead."""

    def __init__(self, gated: bool):
        super().__init__()
        self.gated = gated
        self.fc1, self.lif1 = torch.nn.Linear(12, 16), snnopt.nn.LIF(0.9)
        self.fc2, self.lif2 = torch.nn.Linear(16, 16), snnopt.nn.LIF(0.9)
        self.fc3, self.lif3 = torch.nn.Linear(16, 5), snnopt.nn.LIF(0.9)

    def forward(self, x):
        s = self.lif1(self.fc1(x))
        other = self.lif2(self.fc2(s))
        mask = other if self.gated else torch.ones_like(s[0]) * 2
        return self.lif3(self.fc3(s * mask))


@pytest.mark.parametrize("gated", [False, True])
def test_only_products_of_data_are_non_affine(gated):
    compiled = snnopt.compile(Masked(gated), mode="rate", example_inputs=(spikes((5, 2, 12)),))
    assert any("non-affine" in w.detail for w in compiled.report.warnings) == gated


class Static(torch.nn.Module):
    """A static input ``[B, 12]`` run for ``steps`` steps, made inside the model as SpikingJelly
    does (``repeat``) or as snnTorch's tutorials do (the same current at every step of a
    loop); ``"sequence"``: the same network on a time-major input; ``"hard_coded"``: a repeat
    followed by a reshape that spells out the number of steps."""

    def __init__(self, steps, idiom):
        super().__init__()
        self.steps, self.idiom = steps, idiom
        self.fc1, self.fc2 = torch.nn.Linear(12, 16), torch.nn.Linear(16, 5)
        kind = snnopt.nn.LIFCell if idiom == "loop" else snnopt.nn.LIF
        self.lif1, self.lif2 = kind(0.85), kind(0.75)

    def forward(self, x):
        if self.idiom == "loop":
            v1 = v2 = None
            out = []
            for _ in range(self.steps):
                s1, v1 = self.lif1(self.fc1(x) * 3, v1)
                s2, v2 = self.lif2(self.fc2(s1) * 3, v2)
                out.append(s2)
            return torch.stack(out).sum(0)
        xs = x if self.idiom == "sequence" else x.unsqueeze(0).repeat(self.steps, 1, 1)
        if self.idiom == "hard_coded":
            xs = xs.reshape(self.steps, x.shape[0], 12)
        return self.lif2(self.fc2(self.lif1(self.fc1(xs) * 3)) * 3).sum(0)


@pytest.mark.parametrize("idiom", ["repeat", "loop"])
@pytest.mark.parametrize("steps", [1, 6])
def test_static_input_runs_the_rate_pass(idiom, steps):
    """Every step sees the same input, so the rate pass runs the graph once on it: values are
    the spike pass's, gradients those of the same network fed the input repeated as a time-major
    sequence, and at one step BPTT's."""
    torch.manual_seed(11)
    model, twin = Static(steps, idiom), Static(steps, "sequence")
    twin.load_state_dict(model.state_dict())
    x = torch.rand(4, 12)
    compiled = snnopt.compile(model, mode="rate", example_inputs=(x,))
    assert compiled.report.mode == "rate" and not compiled.report.fallback, str(compiled.report)
    assert any("from a static input" in n.detail for n in compiled.report.rewritten)
    out = compiled(x)
    assert torch.equal(out, model(x)) and out.any()
    xs = x.expand(steps, *x.shape).contiguous()
    compiled_twin = snnopt.compile(twin, mode="rate", example_inputs=(xs,))
    out_twin = compiled_twin(xs)
    assert torch.equal(out, out_twin)
    got, want = grads_of(compiled, out), grads_of(compiled_twin, out_twin)
    if steps == 1:
        bptt = grads_of(model, model(x))
        for name in want:
            close(want[name], bptt[name])
    for name in want:
        close(got[name], want[name])


def test_collapse_steps_is_idempotent_and_refuses_hard_coded_steps():
    torch.manual_seed(12)
    x = torch.rand(4, 12)
    gm, _ = trace(Static(6, "repeat"), (x,))
    gm = PassManager([canonicalize_neurons, reroll_time, collapse_steps(6)], verifier=verify)(gm, (x,))
    assert any(n.meta.get("snn_time_axis") for n in gm.graph.nodes)
    assert not collapse_steps(6)(gm).modified
    model = Static(6, "hard_coded")
    compiled = snnopt.compile(model, mode="rate", example_inputs=(x,))
    assert "does not run at one step" in compiled.report.fallback and compiled.report.mode == "rate -> dense"
    assert torch.equal(compiled(x), model(x))

    class FirstSteps(torch.nn.Module):  # time-major, fewer steps than given: no static input to collapse
        def __init__(self):
            super().__init__()
            self.fc, self.lif = torch.nn.Linear(12, 8), snnopt.nn.LIF(0.8)

        def forward(self, x):
            return self.lif(self.fc(x[:5]) * 3).sum(0)

    model = Static(4, "repeat")  # as many steps as samples: the one-step trace tells them apart
    compiled = snnopt.compile(model, mode="rate", example_inputs=(x,))
    assert any("from a static input" in n.detail for n in compiled.report.rewritten)
    assert torch.equal(compiled(x), model(x))
    compiled = snnopt.compile(FirstSteps(), mode="rate", example_inputs=(torch.rand(9, 4, 12),))
    assert compiled.report.mode == "rate" and not any("static" in n.detail for n in compiled.report.rewritten)


def test_unsupported_model_falls_back_to_dense():
    model = HandRecurrent(n=8)
    x = spikes((6, 2, 12))
    compiled = snnopt.compile(model, mode="rate", example_inputs=(x,))
    assert compiled.report.fallback and "dense" in compiled.report.mode
    assert torch.equal(compiled(x), model(x))
