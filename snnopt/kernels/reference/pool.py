"""Plain-torch reference of average pooling without padding, applied to every plane of
``x [..., H, W]`` (any number of leading dims: ``[T, B, C, H, W]`` or ``[T x B, C, H, W]``):

    y[..., p, q]  = mean_{i < kh, j < kw} x[..., p sh + i, q sw + j]
    dx[..., u, v] = sum over the windows (p, q) holding (u, v) of g[..., p, q] / (kh kw)

``torch.nn.functional.avg_pool2d`` with ``padding=0, ceil_mode=False`` and its ATen backward."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pooled_size(size, kernel, stride) -> list[int]:
    """``[Ho, Wo]`` of planes ``size = (H, W)``."""
    return [(n - k) // s + 1 for n, k, s in zip(size, kernel, stride)]


def avg_pool(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    planes = x.reshape(-1, *x.shape[-2:])
    y = F.avg_pool2d(planes, list(kernel), list(stride))
    return y.reshape(*x.shape[:-2], *y.shape[-2:])


def avg_pool_backward(g: torch.Tensor, size, kernel, stride) -> torch.Tensor:
    """``dL/dx`` (planes of ``size = (H, W)``) from ``g = dL/dy``."""
    planes = g.reshape(-1, *g.shape[-2:])
    like = planes.new_empty(planes.shape[0], *size)
    dx = torch.ops.aten.avg_pool2d_backward(planes, like, list(kernel), list(stride), [0, 0], False, True, None)
    return dx.reshape(*g.shape[:-2], *size)
