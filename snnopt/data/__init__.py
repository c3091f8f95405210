"""Embedded default data set: seeded Randman spike trains, binned into frames."""

from snnopt.data.embedded import SPLITS, EmbeddedSpikes, collate_time_major, make_loaders
from snnopt.data.randman import EVENT_DTYPE, n_harmonics, randman_events

__all__ = [
    "EVENT_DTYPE",
    "SPLITS",
    "EmbeddedSpikes",
    "collate_time_major",
    "make_loaders",
    "n_harmonics",
    "randman_events",
]
