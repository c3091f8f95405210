"""Small SNNs used across the tests: multi-step and per-step-loop, MLP and conv."""

from __future__ import annotations

import torch
from torch import nn

import snnopt.nn as snn


def neuron_kwargs(reset="subtract", detach_reset=False, surrogate="atan", learn=False):
    return dict(reset=reset, detach_reset=detach_reset, surrogate=surrogate, learn_beta=learn,
                learn_threshold=learn)


class MLP(nn.Module):
    """Multi-step MLP: Linear -> LIF -> Linear -> LIF (scaled input drive)."""

    def __init__(self, n_in=12, n_hidden=16, n_out=5, gain=3.0, **kw):
        super().__init__()
        self.gain = gain
        self.fc1, self.lif1 = nn.Linear(n_in, n_hidden), snn.LIF(0.85, **kw)
        self.fc2, self.lif2 = nn.Linear(n_hidden, n_out), snn.LIF(0.75, **kw)

    def forward(self, x):
        return self.lif2(self.fc2(self.lif1(self.fc1(x * self.gain))) * self.gain)


class HandRecurrent(nn.Module):
    """A recurrence written by hand in forward: each step's spikes go back, through ``rec``,
    into the next step's input (the form ``snnopt.nn.Recurrent`` states as a module)."""

    def __init__(self, n_in=12, n=16, **kw):
        super().__init__()
        self.n = n
        self.fc, self.rec = nn.Linear(n_in, n), nn.Linear(n, n, bias=False)
        self.lif = snn.LIFCell(0.9, **kw)

    def forward(self, x):
        s, v, out = torch.zeros(x.shape[1], self.n), None, []
        for t in range(x.shape[0]):
            s, v = self.lif(self.fc(x[t]) + self.rec(s), v)
            out.append(s)
        return torch.stack(out)


class LoopMLP(nn.Module):
    """The same MLP written snnTorch-style: a Python loop over time with LIF cells."""

    def __init__(self, n_in=12, n_hidden=16, n_out=5, gain=3.0, **kw):
        super().__init__()
        self.gain = gain
        self.fc1, self.lif1 = nn.Linear(n_in, n_hidden), snn.LIFCell(0.85, **kw)
        self.fc2, self.lif2 = nn.Linear(n_hidden, n_out), snn.LIFCell(0.75, **kw)

    def forward(self, x):
        v1 = v2 = None
        spikes = []
        for t in range(x.shape[0]):
            s1, v1 = self.lif1(self.fc1(x[t] * self.gain), v1)
            s2, v2 = self.lif2(self.fc2(s1) * self.gain, v2)
            spikes.append(s2)
        return torch.stack(spikes)


class ConvNet(nn.Module):
    """Multi-step conv net on [T, B, 2, 12, 12], SeqToANN-style flatten/unflatten."""

    def __init__(self, **kw):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.lif1 = snn.LIF(0.8, **kw)
        self.fc = nn.Linear(4 * 6 * 6, 5)
        self.lif2 = snn.LIF(0.8, **kw)

    def forward(self, x):
        T, B = x.shape[:2]
        y = self.pool(self.conv(x.flatten(0, 1) * 2.0)).unflatten(0, (T, B))
        s = self.lif1(y)
        return self.lif2(self.fc(s.flatten(2)) * 3.0)


class LoopConvNet(nn.Module):
    """Per-step loop conv net with cells, a Flatten module and a LI readout cell."""

    def __init__(self, **kw):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.flat = nn.Flatten()
        self.lif1 = snn.LIFCell(0.8, **kw)
        self.fc = nn.Linear(4 * 6 * 6, 5)
        self.out = snn.LICell(0.9)

    def forward(self, x):
        v1 = v2 = None
        mems = []
        for t in range(x.shape[0]):
            s1, v1 = self.lif1(self.pool(self.conv(x[t] * 2.0)), v1)
            m, v2 = self.out(self.fc(self.flat(s1)) * 3.0, v2)
            mems.append(m)
        return torch.stack(mems)


def spikes(shape, p=0.3, seed=None):
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    return (torch.rand(shape, generator=g) < p).float()


def grads_of(model, out, seed=0):
    """Gradients of a fixed random projection of ``out`` w.r.t. every parameter."""
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(out.shape, generator=g).to(out.device)
    model.zero_grad()
    (out * proj).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}
