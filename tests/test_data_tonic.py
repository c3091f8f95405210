"""Real-data loaders: tiny SHD, N-MNIST and DVS Gesture samples written in their on-disk formats."""

import math
import urllib.request
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import tonic.dataset
from torch.utils.data import SequentialSampler

from snnopt.data import (
    DATASETS,
    CorruptDatasetError,
    DatasetNotFoundError,
    EventFrames,
    dataset_name,
    load_dataset,
    make_dataset_loaders,
    make_loaders,
)

T = 8


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Any download attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("attempted a download")

    monkeypatch.setattr(tonic.dataset.Dataset, "download", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


# --- writers of the real on-disk formats ------------------------------------------------------


def random_camera_events(rng, n, width, height, duration_us):
    """Sorted (x, y, t, p) integer columns of ``n`` random camera events."""
    t = np.sort(rng.integers(0, duration_us, n))
    return rng.integers(0, width, n), rng.integers(0, height, n), t, rng.integers(0, 2, n)


def write_shd(root: Path, split: str, samples):
    """SHD HDF5: ragged spikes/times (s, float16), spikes/units (uint16), labels, extra/."""
    folder = root / "SHD"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"shd_{split}.h5"
    with h5py.File(path, "w") as f:
        times = f.create_dataset("spikes/times", (len(samples),), dtype=h5py.vlen_dtype(np.float16))
        units = f.create_dataset("spikes/units", (len(samples),), dtype=h5py.vlen_dtype(np.uint16))
        for i, (t, u, _) in enumerate(samples):
            times[i] = t
            units[i] = u
        f["labels"] = np.array([label for _, _, label in samples], dtype=np.uint16)
        f["extra/speaker"] = np.zeros(len(samples), dtype=np.uint16)
        f["extra/keys"] = np.array([f"digit-{k}".encode() for k in range(20)])
    return path


def shd_sample(rng, n, label):
    """``n`` spikes at float16-exact times (multiples of 1/1024 s, up to 1 s)."""
    t = np.sort(rng.integers(0, 1024, n)).astype(np.float16) / np.float16(1024)
    return t, rng.integers(0, 700, n).astype(np.uint16), label


def write_nmnist(root: Path, split: str, label: int, name: str, x, y, t, p):
    """One N-MNIST .bin file: 40-bit records x[8] y[8] p[1] t[23], big-endian time stamp."""
    folder = root / "NMNIST" / ("Train" if split == "train" else "Test") / str(label)
    folder.mkdir(parents=True, exist_ok=True)
    t, p = np.asarray(t, np.int64), np.asarray(p, np.int64)
    records = np.stack([x, y, (p << 7) | ((t >> 16) & 0x7F), (t >> 8) & 0xFF, t & 0xFF], axis=1)
    path = folder / f"{name}.bin"
    path.write_bytes(records.astype(np.uint8).tobytes())
    return path


def write_dvsgesture(root: Path, split: str, user: str, label: int, x, y, t_ms, p):
    """One DVS Gesture .npy as tonic's release: [N, 4] integer columns x, y, p, t in ms."""
    folder = root / "DVSGesture" / ("ibmGestureTrain" if split == "train" else "ibmGestureTest") / user
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{label}.npy"
    np.save(path, np.stack([x, y, p, t_ms], axis=1).astype(np.int64))
    return path


def time_frames(t, index, shape, n_steps=T):
    """Reference "time" binning: windows of ceil(span / T) from the first event."""
    width = math.ceil((t.max() - t.min() + 1) / n_steps)
    frames = np.zeros((n_steps, *shape), dtype=np.float32)
    np.add.at(frames, ((t - t.min()) // width, *index), 1)
    return torch.from_numpy(frames)


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def shd_root(tmp_path):
    rng = np.random.default_rng(0)
    train = [shd_sample(rng, n, label) for n, label in ((40, 3), (25, 0), (60, 19), (30, 7))]
    test = [shd_sample(rng, n, label) for n, label in ((20, 1), (35, 12))]
    write_shd(tmp_path, "train", train)
    write_shd(tmp_path, "test", test)
    return tmp_path, train


@pytest.fixture
def nmnist_root(tmp_path):
    rng = np.random.default_rng(1)
    written = []
    for split, label, name, n in (("train", 0, "00002", 50), ("train", 3, "00010", 80),
                                  ("train", 7, "00001", 30), ("test", 5, "00004", 40)):
        events = random_camera_events(rng, n, 34, 34, 300_000)
        write_nmnist(tmp_path, split, label, name, *events)
        if split == "train":
            written.append((label, events))
    return tmp_path, written


@pytest.fixture
def dvs_root(tmp_path):
    rng = np.random.default_rng(2)
    written = []
    for split, user, label, n in (("train", "user01_fluorescent", 0, 200), ("train", "user01_fluorescent", 4, 150),
                                  ("train", "user02_led", 10, 120), ("test", "user24_led", 2, 90)):
        x, y, t_ms, p = random_camera_events(rng, n, 128, 128, 6_000)
        write_dvsgesture(tmp_path, split, user, label, x, y, t_ms, p)
        if split == "train":
            written.append((label, (x, y, t_ms * 1000, p)))
    return tmp_path, written


# --- frames of each data set ----------------------------------------------------------------


def test_shd_frames_count_every_spike(shd_root):
    root, written = shd_root
    ds = load_dataset("shd", root, n_steps=T)
    assert len(ds) == len(written)
    assert (ds.n_classes, ds.sensor_size, ds.frame_shape) == (20, (700, 1, 1), (700,))
    for (times, units, label), (frames, got_label) in zip(written, ds):
        assert got_label == label
        assert frames.shape == (T, 700) and frames.dtype == torch.float32
        t_us = (times.astype(np.float64) * 1e6).astype(np.int64)
        assert torch.equal(frames, time_frames(t_us, (units.astype(np.int64),), (700,)))
        np.testing.assert_array_equal(frames.sum(0).numpy(), np.bincount(units, minlength=700))


def test_nmnist_frames_count_events_per_polarity(nmnist_root):
    root, written = nmnist_root
    ds = load_dataset("nmnist", root, n_steps=T)
    assert (ds.n_classes, ds.sensor_size, ds.frame_shape) == (10, (34, 34, 2), (2, 34, 34))
    assert sorted(ds.labels.tolist()) == sorted(label for label, _ in written)
    by_label = dict(written)
    for frames, label in ds:
        x, y, t, p = by_label[label]
        assert frames.shape == (T, 2, 34, 34)
        assert frames.sum(dim=(0, 2, 3)).tolist() == [np.sum(p == 0), np.sum(p == 1)]
        assert torch.equal(frames, time_frames(t, (p, y, x), (2, 34, 34)))
    assert len(load_dataset("nmnist", root, split="test", n_steps=T)) == 1


def test_dvsgesture_frames_and_downsampling(dvs_root):
    root, written = dvs_root
    ds = load_dataset("dvsgesture", root, n_steps=T)
    small = load_dataset("dvsgesture", root, n_steps=T, downsample=4)
    assert (ds.n_classes, ds.sensor_size, ds.frame_shape) == (11, (128, 128, 2), (2, 128, 128))
    assert (small.sensor_size, small.frame_shape) == ((32, 32, 2), (2, 32, 32))
    assert ds.labels.tolist() == [0, 4, 10]
    for i, (label, (x, y, t_us, p)) in enumerate(written):
        frames, got_label = ds[i]
        assert got_label == label and frames.shape == (T, 2, 128, 128)
        assert frames.sum(dim=(0, 2, 3)).tolist() == [np.sum(p == 0), np.sum(p == 1)]
        assert torch.equal(frames, time_frames(t_us, (p, y, x), (2, 128, 128)))
        assert torch.equal(small[i][0], time_frames(t_us, (p, y // 4, x // 4), (2, 32, 32)))


def test_count_and_window_binning(nmnist_root):
    root, written = nmnist_root
    t = dict(written)[3][2]
    n_events = len(t)
    index = load_dataset("nmnist", root).labels.tolist().index(3)
    by_count = load_dataset("nmnist", root, n_steps=T, binning="count")[index][0]
    assert by_count.sum(dim=(1, 2, 3)).tolist() == [n_events // T] * T
    window = 10_000
    by_window = load_dataset("nmnist", root, n_steps=T, binning="window", window_us=window)[index][0]
    bins = (t - t.min()) // window
    assert by_window.sum(dim=(1, 2, 3)).tolist() == np.bincount(bins[bins < T], minlength=T).tolist()


def test_denoise_drops_isolated_events(tmp_path):
    # Adjacent pixels 100 us apart keep the second event; an isolated event is dropped.
    write_nmnist(tmp_path, "train", 1, "00001", x=[5, 6, 20], y=[5, 5, 20], t=[20_000, 20_100, 30_000], p=[1, 1, 0])
    plain = load_dataset("nmnist", tmp_path, n_steps=4)[0][0]
    denoised = load_dataset("nmnist", tmp_path, n_steps=4, denoise_us=1_000)[0][0]
    assert plain.sum() == 3
    assert denoised.sum() == 1 and denoised[:, 1, 5, 6].sum() == 1


def test_empty_recording_gives_empty_frames(tmp_path):
    write_nmnist(tmp_path, "train", 2, "00001", x=[], y=[], t=[], p=[])
    frames, label = load_dataset("nmnist", tmp_path, n_steps=3)[0]
    assert label == 2 and frames.shape == (3, 2, 34, 34) and frames.sum() == 0


# --- loaders ----------------------------------------------------------------------------------


def test_loaders_give_seeded_time_major_batches(shd_root):
    root, written = shd_root
    train, test = make_dataset_loaders("shd", root, batch_size=3, n_steps=T, seed=5)
    batches = list(train)
    x, y = batches[0]
    assert x.shape == (T, 3, 700) and x.dtype == torch.float32 and x.is_contiguous()
    assert y.shape == (3,) and y.dtype == torch.int64
    order = [label for _, ys in batches for label in ys.tolist()]
    assert sorted(order) == sorted(label for _, _, label in written)
    again, _ = make_dataset_loaders("shd", root, batch_size=3, n_steps=T, seed=5)
    assert [label for _, ys in again for label in ys.tolist()] == order
    assert [ys.tolist() for _, ys in test] == [[1, 12]]


def test_loaders_use_sampler_factory_on_camera_data(nmnist_root):
    root, _ = nmnist_root
    seen = []

    def sampler(dataset):
        seen.append(dataset)
        return SequentialSampler(dataset)

    train, test = make_dataset_loaders("N-MNIST", root, batch_size=2, n_steps=T, sampler=sampler)
    assert len(seen) == 1 and seen[0] is train.dataset
    x, y = next(iter(train))
    assert x.shape == (T, 2, 2, 34, 34)
    assert y.tolist() == seen[0].labels[:2].tolist()
    assert next(iter(test))[0].shape == (T, 1, 2, 34, 34)


def test_embedded_delegates_to_embedded_loaders():
    kwargs = dict(n_classes=3, n_channels=12, n_train_per_class=4, n_test_per_class=2)
    ours = make_dataset_loaders("embedded", batch_size=5, n_steps=6, seed=3, **kwargs)
    reference = make_loaders(batch_size=5, n_steps=6, seed=3, **kwargs)
    for loader, ref in zip(ours, reference):
        for (x, y), (x_ref, y_ref) in zip(loader, ref, strict=True):
            assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("shd", ["SHD", "shd_train.h5", "https://zenkelab.org/datasets/shd_train.h5"]),
        ("nmnist", ["NMNIST", "Train", "<digit>", "*.bin", "https://"]),
        ("dvsgesture", ["DVSGesture", "ibmGestureTrain", "<label>.npy", "https://figshare.com/"]),
    ],
)
def test_missing_folder_says_what_goes_where(tmp_path, name, expected):
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, root)
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert str(root) in message and "does not exist" in message
    for part in expected:
        assert part in message


def test_missing_test_split_is_reported(tmp_path):
    rng = np.random.default_rng(3)
    write_shd(tmp_path, "train", [shd_sample(rng, 10, 0)])
    with pytest.raises(DatasetNotFoundError, match="shd_test.h5"):
        make_dataset_loaders("shd", tmp_path, batch_size=2, n_steps=T)


def _truncate(path: Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize("damage", ["garbage", "truncated", "no_labels"])
def test_corrupt_shd_file_is_named(tmp_path, damage):
    path = write_shd(tmp_path, "train", [shd_sample(np.random.default_rng(4), 50, 2)])
    if damage == "garbage":
        path.write_bytes(b"not an hdf5 file" * 64)
    elif damage == "truncated":
        _truncate(path)
    else:
        with h5py.File(path, "a") as f:
            del f["labels"]
    with pytest.raises(CorruptDatasetError, match="shd_train.h5"):
        load_dataset("shd", tmp_path)


@pytest.mark.parametrize("damage", ["partial_record", "off_sensor"])
def test_corrupt_nmnist_file_is_named(tmp_path, damage):
    path = write_nmnist(tmp_path, "train", 4, "00007", x=[1, 2], y=[3, 4], t=[10, 20], p=[0, 1])
    if damage == "partial_record":
        path.write_bytes(path.read_bytes() + b"\x01\x02")
    else:
        path.write_bytes(bytes([200, 3, 0, 0, 10]))
    ds = load_dataset("nmnist", tmp_path)
    with pytest.raises(CorruptDatasetError, match="00007.bin"):
        ds[0]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "three_columns", "bad_polarity"])
def test_corrupt_dvsgesture_file_is_named(tmp_path, damage):
    path = write_dvsgesture(tmp_path, "train", "user03_natural", 6, [1, 2], [3, 4], [5, 6], [0, 1])
    if damage == "garbage":
        path.write_bytes(b"\x00garbage" * 20)
    elif damage == "truncated":
        _truncate(path)
    elif damage == "three_columns":
        np.save(path, np.zeros((5, 3), dtype=np.int64))
    else:
        np.save(path, np.array([[1, 2, 7, 5]], dtype=np.int64))
    ds = load_dataset("dvsgesture", tmp_path)
    with pytest.raises(CorruptDatasetError, match=r"user03_natural.6\.npy"):
        ds[0]


def test_text_in_a_dvsgesture_file_is_not_a_recording(tmp_path):
    path = write_dvsgesture(tmp_path, "train", "user03_natural", 6, [1, 2], [3, 4], [5, 6], [0, 1])
    path.write_text("x y p t\n1 2 0 5\n")
    ds = load_dataset("dvsgesture", tmp_path)
    with pytest.raises(CorruptDatasetError) as info:
        ds[0]
    message = str(info.value)
    assert message.startswith(f"{path}: not a DVS Gesture recording") and "pickle" not in message


def test_dvsgesture_file_name_must_be_a_label(tmp_path):
    folder = tmp_path / "DVSGesture" / "ibmGestureTrain" / "user01_led"
    folder.mkdir(parents=True)
    np.save(folder / "wave.npy", np.zeros((1, 4), dtype=np.int64))
    with pytest.raises(CorruptDatasetError, match="wave.npy"):
        load_dataset("dvsgesture", tmp_path)


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown data set 'mnist'") as info:
        load_dataset("mnist")
    for name in DATASETS:
        assert name in str(info.value)
    assert dataset_name("DVS_Gesture") == "dvsgesture" and dataset_name("N-MNIST") == "nmnist"


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (dict(binning="spikes"), ValueError),
        (dict(binning="window"), ValueError),
        (dict(window_us=100), ValueError),
        (dict(downsample=3), ValueError),
        (dict(split="valid"), ValueError),
        (dict(colour=True), TypeError),
    ],
)
def test_bad_options_are_rejected(nmnist_root, options, error):
    root, _ = nmnist_root
    with pytest.raises(error):
        load_dataset("nmnist", root, **options)


def test_denoise_is_for_cameras_only():
    with pytest.raises(ValueError, match="denoise_us"):
        EventFrames((700, 1, 1), denoise_us=1_000)
