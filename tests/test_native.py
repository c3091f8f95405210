"""The fused C++ kernels against the plain-torch reference, on fresh random inputs:
forward values bit for bit, gradients to rtol 1e-5 (float64) / 1e-4 (float32), for every
closed-form configuration, odd sizes, T = 1, per-neuron and scalar parameters, NaN
inputs, empty and full active sets; and a torch.compile(fullgraph=True) training step."""

from __future__ import annotations

import math

import pytest
import torch

import snnopt
from snnopt import kernels
from snnopt.kernels import native
from snnopt.kernels.reference import dense as ref_dense
from snnopt.kernels.reference import sparse as ref_sparse
from snnopt.nn.functional import neuron_step
from snnopt.spec import Config, NeuronSpec

from .devices import DEVICES
from .models import MLP, ConvNet, spikes
from .test_ops import CASES, make

pytestmark = pytest.mark.skipif(native.backend("cpu") != "native",
                                reason=f"the fused CPU kernels did not build: {native._state.get('error')}")


def inputs(kind, reset, timing, detach, decay, T=7, B=3, N=5, dtype=torch.float32, scalar=False, seed=0,
           device="cpu"):
    spec, x, v0, i0, beta, alpha, th = make(kind, reset, timing, detach, T=T, B=B, N=N, seed=seed, decay=decay)
    ts = [None if t is None else t.detach().to(device, dtype) for t in (x, v0, i0, beta, alpha, th)]
    if scalar:  # constant parameters arrive as 0-d float64 tensors
        ts[3:] = [None if t is None else torch.tensor(float(t.reshape(-1)[0]), dtype=torch.float64, device=device)
                  for t in ts[3:]]
    return Config(spec.op_config()), ts


def randn(shape, g, dtype, device):
    return torch.randn(shape, generator=g, dtype=dtype).to(device)


def same(a, b):
    return (a is None and b is None) or (a.numel() == 0 and b.numel() == 0) or torch.equal(a, b)


def close(a, b, rtol):
    if a is None or b is None:
        assert a is None and b is None
        return
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max() if b.numel() else 0) + 1e-12)


@pytest.mark.parametrize("kind,reset,timing,detach,decay", CASES)
@pytest.mark.parametrize("dtype,scalar", [(torch.float32, False), (torch.float64, True)])
@pytest.mark.parametrize("device", DEVICES)
def test_dense_scan_matches_reference(kind, reset, timing, detach, decay, dtype, scalar, device):
    cfg, (x, v0, i0, beta, alpha, th) = inputs(kind, reset, timing, detach, decay, T=9, B=3, N=7, dtype=dtype,
                                               scalar=scalar, device=device)
    ref = ref_dense.scan_forward(x, v0, i0, beta, alpha, th, cfg, save=True, record=True)
    got = native.scan_forward(x, v0, i0, beta, alpha, th, cfg, save=True, record=True)
    assert all(same(a, b) for a, b in zip(got, ref))
    g = torch.Generator().manual_seed(3)
    g_out, g_v, g_vseq = (randn(s, g, dtype, device) for s in (x.shape, x.shape[1:], x.shape))
    g_i = randn(x.shape[1:], g, dtype, device) if cfg.has_current else None
    needs = [True, True, cfg.has_current, beta is not None, alpha is not None, th is not None]
    args = (g_out, g_v, g_i, g_vseq, ref[4], ref[5], v0, i0, beta, alpha, th, cfg, needs)
    for a, b in zip(native.scan_backward(*args), ref_dense.scan_backward(*args)):
        close(a, b, 1e-4 if dtype == torch.float32 else 1e-10)


def _euler(kind, reset):
    """Norse's Euler form with float32-rounded constants, as Norse rounds them."""
    k, ks = float(torch.tensor(0.13)), float(torch.tensor(-0.21))
    cuba = kind.startswith("cuba")
    spec = NeuronSpec(kind=kind, beta=1 - k, scale=k, alpha=1 + ks if cuba else None, current_decay="after",
                      integration="euler", reset=reset, v_rest=float(torch.tensor(0.05)),
                      v_reset=float(torch.tensor(0.1)) if reset == "zero" else 0.0)
    return pytest.param(spec, id=f"euler-{kind}-{reset}")


