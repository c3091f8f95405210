"""Training app: ``snnopt train`` and ``torchrun --nproc_per_node N -m snnopt.train``.

:class:`TrainConfig` names a dataset (the embedded default, or SHD / N-MNIST / DVS Gesture
from a local folder), a model (presets ``mlp`` / ``conv`` or ``FILE.py:FUNCTION``), a
backward mode and the optimisation; :func:`train` compiles the model with
:func:`snnopt.compile`, trains it with Adam and cross-entropy on the time-averaged logits,
and writes ``metrics.json``, PNG plots and an atomic checkpoint every epoch; ``resume``
continues from the checkpoint with results identical to an uninterrupted run.  Under
``torchrun`` the ranks train data-parallel (:mod:`snnopt.train.distributed`).
"""

from .cli import main
from .loop import Trainer, TrainConfig, train

__all__ = ["TrainConfig", "Trainer", "train", "main"]
