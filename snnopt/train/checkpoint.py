"""Checkpoints written atomically: a crash while saving never leaves a partial file."""

from __future__ import annotations

import os
from pathlib import Path

import torch

CHECKPOINT = "checkpoint.pt"


def save(path: Path, state: dict) -> None:
    """Write ``state`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load(path: Path) -> dict:
    """The state saved at ``path``; a damaged file raises ``ValueError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no checkpoint to resume from at {str(path)!r}; run without --resume to start training")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"checkpoint {str(path)!r} cannot be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or "epoch" not in state:
        raise ValueError(f"{str(path)!r} is not an snnopt training checkpoint")
    return state
