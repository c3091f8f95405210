"""Sparse mode (SSGD): band = inf is dense BPTT with detached reset; finite band is DESIGN §1's closed form."""

import math

import pytest
import torch

import snnopt
from snnopt import kernels, surrogate
from snnopt.profiling import SavedTensorMeter
from snnopt.spec import NeuronSpec

from .devices import DEVICES
from .models import MLP, ConvNet, LoopMLP, grads_of, neuron_kwargs, spikes
from .test_ops import CASES, eager, make


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()) + 1e-7)


@pytest.mark.parametrize("cls", [MLP, LoopMLP, ConvNet])
@pytest.mark.parametrize("sg", ["atan", "fast_sigmoid"])
@pytest.mark.parametrize("device", DEVICES)
def test_infinite_band_is_dense_detached_bptt(cls, sg, device):
    torch.manual_seed(0)
    model = cls(**neuron_kwargs(detach_reset=True, surrogate=sg)).to(device)
    x = spikes((12, 3, 2, 12, 12) if cls is ConvNet else (12, 3, 12)).to(device)
    ref_out = model(x)
    ref = grads_of(model, ref_out)
    compiled = snnopt.compile(model, mode="sparse", band=math.inf, example_inputs=(x,))
    out = compiled(x)
    assert torch.equal(out, ref_out)
    got = grads_of(compiled, out)
    for name in ref:
        close(got[name], ref[name])
    assert any("sparse" in e.op for e in compiled.report.neurons)


SPARSE_CASES = [c for c in CASES if c[0] in ("lif", "cuba_lif", "if") and c[3]]


@pytest.mark.parametrize("kind,reset,timing,detach,decay", SPARSE_CASES)
def test_op_with_infinite_band_is_dense_detached_bptt(kind, reset, timing, detach, decay):
    """Every closed-form spiking neuron (current filters, resets, timings): the sparse op with
    band = inf gives the dense scan's gradients for x, v_0, i_0 (detached reset), with loss
    on spikes, final membrane, final current and recorded membranes; forward identical."""
    spec, x, v0, i0, beta, alpha, th = make(kind, reset, timing, detach, T=9, decay=decay)
    beta, alpha, th = (None if t is None else t.detach() for t in (beta, alpha, th))
    inputs = [t for t in (x, v0, i0) if t is not None]
    dense = kernels.neuron_scan(x, v0, i0, beta, alpha, th, spec.op_config(), record=True)
    sparse = kernels.neuron_scan_sparse(x, v0, i0, beta, alpha, th, spec.op_config(), math.inf, record=True)[:4]
    assert torch.equal(dense[0], sparse[0]) and torch.equal(dense[3], sparse[3])
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(t.shape, generator=g) if t.numel() else 0 for t in dense]
    ref = torch.autograd.grad(sum((o * w).sum() for o, w in zip(dense, weights)), inputs)
    got = torch.autograd.grad(sum((o * w).sum() for o, w in zip(sparse, weights)), inputs)
    for a, b in zip(got, ref):
        close(a, b)
    assert float(ref[0].abs().max()) > 0


def closed_form(x, W, b, beta, theta, G, band, sg):
    """DESIGN §1 written out: masked surrogate, reverse scan, dW = sum delta^T X, dX = delta W."""
    I = x @ W.t() + b
    T = x.shape[0]
    v, hs = torch.zeros_like(I[0]), []
    for t in range(T):
        h = beta * v + I[t]
        s = (h > theta).float()
        hs.append(h)
        v = h - theta * s
    h = torch.stack(hs)
    u = h - theta
    g = G * sg.grad(u) * (u.abs() < band)
    delta = torch.zeros_like(g)
    carry = torch.zeros_like(g[0])
    for t in reversed(range(T)):
        carry = g[t] + beta * carry
        delta[t] = carry
    dW = torch.einsum("tbj,tbi->ji", delta, x)
    return (h > theta).float(), dW, delta.sum((0, 1)), delta @ W


@pytest.mark.parametrize("band", [0.05, 0.3])
@pytest.mark.parametrize("binary", [True, False])
def test_finite_band_matches_closed_form(band, binary):
    torch.manual_seed(1)
    T, B, Nin, N, beta, theta = 30, 4, 20, 15, 0.9, 1.0
    x = spikes((T, B, Nin), 0.3) if binary else torch.randn(T, B, Nin)
    x.requires_grad_()
    W = (torch.randn(N, Nin) * 0.6).requires_grad_()
    b = (torch.randn(N) * 0.1).requires_grad_()
    sg = surrogate.fast_sigmoid(10.0)
    spec = NeuronSpec(beta=beta, threshold=theta, detach_reset=True, surrogate=sg)
    out, _, idx, _, _ = kernels.spiking_synapse_sparse(x, W, b, None, torch.tensor(beta), torch.tensor(theta), 0,
                                                       [1], [0], [1], 1, spec.op_config(), band)
    G = torch.randn(out.shape)
    gx, gW, gb = torch.autograd.grad((out * G).sum(), (x, W, b))
    s_ref, dW, db, dX = closed_form(x.detach(), W.detach(), b.detach(), beta, theta, G, band, sg)
    assert torch.equal(out, s_ref)
    assert 0 < idx.numel() < out.numel()
    close(gW, dW)
    close(gb, db)
    close(gx, dX)


