r"""Seeded Randman generator: random smooth manifolds turned into spike times.

After Zenke & Vogels (2021), "The remarkable robustness of surrogate gradient
learning for instilling complex function in spiking neural networks".

Manifolds
---------
Each class :math:`c` owns a random smooth map
:math:`f_c: [0, 1)^D \to [0, 1]^C` from a :math:`D`-dimensional intrinsic
space to the :math:`C` input channels. Channel :math:`i` of that map is a
product over intrinsic dimensions of random 1-d Fourier series,

.. math::

    g_{c,i}(u) = \prod_{d=1}^{D} \sum_{k=1}^{K}
        a_{c,i,d,k} \, k^{-\alpha} \,
        \sin\!\bigl(2\pi (k \, b_{c,i,d,k} \, u_d + \varphi_{c,i,d,k})\bigr),

with :math:`a, b, \varphi \sim \mathcal{U}[0, 1)` i.i.d. The amplitudes decay
as :math:`k^{-\alpha}`, so a larger smoothness exponent :math:`\alpha` gives
smoother manifolds. The series is cut at the first harmonic whose weight
falls below ``1e-3``: :math:`K = \lceil 10^{3/\alpha} \rceil` (at most 1000).
Each channel is then mapped onto the unit interval,

.. math::

    f_{c,i}(u) = \operatorname{clip}\!\left(
        \frac{g_{c,i}(u) - m_{c,i}}{M_{c,i} - m_{c,i}}, \, 0, \, 1 \right),

where :math:`m_{c,i}` and :math:`M_{c,i}` are the minimum and maximum of
:math:`g_{c,i}` over a fixed reference set of points of :math:`[0, 1)^D`
(a uniform grid for :math:`D = 1`, uniform draws otherwise). The parameters
and the reference set depend on the seed only, so every sample stream of a
seed lies on the same manifolds.

Samples
-------
A sample of class :math:`c` draws :math:`u \sim \mathcal{U}[0, 1)^D` and emits
exactly one spike on every channel :math:`i`, at

.. math::

    t_i = \operatorname{clip}\!\bigl(
        \lfloor f_{c,i}(u) \, T_{\mathrm{dur}} + \sigma \, \epsilon_i \rceil,
        \, 0, \, T_{\mathrm{dur}} - 1 \bigr)
    \quad [\mu s], \qquad \epsilon_i \sim \mathcal{N}(0, 1),

with :math:`T_{\mathrm{dur}}` the sample duration and :math:`\sigma` the
timing jitter. Samples draw from an independent random stream chosen by
``sample_stream``, so streams ``0`` and ``1`` of one seed are disjoint draws
from the same class manifolds.

Events are NumPy structured arrays in tonic's audio layout (fields ``t``
in microseconds, ``x`` the channel, ``p`` = 0), sorted by ``t``.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

EVENT_DTYPE = np.dtype([("t", np.int64), ("x", np.int64), ("p", np.int64)])
"""Structured dtype of one event: time in microseconds, channel, polarity."""

_PRECISION = 1e-3
_MAX_HARMONICS = 1000
_REFERENCE_POINTS = 1024


def n_harmonics(alpha: float) -> int:
    r"""Number of Fourier terms :math:`K = \min(\lceil 10^{3/\alpha} \rceil, 1000)`."""
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    return int(min(np.ceil(_PRECISION ** (-1.0 / alpha)), _MAX_HARMONICS))


def _raw_manifold(u: np.ndarray, params: np.ndarray, alpha: float) -> np.ndarray:
    r"""Evaluate :math:`g_{c,i}(u)` for one class.

    ``u`` has shape ``[N, D]``; ``params`` has shape ``[3, C, D, K]`` holding
    :math:`(a, b, \varphi)`. Returns ``[N, C]``. The sines are taken in
    single precision; this moves a spike time by at most 1 us (rounding).
    """
    amp, freq, phase = params
    k = np.arange(1, amp.shape[-1] + 1, dtype=np.float64)
    weight = amp * k ** (-alpha)  # [C, D, K]
    omega = (2.0 * np.pi * k * freq).astype(np.float32)
    shift = (2.0 * np.pi * phase).astype(np.float32)
    arg = u.astype(np.float32)[:, None, :, None] * omega + shift  # [N, C, D, K]
    series = np.einsum("ncdk,cdk->ncd", np.sin(arg), weight.astype(np.float32))
    return series.astype(np.float64).prod(axis=-1)


def _reference_points(dim: int, rng: np.random.Generator) -> np.ndarray:
    """Points over which each channel's range is measured, shape ``[R, dim]``."""
    if dim == 1:
        return (np.arange(_REFERENCE_POINTS, dtype=np.float64) / _REFERENCE_POINTS)[:, None]
    return rng.random((_REFERENCE_POINTS, dim))