def _tau(decay_input, reset, surrogate):
    """SpikingJelly's divided form; a tau whose reciprocal is inexact in binary."""
    tau = 1.7
    spec = NeuronSpec(kind="lif", beta=1 - 1 / tau, scale=1 / tau if decay_input else 1.0, integration="tau",
                      tau=tau, reset=reset, v_rest=-0.2 if reset == "zero" else 0.0, v_reset=-0.2, fire=">=",
                      surrogate=snnopt.surrogate.get(surrogate))
    return pytest.param(spec, id=f"tau-{'decay_input' if decay_input else 'plain'}-{reset}-{surrogate}")


FORMS = [_euler(k, r) for k, r in [("lif", "zero"), ("lif", "subtract"), ("cuba_lif", "zero"), ("li", "none"),
                                    ("cuba_li", "none")]] + \
    [_tau(d, r, sg) for d in (True, False) for r, sg in (("subtract", "atan"), ("zero", "sigmoid"), ("none", "atan"))]


@pytest.mark.parametrize("spec", FORMS)
@pytest.mark.parametrize("device", DEVICES)
def test_library_forms_match_reference_and_eager_step(spec, device):
    """Norse's Euler form and SpikingJelly's divided form (``integration="euler"`` / ``"tau"``):
    the kernel's forward equals the reference's and the eager step's bit for bit in float32,
    its gradients the reference's and autograd's through the eager step."""
    cfg, cuba = Config(spec.op_config()), spec.has_current
    g = torch.Generator().manual_seed(7)
    x, v0, i0 = (randn(s, g, torch.float32, device) for s in ((11, 3, 9), (3, 9), (3, 9)))
    i0 = i0 if cuba else None
    beta, alpha, th = (None if v is None else torch.tensor(v, dtype=torch.float64, device=device)
                       for v in (spec.beta, spec.alpha, 0.8 if spec.spiking else None))
    ref = ref_dense.scan_forward(x, v0, i0, beta, alpha, th, cfg, save=True, record=True)
    got = native.scan_forward(x, v0, i0, beta, alpha, th, cfg, save=True, record=True)
    assert all(same(a, b) for a, b in zip(got, ref))
    leaves = [t.requires_grad_() for t in (x, v0, i0) if t is not None]
    v, i, outs = v0, i0, []
    for t in range(x.shape[0]):
        o, v, i = neuron_step(x[t], v, i, beta.float(), None if alpha is None else alpha.float(),
                              None if th is None else th.float(), cfg)
        outs.append(o)
    assert torch.equal(torch.stack(outs), ref[0]) and torch.equal(v, ref[1])
    g_out, g_v = randn(x.shape, g, x.dtype, device), randn(x.shape[1:], g, x.dtype, device)
    g_i = randn(x.shape[1:], g, x.dtype, device) if cuba else None
    loss = (torch.stack(outs) * g_out).sum() + (v * g_v).sum() + ((i * g_i).sum() if cuba else 0)
    want = torch.autograd.grad(loss, leaves)
    args = (g_out, g_v, g_i, None, ref[4], ref[5], v0, i0, beta, alpha, th, cfg, [True, True, cuba] + [False] * 3)
    got = native.scan_backward(*args)
    for a, b in zip(got, ref_dense.scan_backward(*args)):
        close(a, b, 1e-4)
    for a, b in zip(got, want):  # autograd through the eager step
        close(a, b, 1e-4)


COMMON = [(k, r, t, d, sg) for k in ("lif", "if") for r in ("subtract", "zero") for t in ("same", "next")
          for d in (False, True) for sg in ("atan", "fast_sigmoid")]
"""The configurations with specialised float32 kernels (lif / if, subtract / zero reset, same- or
next-step reset, atan / fast-sigmoid surrogate)."""


def _common(kind, reset, timing, detach, sg, T=6, B=5, N=67, seed=0, device="cpu"):
    spec, x, v0, i0, beta, alpha, th = make(kind, reset, timing, detach, sg, T=T, B=B, N=N, seed=seed)
    return Config(spec.op_config()), [None if t is None else t.detach().to(device) for t in (x, v0, beta, th)]


