"""The custom ops: opcheck, the dense backward against autograd through the eager step, NaN inputs."""

import itertools

import pytest
import torch

from snnopt import kernels, surrogate
from snnopt.kernels.reference import sparse as ref_sparse
from snnopt.nn.functional import neuron_step
from snnopt.spec import NeuronSpec

CURRENT = ("cuba_lif", "cuba_li")
CASES = [(k.replace("+after", ""), r, t, d, "after" if k.endswith("+after") else "before")
         for k, r, t, d in itertools.product(["lif", "cuba_lif", "cuba_lif+after", "if", "li", "cuba_li",
                                              "cuba_li+after"], ["subtract", "zero", "none"], ["same", "next"],
                                             [False, True])
         if not (k.split("+")[0] in ("li", "cuba_li") and (r != "none" or t == "next" or d))]


def make(kind, reset, timing, detach, sg="atan", T=7, B=3, N=5, seed=0, decay="before"):
    g = torch.Generator().manual_seed(seed)
    spec = NeuronSpec(kind=kind, beta=None, threshold=None, alpha=None, reset=reset, reset_timing=timing,
                      detach_reset=detach, surrogate=surrogate.get(sg), v_reset=0.1 if reset == "zero" else 0.0,
                      v_rest=0.05 if kind != "if" else 0.0, scale=1.3, current_decay=decay,
                      param_attrs=(("alpha", "alpha"),))
    x = (torch.randn(T, B, N, generator=g) * 1.5).requires_grad_()
    v0 = torch.randn(B, N, generator=g).requires_grad_()
    i0 = torch.randn(B, N, generator=g).requires_grad_() if kind in CURRENT else None
    beta = (torch.rand(N, generator=g) * 0.5 + 0.4).requires_grad_() if kind != "if" else None
    alpha = (torch.rand(N, generator=g) * 0.5 + 0.3).requires_grad_() if kind in CURRENT else None
    th = (torch.rand(N, generator=g) + 0.5).requires_grad_() if kind not in ("li", "cuba_li") else None
    return spec, x, v0, i0, beta, alpha, th


def eager(x, v0, i0, beta, alpha, th, spec):
    v, i, outs, vs = v0, i0, [], []
    for t in range(x.shape[0]):
        o, v, i = neuron_step(x[t], v, i, beta, alpha, th, spec.config)
        outs.append(o)
        vs.append(v)
    return torch.stack(outs), v, i, torch.stack(vs)


@pytest.mark.parametrize("kind,reset,timing,detach,decay", CASES)
@pytest.mark.parametrize("sg", ["atan", "triangle"])
def test_dense_scan_matches_autograd(kind, reset, timing, detach, decay, sg):
    """Forward equal (bit for bit) and every gradient (x, v0, i0, beta, alpha, threshold) to
    rtol 1e-4 against autograd through the eager step, with loss on outputs, recorded and
    final states; the closed-form reference serves every case here (none is generic)."""
    spec, x, v0, i0, beta, alpha, th = make(kind, reset, timing, detach, sg, decay=decay)
    assert not spec.config.generic
    inputs = [t for t in (x, v0, i0, beta, alpha, th) if t is not None]
    o1, v1, i1, vs1 = eager(x, v0, i0, beta, alpha, th, spec)
    o2, v2, i2, vs2 = kernels.neuron_scan(x, v0, i0, beta, alpha, th, spec.op_config(), record=True)
    assert torch.equal(o1, o2) and torch.equal(vs1, vs2)
    g = torch.Generator().manual_seed(1)
    go, gv, gs = (torch.randn(t.shape, generator=g) for t in (o1, v1, vs1))

    def loss(o, v, i, vs):
        total = (o * go).sum() + (v * gv).sum() + (vs * gs).sum()
        return total + ((i * gv).sum() if i0 is not None else 0)
    ref = torch.autograd.grad(loss(o1, v1, i1, vs1), inputs)
    got = torch.autograd.grad(loss(o2, v2, i2, vs2), inputs)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()) + 1e-6)


def _opcheck_args(kind="lif"):
    spec, x, v0, i0, beta, alpha, th = make(kind, "subtract", "same", False)
    return spec, x, v0, i0, beta, alpha, th


@pytest.mark.parametrize("kind", ["lif", "cuba_lif", "li"])
def test_opcheck_neuron_scan(kind):
    spec, x, v0, i0, beta, alpha, th = _opcheck_args(kind)
    torch.library.opcheck(torch.ops.snnopt.neuron_scan.default,
                          (x, v0, i0, beta, alpha, th, spec.op_config(), True, True))
    h = torch.randn_like(x)
    torch.library.opcheck(torch.ops.snnopt.neuron_scan_backward.default,
                          (torch.randn_like(x), torch.randn_like(x[0]), x.new_empty(0), x.new_empty(0), h,
                           torch.randn_like(x) if kind == "cuba_lif" else x.new_empty(0), v0.detach(),
                           None if i0 is None else i0.detach(), None if beta is None else beta.detach(),
                           None if alpha is None else alpha.detach(), None if th is None else th.detach(),
                           spec.op_config(), [True, True, kind == "cuba_lif", beta is not None,
                                              alpha is not None, th is not None]))


