"""Average pooling: the ``avg_pool`` op against ``torch.nn.functional.avg_pool2d`` (value and
gradient bit for bit, on the CPU kernel and on the reference), its opcheck, and the
``fast_pooling`` pass (supported configurations rewritten in CPU graphs, compiled models
exact, others left alone)."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import snnopt
from snnopt import kernels
from snnopt.kernels import native
from snnopt.passes import fast_pooling

from .models import ConvNet, LoopConvNet, grads_of, spikes

WINDOWS = [((2, 2), (2, 2)), ((3, 3), (2, 2)), ((2, 3), (1, 2)), ((3, 1), (3, 1))]


def _planes_pool(x, kernel, stride):
    y = F.avg_pool2d(x.reshape(-1, *x.shape[-2:]), kernel, stride)
    return y.reshape(*x.shape[:-2], *y.shape[-2:])


@pytest.mark.parametrize("shape", [(3, 2, 4, 9, 8), (5, 3, 7, 6), (2, 11, 13)])
@pytest.mark.parametrize("kernel,stride", WINDOWS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", ["native", "reference"])
def test_avg_pool_is_pytorchs_bit_for_bit(shape, kernel, stride, dtype, backend, monkeypatch):
    """Random and binary inputs, odd plane sizes (a ragged last window is dropped),
    overlapping windows; 5-D time-major, 4-D and 3-D inputs."""
    if backend == "reference":
        monkeypatch.setattr(native, "serves_pool", lambda x: False)
    elif native.backend("cpu") != "native":
        pytest.skip(f"the fused CPU kernels did not build: {native._state.get('error')}")
    g = torch.Generator().manual_seed(sum(shape) + kernel[0])
    for x in (torch.randn(shape, generator=g, dtype=dtype), spikes(shape, p=0.2, seed=1).to(dtype)):
        x.requires_grad_()
        y = kernels.avg_pool(x, kernel, stride)
        want = _planes_pool(x, kernel, stride)
        assert torch.equal(y, want)
        proj = torch.randn(want.shape, generator=g, dtype=dtype)
        assert torch.equal(torch.autograd.grad(y, x, proj)[0], torch.autograd.grad(want, x, proj)[0])


def test_avg_pool_reads_non_contiguous_input():
    x = torch.randn(4, 3, 10, 12).transpose(-1, -2)
    assert torch.equal(kernels.avg_pool(x, (2, 2), (2, 2)), F.avg_pool2d(x, 2))


def test_avg_pool_refuses_a_window_larger_than_the_plane():
    with pytest.raises(RuntimeError, match="does not fit"):
        torch.ops.snnopt.avg_pool(torch.randn(2, 3, 4, 4), [5, 5], [1, 1])


@pytest.mark.parametrize("kernel,stride", WINDOWS[:2])
def test_avg_pool_opcheck(kernel, stride):
    x = torch.randn(2, 3, 9, 8, requires_grad=True)
    torch.library.opcheck(torch.ops.snnopt.avg_pool.default, (x, list(kernel), list(stride)))
    g = torch.randn(2, 3, *[(n - k) // s + 1 for n, k, s in zip((9, 8), kernel, stride)])
    torch.library.opcheck(torch.ops.snnopt.avg_pool_backward.default, (g, [9, 8], list(kernel), list(stride)))


@pytest.mark.parametrize("kernel,stride", WINDOWS[:2])
@pytest.mark.parametrize("direct", [True, False])
def test_avg_pool_is_twice_differentiable(kernel, stride, direct):
    """Its backward is the adjoint of a linear map, differentiable in turn (a gradient
    penalty through a pooled conv net): gradgradcheck in float64 on both routes."""
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    route = contextlib.nullcontext() if direct else kernels.through_dispatcher()
    with route:
        assert torch.autograd.gradgradcheck(lambda t: kernels.avg_pool(t, kernel, stride), (x,))


def _pools(compiled):
    program = next(iter(compiled._programs.values()))
    return [n for n in program.gm.graph.nodes if n.target is kernels.avg_pool]


@pytest.mark.parametrize("model_cls", [ConvNet, LoopConvNet])
@pytest.mark.parametrize("mode", ["dense", "sparse", "rate"])
def test_compiled_conv_nets_pool_with_the_op_and_stay_exact(model_cls, mode):
    torch.manual_seed(2)
    model = model_cls(detach_reset=True)
    x = spikes((6, 3, 2, 12, 12), p=0.3)
    compiled = snnopt.compile(model, mode=mode, example_inputs=(x,))
    assert len(_pools(compiled)) == 1, compiled.report
    assert any("avg_pool" in note.detail for note in compiled.report.notes)
    out = compiled(x)
    want = model(x)
    if mode == "dense":
        assert torch.equal(out, want)
        got, ref = grads_of(compiled, out), grads_of(model, want)
        for name in ref:
            torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-6)
    else:
        assert out.shape == want.shape


class Pools(nn.Module):
    """One pooling of each kind; only the first two are supported."""

    def __init__(self):
        super().__init__()
        self.plain = nn.AvgPool2d((2, 3), stride=1)
        self.padded = nn.AvgPool2d(2, padding=1)
        self.ceil = nn.AvgPool2d(3, ceil_mode=True)

    def forward(self, x):
        return (F.avg_pool2d(x, 2).sum() + self.plain(x).sum() + self.padded(x).sum() + self.ceil(x).sum()
                + F.avg_pool2d(x, 2, divisor_override=3).sum())


def test_the_pass_takes_supported_pooling_only_and_is_idempotent():
    gm = torch.fx.symbolic_trace(Pools())
    for n in gm.graph.nodes:
        n.meta["origin"] = "trace"
    x = torch.randn(2, 3, 10, 11)
    want = gm(x)
    result = fast_pooling(gm)
    assert result.modified and len(result.notes) == 2
    rewritten = [n for n in gm.graph.nodes if n.target is kernels.avg_pool]
    assert [n.args[1:] for n in rewritten] == [([2, 2], [2, 2]), ([2, 3], [1, 1])]
    assert all(n.meta["origin"] == "fast_pooling" and n.meta["from_node"] for n in rewritten)
    gm.recompile()
    assert torch.equal(gm(x), want)
    assert not fast_pooling(gm).modified


def test_cuda_graphs_keep_pytorchs_pooling():
    assert fast_pooling in snnopt.passes.pipeline("dense", device="cpu")
    assert fast_pooling not in snnopt.passes.pipeline("dense", device="cuda")