@pytest.mark.parametrize("kind,reset,timing,detach,sg", COMMON)
@pytest.mark.parametrize("with_v0", [True, False])
@pytest.mark.parametrize("device", DEVICES)
def test_dense_input_gradient_path_matches_reference(kind, reset, timing, detach, sg, with_v0, device):
    """The backward asked for dL/dx and dL/dv0 only (no parameter gradient, no recorded
    membrane) on 335 elements: several tasks and a partial block."""
    cfg, (x, v0, beta, th) = _common(kind, reset, timing, detach, sg, device=device)
    v0 = v0 if with_v0 else None
    ref = ref_dense.scan_forward(x, v0, None, beta, None, th, cfg, save=True)
    g = torch.Generator().manual_seed(5)
    g_out, g_v = randn(x.shape, g, x.dtype, device), randn(x.shape[1:], g, x.dtype, device)
    args = (g_out, g_v, None, None, ref[4], ref[5], v0, None, beta, None, th, cfg,
            [True, True, False, False, False, False])
    for a, b in zip(native.scan_backward(*args), ref_dense.scan_backward(*args)):
        close(a, b, 1e-5)


@pytest.mark.parametrize("kind,reset,timing,detach,sg", COMMON)
@pytest.mark.parametrize("device", DEVICES)
def test_rate_stats_float32_match_reference(kind, reset, timing, detach, sg, device):
    cfg, (x, v0, beta, th) = _common(kind, reset, timing, detach, sg, T=9, device=device)
    ref = ref_dense.rate_stats(x, v0, None, beta, None, th, cfg)
    got = native.rate_stats(x, v0, None, beta, None, th, cfg)
    for k, (a, b) in enumerate(zip(got, ref)):
        assert same(a, b) if k < 4 else torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind,reset,timing,detach,decay", CASES)
@pytest.mark.parametrize("device", DEVICES)
def test_rate_stats_match_reference(kind, reset, timing, detach, decay, device):
    cfg, (x, v0, i0, beta, alpha, th) = inputs(kind, reset, timing, detach, decay, T=11, dtype=torch.float64,
                                               device=device)
    ref = ref_dense.rate_stats(x, v0, i0, beta, alpha, th, cfg, record=True)
    got = native.rate_stats(x, v0, i0, beta, alpha, th, cfg, record=True)
    for k, (a, b) in enumerate(zip(got, ref)):
        assert same(a, b) if k < 4 else torch.allclose(a, b, rtol=1e-12, atol=1e-12)


SPARSE = [c for c in CASES if c[0] in ("lif", "cuba_lif", "if")]


@pytest.mark.parametrize("kind,reset,timing,detach,decay", SPARSE)
@pytest.mark.parametrize("band", [0.0, 0.3, math.inf])
@pytest.mark.parametrize("device", DEVICES)
def test_sparse_scan_matches_reference(kind, reset, timing, detach, decay, band, device):
    """band 0: empty active set; inf: every state active."""
    cfg, (x, v0, i0, beta, alpha, th) = inputs(kind, reset, timing, detach, decay, T=8, B=3, N=9, device=device)
    ref = ref_sparse.scan_forward_sparse(x, v0, i0, beta, alpha, th, cfg, band, True, True)
    got = native.scan_forward_sparse(x, v0, i0, beta, alpha, th, cfg, band, True, True)
    assert all(same(a, b) for a, b in zip(got[:4], ref[:4])) and torch.equal(got[6], ref[6])
    order = torch.argsort(got[4])  # the kernel's active set is not sorted
    assert torch.equal(got[4][order], ref[4]) and torch.equal(got[5][order], ref[5])
    assert got[4].numel() == (0 if band == 0 else x.numel() if band == math.inf else got[4].numel())
    g = torch.Generator().manual_seed(4)
    g_out, g_v, g_vseq = (randn(s, g, x.dtype, device) for s in (x.shape, x.shape[1:], x.shape))
    g_i = randn(x.shape[1:], g, x.dtype, device) if cfg.has_current else None
    needs = [True, True, cfg.has_current]
    a = native.neuron_sparse_backward(g_out, g_v, g_i, g_vseq, *got[4:], beta, alpha, cfg, list(x.shape), needs)
    b = ref_sparse.neuron_sparse_backward(g_out, g_v, g_i, g_vseq, *ref[4:], beta, alpha, cfg, list(x.shape), needs)
    for u, w in zip(a, b):
        close(u, w, 1e-5)


