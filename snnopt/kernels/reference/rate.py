"""Plain-torch reference of the rate pass (rate-based backprop, Yu et al. 2024).

RateNeuron: the rate pass replaces a neuron by its spike-pass firing rate ``r`` with
Jacobian ``diag(e)`` (``e`` the eligibility) w.r.t. the time-averaged input ``x_bar``:
value ``r``, ``d out / d x_bar = e``.

RateBN: with spike-pass statistics ``mu``, ``var`` (over T*B and spatial dims) and
``sd = sqrt(var + eps)``, ``x_hat = (x - mu) / sd``:

    y      = gamma * x_hat + beta
    dx     = gamma / sd * (g - mean_R(g) - x_hat * mean_R(g * x_hat))
    dgamma = sum_R g * x_hat,   dbeta = sum_R g

with ``R`` every dimension but the channel (dim 1): the batch-norm backward evaluated
at the spike-pass statistics.
"""

from __future__ import annotations

import torch


def rate_neuron(x_bar: torch.Tensor, rate: torch.Tensor, elig: torch.Tensor) -> torch.Tensor:
    """Value ``rate``; gradient ``elig * grad`` to ``x_bar``."""
    lin = x_bar * elig
    return rate + (lin - lin.detach())


def _channel_view(t, x):
    return t.reshape((1, -1) + (1,) * (x.dim() - 2))


def rate_batch_norm(x, mean, var, weight, bias, eps):
    y = (x - _channel_view(mean, x)) / torch.sqrt(_channel_view(var, x) + eps)
    if weight is not None:
        y = y * _channel_view(weight, x)
    if bias is not None:
        y = y + _channel_view(bias, x)
    return y


def rate_batch_norm_backward(g, x, mean, var, weight, eps):
    dims = [d for d in range(x.dim()) if d != 1]
    sd = torch.sqrt(_channel_view(var, x) + eps)
    x_hat = (x - _channel_view(mean, x)) / sd
    gamma = 1.0 if weight is None else _channel_view(weight, x)
    gx = gamma / sd * (g - g.mean(dims, keepdim=True) - x_hat * (g * x_hat).mean(dims, keepdim=True))
    gw = (g * x_hat).sum(dims)
    gb = g.sum(dims)
    return gx, gw, gb
