import numpy as np
import pytest
import torch

from snnopt.data import (
    EVENT_DTYPE,
    SPLITS,
    EmbeddedSpikes,
    collate_time_major,
    make_loaders,
    n_harmonics,
    randman_events,
)


@pytest.fixture(scope="module")
def train():
    return EmbeddedSpikes("train")


@pytest.fixture(scope="module")
def test():
    return EmbeddedSpikes("test")


def _nearest_centroid_accuracy(fit: EmbeddedSpikes, evaluate: EmbeddedSpikes) -> float:
    x_fit = fit.frames.reshape(len(fit), -1).numpy()
    centroids = np.stack([x_fit[fit.labels == c].mean(axis=0) for c in range(fit.n_classes)])
    x_eval = evaluate.frames.reshape(len(evaluate), -1).numpy()
    dist = ((x_eval[:, None, :] - centroids[None]) ** 2).sum(axis=-1)
    return float((dist.argmin(axis=1) == evaluate.labels).mean())


def _same_events(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_randman_is_deterministic_per_seed():
    kw = dict(n_classes=3, n_channels=20, samples_per_class=5, jitter_us=500.0)
    ev_a, y_a = randman_events(seed=7, **kw)
    ev_b, y_b = randman_events(seed=7, **kw)
    ev_c, _ = randman_events(seed=8, **kw)
    assert _same_events(ev_a, ev_b)
    np.testing.assert_array_equal(y_a, y_b)
    assert not _same_events(ev_a, ev_c)


def test_embedded_is_deterministic_per_seed(train):
    again = EmbeddedSpikes("train")
    other = EmbeddedSpikes("train", seed=1)
    assert torch.equal(train.frames, again.frames)
    np.testing.assert_array_equal(train.labels, again.labels)
    assert not torch.equal(train.frames, other.frames)


def test_events_are_sorted_tonic_audio_arrays():
    n_channels, duration = 30, 20_000
    events, labels = randman_events(
        n_classes=4, n_channels=n_channels, samples_per_class=6, duration_us=duration, jitter_us=3_000.0
    )
    assert len(events) == len(labels) == 24
    for ev in events:
        assert ev.dtype == EVENT_DTYPE
        assert ev.dtype.names == ("t", "x", "p")
        assert all(ev.dtype[name] == np.int64 for name in ev.dtype.names)
        assert np.all(np.diff(ev["t"]) >= 0)
        assert ev["t"].min() >= 0 and ev["t"].max() < duration
        np.testing.assert_array_equal(np.sort(ev["x"]), np.arange(n_channels))
        assert np.all(ev["p"] == 0)


def test_harmonic_cutoff():
    assert n_harmonics(2.0) == 32
    assert n_harmonics(1.0) == 1000
    with pytest.raises(ValueError):
        n_harmonics(0.0)


def test_frames_shape_and_counts(train):
    assert len(train) == 1000
    frames, label = train[0]
    assert frames.shape == (train.n_steps, 100) == (50, 100)
    assert frames.dtype == torch.float32
    assert isinstance(label, int)
    assert train.sensor_size == (100, 1, 1)
    counts = train.frames.sum(dim=(1, 2)).numpy()
    np.testing.assert_array_equal(counts, [len(ev) for ev in train.events])


def test_frames_bin_spike_times_from_zero(train):
    width = 50_000 / train.n_steps
    for i in range(5):
        ev = train.events[i]
        expected = np.zeros((train.n_steps, 100), dtype=np.float32)
        np.add.at(expected, ((ev["t"] // width).astype(int), ev["x"]), 1.0)
        np.testing.assert_array_equal(train.frames[i].numpy(), expected)


@pytest.mark.parametrize("n_steps", [7, 30, 64])
def test_frames_keep_every_event_for_any_step_count(n_steps):
    ds = EmbeddedSpikes("test", n_steps=n_steps, n_classes=2, n_channels=16, n_test_per_class=5)
    assert ds.frames.shape == (10, n_steps, 16)
    np.testing.assert_array_equal(ds.frames.sum(dim=(1, 2)).numpy(), 16)


def test_labels_balanced_and_in_range(train, test):
    for ds, per_class in ((train, 100), (test, 40)):
        assert ds.labels.dtype == np.int64
        assert ds.labels.min() >= 0 and ds.labels.max() < ds.n_classes
        np.testing.assert_array_equal(np.bincount(ds.labels, minlength=ds.n_classes), per_class)
        assert len(set(ds.labels[:20].tolist())) > 1  # classes are interleaved


def test_splits_are_disjoint_draws(train, test):
    train_keys = {ev.tobytes() for ev in train.events}
    assert not any(ev.tobytes() in train_keys for ev in test.events)


def test_splits_share_manifolds(train, test):
    accuracy = _nearest_centroid_accuracy(train, test)
    assert accuracy > 0.5  # chance is 0.1
    foreign = EmbeddedSpikes("test", seed=1)
    assert _nearest_centroid_accuracy(train, foreign) < 0.3


def test_activity_is_one_bin_per_channel(train):
    active = (train.frames > 0).float().mean(dim=(0, 1))  # per channel
    assert torch.allclose(active, torch.full_like(active, 1 / train.n_steps), atol=2e-3)
    assert abs(active.mean().item() - 0.02) < 1e-3


def test_collate_time_major(train):
    x, y = collate_time_major([train[i] for i in range(8)])
    assert x.shape == (50, 8, 100)
    assert x.dtype == torch.float32 and x.is_contiguous()
    assert y.dtype == torch.int64 and y.shape == (8,)
    assert torch.equal(x[:, 3], train.frames[3])
    assert y.tolist() == train.labels[:8].tolist()


def test_make_loaders():
    train_loader, test_loader = make_loaders(batch_size=32, n_steps=20, n_classes=4, n_channels=24)
    x, y = next(iter(train_loader))
    assert x.shape == (20, 32, 24) and y.shape == (32,)
    again, _ = make_loaders(batch_size=32, n_steps=20, n_classes=4, n_channels=24)
    assert torch.equal(next(iter(again))[1], y)
    assert y.tolist() != train_loader.dataset.labels[:32].tolist()
    x_test, y_test = next(iter(test_loader))
    assert x_test.shape == (20, 32, 24)
    assert y_test.tolist() == test_loader.dataset.labels[:32].tolist()


def test_bad_split_raises():
    with pytest.raises(ValueError, match="train.*test"):
        EmbeddedSpikes("validation")
    assert SPLITS == ("train", "test")