@pytest.mark.parametrize("kind,reset,timing,detach,decay", SPARSE)
@pytest.mark.parametrize("parts", ["out", "tap", "both", "none"])
@pytest.mark.parametrize("device", DEVICES)
def test_sparse_backward_takes_the_tap(kind, reset, timing, detach, decay, parts, device):
    """dL/ds as g_out, as one value per active entry (the tap), or both: the same gradients
    as the reference given the equivalent dense dL/ds (g_out plus the tap scattered onto the
    active set)."""
    cfg, (x, v0, i0, beta, alpha, th) = inputs(kind, reset, timing, detach, decay, T=9, B=3, N=70, dtype=torch.float64,
                                               device=device)
    idx, sg, gates = native.scan_forward_sparse(x, v0, i0, beta, alpha, th, cfg, 0.5, True)[4:]
    assert idx.numel() > 0
    g = torch.Generator().manual_seed(6)
    g_out = randn(x.shape, g, x.dtype, device) if parts in ("out", "both") else None
    g_tap = randn(idx.shape, g, x.dtype, device) if parts in ("tap", "both") else None
    g_v = randn(x.shape[1:], g, x.dtype, device)
    g_i = randn(x.shape[1:], g, x.dtype, device) if cfg.has_current else None
    dense = torch.zeros_like(x) if g_out is None else g_out.clone()
    if g_tap is not None:
        dense.view(-1).index_add_(0, idx.long(), g_tap)
    needs = [True, True, cfg.has_current]
    got = native.neuron_sparse_backward(g_out, g_v, g_i, None, idx, sg, gates, beta, alpha, cfg, list(x.shape), needs,
                                        g_tap)
    ref = ref_sparse.neuron_sparse_backward(g_out, g_v, g_i, None, idx, sg, gates, beta, alpha, cfg, list(x.shape),
                                            needs, g_tap)
    want = ref_sparse.neuron_sparse_backward(dense, g_v, g_i, None, idx, sg, gates, beta, alpha, cfg, list(x.shape),
                                             needs)
    for a, b, c in zip(got, ref, want):
        close(a, c, 1e-10)
        close(b, c, 1e-12)


