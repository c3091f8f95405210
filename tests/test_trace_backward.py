"""The sparse backward of a Linear -> LIF/IF through traces (``native.trace_linear_backward``:
``dW`` from the presynaptic trace, ``dX`` from the input gradient carried backward, no
``[T, B, N]`` tensor) against the reference route (the ``delta`` scan, then ``delta^T X`` and
``delta W``) on fresh random inputs: float64 to rtol 1e-10, float32 to rtol 1e-4 of the
largest value; odd sizes, T = 1, extra feature axes, empty and full active sets, ``dL/dv_T``,
an input scale, ``dX`` listed or everywhere, entries in any order; and the op choosing this route on sparse input
with the same gradients as the other route."""

from __future__ import annotations

import math

import pytest
import torch

from snnopt import kernels
from snnopt.kernels import native, ops
from snnopt.kernels.reference import sparse as ref_sparse
from snnopt.spec import Config, NeuronSpec
from snnopt.surrogate import fast_sigmoid

from .models import spikes

pytestmark = pytest.mark.skipif(native.backend("cpu") != "native",
                                reason=f"the fused CPU kernels did not build: {native._state.get('error')}")


def close(a, b, rtol):
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max() if b.numel() else 0) + 1e-12)


def layer(kind, reset, scale, x_shape, N, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    spec = NeuronSpec(kind=kind, beta=0.85 if kind == "lif" else None, reset=reset, scale=scale, detach_reset=True,
                      surrogate=fast_sigmoid(5.0))
    x = (torch.rand(x_shape, generator=g) < 0.15).to(dtype)
    w = torch.randn(N, x_shape[-1], generator=g, dtype=dtype) * 0.8
    beta = torch.tensor(0.85, dtype=dtype) if kind == "lif" else None
    return Config(spec.op_config()), x, w, beta, g


def reference(cfg, x, w, beta, current, g_out, g_v, idx, sg, gates, x_active, needs):
    gI, gv0, _ = ref_sparse.neuron_sparse_backward(g_out, g_v, None, None, idx, sg, gates, beta, None, cfg,
                                                   list(current.shape), [True, needs[3], False])
    dX, dW, db = ref_sparse.synapse_backward(gI, x, w, 0, [1], [0], [1], 1, needs[:3], x_active)
    return dX, dW, db, gv0


@pytest.mark.parametrize("kind,reset,scale", [("lif", "subtract", 1.0), ("lif", "none", 0.5),
                                              ("if", "subtract", 1.0)])
@pytest.mark.parametrize("x_shape,N", [((13, 3, 37), 11), ((1, 4, 9), 5), ((6, 2, 3, 70), 17), ((5, 3, 128), 7)])
@pytest.mark.parametrize("band", [0.3, 0.0, math.inf])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_trace_route_matches_reference(kind, reset, scale, x_shape, N, band, dtype):
    cfg, x, w, beta, g = layer(kind, reset, scale, x_shape, N, dtype, seed=len(x_shape) * 7 + N)
    current = x @ w.t() + 0.95  # (a bias near the threshold: the active set is not empty)
    _, _, _, _, idx, sg, gates = ref_sparse.scan_forward_sparse(current, None, None, beta, None,
                                                                torch.tensor(1.0, dtype=dtype), cfg, band, True)
    assert (idx.numel() == 0) == (band == 0.0) and (idx.numel() == current.numel()) == (band == math.inf)
    g_out = torch.randn(current.shape, generator=g, dtype=dtype)
    packed, _ = native.pack_spikes(x)
    rtol = 1e-4 if dtype == torch.float32 else 1e-10
    decay = 1.0 if beta is None else beta
    at_active = g_out.reshape(-1)[idx.long()]  # dL/ds on the active set: all the backward reads
    rest = g_out.reshape(-1).index_add(0, idx.long(), -0.25 * at_active).reshape(g_out.shape)
    for g_v in (torch.zeros_like(current[0]), torch.randn(current[0].shape, generator=g, dtype=dtype)):
        for x_active in (None, torch.randperm(x.numel(), generator=g)[: x.numel() // 3].sort().values.int()):
            needs = (True, True, True, True)
            want = reference(cfg, x, w, beta, current, g_out, g_v, idx, sg, gates, x_active, needs)
            got = native.trace_linear_backward(g_out, None, g_v, idx, sg, packed, w, list(x.shape), x_active, decay,
                                               cfg, needs)
            for a, b in zip(got, want):
                close(a, b, rtol)
            if x_active is None:
                continue
            # dL/ds through the tap alone, or split between the tap and g_out; dX compact
            for out_part, tap in ((None, at_active), (rest, 0.25 * at_active)):
                got = native.trace_linear_backward(out_part, tap, g_v, idx, sg, packed, w, list(x.shape), x_active,
                                                   decay, cfg, needs, compact=True)
                close(got[0], want[0].reshape(-1)[x_active.long()], rtol)
                for a, b in zip(got[1:], want[1:]):
                    close(a, b, rtol)
            # the active set and the listed entries in any order (grouped by sorting, not by runs)
            p, q = torch.randperm(idx.numel(), generator=g), torch.randperm(x_active.numel(), generator=g)
            got = native.trace_linear_backward(None, at_active[p], g_v, idx[p], sg[p], packed, w, list(x.shape),
                                               x_active[q], decay, cfg, needs, compact=True)
            close(got[0], want[0].reshape(-1)[x_active[q].long()], rtol)
            for a, b in zip(got[1:], want[1:]):
                close(a, b, rtol)
    dX, dW, db, gv0 = native.trace_linear_backward(g_out, None, g_v, idx, sg, packed, w, list(x.shape), None, decay,
                                                   cfg, (False, True, False, False))
    assert dX is None and db is None and gv0 is None and dW.shape == w.shape


def test_op_takes_the_trace_route_on_sparse_input_with_the_same_gradients(monkeypatch):
    """With fewer active states than input spikes (per neuron and input) the fused op's
    backward goes through traces; forcing the other route (``delta`` scan, event ``dW``)
    gives the same gradients."""
    torch.manual_seed(5)
    T, B, K, N = 40, 6, 90, 32
    x = spikes((T, B, K), 0.06)
    w = (torch.randn(N, K) * 0.6).requires_grad_()
    b = (torch.randn(N) * 0.1 + 0.2).requires_grad_()
    spec = NeuronSpec(beta=0.9, threshold=1.0, detach_reset=True)
    calls = []
    traced = native.trace_linear_backward
    monkeypatch.setattr(native, "trace_linear_backward", lambda *a: calls.append(1) or traced(*a))

    def grads():
        out = kernels.spiking_synapse_sparse(x, w, b, None, torch.tensor(0.9), torch.tensor(1.0), 0, [1], [0], [1],
                                             1, spec.op_config(), 0.05)[0]
        return torch.autograd.grad((out * torch.linspace(-1, 1, N)).sum(), (w, b))

    via_trace = grads()
    assert calls, "the backward did not take the trace route"
    monkeypatch.setattr(ops, "_traced", lambda *a: False)
    calls.clear()
    via_delta = grads()
    assert not calls
    assert via_trace[0].abs().sum() > 0
    for a, b_ in zip(via_trace, via_delta):
        close(a, b_, 1e-5)

    monkeypatch.undo()
    beta, cfg = torch.tensor(0.9), spec.op_config()
    out, _, idx, sg, gates, packed = torch.ops.snnopt.spiking_synapse_sparse(
        x, w.detach(), b.detach(), None, beta, torch.tensor(1.0), 0, [1], [0], [1], 1, cfg, 0.05, True, None)
    args = (torch.randn_like(out), torch.zeros_like(out[0]), idx, sg, gates, packed, w.detach(), beta, 0, [1], [0],
            [1], 1, list(x.shape), list(out.shape), cfg, [True, True, True, False], None)
    assert ops._traced(sg, idx, packed, w, beta, 0, list(x.shape), Config(cfg))
    torch.library.opcheck(torch.ops.snnopt.spiking_synapse_sparse_backward.default, args,
                          test_utils=("test_schema", "test_faketensor"))


def test_a_silent_layer_takes_the_trace_route_and_gets_zero_weight_gradients(monkeypatch):
    """A layer that never comes near its threshold has an empty active set: its backward
    costs nothing through traces (no ``[T, B, N]`` gradient written and summed), and its
    weight and bias gradients are exactly zero, as the delta route gives them."""
    torch.manual_seed(6)
    T, B, K, N = 30, 4, 50, 16
    x = spikes((T, B, K), 0.05)
    w = (torch.randn(N, K) * 0.01).requires_grad_()
    b = torch.zeros(N, requires_grad=True)
    spec = NeuronSpec(beta=0.9, threshold=1.0, detach_reset=True)
    calls = []
    traced = native.trace_linear_backward
    monkeypatch.setattr(native, "trace_linear_backward", lambda *a: calls.append(a[3].numel()) or traced(*a))
    out = kernels.spiking_synapse_sparse(x, w, b, None, torch.tensor(0.9), torch.tensor(1.0), 0, [1], [0], [1], 1,
                                         spec.op_config(), 0.05)[0]
    gw, gb = torch.autograd.grad((out * torch.linspace(-1, 1, N)).sum(), (w, b))
    assert calls == [0]
    assert torch.equal(gw, torch.zeros_like(w)) and torch.equal(gb, torch.zeros_like(b))
