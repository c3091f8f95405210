"""Train one small spiking MLP in each backward mode and compare them.

The network (the ``mlp`` preset of :mod:`snnopt.train`: ``Linear(C, h) -> LIF ->
Linear(h, h) -> LIF -> Linear(h, 10) -> LI``, logits = readout membrane averaged over
time) is trained on the embedded Randman data set with the training loop of
:mod:`snnopt.train` (cross-entropy, Adam), once per mode, every run starting from the
same initial weights and seeing the batches in the same order.  :func:`run_demo` returns one
row of measurements per mode and :func:`format_table` renders them with the ratios against
the dense mode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .report import CompileReport
from .train import Trainer, TrainConfig

MODES = ("dense", "sparse", "rate")


def _train_mode(mode: str, common: dict, on_compile: Callable[[str, CompileReport], None] | None) -> dict:
    trainer = Trainer(TrainConfig(mode=mode, out=None, measure=True, **common))
    if on_compile is not None:
        on_compile(mode, trainer.report)
    history = trainer.run()
    active = [sum(h["active_fraction"].values()) / len(h["active_fraction"]) for h in history
              if h["active_fraction"]]
    return {
        "mode": mode,
        "compiled_mode": trainer.report.mode,
        "test_acc": history[-1]["test_acc"],
        "final_loss": history[-1]["last_loss"],
        "epoch_s": sum(h["epoch_s"] for h in history) / len(history),
        "backward_s": sum(h["backward_s"] for h in history) / len(history),
        "saved_bytes": max(h["saved_bytes"] for h in history),
        "active_fraction": sum(active) / len(active) if active else None,
    }


def run_demo(epochs: int = 8, batch_size: int = 64, seed: int = 0, modes: Sequence[str] = MODES, hidden: int = 128,
             lr: float = 1e-2, band: float = 0.05, progress: bool = True, n_steps: int = 50,
             dataset_kwargs: dict | None = None,
             on_compile: Callable[[str, CompileReport], None] | None = None) -> list[dict]:
    """Train the demo network in each of ``modes`` and measure it.

    Every mode starts from the same initial weights (``seed``) and sees the training
    batches in the same order (the training loop of :mod:`snnopt.train`).  Each row holds:

    ``mode``             the requested mode
    ``compiled_mode``    the mode the compiler used (``"rate -> dense"`` if it fell back)
    ``test_acc``         test accuracy after the last epoch (eval mode, no gradients)
    ``final_loss``       training loss of the last batch
    ``epoch_s``          wall time of a training epoch (forward, backward, optimizer
                         step), mean over epochs; evaluation is not included
    ``backward_s``       wall time of ``loss.backward()`` alone, mean over steps
    ``saved_bytes``      most bytes autograd saved for backward in one training forward
                         (:class:`~snnopt.profiling.SavedTensorMeter`), max over steps
    ``active_fraction``  sparse mode: fraction of neuron states inside the gradient band
                         (``CompileReport.active_fraction``), mean over layers and over
                         training steps (``None`` for the other modes)

    ``on_compile(mode, report)`` is called with each mode's compile report before it
    trains.  ``dataset_kwargs`` go to the embedded data set (:class:`snnopt.data.EmbeddedSpikes`).
    """
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    common = dict(dataset="embedded", model="mlp", epochs=epochs, batch_size=batch_size, lr=lr, steps=n_steps,
                  hidden=hidden, band=band, seed=seed, progress=progress, data_options=dict(dataset_kwargs or {}))
    return [_train_mode(mode, common, on_compile) for mode in modes]


def _ratio(num: float, den: float) -> str:
    return f"{num / den:.2f}" if den > 0 else "-"


def format_table(rows: Sequence[dict]) -> str:
    """The rows of :func:`run_demo` as a text table; ``x`` columns compare with the dense row
    (time: dense / mode, so > 1 is faster; memory: mode / dense, so < 1 saves memory)."""
    dense = next((r for r in rows if r["compiled_mode"] == "dense"), None)
    header = ["mode", "test acc", "s/epoch", "backward ms/step", "saved MiB/step", "active %", "epoch x",
              "backward x", "memory x"]
    body = []
    for r in rows:
        active = r.get("active_fraction")
        cells = [r["compiled_mode"], f"{r['test_acc']:.1%}", f"{r['epoch_s']:.2f}", f"{r['backward_s'] * 1e3:.1f}",
                 f"{r['saved_bytes'] / 2**20:.2f}", "-" if active is None else f"{active:.2%}"]
        if dense is None:
            cells += ["-", "-", "-"]
        else:
            cells += [_ratio(dense["epoch_s"], r["epoch_s"]), _ratio(dense["backward_s"], r["backward_s"]),
                      _ratio(r["saved_bytes"], dense["saved_bytes"])]
        body.append(cells)
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]

    def line(cells):
        return " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(header), rule] + [line(c) for c in body])