def randman_events(
    n_classes: int = 10,
    n_channels: int = 100,
    samples_per_class: int = 100,
    dim: int = 1,
    alpha: float = 2.0,
    duration_us: int = 50_000,
    seed: int = 0,
    jitter_us: float = 0.0,
    sample_stream: int = 0,
) -> tuple[list[np.ndarray], np.ndarray]:
    r"""Draw a labelled Randman spike data set.

    Parameters
    ----------
    n_classes: number of classes :math:`n`, one manifold each.
    n_channels: number of input channels :math:`C`; every sample spikes once
        on each.
    samples_per_class: samples drawn per class.
    dim: intrinsic manifold dimension :math:`D`.
    alpha: smoothness exponent :math:`\alpha` of the Fourier spectrum.
    duration_us: sample duration :math:`T_{\mathrm{dur}}` in microseconds.
    seed: fixes the manifolds and, with ``sample_stream``, the samples.
    jitter_us: standard deviation :math:`\sigma` of the Gaussian spike-time
        jitter in microseconds.
    sample_stream: index of the independent stream the samples are drawn
        from; the manifolds do not depend on it.

    Returns
    -------
    events: ``n * samples_per_class`` structured arrays of dtype
        :data:`EVENT_DTYPE`, each of length ``C`` and sorted by ``t``.
    labels: ``int64`` array of class indices, aligned with ``events``; the
        sample order is shuffled.
    """
    if min(n_classes, n_channels, samples_per_class, dim, duration_us) < 1:
        raise ValueError("n_classes, n_channels, samples_per_class, dim and duration_us must be >= 1")
    if jitter_us < 0:
        raise ValueError(f"jitter_us must be non-negative, got {jitter_us}")
    if sample_stream < 0:
        raise ValueError(f"sample_stream must be non-negative, got {sample_stream}")

    manifold_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    sample_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, sample_stream)))

    k_max = n_harmonics(alpha)
    params = manifold_rng.random((n_classes, 3, n_channels, dim, k_max))
    reference = _reference_points(dim, manifold_rng)

    channels = np.arange(n_channels, dtype=np.int64)
    events: list[np.ndarray] = []
    labels = np.repeat(np.arange(n_classes, dtype=np.int64), samples_per_class)
    for c in range(n_classes):
        ref = _raw_manifold(reference, params[c], alpha)
        lo, hi = ref.min(axis=0), ref.max(axis=0)
        u = sample_rng.random((samples_per_class, dim))
        pos = np.clip((_raw_manifold(u, params[c], alpha) - lo) / (hi - lo), 0.0, 1.0)
        t = pos * duration_us + jitter_us * sample_rng.standard_normal(pos.shape)
        t = np.clip(np.rint(t), 0, duration_us - 1).astype(np.int64)
        for row in t:
            order = np.argsort(row, kind="stable")
            ev = np.empty(n_channels, dtype=EVENT_DTYPE)
            ev["t"] = row[order]
            ev["x"] = channels[order]
            ev["p"] = 0
            events.append(ev)

    perm = sample_rng.permutation(len(events))
    log.debug(
        "randman: %d classes x %d samples, C=%d, D=%d, alpha=%g, K=%d, jitter=%gus, seed=%d, stream=%d",
        n_classes, samples_per_class, n_channels, dim, alpha, k_max, jitter_us, seed, sample_stream,
    )
    return [events[i] for i in perm], labels[perm]
