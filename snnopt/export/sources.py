"""The model ``snnopt export SOURCE`` names: ``FILE.py:FUNCTION`` returning an ``nn.Module``,
called as ``FUNCTION(input_shape, n_classes)`` when its signature accepts that (as
``snnopt train`` calls it), else as ``FUNCTION()``; ``--weights`` is a
``state_dict`` saved with ``torch.save`` or a checkpoint of ``snnopt train`` (its ``"model"``
entry).  Every problem raises ``ValueError`` with a message that says what to change."""

from __future__ import annotations

import torch
from torch import nn


def load_source(source: str, *, input_shape: tuple, n_classes: int | None = None, weights=None) -> nn.Module:
    """The model of ``FILE.py:FUNCTION`` ``source`` for a step input of ``input_shape``,
    with the parameters in the file ``weights`` when given."""
    from ..loader import call_factory, factory_arguments, load_factory
    from ..train.presets import PRESETS

    if source in PRESETS:
        raise ValueError(f"{source!r} is a training preset of snnopt train: its forward returns logits [B, classes] "
                         "averaged over time, which no export format holds. Write FILE.py:FUNCTION building the "
                         "same layers and returning the readout sequence [T, B, classes], and pass the checkpoint "
                         "with --weights")
    factory, shape = load_factory(source), tuple(input_shape)
    if factory_arguments(factory, shape, 0) and n_classes is None:
        raise ValueError(f"{source} takes (input_shape, n_classes), as snnopt train calls it: pass --n-classes N")
    model = call_factory(source, factory, shape, n_classes)
    if weights is not None:
        load_weights(model, weights)
    return model


def load_weights(model: nn.Module, path) -> None:
    """Load the ``state_dict`` in ``path`` (or the ``"model"`` entry of an ``snnopt train``
    checkpoint) into ``model``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many kinds of error on a damaged or foreign file
        raise ValueError(f"--weights {str(path)!r} cannot be read ({type(exc).__name__}: {exc}); give a state_dict "
                         "saved with torch.save(model.state_dict(), path) or an snnopt train checkpoint") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a checkpoint such as snnopt train's checkpoint.pt
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"--weights {str(path)!r} holds a {type(state).__name__}, not a state_dict; save one with "
                         "torch.save(model.state_dict(), path) or give an snnopt train checkpoint")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"--weights {str(path)!r} does not fit the model: {exc}") from None
