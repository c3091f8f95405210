"""The event-driven synapse: bit packing, the event Linear forward and its backward
(``dW`` over the spikes, ``dX`` only on the producer's active set) against plain torch on
fresh random inputs (float32: rtol 1e-5 of the largest value; float64: 1e-12), and the
lowering that hands each synapse its producer's active set, which must leave every
parameter gradient unchanged."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from snnopt import kernels
from snnopt.frontend.tracer import trace
from snnopt.kernels import native, ops
from snnopt.kernels.reference import sparse as ref_sparse
from snnopt.passes import (PassManager, binary_synapses, canonicalize_neurons, dce, expose_aux, fuse_synapses,
                           lower, reroll_time)
from snnopt.passes.verify import verify
from snnopt.spec import NeuronSpec

from .devices import DEVICES
from .models import MLP, LoopMLP, spikes

needs_native = pytest.mark.skipif(native.backend("cpu") != "native",
                                  reason=f"the fused CPU kernels did not build: {native._state.get('error')}")


def close(a, b, rtol=1e-5):
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.detach().abs().max() if b.numel() else 0) + 1e-12)


@needs_native
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5, 11), (64, 13), (2, 1000)])
@pytest.mark.parametrize("p", [0.0, 0.03, 0.5, 1.0])
@pytest.mark.parametrize("device", DEVICES)
def test_pack_spikes_matches_reference(shape, p, device):
    x = spikes(shape, p=p).to(device)
    packed, count = native.pack_spikes(x)
    assert torch.equal(packed, ref_sparse.pack_bits(x))
    assert count == int(x.sum())
    assert torch.equal(native.unpack_spikes(packed, list(shape), torch.float32), x)


@needs_native
@pytest.mark.parametrize("bad", [0.5, -1.0, math.nan, math.inf])
@pytest.mark.parametrize("device", DEVICES)
def test_pack_spikes_refuses_non_binary_input(bad, device):
    x = spikes((4, 9), p=0.3).to(device)
    x[2, 3] = bad
    assert native.pack_spikes(x) == (None, -1)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows,K,N,p", [(1, 1, 1, 1.0), (37, 13, 9, 0.1), (50, 64, 33, 0.02), (20, 70, 5, 0.0),
                                        (8, 9, 4, 1.0), (30, 40, 130, 0.1)])  # (the last: whole vector chunks + a tail)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("device", DEVICES)
def test_event_linear_matches_linear(dtype, rows, K, N, p, bias, device):
    torch.manual_seed(rows * K + N)
    x = spikes((rows, K), p=p).to(device, dtype)
    w = torch.randn(N, K, dtype=dtype).to(device)
    b = torch.randn(N, dtype=dtype).to(device) if bias else None
    packed, _ = native.pack_spikes(x)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    close(native.event_linear(packed, [rows, K], w, b), F.linear(x, w, b), rtol)

    g = torch.randn(rows, N, dtype=dtype).to(device)
    active = torch.randperm(rows * K)[: rows * K // 3].sort().values.int().to(device)
    dX, dW, db = native.event_linear_backward(g, packed, w, [rows, K], active, [True, True, True])
    close(dW, g.t() @ x, rtol)
    close(db, g.sum(0), rtol)
    close(dX, ref_sparse.only_at(g @ w, active), rtol)
    elsewhere = torch.ones(rows * K, dtype=torch.bool, device=device).index_fill_(0, active.long(), False)
    assert not dX.reshape(-1)[elsewhere].any()
    dX_all, none_w, none_b = native.event_linear_backward(g, packed, w, [rows, K], None, [True, False, False])
    close(dX_all, g @ w, rtol)
    assert none_w is None and none_b is None


CONVS = [  # (T, B, C, O, H, W, kernel, stride, padding, dilation, p)
    (3, 2, 2, 12, 13, 11, (5, 5), (1, 1), (0, 0), (1, 1), 0.05),
    (2, 3, 3, 5, 9, 10, (3, 3), (2, 2), (1, 1), (1, 1), 0.1),
    (1, 2, 1, 4, 7, 6, (3, 2), (1, 2), (2, 0), (2, 1), 0.3),
    (2, 1, 4, 9, 5, 5, (1, 1), (1, 1), (0, 0), (1, 1), 0.05),
    (2, 2, 2, 20, 6, 6, (3, 3), (3, 2), (2, 2), (1, 2), 1.0),  # every input a spike; taps past the edges
    (2, 2, 3, 7, 8, 8, (3, 3), (1, 1), (1, 1), (1, 1), 0.0),  # no spike at all
]


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T,B,C,O,H,W,kernel,stride,padding,dilation,p", CONVS)
def test_event_conv2d_backward_matches_autograd(dtype, T, B, C, O, H, W, kernel, stride, padding, dilation, p):
    """dW from the input spikes, dX only at the listed positions (or, unlisted, everywhere),
    db: equal to autograd through ``F.conv2d`` (rtol 1e-5 of the largest value in float32,
    1e-12 in float64)."""
    torch.manual_seed(T * 100 + C * 10 + O)
    x = spikes((T, B, C, H, W), p=p).to(dtype).requires_grad_()
    w = torch.randn(O, C, *kernel, dtype=dtype, requires_grad=True)
    conv = (list(stride), list(padding), list(dilation), 1)
    y = ref_sparse.synapse(x, w, None, 1, *conv)
    g = torch.randn_like(y)
    rx, rw = torch.autograd.grad((y * g).sum(), (x, w))
    packed, _ = native.pack_spikes(x.detach())
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    active = torch.randperm(x.numel())[: x.numel() // 3].int()  # in no particular order
    dX, dW, db = native.event_conv2d_backward(g, packed, w.detach(), list(x.shape), *conv[:3], active,
                                              [True, True, True])
    close(dW, rw, rtol)
    close(db, g.sum((0, 1, 3, 4)), rtol)
    close(dX, ref_sparse.only_at(rx, active), rtol)
    compact, _, _ = native.event_conv2d_backward(g, packed, w.detach(), list(x.shape), *conv[:3], active,
                                                 [True, False, False], compact=True)
    close(compact, rx.reshape(-1)[active.long()], rtol)
    every, none_w, none_b = native.event_conv2d_backward(g, packed, w.detach(), list(x.shape), *conv[:3], None,
                                                         [True, False, False])
    close(every, rx, rtol)
    assert none_w is None and none_b is None


@needs_native
def test_event_conv2d_backward_refuses_a_position_outside_the_input():
    x, w = spikes((2, 2, 3, 5, 5), p=0.2), torch.randn(4, 3, 3, 3)
    packed, _ = native.pack_spikes(x)
    outside = torch.tensor([x.numel()], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="listed position 300 outside the 300 inputs"):
        native.event_conv2d_backward(torch.randn(2, 2, 4, 3, 3), packed, w, list(x.shape), [1, 1], [0, 0], [1, 1],
                                     outside, [True, False, False])


@pytest.mark.parametrize("tap", [False, True])
def test_conv_synapse_backward_runs_event_driven_on_sparse_binary_input(monkeypatch, tap):
    """A Conv2d ``binary_synapse`` on sparse spikes takes the event-driven backward on the
    CPU kernels, with the gradients of autograd through ``F.conv2d``."""
    if native.backend("cpu") != "native":
        pytest.skip("the fused CPU kernels did not build")
    calls = []
    original = native.event_conv2d_backward
    monkeypatch.setattr(native, "event_conv2d_backward", lambda *a, **k: calls.append(1) or original(*a, **k))
    torch.manual_seed(6)
    x = spikes((4, 3, 2, 12, 12), p=0.05).requires_grad_()
    w, b = torch.randn(6, 2, 3, 3, requires_grad=True), torch.randn(6, requires_grad=True)
    conv = ([1, 1], [1, 1], [1, 1], 1)
    active = torch.randperm(x.numel())[: x.numel() // 10].sort().values.int()
    t = torch.rand(active.numel(), requires_grad=True) if tap else None
    out, _, _ = kernels.binary_synapse(x, w, b, 1, *conv, x_active=active, x_tap=t)
    ref = ref_sparse.synapse(x, w, b, 1, *conv)
    g = torch.randn_like(ref)
    got = torch.autograd.grad((out * g).sum(), (t if tap else x, w, b))
    want = torch.autograd.grad((ref * g).sum(), (x, w, b))
    assert calls
    close(got[0], want[0].reshape(-1)[active.long()] if tap else ref_sparse.only_at(want[0], active))
    close(got[1], want[1])
    close(got[2], want[2])


@pytest.mark.parametrize("event", [True, False])
@pytest.mark.parametrize("device", DEVICES)
def test_synapse_ops_take_the_event_path_and_match_autograd(monkeypatch, event, device):
    """``binary_synapse`` with a sparse binary input (event-driven on the native backend) or
    with the reference forced: same values and gradients as ``F.linear`` under autograd."""
    if not event:
        monkeypatch.setattr(native, "serves_synapse", lambda x: False)
    elif native.backend("cpu") != "native":
        pytest.skip("the fused CPU kernels did not build")
    torch.manual_seed(1)
    x = spikes((9, 4, 50), p=0.05).to(device).requires_grad_()
    assert x.mean() < ops.EVENT_DENSITY
    w = torch.randn(7, 50).to(device).requires_grad_()
    b = torch.randn(7).to(device).requires_grad_()
    out, packed, _ = kernels.binary_synapse(x, w, b, 0, [1], [0], [1], 1)
    ref = F.linear(x, w, b)
    close(out, ref)
    assert packed.numel() == (x.numel() + 7) // 8
    g = torch.randn_like(ref)
    grads = [torch.autograd.grad((y * g).sum(), (x, w, b)) for y in (out, ref)]
    for got, want in zip(*grads):
        close(got, want)


@pytest.mark.parametrize("syn", [0, 1])
@pytest.mark.parametrize("device", DEVICES)
def test_input_gradient_only_on_the_producer_active_set(syn, device):
    torch.manual_seed(2)
    shape, wshape = ((5, 3, 2, 6, 6), (4, 2, 3, 3)) if syn else ((5, 3, 20), (4, 20))
    x = spikes(shape, p=0.1).to(device).requires_grad_()
    w, b = torch.randn(wshape).to(device).requires_grad_(), torch.randn(4).to(device).requires_grad_()
    conv = ([1, 1], [1, 1], [1, 1], 1) if syn else ([1], [0], [1], 1)
    active = torch.randperm(x.numel())[: x.numel() // 4].sort().values.int().to(device)
    out, _, _ = kernels.binary_synapse(x, w, b, syn, *conv, x_active=active)
    ref = ref_sparse.synapse(x, w, b, syn, *conv)
    g = torch.randn_like(ref)
    gx, gw, gb = torch.autograd.grad((out * g).sum(), (x, w, b))
    rx, rw, rb = torch.autograd.grad((ref * g).sum(), (x, w, b))
    close(gx, ref_sparse.only_at(rx, active))
    close(gw, rw)
    close(gb, rb)
    torch.library.opcheck(torch.ops.snnopt.binary_synapse.default, (x, w, b, syn, *conv, True, active),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    # through the tap: dL/dx at the active set, one value per entry, as the tap's gradient
    tap = torch.rand(active.numel()).to(device).requires_grad_()
    out, _, _ = kernels.binary_synapse(x, w, b, syn, *conv, x_active=active, x_tap=tap)
    gx, gw, gb, gt = torch.autograd.grad((out * g).sum(), (x, w, b, tap), allow_unused=True)
    assert gx is None
    close(gt, rx.reshape(-1)[active.long()])
    close(gw, rw)
    close(gb, rb)
    torch.library.opcheck(torch.ops.snnopt.binary_synapse.default, (x, w, b, syn, *conv, True, active, True, tap),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 3, 5), (7, 2, 70), (32, 4, 131)])
@pytest.mark.parametrize("p", [0.0, 0.02, 0.5, 1.0])
def test_time_mean_from_bits_equals_the_mean(dtype, shape, p):
    """The time average counted from the packed bits is ``x.mean(0, keepdim=True)`` exactly
    (a sum of ones is exact, then one division)."""
    if native.backend("cpu") != "native":
        pytest.skip("the fused CPU kernels did not build")
    torch.manual_seed(3)
    x = spikes(shape, p=p).to(dtype)
    packed, _ = native.pack_spikes(x)
    assert torch.equal(native.time_mean(packed, list(shape), dtype), x.mean(0, keepdim=True))


@pytest.mark.parametrize("syn", [0, 1])
@pytest.mark.parametrize("kind", ["sparse", "dense", "real", "nan"])
@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("device", DEVICES)
def test_binary_synapse_returns_the_time_mean_of_its_input(monkeypatch, syn, kind, backend, device):
    """``mean=True``: the third output is ``x.mean(0, keepdim=True)`` on every path (event
    Linear, matrix product, input that is not binary, NaN), carries no gradient, and leaves
    the synapse's value and gradients as they were."""
    if backend == "reference":
        monkeypatch.setattr(native, "serves_synapse", lambda x: False)
    elif native.backend(torch.device(device).type) != "native":
        pytest.skip("the fused kernels did not build")
    torch.manual_seed(4)
    shape, wshape = ((6, 3, 2, 6, 6), (4, 2, 3, 3)) if syn else ((6, 3, 40), (4, 40))
    x = spikes(shape, p={"sparse": 0.03, "dense": 0.6}.get(kind, 0.0)) + (torch.rand(shape) if kind == "real" else 0)
    if kind == "nan":
        x.view(-1)[5] = math.nan
    x = x.to(device).requires_grad_()
    w, b = torch.randn(wshape).to(device).requires_grad_(), torch.randn(4).to(device).requires_grad_()
    conv = ([1, 1], [1, 1], [1, 1], 1) if syn else ([1], [0], [1], 1)
    out, _, x_mean = kernels.binary_synapse(x, w, b, syn, *conv, mean=True)
    assert not x_mean.requires_grad
    same = functools.partial(torch.testing.assert_close, rtol=0, atol=0, equal_nan=True)
    same(x_mean, x.detach().mean(0, keepdim=True))
    plain, _, none = kernels.binary_synapse(x, w, b, syn, *conv)
    assert none.numel() == 0
    same(out, plain)
    g = torch.randn_like(out)
    grads = [torch.autograd.grad((y * g).sum(), (x, w, b)) for y in (out, plain)]
    for got, want in zip(*grads):
        same(got, want)
    torch.library.opcheck(torch.ops.snnopt.binary_synapse.default,
                          (x, w, b, syn, *conv, True, None), {"event": True, "x_tap": None, "mean": True},
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize("producer", ["neuron", "fused"])
@pytest.mark.parametrize("consumer", ["binary", "fused"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("device", DEVICES)
def test_the_tap_carries_the_input_gradient_back_to_the_producer(producer, consumer, dtype, backend, device,
                                                                  monkeypatch):
    """A sparse neuron (alone or fused with its Linear) feeding a synapse, the loss reading the
    spikes directly too: every gradient is the same whether the synapse's input gradient
    flows back compactly through the tap or as a ``[T, B, K]`` tensor zero off the active set
    (on the fused kernels and on the plain-torch reference)."""
    if backend == "reference":
        monkeypatch.setattr(native, "serves", lambda *a, **k: False)
        monkeypatch.setattr(native, "serves_synapse", lambda x: False)
    torch.manual_seed(11)
    cfg = NeuronSpec(beta=0.9, detach_reset=True).op_config()
    beta, theta = torch.tensor(0.9, dtype=dtype, device=device), torch.tensor(1.0, dtype=dtype, device=device)
    T, B, K, N, O = 15, 3, 24, 20, 7
    x = spikes((T, B, K), p=0.2).to(device, dtype)
    w1 = (torch.randn(N, K, dtype=dtype) * 0.6).to(device).requires_grad_()
    b1 = torch.full((N,), 0.3, dtype=dtype, device=device, requires_grad=True)
    w2 = (torch.randn(O, N, dtype=dtype) * 0.6).to(device).requires_grad_()
    b2 = torch.full((O,), 0.3, dtype=dtype, device=device, requires_grad=True)
    g = torch.Generator().manual_seed(0)
    proj_s = torch.randn(T, B, N, generator=g, dtype=dtype).to(device)
    proj_y = torch.randn(T, B, O, generator=g, dtype=dtype).to(device)

    def grads(tapped):
        if producer == "neuron":
            s, _, _, _, idx, sg = kernels.neuron_scan_sparse(F.linear(x, w1, b1), None, None, beta, None, theta, cfg,
                                                             0.4)
        else:
            s, _, idx, _, sg = kernels.spiking_synapse_sparse(x, w1, b1, None, beta, theta, 0, [1], [0], [1], 1, cfg,
                                                              0.4)
        tap = sg if tapped else None
        if consumer == "binary":
            y, _, _ = kernels.binary_synapse(s, w2, b2, 0, [1], [0], [1], 1, x_active=idx, x_tap=tap)
        else:
            y = kernels.spiking_synapse_sparse(s, w2, b2, None, beta, theta, 0, [1], [0], [1], 1, cfg, 0.4,
                                               x_active=idx, x_tap=tap)[0]
        assert idx.numel() > 0
        return torch.autograd.grad((y * proj_y).sum() + (s * proj_s).sum(), (w1, b1, w2, b2))

    for a, b in zip(grads(True), grads(False)):
        close(a, b, 1e-5 if dtype == torch.float32 else 1e-12)


def _sparse_graph(model, x):
    gm, _ = trace(model, (x,))
    passes = [canonicalize_neurons, reroll_time, fuse_synapses, binary_synapses(), lower("sparse"), expose_aux, dce]
    return PassManager(passes, verifier=verify)(gm, (x,))


@pytest.mark.parametrize("model_cls", [MLP, LoopMLP])
def test_lowering_hands_synapses_their_producer_active_set_without_changing_gradients(model_cls):
    torch.manual_seed(3)
    x = spikes((12, 4, 12), p=0.2)
    model = model_cls(detach_reset=True)
    gm = _sparse_graph(model, x)
    fed = [n for n in gm.graph.nodes if n.target in (kernels.spiking_synapse_sparse, kernels.binary_synapse)
           and "x_active" in n.kwargs]
    assert fed, gm.code
    for n in fed:
        assert n.kwargs["x_active"].meta["snn_aux"].startswith("active:")
        assert n.kwargs["x_tap"].args == (n.kwargs["x_active"].args[0], n.kwargs["x_tap"].args[1])
    assert not lower("sparse")(gm).modified  # idempotent: the active sets are handed over once

    def grads(graph):
        out, _ = graph(x)
        g = torch.Generator().manual_seed(0)
        proj = torch.randn(out.shape, generator=g)
        return dict(zip([k for k, _ in model.named_parameters()],
                        torch.autograd.grad((out * proj).sum(), list(model.parameters()))))

    with_active = grads(gm)
    for n in fed:
        n.kwargs = {}
    gm.recompile()
    without = grads(gm)
    for name, want in without.items():
        close(with_active[name], want)

