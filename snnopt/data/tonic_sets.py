r"""Real event data sets read from a local folder: SHD, N-MNIST and DVS Gesture.

Nothing is ever downloaded. ``root`` is the folder that tonic itself uses as
``save_to``: each data set lives in a sub-folder named after tonic's class,
laid out as tonic leaves it after download and extraction.

SHD (Spiking Heidelberg Digits, 700 cochlea channels, 20 classes)::

    <root>/SHD/shd_train.h5
    <root>/SHD/shd_test.h5

One HDF5 file per split with the ragged datasets ``spikes/times`` (seconds)
and ``spikes/units`` (channel 0-699), and ``labels``. Download
https://zenkelab.org/datasets/shd_train.h5.gz and ``shd_test.h5.gz`` and
gunzip them there (tonic's ``shd_train.h5.zip`` / ``shd_test.h5.zip`` from
the same address unzip to the same files).

N-MNIST (34 x 34 ATIS camera, 2 polarities, 10 classes)::

    <root>/NMNIST/Train/<digit>/<id>.bin
    <root>/NMNIST/Test/<digit>/<id>.bin

One binary file per sample, 5 bytes per event (x, y, polarity bit and a
23-bit microsecond time stamp, with overflow records at ``y = 240``). Unzip
``train.zip`` and ``test.zip`` from https://www.garrickorchard.com/datasets/n-mnist
(tonic's mirror:
https://data.mendeley.com/public-files/datasets/468j46mzdv/files/39c25547-014b-4137-a934-9d29fa53c7a0/file_downloaded
and .../05a4d654-7e03-4c15-bdfa-9bb2bcbea494/file_downloaded) in ``<root>/NMNIST``.

DVS Gesture (128 x 128 DVS camera, 2 polarities, 11 classes), tonic's
preprocessed release, one recording cut into one file per gesture::

    <root>/DVSGesture/ibmGestureTrain/user<NN>_<lighting>/<label>.npy
    <root>/DVSGesture/ibmGestureTest/user<NN>_<lighting>/<label>.npy

Each ``.npy`` holds an ``[N, 4]`` array of ``(x, y, polarity, t)`` with ``t``
in milliseconds; the file name is the label 0-10. Download
https://figshare.com/ndownloader/files/38022171 (``ibmGestureTrain.tar.gz``)
and https://figshare.com/ndownloader/files/38020584 (``ibmGestureTest.tar.gz``)
and extract them in ``<root>/DVSGesture``. The original IBM ``.aedat``
release is not read.

tonic's dataset classes download whenever their archive is missing or the
folder holds fewer files than the full set, so the files are read here with
tonic's readers (:func:`tonic.io.read_mnist_file`,
:func:`tonic.io.make_structured_array`, h5py for SHD) into tonic's structured
event arrays, and turned into frames by :class:`EventFrames`.

Frames
------
With :math:`T` = ``n_steps`` and events at times :math:`t_1 \le \dots \le t_N`
(microseconds), :class:`tonic.transforms.ToFrame` counts events per frame,
polarity and pixel (or channel). Three binnings give exactly :math:`T` frames:

``"time"`` (default)
    windows of width :math:`\Delta = \lceil (t_N - t_1 + 1) / T \rceil` from
    :math:`t_1`; every event lands in exactly one frame.
``"count"``
    tonic's event bins: frame :math:`s` holds events
    :math:`s K + 1, \dots, (s + 1) K` with :math:`K = \lfloor N / T \rfloor`;
    the last :math:`N - T K` events are dropped.
``"window"``
    windows of a fixed ``window_us`` from :math:`t_1`; events after
    :math:`t_1 + T \cdot` ``window_us`` are dropped, short recordings end in
    empty frames.

Optional event transforms run before binning: tonic's ``Denoise`` (camera
data only) drops events with no neighbouring event within ``denoise_us``;
``Downsample`` divides the pixel (or channel) coordinates by ``downsample``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tonic.datasets import NMNIST, SHD, DVSGesture
from tonic.io import make_structured_array, read_mnist_file
from tonic.transforms import Compose, Denoise, Downsample, ToFrame

from snnopt.data.embedded import SPLITS, EmbeddedSpikes, collate_time_major

log = logging.getLogger(__name__)

DATASETS = ("embedded", "shd", "nmnist", "dvsgesture")
"""Names accepted by :func:`load_dataset` and :func:`make_dataset_loaders`."""

BINNINGS = ("time", "count", "window")
"""Allowed values of ``EventFrames(binning=...)``."""

DEFAULT_ROOT = Path("data")
"""Data folder used when ``root`` is ``None``."""

_FRAME_OPTIONS = ("binning", "window_us", "denoise_us", "downsample")


class DatasetNotFoundError(FileNotFoundError):
    """The data folder or the files of a data set are missing; the message says what goes where."""


class CorruptDatasetError(ValueError):
    """A data set file cannot be read or holds invalid records; the message names the file."""


@dataclass
class EventFrames:
    """Turn a tonic structured event array into a ``float32`` tensor ``[n_steps, *frame_shape]``.

    Parameters
    ----------
    sensor_size: tonic's ``(width, height, polarities)`` of the recorded events.
    n_steps: number of frames :math:`T`.
    binning: ``"time"``, ``"count"`` or ``"window"`` (see the module docstring).
    window_us: frame width in microseconds; required by, and only used with, ``"window"``.
    denoise_us: if set, tonic ``Denoise(filter_time=denoise_us)`` runs first (2-d sensors only).
    downsample: integer factor dividing the spatial coordinates; must divide the sensor size.
    """

    sensor_size: tuple[int, int, int]
    n_steps: int = 50
    binning: str = "time"
    window_us: int | None = None
    denoise_us: float | None = None
    downsample: int = 1
    _prepare: Compose = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {self.n_steps}")
        if self.binning not in BINNINGS:
            raise ValueError(f"binning must be one of {BINNINGS}, got {self.binning!r}")
        if (self.binning == "window") != (self.window_us is not None):
            raise ValueError("window_us is required by binning='window' and only used there")
        if self.window_us is not None and (int(self.window_us) != self.window_us or self.window_us < 1):
            raise ValueError(f"window_us must be a positive whole number of microseconds, got {self.window_us}")
        width, height, _ = self.sensor_size
        if self.denoise_us is not None and height == 1:
            raise ValueError("denoise_us needs camera events with x and y (nmnist, dvsgesture)")
        spatial = [n for n in (width, height) if n > 1]
        if self.downsample < 1 or any(n % self.downsample for n in spatial):
            raise ValueError(
                f"downsample must be a positive divisor of the sensor size {spatial}, got {self.downsample}"
            )
        steps = []
        if self.denoise_us is not None:
            steps.append(Denoise(filter_time=self.denoise_us))
        if self.downsample > 1:
            steps.append(Downsample(spatial_factor=1.0 / self.downsample))
        self._prepare = Compose(steps)

    @property
    def out_sensor_size(self) -> tuple[int, int, int]:
        """Sensor size ``(width, height, polarities)`` after downsampling."""
        width, height, polarities = self.sensor_size
        return width // self.downsample, max(height // self.downsample, 1), polarities

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """Shape of one frame: ``(channels,)`` for 1-polarity audio, else ``(P, W)`` or ``(P, H, W)``."""
        width, height, polarities = self.out_sensor_size
        if height > 1:
            return polarities, height, width
        return (width,) if polarities == 1 else (polarities, width)

    def __call__(self, events: np.ndarray) -> torch.Tensor:
        events = self._prepare(events)
        if len(events) == 0:
            return torch.zeros(self.n_steps, *self.frame_shape)
        frames = self._to_frame(events["t"])(events)
        if len(frames) != self.n_steps:
            raise RuntimeError(f"ToFrame returned {len(frames)} frames, expected {self.n_steps}")
        return torch.from_numpy(frames.reshape(self.n_steps, *self.frame_shape).astype(np.float32))

    def _to_frame(self, t: np.ndarray) -> ToFrame:
        """The ToFrame for one recording whose sorted time stamps are ``t``."""
        sensor = self.out_sensor_size
        if self.binning == "count":
            return ToFrame(sensor_size=sensor, n_event_bins=self.n_steps)
        if self.binning == "window":
            width = int(self.window_us)
        else:
            width = math.ceil((int(t[-1]) - int(t[0]) + 1) / self.n_steps)
        start = int(t[0])
        # Half a window past the last boundary makes tonic count exactly n_steps windows.
        end = start + self.n_steps * width + width / 2
        return ToFrame(sensor_size=sensor, time_window=width, start_time=start, end_time=end)


class EventFrameDataset(Dataset):
    """Labelled event recordings served as ``(frames, label)`` items.

    ``frames`` is the ``float32`` tensor ``[n_steps, *frame_shape]`` of
    ``to_frames(read_events(source))``; recordings are read on access.

    Parameters
    ----------
    name: data set name, for logs and messages.
    split: ``"train"`` or ``"test"``.
    sources: one entry per recording (a file path, or in-memory arrays).
    labels: class index of each recording.
    read_events: maps a source to tonic's structured event array, sorted by time.
    to_frames: the :class:`EventFrames` binning.
    n_classes: number of classes.
    """

    def __init__(
        self,
        name: str,
        split: str,
        sources: Sequence[Any],
        labels: Sequence[int],
        read_events: Callable[[Any], np.ndarray],
        to_frames: EventFrames,
        n_classes: int,
    ) -> None:
        if len(sources) != len(labels):
            raise ValueError(f"{len(sources)} sources but {len(labels)} labels")
        self.name = name
        self.split = split
        self.sources = list(sources)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.read_events = read_events
        self.to_frames = to_frames
        self.n_classes = n_classes
        self.n_steps = to_frames.n_steps
        self.sensor_size = to_frames.out_sensor_size
        self.frame_shape = to_frames.frame_shape
        log.info(
            "%s(%s): %d samples, %d classes, T=%d, frame %s",
            name, split, len(self.labels), n_classes, self.n_steps, self.frame_shape,
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        events = self.read_events(self.sources[index])
        return self.to_frames(events), int(self.labels[index])


def _sorted_by_time(events: np.ndarray) -> np.ndarray:
    """``events`` in time order (stable), without a copy when already sorted."""
    if np.all(np.diff(events["t"]) >= 0):
        return events
    return events[np.argsort(events["t"], kind="stable")]


def _check_range(path: Path | str, what: str, values: np.ndarray, high: float) -> None:
    """Raise :class:`CorruptDatasetError` naming ``path`` unless all ``values`` are finite and in ``[0, high)``."""
    if len(values) and not (np.isfinite(values).all() and values.min() >= 0 and values.max() < high):
        raise CorruptDatasetError(
            f"{path}: invalid record, {what} spans [{values.min()}, {values.max()}], outside [0, {high})"
        )


def _dataset_dir(root: str | Path | None, folder: str) -> Path:
    """The folder of one data set: tonic's class name under ``root``."""
    return Path(DEFAULT_ROOT if root is None else root).expanduser() / folder


