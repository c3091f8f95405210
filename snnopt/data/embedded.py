r"""Embedded default data set: Randman spikes binned into frames, no download.

A sample is the event list of :func:`snnopt.data.randman.randman_events`
(one spike per channel in :math:`[0, T_{\mathrm{dur}})`), binned with
:class:`tonic.transforms.ToFrame` into :math:`T` = ``n_steps`` windows of
width :math:`\Delta = T_{\mathrm{dur}} / T` anchored at time 0:

.. math::

    X_{s,i} = \#\{\text{events } (t, i) : s \Delta \le t < (s + 1) \Delta\},
    \qquad s = 0, \dots, T - 1,

so every event lands in exactly one bin and :math:`\sum_{s,i} X_{s,i}` is the
number of events. Each channel spikes once, hence a channel is active in a
fraction :math:`1 / T` of the bins.

The train and test splits share the class manifolds (same ``seed``) and draw
their samples from independent random streams (stream 0 and 1).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tonic.transforms import ToFrame

from snnopt.data.randman import randman_events

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
"""Allowed values of ``EmbeddedSpikes(split=...)``; the index is the sample stream."""


class EmbeddedSpikes(Dataset):
    r"""Randman spike classification task held in memory.

    Items are ``(frames, label)``: ``frames`` is a ``float32`` tensor
    ``[n_steps, n_channels]`` of spike counts :math:`X_{s,i}`, ``label`` an
    ``int`` in ``[0, n_classes)``. All frames are computed once at
    construction.

    Parameters
    ----------
    split: ``"train"`` or ``"test"``.
    n_steps: number of time bins :math:`T`.
    n_classes: number of classes (manifolds).
    n_channels: number of input channels :math:`C`.
    n_train_per_class, n_test_per_class: samples per class in each split.
    seed: fixes the manifolds and both sample streams.
    dim: intrinsic manifold dimension :math:`D`.
    alpha: Fourier smoothness exponent :math:`\alpha`; smaller is rougher.
    jitter_us: spike-time jitter :math:`\sigma` in microseconds.
    duration_us: sample duration :math:`T_{\mathrm{dur}}` in microseconds.
    """

    def __init__(
        self,
        split: str = "train",
        n_steps: int = 50,
        n_classes: int = 10,
        n_channels: int = 100,
        n_train_per_class: int = 100,
        n_test_per_class: int = 40,
        seed: int = 0,
        dim: int = 1,
        alpha: float = 2.0,
        jitter_us: float = 2_500.0,
        duration_us: int = 50_000,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        self.split = split
        self.n_steps = n_steps
        self.n_classes = n_classes
        self.sensor_size = (n_channels, 1, 1)
        per_class = n_train_per_class if split == "train" else n_test_per_class
        self.events, self.labels = randman_events(
            n_classes=n_classes,
            n_channels=n_channels,
            samples_per_class=per_class,
            dim=dim,
            alpha=alpha,
            duration_us=duration_us,
            seed=seed,
            jitter_us=jitter_us,
            sample_stream=SPLITS.index(split),
        )
        # Windows of width duration/T from t = 0; the half-window past the end
        # makes tonic's floor((end - start - width) / width) + 1 exactly T
        # windows under floating-point rounding.
        width = duration_us / n_steps
        to_frame = ToFrame(
            sensor_size=self.sensor_size,
            time_window=width,
            start_time=0,
            end_time=duration_us + width / 2,
        )
        frames = np.stack([to_frame(ev) for ev in self.events])  # [N, T, P=1, C]
        if frames.shape[1:] != (n_steps, 1, n_channels):
            raise RuntimeError(f"ToFrame returned frames of shape {frames.shape[1:]}")
        self.frames = torch.from_numpy(frames.reshape(len(self.events), n_steps, n_channels).astype(np.float32))
        log.info(
            "EmbeddedSpikes(%s): %d samples, %d classes, T=%d, C=%d",
            split, len(self.labels), n_classes, n_steps, n_channels,
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.frames[index], int(self.labels[index])


def collate_time_major(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(frames [T, C], label)`` items into ``x [T, B, C]`` (float32, contiguous) and ``y [B]`` (int64)."""
    frames, labels = zip(*batch)
    x = torch.stack(frames, dim=1).to(torch.float32).contiguous()
    y = torch.as_tensor(labels, dtype=torch.int64)
    return x, y


def make_loaders(
    batch_size: int = 64, n_steps: int = 50, seed: int = 0, **dataset_kwargs
) -> tuple[DataLoader, DataLoader]:
    """Train and test loaders over :class:`EmbeddedSpikes` with time-major batches.

    The train loader reshuffles each epoch from a ``torch.Generator`` seeded
    with ``seed``; the test loader keeps the data set order. Extra keyword
    arguments go to :class:`EmbeddedSpikes`.
    """
    train = EmbeddedSpikes("train", n_steps=n_steps, seed=seed, **dataset_kwargs)
    test = EmbeddedSpikes("test", n_steps=n_steps, seed=seed, **dataset_kwargs)
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(
        train, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate_time_major
    )
    test_loader = DataLoader(test, batch_size=batch_size, shuffle=False, collate_fn=collate_time_major)
    return train_loader, test_loader
