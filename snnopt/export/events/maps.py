"""Sparse linear maps: the synapses of a synaptic node as entries ``(out, inp, value)``,
and their composition along a chain of nodes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import network as N


def _csr(rows: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(perm, start)``: ``rows[perm]`` is sorted (stably) and row ``r``'s entries are
    ``perm[start[r]:start[r + 1]]``."""
    perm = torch.sort(rows, stable=True).indices
    start = torch.zeros(n_rows + 1, dtype=torch.long)
    start[1:] = torch.cumsum(torch.bincount(rows, minlength=n_rows), 0)
    return perm, start


def _fan_out(start: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All entries of the listed rows of a row-sorted list: ``(which, pos)``, entry ``pos[k]``
    belonging to ``rows[which[k]]``, in the order of ``rows`` then of the list."""
    first = start[rows]
    counts = start[rows + 1] - first
    begins = torch.cumsum(counts, 0) - counts  # where each row's entries begin in the output
    total = int(counts.sum())
    # ``which`` steps from one listed row to the next at that row's beginning: a cumulative sum
    # of the steps (rows without entries are stepped over)
    listed = torch.arange(len(rows))[counts > 0]
    steps = torch.zeros(total, dtype=torch.long)
    steps[begins[listed]] = torch.diff(listed, prepend=listed.new_zeros(1))
    which = torch.cumsum(steps, 0)
    return which, first[which] + torch.arange(total) - begins[which]


@dataclass
class _Map:
    """A sparse linear map ``y = M x``, ``M: [n_out, n_in]``, as entries ``(out, inp, value)``
    (float64; explicit zeros stay, so a layer's synapses are its structure)."""

    out: torch.Tensor
    inp: torch.Tensor
    value: torch.Tensor
    n_out: int
    n_in: int

    @classmethod
    def identity(cls, n: int) -> "_Map":
        idx = torch.arange(n)
        return cls(idx, idx, torch.ones(n, dtype=torch.float64), n, n)

    @classmethod
    def dense(cls, weight: torch.Tensor) -> "_Map":
        n_out, n_in = weight.shape
        out, inp = torch.meshgrid(torch.arange(n_out), torch.arange(n_in), indexing="ij")
        return cls(out.reshape(-1), inp.reshape(-1), weight.detach().reshape(-1).double(), n_out, n_in)

    @classmethod
    def diagonal(cls, scale: torch.Tensor) -> "_Map":
        idx = torch.arange(scale.numel())
        return cls(idx, idx, scale.detach().reshape(-1).double(), scale.numel(), scale.numel())

    def then(self, op: "_Map") -> "_Map":
        """``op @ self``: every entry ``(m, i, a)`` of ``self`` joins every entry ``(o, m, b)``
        of ``op`` into ``(o, i, b * a)``; equal ``(o, i)`` are summed."""
        perm, start = _csr(op.inp, op.n_in)
        which, pos = _fan_out(start, self.out)
        k = perm[pos]
        return _Map(op.out[k], self.inp[which], op.value[k] * self.value[which], op.n_out, self.n_in).coalesced()

    def plus(self, other: "_Map") -> "_Map":
        return _Map(torch.cat([self.out, other.out]), torch.cat([self.inp, other.inp]),
                    torch.cat([self.value, other.value]), self.n_out, self.n_in).coalesced()

    def coalesced(self) -> "_Map":
        """Equal ``(out, inp)`` summed, entries sorted by ``(out, inp)``."""
        keys, inverse = torch.unique(self.out * self.n_in + self.inp, return_inverse=True)
        value = torch.zeros(len(keys), dtype=torch.float64).index_add_(0, inverse, self.value)
        return _Map(keys // self.n_in, keys % self.n_in, value, self.n_out, self.n_in)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``M x`` for a dense vector ``x``."""
        return torch.zeros(self.n_out, dtype=torch.float64).index_add_(0, self.out, self.value * x[self.inp])


def _conv_map(node: N.Conv, in_shape: tuple, out_shape: tuple) -> _Map:
    """The synapses of a convolution: output ``(co, oy, ox)`` reads input ``(ci, oy*s - p +
    ky*d, ...)`` with weight ``w[co, ci mod group size, ky, kx]`` where that is inside the
    input (zero padding has no synapse).  A 1-d convolution is a 2-d one of height 1."""
    w = node.weight.detach().double()
    stride, padding, dilation = node.stride, node.padding, node.dilation
    if node.dims == 1:
        w, in_shape, out_shape = w[:, :, None, :], (in_shape[0], 1, in_shape[1]), (out_shape[0], 1, out_shape[1])
        stride, padding, dilation = (1, *stride), (0, *padding), (1, *dilation)
    c_out, c_in_group, kh, kw = w.shape
    _, h, wd = in_shape
    _, ho, wo = out_shape
    co, cg, ky, kx, oy, ox = torch.meshgrid(*(torch.arange(n) for n in (c_out, c_in_group, kh, kw, ho, wo)),
                                            indexing="ij")
    iy = oy * stride[0] - padding[0] + ky * dilation[0]
    ix = ox * stride[1] - padding[1] + kx * dilation[1]
    ci = (co // (c_out // node.groups)) * c_in_group + cg
    keep = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < wd)
    return _Map(((co * ho + oy) * wo + ox)[keep], ((ci * h + iy) * wd + ix)[keep], w[co, cg, ky, kx][keep],
                c_out * ho * wo, in_shape[0] * h * wd).coalesced()


def _pool_map(node: N.Pool, in_shape: tuple, out_shape: tuple) -> _Map:
    """Sum pooling (weight 1) or average pooling (weight ``1 / (kh * kw)``, padding counted)."""
    c, h, wd = in_shape
    _, ho, wo = out_shape
    (kh, kw), (sy, sx), (py, px) = node.kernel_size, node.stride, node.padding
    ch, ky, kx, oy, ox = torch.meshgrid(*(torch.arange(n) for n in (c, kh, kw, ho, wo)), indexing="ij")
    iy, ix = oy * sy - py + ky, ox * sx - px + kx
    keep = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < wd)
    out, inp = ((ch * ho + oy) * wo + ox)[keep], ((ch * h + iy) * wd + ix)[keep]
    value = torch.full((len(out),), 1.0 if node.mode == "sum" else 1.0 / (kh * kw), dtype=torch.float64)
    return _Map(out, inp, value, c * ho * wo, c * h * wd).coalesced()


def _operator(node: N.Node, in_shape: tuple, out_shape: tuple) -> _Map | None:
    """The linear part of a synaptic node (``None``: the identity, a Flatten)."""
    if isinstance(node, N.Affine):
        return _Map.dense(node.weight)
    if isinstance(node, N.Conv):
        return _conv_map(node, in_shape, out_shape)
    if isinstance(node, N.Pool):
        return _pool_map(node, in_shape, out_shape)
    if isinstance(node, N.Scale):
        return _Map.diagonal(node.scale)
    return None


def _own_bias(node: N.Node, out_shape: tuple) -> torch.Tensor | None:
    """The constant a synaptic node adds to its output (flattened), if any."""
    bias = getattr(node, "bias", None)
    if bias is None:
        return None
    bias = bias.detach().double()
    if isinstance(node, N.Conv):
        bias = bias.repeat_interleave(math.prod(out_shape[1:]))
    return bias
