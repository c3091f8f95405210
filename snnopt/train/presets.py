"""Model presets for ``snnopt train`` and loading a user's model factory.

A model takes time-major input ``[T, B, *shape]`` and returns logits ``[B, classes]``
(or ``[T, B, classes]``, averaged over time by the trainer).

``mlp``   Linear -> LIF -> Linear -> LIF -> Linear -> LI readout, logits = mean of the
          readout membrane over time (the input is flattened per step).
``conv``  two blocks Conv2d(3x3) -> AvgPool2d(2) -> LIF, then Linear -> LI readout; for
          channels-first frames ``(C, H, W)`` with ``H, W >= 4``.
``FILE.py:FUNCTION``  ``FUNCTION(input_shape, n_classes)`` (or ``FUNCTION()`` when it takes
          no arguments) returning an ``nn.Module``.

``input_shape`` is the shape of one sample's frame, ``x.shape[2:]`` of the batches: ``(700,)``
for SHD, ``(2, 34, 34)`` for N-MNIST.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..loader import call_factory, load_factory
from ..nn import LI, LIF

PRESETS = ("mlp", "conv")

CONV_MIN_SIZE = 4
"""Smallest frame height and width the conv preset takes: its two 2x2 poolings halve them twice."""


class InputShapeError(ValueError):
    """A preset cannot take frames of the given shape; the message says which shapes it takes."""


class SpikingMLP(nn.Module):
    """Two LIF hidden layers and a leaky-integrator readout on time-major ``[T, B, ...]`` input
    (features flattened per step); returns logits ``[B, classes]``, the readout membrane
    averaged over time."""

    def __init__(self, n_in: int, hidden: int, n_out: int, beta: float = 0.9):
        super().__init__()
        self.fc1, self.lif1 = nn.Linear(n_in, hidden), LIF(beta=beta)
        self.fc2, self.lif2 = nn.Linear(hidden, hidden), LIF(beta=beta)
        self.fc3, self.readout = nn.Linear(hidden, n_out), LI(beta=beta)

    def forward(self, x):
        if x.dim() > 3:
            x = x.flatten(2)
        s1 = self.lif1(self.fc1(x))
        s2 = self.lif2(self.fc2(s1))
        return self.readout(self.fc3(s2)).mean(0)


class ConvNet(nn.Module):
    """Conv(3x3) -> AvgPool(2) -> LIF, twice, then Linear -> LI readout (time-averaged)."""

    def __init__(self, in_shape: tuple, n_classes: int, channels: tuple = (16, 32), beta: float = 0.9):
        super().__init__()
        c, h, w = in_shape
        self.conv1, self.pool1, self.lif1 = nn.Conv2d(c, channels[0], 3, padding=1), nn.AvgPool2d(2), LIF(beta=beta)
        self.conv2, self.pool2, self.lif2 = (nn.Conv2d(channels[0], channels[1], 3, padding=1), nn.AvgPool2d(2),
                                             LIF(beta=beta))
        self.fc, self.readout = nn.Linear(channels[1] * (h // 4) * (w // 4), n_classes), LI(beta=beta)

    def forward(self, x):
        T, B = x.shape[:2]
        s = self.lif1(self.pool1(self.conv1(x.flatten(0, 1))).unflatten(0, (T, B)))
        s = self.lif2(self.pool2(self.conv2(s.flatten(0, 1))).unflatten(0, (T, B)))
        return self.readout(self.fc(s.flatten(2))).mean(0)


WEIGHT_GAINS = (8.0, 4.0)
"""Factors on the default (uniform, fan-in scaled) weights of the MLP's ``fc1`` and ``fc2``.
With the default initialisation the embedded Randman input (each channel spikes once in T
steps) drives the hidden layers to firing rates near 0.4% and 0.04%, so almost no membrane
comes near the threshold: the sparse gradient band is nearly empty and the rates carry no
signal.  With these gains the initial rates are about 8% and 11% (seed 0)."""

CONV_WEIGHT_GAINS = (8.0, 6.0)
"""The same for the conv preset's ``conv1`` and ``conv2``: on binary frames of 2 x 34 x 34
with 5% of the pixels active per step (N-MNIST binned into some 30 frames), the default
initialisation fires 0.4% and 0% of the neurons; these gains fire about 3% and 6% (seed 0)."""


def build_model(spec: str, input_shape: tuple, n_classes: int, seed: int, hidden: int = 128) -> nn.Module:
    """The model named by ``spec`` (a preset or ``FILE.py:FUNCTION``) for frames of shape
    ``input_shape`` (one sample, one step), initialised from ``seed``.

    Raises :class:`InputShapeError` when a preset cannot take ``input_shape`` and
    ``ValueError`` when the factory cannot be loaded, called or fails."""
    torch.manual_seed(seed)
    input_shape = tuple(input_shape)
    if spec == "mlp":
        model = SpikingMLP(math.prod(input_shape), hidden, n_classes)
        with torch.no_grad():
            model.fc1.weight.mul_(WEIGHT_GAINS[0])
            model.fc2.weight.mul_(WEIGHT_GAINS[1])
        return model
    if spec == "conv":
        if len(input_shape) != 3 or min(input_shape[1:]) < CONV_MIN_SIZE:
            raise InputShapeError(f"the conv preset takes channels-first frames (C, H, W) with H and W at least "
                                  f"{CONV_MIN_SIZE}; these frames have shape {input_shape}")
        model = ConvNet(input_shape, n_classes)
        with torch.no_grad():
            model.conv1.weight.mul_(CONV_WEIGHT_GAINS[0])
            model.conv2.weight.mul_(CONV_WEIGHT_GAINS[1])
        return model
    if ":" not in spec and not spec.endswith(".py"):
        raise ValueError(f"unknown model preset {spec!r}; choose one of {', '.join(PRESETS)} or give FILE.py:FUNCTION")
    return call_factory(spec, load_factory(spec), input_shape, n_classes)
