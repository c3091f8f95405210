"""The two routes to the ops (snnopt.kernels.dispatch): direct in plain eager code, through
the torch dispatcher otherwise; same values and gradients."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.profiler import profile

import snnopt
from snnopt import kernels
from snnopt.kernels import dispatch

from .devices import DEVICES
from .models import MLP, LoopConvNet, spikes
from .test_rate import BNConv


def _step(compiled, model, x, seed):
    """Output and parameter gradients of one training step, from a fixed random projection."""
    model.zero_grad()
    out = compiled(x)
    proj = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.device)
    (out * proj).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


CASES = [(MLP, (9, 5, 12), "dense"), (MLP, (9, 5, 12), "sparse"), (MLP, (9, 5, 12), "rate"),
         (LoopConvNet, (6, 3, 2, 12, 12), "sparse"), (LoopConvNet, (6, 3, 2, 12, 12), "dense"),
         (BNConv, (5, 4, 2, 8, 8), "rate")]


@pytest.mark.parametrize("cls,shape,mode", CASES)
@pytest.mark.parametrize("device", DEVICES)
def test_routes_give_the_same_values_and_gradients(cls, shape, mode, device):
    """Bit for bit: both routes run the same op bodies and autograd formulas."""
    seed = torch.seed() % 2**31  # fresh inputs each run; the seed is in the failure report
    torch.manual_seed(seed)
    model = (cls(gain=1.0) if cls is MLP else cls()).to(device)
    x = spikes(shape, p=0.3).to(device)
    compiled = snnopt.compile(model, mode=mode, example_inputs=(x,))
    with torch.backends.cudnn.flags(enabled=True, deterministic=True, benchmark=False, allow_tf32=False):
        direct = _step(compiled, model, x, seed)
        with kernels.through_dispatcher():
            routed = _step(compiled, model, x, seed)
    assert torch.equal(direct[0], routed[0]), f"seed {seed}"
    assert direct[1].keys() == routed[1].keys() and direct[1]
    for name in direct[1]:
        assert torch.equal(direct[1][name], routed[1][name]), f"{name}, seed {seed}"


def _ops_seen(fn) -> set[str]:
    with profile() as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith("snnopt::")}


def _binary_call(x, w, b):
    return kernels.binary_synapse(x, w, b, 0, [1], [0], [1], 1)


def test_plain_eager_calls_skip_the_dispatcher():
    x, w = spikes((4, 3, 10), p=0.2), torch.randn(6, 10, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    assert _ops_seen(lambda: _binary_call(x, w, b)[0].sum().backward()) == set()
    with kernels.through_dispatcher():
        seen = _ops_seen(lambda: _binary_call(x, w, b)[0].sum().backward())
    assert {"snnopt::binary_synapse", "snnopt::binary_synapse_backward"} <= seen


def test_autocast_goes_through_the_dispatcher():
    x, w, b = spikes((4, 3, 10), p=0.2), torch.randn(6, 10), torch.randn(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "snnopt::binary_synapse" in _ops_seen(lambda: _binary_call(x, w, b))


def test_fake_tensors_go_through_the_dispatcher():
    """A direct call would run the fused kernels on tensors without data; the op's fake
    kernel gives the shapes."""
    with FakeTensorMode():
        x, w, b = torch.empty(4, 3, 10), torch.empty(6, 10), torch.empty(6)
        out, _, _ = _binary_call(x, w, b)
    assert out.shape == (4, 3, 6)


@pytest.mark.filterwarnings("ignore:.*batching rule")
def test_vmap_goes_through_the_dispatcher():
    """Under a functorch transform the op runs through the dispatcher (whose fallback maps
    it sample by sample), never on batched tensors directly."""
    x, w, b = spikes((2, 4, 3, 10), p=0.2), torch.randn(6, 10), torch.randn(6)
    mapped = torch.vmap(lambda xi: _binary_call(xi, w, b)[0])(x)
    torch.testing.assert_close(mapped, torch.stack([_binary_call(xi, w, b)[0] for xi in x]), rtol=1e-6, atol=1e-6)


def test_defaults_are_filled_for_the_direct_route():
    """An op called with its trailing defaults left out gets them on the direct route, as
    the dispatcher would supply them."""
    x, w, b = spikes((4, 3, 10), p=0.2), torch.randn(6, 10), torch.randn(6)
    short = dispatch.call("binary_synapse", x, w, b, 0, [1], [0], [1], 1, False, None)
    full = dispatch.call("binary_synapse", x, w, b, 0, [1], [0], [1], 1, False, None, True, None)
    assert torch.equal(short[0], full[0])


def test_too_few_arguments_get_the_dispatcher_error():
    x, w = spikes((4, 3, 10), p=0.2), torch.randn(6, 10)
    with pytest.raises(RuntimeError, match="binary_synapse.*missing value for argument .bias."):
        dispatch.call("binary_synapse", x, w)


@pytest.mark.parametrize("cls,shape,mode", [c for c in CASES if c[2] != "rate"])
@pytest.mark.parametrize("direct", [True, False])
def test_second_derivatives_raise_naming_the_op(cls, shape, mode, direct):
    """``create_graph=True`` alone gives the usual gradients; differentiating them once more
    (a gradient penalty) raises, naming the fused op, on either route, instead of silently
    counting the fused ops' second derivative as zero."""
    torch.manual_seed(4)
    model = cls(gain=1.0) if cls is MLP else cls()
    x = spikes(shape, p=0.3).requires_grad_()
    compiled = snnopt.compile(model, mode=mode, example_inputs=(x.detach(),))
    route = dispatch.through_dispatcher() if not direct else torch.enable_grad()
    with route:
        out = compiled(x)
        params = [p for p in model.parameters()]
        plain = torch.autograd.grad(out.square().sum(), params, retain_graph=True)
        recorded = torch.autograd.grad(out.square().sum(), params, create_graph=True)
        for a, b in zip(plain, recorded):
            assert torch.equal(a, b)
        penalty = sum(g.square().sum() for g in recorded)
        with pytest.raises(RuntimeError, match=r"snnopt::\w+: second derivatives .* uncompiled model"):
            penalty.backward()
