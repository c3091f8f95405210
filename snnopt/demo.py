"""Train one small spiking MLP in each backward mode and compare them.

The network (``Linear(C, h) -> LIF -> Linear(h, h) -> LIF -> Linear(h, 10) -> LI``,
logits = readout membrane averaged over time) is trained on the embedded Randman
data set (:func:`snnopt.data.make_loaders`) with cross-entropy and Adam, once per mode,
every run starting from the same initial weights and seeing the batches in the same
order.  :func:`run_demo` returns one row of measurements per mode and
:func:`format_table` renders them with the ratios against the dense mode.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import compile as snn_compile
from .data import make_loaders
from .nn import LI, LIF
from .profiling import SavedTensorMeter
from .report import CompileReport

log = logging.getLogger(__name__)

MODES = ("dense", "sparse", "rate")


class SpikingMLP(nn.Module):
    """Two LIF hidden layers and a leaky-integrator readout on time-major ``[T, B, C]`` input;
    returns logits ``[B, classes]``, the readout membrane averaged over time."""

    def __init__(self, n_in: int, hidden: int, n_out: int, beta: float = 0.9):
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.lif1 = LIF(beta=beta)
        self.fc2 = nn.Linear(hidden, hidden)
        self.lif2 = LIF(beta=beta)
        self.fc3 = nn.Linear(hidden, n_out)
        self.readout = LI(beta=beta)

    def forward(self, x):
        s1 = self.lif1(self.fc1(x))
        s2 = self.lif2(self.fc2(s1))
        return self.readout(self.fc3(s2)).mean(0)


WEIGHT_GAINS = (8.0, 4.0)
"""Factors on the default (uniform, fan-in scaled) weights of ``fc1`` and ``fc2``.  With the
default initialisation the Randman input (each channel spikes once in T steps) drives
the hidden layers to firing rates near 0.4% and 0.04%, so almost no membrane comes near
the threshold: the sparse gradient band is nearly empty and the rates carry no signal.
With these gains the initial rates are about 8% and 11% (seed 0)."""


def build_model(n_in: int, hidden: int, n_out: int, seed: int,
                weight_gains: tuple[float, float] = WEIGHT_GAINS) -> SpikingMLP:
    """A :class:`SpikingMLP` initialised from ``seed``: PyTorch's default initialisation with
    the weights of ``fc1`` and ``fc2`` multiplied by ``weight_gains``."""
    torch.manual_seed(seed)
    model = SpikingMLP(n_in, hidden, n_out)
    with torch.no_grad():
        model.fc1.weight.mul_(weight_gains[0])
        model.fc2.weight.mul_(weight_gains[1])
    return model


def _evaluate(model: nn.Module, loader) -> float:
    """Fraction of correctly classified samples, in eval mode without gradients."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    model.train()
    return correct / total


def _postfix(loss: float, acc: float) -> dict:
    return {"loss": f"{loss:.3f}"} if math.isnan(acc) else {"loss": f"{loss:.3f}", "test_acc": f"{acc:.1%}"}


def _train_mode(mode: str, source: nn.Module, train_loader, test_loader, *, epochs: int, lr: float, band: float,
                seed: int, progress: bool, on_compile: Callable[[str, CompileReport], None] | None) -> dict:
    model = copy.deepcopy(source)
    x0, _ = next(iter(train_loader))
    compiled = snn_compile(model, mode=mode, example_inputs=(x0,), band=band)
    report = compiled.report
    if on_compile is not None:
        on_compile(mode, report)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    train_loader.generator.manual_seed(seed)
    epoch_s, backward_s, active = [], [], []
    saved_peak = 0
    loss_value = acc = math.nan
    with tqdm(total=epochs * len(train_loader), disable=not progress, unit="step", dynamic_ncols=True) as bar:
        for epoch in range(epochs):
            bar.set_description(f"{mode} epoch {epoch + 1}/{epochs}")
            start = time.perf_counter()
            for x, y in train_loader:
                with SavedTensorMeter() as meter:
                    loss = F.cross_entropy(compiled(x), y)
                saved_peak = max(saved_peak, meter.bytes)
                optimizer.zero_grad(set_to_none=True)
                t0 = time.perf_counter()
                loss.backward()
                backward_s.append(time.perf_counter() - t0)
                optimizer.step()
                if report.active_fraction:
                    active.append(sum(report.active_fraction.values()) / len(report.active_fraction))
                loss_value = loss.item()
                bar.update()
                bar.set_postfix(_postfix(loss_value, acc), refresh=False)
            epoch_s.append(time.perf_counter() - start)
            acc = _evaluate(compiled, test_loader)
            bar.set_postfix(_postfix(loss_value, acc))
            log.info("%s epoch %d/%d: loss %.4f, test accuracy %.3f, %.2f s", mode, epoch + 1, epochs, loss_value,
                     acc, epoch_s[-1])
    return {
        "mode": mode,
        "compiled_mode": report.mode,
        "test_acc": acc,
        "final_loss": loss_value,
        "epoch_s": sum(epoch_s) / len(epoch_s),
        "backward_s": sum(backward_s) / len(backward_s),
        "saved_bytes": saved_peak,
        "active_fraction": sum(active) / len(active) if active else None,
    }


def run_demo(epochs: int = 8, batch_size: int = 64, seed: int = 0, modes: Sequence[str] = MODES, hidden: int = 128,
             lr: float = 1e-2, band: float = 0.05, progress: bool = True, n_steps: int = 50,
             weight_gains: tuple[float, float] = WEIGHT_GAINS, dataset_kwargs: dict | None = None,
             on_compile: Callable[[str, CompileReport], None] | None = None) -> list[dict]:
    """Train the demo network in each of ``modes`` and measure it.

    Every mode starts from the same initial weights (``seed``) and sees the training
    batches in the same order.  Each row holds:

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
    trains.  ``dataset_kwargs`` go to :func:`snnopt.data.make_loaders`.
    """
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    train_loader, test_loader = make_loaders(batch_size=batch_size, n_steps=n_steps, seed=seed,
                                             **(dataset_kwargs or {}))
    data = train_loader.dataset
    source = build_model(data.sensor_size[0], hidden, data.n_classes, seed, weight_gains)
    return [_train_mode(mode, source, train_loader, test_loader, epochs=epochs, lr=lr, band=band, seed=seed,
                        progress=progress, on_compile=on_compile) for mode in modes]


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