@pytest.mark.parametrize("T,B,N", [(1, 2, 700), (6, 3, 700), (4, 5, 1024)])
@pytest.mark.parametrize("device", DEVICES)
def test_sparse_backward_over_many_blocks(T, B, N, device):
    """The reverse scan of several blocks of elements (a ragged last one), entries from the
    output and the tap, in float32: the reference's gradients."""
    cfg, (x, v0, i0, beta, alpha, th) = inputs("lif", "subtract", "same", True, "before", T=T, B=B, N=N, seed=N + T,
                                               device=device)
    idx, sg, gates = native.scan_forward_sparse(x, v0, i0, beta, alpha, th, cfg, 0.4, True)[4:]
    g = torch.Generator().manual_seed(T)
    g_out, g_v = randn(x.shape, g, x.dtype, device), randn(x.shape[1:], g, x.dtype, device)
    g_tap = randn(idx.shape, g, x.dtype, device)
    for needs in ([True, True, False], [True, False, False], [False, True, False]):
        got = native.neuron_sparse_backward(g_out, g_v, None, None, idx, sg, gates, beta, None, cfg, list(x.shape),
                                            needs, g_tap)
        ref = ref_sparse.neuron_sparse_backward(g_out, g_v, None, None, idx, sg, gates, beta, None, cfg,
                                                list(x.shape), needs, g_tap)
        for a, b in zip(got, ref):
            close(a, b, 1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_input_discarding_reset_runs_sparse_natively(device):
    cfg, (x, v0, i0, beta, alpha, th) = inputs("cuba_lif", "zero", "next", True, "before", T=10, device=device)
    values = cfg.values
    values[10] = 1.0  # reset_discards_input
    cfg = Config(values)
    assert cfg.generic and native.serves(x, cfg, sparse=True) and not native.serves(x, cfg)
    ref = ref_sparse.scan_forward_sparse(x, v0, i0, beta, alpha, th, cfg, 0.4, True, True)
    got = native.scan_forward_sparse(x, v0, i0, beta, alpha, th, cfg, 0.4, True, True)
    assert all(same(a, b) for a, b in zip(got[:4], ref[:4])) and torch.equal(got[6], ref[6])


@pytest.mark.parametrize("kind,reset,timing,detach,decay", [("lif", "subtract", "same", False, "before"),
                                                             ("cuba_lif", "zero", "next", False, "after"),
                                                             ("if", "zero", "same", True, "before")])
@pytest.mark.parametrize("device", DEVICES)
def test_dense_scan_on_many_elements(kind, reset, timing, detach, decay, device):
    """160 000 elements per step (625 blocks of the CUDA scans, 2 500 tasks of the CPU
    kernels); every gradient, per-element parameters."""
    cfg, (x, v0, i0, beta, alpha, th) = inputs(kind, reset, timing, detach, decay, T=6, B=4, N=40000, seed=9,
                                               device=device)
    ref = ref_dense.scan_forward(x, v0, i0, beta, alpha, th, cfg, save=True, record=True)
    got = native.scan_forward(x, v0, i0, beta, alpha, th, cfg, save=True, record=True)
    assert all(same(a, b) for a, b in zip(got, ref))
    g = torch.Generator().manual_seed(8)
    g_out, g_v, g_vseq = (randn(s, g, x.dtype, device) for s in (x.shape, x.shape[1:], x.shape))
    g_i = randn(x.shape[1:], g, x.dtype, device) if cfg.has_current else None
    needs = [True, True, cfg.has_current, beta is not None, alpha is not None, th is not None]
    args = (g_out, g_v, g_i, g_vseq, ref[4], ref[5], v0, i0, beta, alpha, th, cfg, needs)
    for a, b in zip(native.scan_backward(*args), ref_dense.scan_backward(*args)):
        close(a, b, 1e-4)


@pytest.mark.parametrize("T,B,N", [(1, 1, 1), (1, 5, 3), (13, 1, 257), (3, 7, 1000), (2, 3, 347)])
@pytest.mark.parametrize("device", DEVICES)
def test_odd_sizes(T, B, N, device):
    """Sizes around the kernels' blocks of elements (one, several, a ragged last one)."""
    cfg, (x, v0, i0, beta, alpha, th) = inputs("lif", "zero", "same", False, "before", T=T, B=B, N=N, seed=T + N,
                                               device=device)
    ref = ref_dense.scan_forward(x, v0, i0, beta, alpha, th, cfg, save=True)
    got = native.scan_forward(x, v0, i0, beta, alpha, th, cfg, save=True)
    assert all(same(a, b) for a, b in zip(got, ref))
    ref = ref_sparse.scan_forward_sparse(x, v0, i0, beta, alpha, th, cfg, 0.3, True)
    got = native.scan_forward_sparse(x, v0, i0, beta, alpha, th, cfg, 0.3, True)
    order = torch.argsort(got[4])
    assert torch.equal(got[4][order], ref[4]) and torch.equal(got[5][order], ref[5])
    assert all(same(a, b) for a, b in zip(got[:4], ref[:4]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_sparse_band_edges(dtype, device):
    """The band test over whole words of 64 elements and a ragged tail (200 per step):
    |v - theta| = band exactly is outside, just inside is in, NaN never is."""
    cfg = Config(snnopt.nn.LIF(0.5, detach_reset=True).spec().op_config())
    band = 0.25
    eps = torch.finfo(dtype).eps
    edges = torch.tensor([band, -band, band - eps, eps - band, 0.0, 3.0, -3.0, float("nan")],  # 1 + each: exact
                         dtype=dtype)
    u = edges[torch.randperm(200 * 2, generator=torch.Generator().manual_seed(5)) % len(edges)].reshape(2, 1, 200)
    beta, th = (torch.full((200,), value, dtype=dtype, device=device) for value in (0.5, 1.0))
    v0 = torch.zeros(1, 200, dtype=dtype, device=device)
    x = (1 + u).to(device)  # at the first step h = x, so h - theta = u exactly
    ref = ref_sparse.scan_forward_sparse(x, v0, None, beta, None, th, cfg, band, True)
    got = native.scan_forward_sparse(x, v0, None, beta, None, th, cfg, band, True)
    order = torch.argsort(got[4])
    assert torch.equal(got[4][order], ref[4]) and torch.equal(got[5][order], ref[5])
    first = ref[4][ref[4] < 200].cpu()
    assert torch.equal(first, torch.nonzero(u[0, 0].abs() < band).flatten().int())


@pytest.mark.parametrize("device", DEVICES)
def test_nan_input_stays_local_and_is_never_active(device):
    cfg, (x, v0, i0, beta, alpha, th) = inputs("lif", "subtract", "same", True, "before", T=6, B=2, N=4,
                                               device=device)
    x[2, 1, 3] = float("nan")
    out, v_T, _, _, idx, sg, _ = native.scan_forward_sparse(x, v0, i0, beta, alpha, th, cfg, math.inf, True)
    ref = ref_sparse.scan_forward_sparse(x, v0, i0, beta, alpha, th, cfg, math.inf, True)
    assert torch.equal(out, ref[0]) and torch.isfinite(out).all()
    nan_states = torch.isnan(ref_dense.scan_forward(x, v0, i0, beta, alpha, th, cfg, save=True)[4]).sum()
    assert idx.numel() == x.numel() - nan_states and torch.isfinite(sg).all()


@pytest.mark.parametrize("sg", ["atan", "fast_sigmoid", "sigmoid", "triangle", "rectangle"])
@pytest.mark.parametrize("device", DEVICES)
def test_nan_surrogate_as_reference(sg, device):
    """f'(NaN) is the reference's (NaN for the triangle's max(1 - |u|/p, 0) / p, as clamp_min
    keeps it; 0 for the rectangle): the dense input gradient and the rate eligibility carry
    the same NaNs."""
    spec, x, v0, i0, beta, alpha, th = make("lif", "subtract", "same", False, sg, T=3, B=2, N=67, seed=2)
    cfg = Config(spec.op_config())
    x, v0, beta, th = (t.detach().to(device, torch.float64) for t in (x, v0, beta, th))
    x[1, 0, ::5] = float("nan")
    ref = ref_dense.scan_forward(x, v0, None, beta, None, th, cfg, save=True)
    g = torch.Generator().manual_seed(1)
    g_out, g_v = randn(x.shape, g, x.dtype, device), randn(x.shape[1:], g, x.dtype, device)
    args = (g_out, g_v, None, None, ref[4], ref[5], v0, None, beta, None, th, cfg, [True] * 2 + [False] * 4)
    got_x, want_x = native.scan_backward(*args)[0], ref_dense.scan_backward(*args)[0]
    assert torch.equal(got_x.isnan(), want_x.isnan())
    close(got_x.nan_to_num(), want_x.nan_to_num(), 1e-10)
    got_e, want_e = (impl.rate_stats(x, v0, None, beta, None, th, cfg)[5] for impl in (native, ref_dense))
    assert torch.equal(got_e.isnan(), want_e.isnan())


def test_reference_is_forced_by_environment(monkeypatch):
    monkeypatch.setenv(native.ENV, "reference")
    assert all(v == {"cpu": "reference", "cuda": "reference"} for v in kernels.status().values())
    monkeypatch.delenv(native.ENV)
    assert kernels.status()["neuron_scan"]["cpu"] == "native"


@pytest.mark.parametrize("model_cls,shape", [(MLP, (10, 4, 12)), (ConvNet, (6, 3, 2, 12, 12))])
@pytest.mark.parametrize("mode", ["dense", "sparse"])
@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph_training_step(model_cls, shape, mode, device):
    """A compiled model's training step under torch.compile(fullgraph=True) gives the
    eager step's loss and gradients (the conv net: with the avg_pool op on the CPU)."""
    torch.manual_seed(6)
    model = model_cls(**{"detach_reset": True}).to(device)
    x = spikes(shape).to(device)
    fast = snnopt.compile(model, mode=mode, example_inputs=(x,))
    gm = fast._program((x,)).gm

    def step(inp):
        out, _ = gm(inp)
        return out.sum()

    eager_loss = step(x)
    eager = torch.autograd.grad(eager_loss, list(model.parameters()))
    compiled_step = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled_step(x)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert torch.equal(loss, eager_loss)
    for a, b in zip(grads, eager):
        torch.testing.assert_close(a, b)
