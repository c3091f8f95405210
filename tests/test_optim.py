"""snnopt.optim.adam: the fused Adam where available, the same update as the default form."""

import torch

from snnopt.optim import adam


def test_fused_adam_matches_the_default_form():
    torch.manual_seed(torch.seed() % 2**31)
    shapes = [(7, 5), (5,), (3, 7)]
    a = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    fused, plain = adam(a, lr=1e-2), torch.optim.Adam(b, lr=1e-2)
    assert fused.defaults["fused"]  # CPU float32 has the fused kernel
    for _ in range(5):
        grads = [torch.randn(s) for s in shapes]
        for p, q, g in zip(a, b, grads):
            p.grad, q.grad = g.clone(), g.clone()
        fused.step()
        plain.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_adam_falls_back_where_the_fused_form_is_missing():
    """A complex parameter has no fused kernel: the default form instead of an error at the
    first step."""
    p = torch.nn.Parameter(torch.randn(4, dtype=torch.complex64))
    opt = adam([p], lr=1e-2)
    p.grad = torch.randn(4, dtype=torch.complex64)
    before = p.detach().clone()
    opt.step()
    assert not opt.defaults["fused"] and not torch.equal(p.detach(), before)
