"""Data sets: the embedded Randman default and tonic's SHD, N-MNIST and DVS Gesture read from disk."""

from snnopt.data.embedded import SPLITS, EmbeddedSpikes, collate_time_major, make_loaders
from snnopt.data.randman import EVENT_DTYPE, n_harmonics, randman_events
from snnopt.data.tonic_sets import (
    BINNINGS,
    DATASETS,
    CorruptDatasetError,
    DatasetNotFoundError,
    EventFrameDataset,
    EventFrames,
    dataset_name,
    load_dataset,
    make_dataset_loaders,
)

__all__ = [
    "BINNINGS",
    "DATASETS",
    "EVENT_DTYPE",
    "SPLITS",
    "CorruptDatasetError",
    "DatasetNotFoundError",
    "EmbeddedSpikes",
    "EventFrameDataset",
    "EventFrames",
    "collate_time_major",
    "dataset_name",
    "load_dataset",
    "make_dataset_loaders",
    "make_loaders",
    "n_harmonics",
    "randman_events",
]