def test_forward_identical_to_dense_and_report_measures_activity():
    torch.manual_seed(2)
    model = LoopMLP()
    x = spikes((20, 4, 12))
    dense, sparse = (snnopt.compile(model, mode=m, example_inputs=(x,)) for m in ("dense", "sparse"))
    assert torch.equal(dense(x), sparse(x))
    fractions = sparse.report.active_fraction
    assert set(fractions) == {"lif1#0", "lif2#0"} and all(0 < f < 1 for f in fractions.values())


def test_saved_bytes_under_quarter_of_dense_at_two_percent_activity():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(200, 128), snnopt.nn.LIF(0.9, detach_reset=True),
                                torch.nn.Linear(128, 128), snnopt.nn.LIF(0.9, detach_reset=True),
                                torch.nn.Linear(128, 10), snnopt.nn.LIF(0.9, detach_reset=True))
    for lin in model[::2]:
        torch.nn.init.normal_(lin.weight, 0.0, 2.0 / lin.in_features ** 0.5)
    x = spikes((50, 16, 200), 0.02)
    saved = {}
    for mode in ("dense", "sparse"):
        compiled = snnopt.compile(model, mode=mode, example_inputs=(x,))
        with SavedTensorMeter() as meter:
            compiled(x).sum().backward()
        saved[mode] = meter.bytes
    assert saved["sparse"] < 0.25 * saved["dense"], saved


def test_ineligible_neurons_stay_dense_with_warning():
    torch.manual_seed(4)
    model = MLP(**neuron_kwargs(learn=True))
    x = spikes((10, 2, 12))
    compiled = snnopt.compile(model, mode="sparse", example_inputs=(x,))
    assert torch.equal(compiled(x), model(x))
    assert len(compiled.report.warnings) == 2
    assert all("kept dense" in w.detail and "learnable beta/threshold" in w.detail for w in compiled.report.warnings)


@pytest.mark.parametrize("cls", [MLP, LoopMLP, ConvNet])
def test_reset_to_zero_runs_sparse_and_saves_gates_as_bits(cls):
    """A reset to zero runs sparse (no warning) and with band = inf equals detached BPTT."""
    torch.manual_seed(6)
    model = cls(**neuron_kwargs(reset="zero", detach_reset=True))
    x = spikes((12, 3, 2, 12, 12) if cls is ConvNet else (12, 3, 12))
    ref_out = model(x)
    ref = grads_of(model, ref_out)
    compiled = snnopt.compile(model, mode="sparse", band=math.inf, example_inputs=(x,))
    assert not compiled.report.warnings and all("sparse" in e.op for e in compiled.report.neurons)
    out = compiled(x)
    assert torch.equal(out, ref_out)
    got = grads_of(compiled, out)
    for name in ref:
        close(got[name], ref[name])


def test_dense_readout_keeps_spike_input_packed():
    """Linear -> LI readout after sparse layers: exact readout gradients, spike input saved as bits."""
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(12, 32), snnopt.nn.LIF(0.9, detach_reset=True),
                                torch.nn.Linear(32, 4), snnopt.nn.LI(0.9))
    torch.nn.init.normal_(model[0].weight, 0, 1.0)
    x = spikes((20, 6, 12))
    ref_out = model(x)
    ref = grads_of(model, ref_out)
    compiled = snnopt.compile(model, mode="sparse", band=math.inf, example_inputs=(x,))
    assert any("bit-packed" in n.detail for n in compiled.report.rewritten)
    out = compiled(x)
    assert torch.equal(out, ref_out)
    got = grads_of(compiled, out)
    for name in ref:
        close(got[name], ref[name])
    narrow = snnopt.compile(model, mode="sparse", band=0.05, example_inputs=(x,))
    with SavedTensorMeter() as meter:
        narrow(x)
    assert meter.bytes < 20 * 6 * 32 * 4  # less than the readout's float input alone


@pytest.mark.parametrize("kind", ["lif", "cuba_lif"])
@pytest.mark.parametrize("record", [False, True])
def test_input_discarding_reset_with_infinite_band_is_detached_bptt(kind, record):
    """snnTorch Synaptic's reset (``h_t = (beta h_{t-1} + in_t)(1 - r_t)``, next step): the
    sparse op with band = inf equals autograd through the eager step with detached reset."""
    spec, x, v0, i0, beta, alpha, th = make(kind, "zero", "next", True, T=9)
    spec = NeuronSpec(**{**spec.__dict__, "reset_discards_input": True, "v_reset": 0.0})
    beta, alpha, th = (None if t is None else t.detach() for t in (beta, alpha, th))
    inputs = [t for t in (x, v0, i0) if t is not None]
    ref = eager(x, v0, i0, beta, alpha, th, spec)
    got = kernels.neuron_scan_sparse(x, v0, i0, beta, alpha, th, spec.op_config(), math.inf, record=record)[:4]
    assert torch.equal(ref[0], got[0]) and (not record or torch.equal(ref[3], got[3]))
    g = torch.Generator().manual_seed(2)
    weights = [torch.randn(t.shape, generator=g) if t is not None else 0 for t in ref]
    if not record:
        weights[3] = 0
    grads = [torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, weights) if o is not None and o.numel()),
                                 inputs) for outs in (ref, got)]
    for a, b in zip(grads[1], grads[0]):
        close(a, b)