def _missing(what: str, base: Path, expected: str, download: str) -> DatasetNotFoundError:
    """The error for a missing data set: which files are expected where, and where to get them."""
    where = f"folder {base} does not exist" if not base.exists() else "files are missing"
    return DatasetNotFoundError(f"{what} not found ({where}): expected {expected}. {download}")


# --- SHD -------------------------------------------------------------------------------------

_SHD_CLASSES = 20


def _shd_events(sample: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """tonic's SHD events (``t`` in microseconds, ``x`` = channel, ``p`` = 1) of one recording."""
    times, units = sample
    events = make_structured_array(times.astype(np.float64) * 1e6, units, 1, dtype=SHD.dtype)
    return _sorted_by_time(events)


def _read_shd_file(path: Path) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """All ``(times, units)`` recordings and the labels of one SHD HDF5 file."""
    try:
        with h5py.File(path, "r") as f:
            times = f["spikes/times"][()]
            units = f["spikes/units"][()]
            labels = np.asarray(f["labels"][()])
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise CorruptDatasetError(
            f"{path}: cannot read the SHD HDF5 file (needs datasets spikes/times, spikes/units, labels): {err}"
        ) from err
    shapes = [np.shape(a) for a in (times, units, labels)]
    if any(len(shape) != 1 for shape in shapes) or len(set(shapes)) != 1:
        raise CorruptDatasetError(
            f"{path}: spikes/times, spikes/units and labels must be 1-d with one entry per sample, "
            f"got shapes {shapes}"
        )
    if labels.dtype.kind not in "iu":
        raise CorruptDatasetError(f"{path}: labels must be integers, got {labels.dtype}")
    _check_range(path, "labels", labels, _SHD_CLASSES)
    samples = []
    for index, (t, u) in enumerate(zip(times, units)):
        t, u = np.asarray(t), np.asarray(u)
        if t.shape != u.shape or t.ndim != 1:
            raise CorruptDatasetError(f"{path}: sample {index} has {t.shape} spike times but {u.shape} units")
        _check_range(path, f"sample {index} units", u, SHD.sensor_size[0])
        _check_range(path, f"sample {index} times", t, np.inf)
        samples.append((t, u))
    return samples, labels


def _load_shd(root: str | Path | None, split: str, to_frames: EventFrames) -> EventFrameDataset:
    """SHD split from ``<root>/SHD/shd_<split>.h5``, held in memory."""
    base = _dataset_dir(root, "SHD")
    path = base / f"shd_{split}.h5"
    if not path.is_file():
        raise _missing(
            f"SHD {split} split",
            base,
            f"the HDF5 file {path}",
            f"Download https://zenkelab.org/datasets/shd_{split}.h5.gz and gunzip it there "
            f"(or unzip tonic's {SHD.base_url}shd_{split}.h5.zip there).",
        )
    samples, labels = _read_shd_file(path)
    return EventFrameDataset("SHD", split, samples, labels, _shd_events, to_frames, _SHD_CLASSES)


# --- N-MNIST ---------------------------------------------------------------------------------

_NMNIST_RECORD_BYTES = 5


def _nmnist_events(path: Path) -> np.ndarray:
    """tonic's N-MNIST events (``x, y, t, p``) of one ``.bin`` file."""
    try:
        size = path.stat().st_size
        if size % _NMNIST_RECORD_BYTES:
            raise CorruptDatasetError(
                f"{path}: {size} bytes is not a whole number of {_NMNIST_RECORD_BYTES}-byte N-MNIST event records"
            )
        events = read_mnist_file(str(path), dtype=NMNIST.dtype)
    except OSError as err:
        raise CorruptDatasetError(f"{path}: cannot read the N-MNIST event file: {err}") from err
    width, height, _ = NMNIST.sensor_size
    _check_range(path, "x", events["x"], width)
    _check_range(path, "y", events["y"], height)
    return _sorted_by_time(events)


def _load_nmnist(root: str | Path | None, split: str, to_frames: EventFrames) -> EventFrameDataset:
    """N-MNIST split from ``<root>/NMNIST/{Train,Test}/<digit>/*.bin``, read on access."""
    base = _dataset_dir(root, "NMNIST")
    folder = NMNIST.train_folder if split == "train" else NMNIST.test_folder
    files = sorted((base / folder).glob("[0-9]/*.bin"))
    if not files:
        url, archive = (NMNIST.train_url, NMNIST.train_filename) if split == "train" else (
            NMNIST.test_url, NMNIST.test_filename)
        raise _missing(
            f"N-MNIST {split} split",
            base,
            f"event files {base / folder}/<digit>/*.bin with <digit> in 0-9",
            f"Download {archive} from {url} (see https://www.garrickorchard.com/datasets/n-mnist) "
            f"and unzip it in {base} so that it creates {folder}/.",
        )
    missing = sorted({str(d) for d in range(10)} - {f.parent.name for f in files})
    if missing:
        log.warning("N-MNIST %s: no samples for digits %s under %s", split, ", ".join(missing), base / folder)
    labels = [int(f.parent.name) for f in files]
    return EventFrameDataset("N-MNIST", split, files, labels, _nmnist_events, to_frames, len(NMNIST.classes))


# --- DVS Gesture -----------------------------------------------------------------------------

_DVS_COLUMNS = 4  # x, y, polarity, t [ms]
_NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file


def _load_npy(path: Path) -> np.ndarray:
    """The array in the ``.npy`` file ``path``; :class:`CorruptDatasetError` naming it when the
    file is not a ``.npy`` file (text, say) or cannot be read."""
    try:
        with open(path, "rb") as f:
            is_npy = f.read(len(_NPY_MAGIC)) == _NPY_MAGIC
        if is_npy:
            return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise CorruptDatasetError(f"{path}: cannot read the DVS Gesture .npy file: {err}") from err
    raise CorruptDatasetError(
        f"{path}: not a DVS Gesture recording (not a NumPy .npy file: it lacks the .npy header); "
        f"extract it again from tonic's ibmGestureTrain.tar.gz / ibmGestureTest.tar.gz"
    )


def _dvsgesture_events(path: Path) -> np.ndarray:
    """tonic's DVS Gesture events (``x, y, p, t`` with ``t`` in microseconds) of one ``.npy`` file."""
    raw = _load_npy(path)
    if raw.ndim != 2 or raw.shape[1] != _DVS_COLUMNS or raw.dtype.kind not in "iufb":
        raise CorruptDatasetError(
            f"{path}: invalid event record, expected a numeric [N, 4] array of (x, y, p, t_ms), "
            f"got {raw.dtype} {raw.shape}"
        )
    x, y, p, t_ms = raw.T
    width, height, polarities = DVSGesture.sensor_size
    for what, values, high in (("x", x, width), ("y", y, height), ("p", p, polarities), ("t", t_ms, np.inf)):
        _check_range(path, what, values, high)
    events = make_structured_array(x, y, p, np.rint(t_ms * 1000.0), dtype=DVSGesture.dtype)
    return _sorted_by_time(events)


def _dvsgesture_label(path: Path) -> int:
    """The label of a DVS Gesture file, its name ``<label>.npy``."""
    n_classes = len(DVSGesture.classes)
    if not path.stem.isdigit() or int(path.stem) >= n_classes:
        raise CorruptDatasetError(f"{path}: DVS Gesture file names must be the label 0-{n_classes - 1}")
    return int(path.stem)


def _load_dvsgesture(root: str | Path | None, split: str, to_frames: EventFrames) -> EventFrameDataset:
    """DVS Gesture split from ``<root>/DVSGesture/ibmGesture{Train,Test}/*/<label>.npy``, read on access."""
    base = _dataset_dir(root, "DVSGesture")
    folder = "ibmGestureTrain" if split == "train" else "ibmGestureTest"
    files = sorted((base / folder).glob("*/*.npy"))
    if not files:
        url, archive = (DVSGesture.train_url, DVSGesture.train_filename) if split == "train" else (
            DVSGesture.test_url, DVSGesture.test_filename)
        raise _missing(
            f"DVS Gesture {split} split",
            base,
            f"event files {base / folder}/user<NN>_<lighting>/<label>.npy",
            f"Download {archive} from {url} and extract it in {base} so that it creates {folder}/.",
        )
    labels = [_dvsgesture_label(f) for f in files]
    return EventFrameDataset(
        "DVSGesture", split, files, labels, _dvsgesture_events, to_frames, len(DVSGesture.classes)
    )


# --- public API ------------------------------------------------------------------------------

_LOADERS = {
    "shd": (_load_shd, SHD.sensor_size),
    "nmnist": (_load_nmnist, NMNIST.sensor_size),
    "dvsgesture": (_load_dvsgesture, DVSGesture.sensor_size),
}


def dataset_name(name: str) -> str:
    """Canonical data set name: case, ``-`` and ``_`` are ignored (``"N-MNIST"`` -> ``"nmnist"``)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    return key


def load_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    split: str = "train",
    n_steps: int = 50,
    seed: int = 0,
    **options: Any,
) -> Dataset:
    """One split of a data set as ``(frames [n_steps, *frame_shape], label)`` items.

    Parameters
    ----------
    name: one of :data:`DATASETS`.
    root: tonic's data folder holding ``SHD/``, ``NMNIST/`` or ``DVSGesture/``
        (default :data:`DEFAULT_ROOT`); unused by ``"embedded"``.
    split: ``"train"`` or ``"test"``.
    n_steps: number of frames :math:`T`.
    seed: seed of the embedded data set; the real data sets are not random.
    options: for the real data sets the :class:`EventFrames` options
        ``binning``, ``window_us``, ``denoise_us``, ``downsample``; for
        ``"embedded"`` the keyword arguments of :class:`EmbeddedSpikes`.

    The result has ``sensor_size``, ``n_classes`` and ``labels`` attributes.
    Raises :class:`DatasetNotFoundError` if the files are missing and
    :class:`CorruptDatasetError` if one cannot be read.
    """
    key = dataset_name(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if key == "embedded":
        return EmbeddedSpikes(split, n_steps=n_steps, seed=seed, **options)
    unknown = sorted(set(options) - set(_FRAME_OPTIONS))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for data set {key!r}; allowed: {', '.join(_FRAME_OPTIONS)}")
    load, sensor_size = _LOADERS[key]
    return load(root, split, EventFrames(sensor_size, n_steps=n_steps, **options))


def make_dataset_loaders(
    name: str,
    root: str | Path | None = None,
    *,
    batch_size: int = 64,
    n_steps: int = 50,
    seed: int = 0,
    sampler: Callable[[Dataset], Sampler] | None = None,
    num_workers: int = 0,
    **options: Any,
) -> tuple[DataLoader, DataLoader]:
    """Train and test loaders with time-major batches ``x [T, B, *frame_shape]``, ``y [B]``.

    Without ``sampler`` the train loader reshuffles each epoch from a
    ``torch.Generator`` seeded with ``seed`` (for ``"embedded"`` the same
    batches as :func:`snnopt.data.make_loaders`). ``sampler`` is a factory
    called with the train data set, e.g.
    ``lambda ds: DistributedSampler(ds, seed=seed)``. The test loader keeps
    the data set order. ``options`` go to :func:`load_dataset`.
    """
    train = load_dataset(name, root, split="train", n_steps=n_steps, seed=seed, **options)
    test = load_dataset(name, root, split="test", n_steps=n_steps, seed=seed, **options)
    generator = torch.Generator().manual_seed(seed)
    common = dict(batch_size=batch_size, collate_fn=collate_time_major, num_workers=num_workers)
    if sampler is None:
        train_loader = DataLoader(train, shuffle=True, generator=generator, **common)
    else:
        train_loader = DataLoader(train, sampler=sampler(train), generator=generator, **common)
    test_loader = DataLoader(test, shuffle=False, **common)
    return train_loader, test_loader