def test_opcheck_sparse_ops():
    spec, x, v0, _, beta, _, th = _opcheck_args()
    cfg = spec.op_config()
    test_utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.snnopt.neuron_scan_sparse.default,
                          (x, v0, None, beta.detach(), None, th.detach(), cfg, 0.3, True, False), test_utils=test_utils)
    spec, x, v0, i0, beta, alpha, th = make("cuba_lif", "zero", "next", True)
    torch.library.opcheck(torch.ops.snnopt.neuron_scan_sparse.default,
                          (x, v0, i0, beta.detach(), alpha.detach(), th.detach(), spec.op_config(), 0.3, True, True),
                          test_utils=test_utils)
    xs = (torch.rand(6, 3, 8) < 0.3).float()
    w = torch.randn(5, 8, requires_grad=True)
    torch.library.opcheck(torch.ops.snnopt.spiking_synapse_sparse.default,
                          (xs, w, torch.zeros(5, requires_grad=True), None, beta.detach()[:1], th.detach()[:1],
                           0, [1], [0], [1], 1, cfg, 0.5, True, None), test_utils=test_utils)
    active = torch.arange(0, xs.numel(), 3, dtype=torch.int32)  # with a tap (its gradient: dL/dx there)
    torch.library.opcheck(torch.ops.snnopt.spiking_synapse_sparse.default,
                          (xs.requires_grad_(), w, torch.zeros(5, requires_grad=True), None, beta.detach()[:1],
                           th.detach()[:1], 0, [1], [0], [1], 1, cfg, 0.5, True, active,
                           torch.rand(active.numel(), requires_grad=True)), test_utils=test_utils)


def test_opcheck_rate_ops():
    spec, x, v0, i0, beta, alpha, th = _opcheck_args("cuba_lif")
    torch.library.opcheck(torch.ops.snnopt.neuron_rate_stats.default,
                          (x.detach(), v0.detach(), i0.detach(), beta.detach(), alpha.detach(), th.detach(),
                           spec.op_config(), True))
    xb = torch.randn(6, 4, 3, 3, requires_grad=True)
    torch.library.opcheck(torch.ops.snnopt.rate_batch_norm.default,
                          (xb, torch.randn(4), torch.rand(4) + 0.5, torch.randn(4, requires_grad=True),
                           torch.randn(4, requires_grad=True), 1e-5))


def test_pack_bits_roundtrip_and_non_binary():
    x = (torch.rand(5, 3, 11) < 0.2).float()
    packed = ref_sparse.pack_bits(x)
    assert packed.dtype == torch.uint8 and packed.numel() == (x.numel() + 7) // 8
    assert torch.equal(ref_sparse.unpack_bits(packed, x.shape, x.dtype), x)
    assert ref_sparse.pack_bits(x * 0.5).numel() == 0


@pytest.mark.parametrize("op", ["dense", "sparse", "rate"])
def test_nan_input_does_not_crash(op):
    spec, x, v0, _, beta, _, th = make("lif", "subtract", "same", True)
    x = x.detach().clone()
    x[2, 1, 3] = float("nan")
    x.requires_grad_()
    if op == "dense":
        out = kernels.neuron_scan(x, None, None, beta, None, th, spec.op_config())[0]
    elif op == "sparse":
        out = kernels.neuron_scan_sparse(x, None, None, beta, None, th, spec.op_config(), 0.05)[0]
    else:
        out = kernels.neuron_rate_stats(x.detach(), None, None, beta.detach(), None, th.detach(), spec.op_config())[0]
    assert out.shape == x.shape and torch.isfinite(out).all()
    if op != "rate":
        out.sum().backward()
        assert x.grad is not None


@pytest.mark.parametrize("syn", [0, 1])
@pytest.mark.parametrize("density", [0.05, 0.3, None])
def test_binary_synapse_matches_autograd(syn, density):
    """Binary input below and above ``EVENT_DENSITY`` (event-driven and matrix-product Linear
    on the native backend) and float input (``density`` None)."""
    torch.manual_seed(3)
    binary = density is not None
    shape, wshape = ((5, 3, 2, 7, 7), (4, 2, 3, 3)) if syn else ((5, 3, 9), (4, 9))
    x = ((torch.rand(shape) < density).float() if binary else torch.randn(shape)).requires_grad_()
    w, b = torch.randn(wshape, requires_grad=True), torch.randn(4, requires_grad=True)
    conv = ([2, 1], [1, 0], [1, 1], 1)
    out, packed, _ = kernels.binary_synapse(x, w, b, syn, *conv) if syn else \
        kernels.binary_synapse(x, w, b, 0, [1], [0], [1], 1)
    ref = torch.nn.functional.conv2d(x.flatten(0, 1), w, b, [2, 1], [1, 0]).unflatten(0, shape[:2]) if syn \
        else torch.nn.functional.linear(x, w, b)
    torch.testing.assert_close(out, ref)
    assert packed.numel() == ((x.numel() + 7) // 8 if binary else 4 * x.numel())
    g = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad((out * g).sum(), (x, w, b)), torch.autograd.grad((ref * g).sum(), (x, w, b))):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)
    torch.library.opcheck(torch.ops.snnopt.binary_synapse.default, (x, w, b, syn, *conv, True, None),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
