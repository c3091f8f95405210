"""The training loop shared by ``snnopt train`` and ``snnopt demo``."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from .. import compile as snn_compile
from .. import kernels
from ..frontend.registry import is_neuron
from ..optim import adam
from ..profiling import SavedTensorMeter
from . import checkpoint, distributed
from .plots import write_plots
from .presets import build_model

log = logging.getLogger(__name__)

DEFAULT_LR = 1e-2
"""Adam's learning rate of a new run when the configuration names none."""

RESUME_FIXED = ("dataset", "model", "mode", "batch_size", "steps", "seed")
"""Configuration a resumed run must share with its checkpoint (the learning rate may change)."""


@dataclass
class TrainConfig:
    """One training run (the options of ``snnopt train``).  ``out=None`` writes nothing;
    ``measure`` also records the backward time and the bytes saved for backward per step;
    ``data_options`` go to :func:`snnopt.data.make_dataset_loaders`.  ``lr=None`` is
    :data:`DEFAULT_LR` for a new run and the checkpoint's learning rate on ``resume``; a
    given ``lr`` on ``resume`` replaces the checkpoint's from the resumed epoch on."""

    dataset: str = "embedded"
    data_dir: str | None = None
    model: str = "mlp"
    mode: str = "dense"
    epochs: int = 5
    batch_size: int = 64
    lr: float | None = None
    steps: int = 50
    hidden: int = 128
    band: float = 0.05
    seed: int = 0
    device: str | None = None
    out: str | None = "snnopt-run"
    resume: bool = False
    progress: bool = True
    measure: bool = False
    data_options: dict = dataclasses.field(default_factory=dict)


def make_loaders(cfg: TrainConfig, ctx: distributed.Context):
    """Train and test loaders; the train set is sharded over ranks when distributed."""
    from ..data import make_dataset_loaders

    def shard(dataset):
        return DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.seed,
                                  drop_last=True)
    return make_dataset_loaders(cfg.dataset, cfg.data_dir, batch_size=cfg.batch_size, n_steps=cfg.steps,
                                seed=cfg.seed, sampler=shard if ctx.distributed else None, **cfg.data_options)


def frame_shape(x: torch.Tensor) -> tuple:
    """The shape of one sample's frame in a time-major batch ``[T, B, *frame]``."""
    return tuple(x.shape[2:])


def logits_of(out: torch.Tensor) -> torch.Tensor:
    """``[B, classes]`` logits from a model output (``[T, B, classes]`` is averaged over time)."""
    return out.mean(0) if out.dim() == 3 else out


class Trainer:
    """Trains ``cfg.model`` on ``cfg.dataset`` in ``cfg.mode``; :meth:`run` returns the history."""

    def __init__(self, cfg: TrainConfig, ctx: distributed.Context | None = None):
        self.cfg = cfg
        self.ctx = ctx or distributed.Context(device=distributed.resolve_device(cfg.device or "cpu"))
        self.out = Path(cfg.out) if cfg.out is not None else None
        saved = self._load_checkpoint() if cfg.resume else None
        self.train_loader, self.test_loader = make_loaders(cfg, self.ctx)
        x0, _ = next(iter(self.test_loader))
        data = self.train_loader.dataset
        self.model = build_model(cfg.model, frame_shape(x0), data.n_classes, cfg.seed, cfg.hidden).to(self.ctx.device)
        self.optimizer = adam(self.model.parameters(), lr=DEFAULT_LR if cfg.lr is None else cfg.lr)
        self.history: list[dict] = []
        self.start_epoch = 0
        if saved is not None:
            self._restore(saved)
        elif cfg.lr is None:
            self.cfg = dataclasses.replace(cfg, lr=DEFAULT_LR)
        kernels.status()  # builds the fused kernels now (first use), not inside the first timed epoch
        self.compiled = snn_compile(self.model, mode=cfg.mode, example_inputs=(x0.to(self.ctx.device),),
                                    band=cfg.band)
        self.net = distributed.wrap(self.compiled, self.ctx)
        self.report = self.compiled.report

    # -- state ------------------------------------------------------------------------------
    def _state(self, epoch: int) -> dict:
        return {"epoch": epoch, "config": dataclasses.asdict(self.cfg), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "history": self.history,
                "rng": torch.get_rng_state(), "loader_rng": _loader_generator_state(self.train_loader)}

    def _load_checkpoint(self) -> dict:
        """The checkpoint to resume from, checked against the configuration before any data loads."""
        if self.out is None:
            raise ValueError("resume needs the output folder of the run to continue")
        state = checkpoint.load(self.out / checkpoint.CHECKPOINT)
        saved = state["config"]
        for key in RESUME_FIXED:
            if saved.get(key) != getattr(self.cfg, key):
                raise ValueError(f"--resume: the checkpoint in {str(self.out)!r} was trained with {key}="
                                 f"{saved.get(key)!r}, not {getattr(self.cfg, key)!r}")
        return state

    def _restore(self, state: dict) -> None:
        misfit = state_misfit(self.model.state_dict(), state["model"])
        if misfit:
            raise ValueError(f"--resume: the checkpoint in {str(self.out)!r} does not fit the model {self.cfg.model} "
                             f"(did its code change since?): {misfit}. Restore the model that trained it, or start "
                             f"a new run with another --out")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.cfg = dataclasses.replace(self.cfg, lr=self._resumed_lr(state["config"]["lr"]))
        self.history = list(state["history"])
        self.start_epoch = int(state["epoch"])
        torch.set_rng_state(state["rng"])
        if state.get("loader_rng") is not None:
            self.train_loader.generator.set_state(state["loader_rng"])
        log.info("resuming after epoch %d from %s", self.start_epoch, self.out / checkpoint.CHECKPOINT)

    def _resumed_lr(self, saved_lr: float) -> float:
        """The learning rate from the resumed epoch on: the checkpoint's, unless the config
        names another, which then replaces it in the restored optimizer."""
        if self.cfg.lr is None or self.cfg.lr == saved_lr:
            return saved_lr
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr
        log.warning("resuming with lr %g; the checkpoint in %s trained with lr %g", self.cfg.lr, self.out, saved_lr)
        return self.cfg.lr

    # -- loop -------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        """Train the epochs from :attr:`start_epoch` to ``cfg.epochs`` (none when a resumed
        checkpoint already holds them all, which is logged); returns the whole history."""
        cfg, ctx = self.cfg, self.ctx
        writes = ctx.main and self.out is not None
        if self.start_epoch >= cfg.epochs and ctx.main:
            log.warning("the checkpoint in %s already holds %d trained epochs and --epochs is %d: nothing to train "
                        "(give --epochs above %d to continue)", self.out, self.start_epoch, cfg.epochs,
                        self.start_epoch)
        total = (cfg.epochs - self.start_epoch) * len(self.train_loader)
        with tqdm(total=max(total, 0), disable=not (cfg.progress and ctx.main), unit="step",
                  dynamic_ncols=True) as bar:
            for epoch in range(self.start_epoch, cfg.epochs):
                bar.set_description(f"{cfg.mode} epoch {epoch + 1}/{cfg.epochs}")
                record = self._train_epoch(epoch, bar)
                record.update(self._evaluate())
                record["spike_rate"] = self._spike_rates()
                self.history.append(record)
                bar.set_postfix(loss=f"{record['train_loss']:.3f}", test_acc=f"{record['test_acc']:.1%}")
                log.info("epoch %d: train loss %.4f acc %.3f, test loss %.4f acc %.3f, %.0f samples/s", epoch + 1,
                         record["train_loss"], record["train_acc"], record["test_loss"], record["test_acc"],
                         record["samples_per_s"])
                if writes:
                    self._write(epoch + 1)
        return self.history

    def _train_epoch(self, epoch: int, bar) -> dict:
        sampler = self.train_loader.sampler
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        self.net.train()
        loss_sum = correct = seen = 0.0
        active: dict[str, list[float]] = {}
        backward_s, saved = [], 0
        start = time.perf_counter()
        for x, y in self.train_loader:
            x, y = x.to(self.ctx.device), y.to(self.ctx.device)
            with SavedTensorMeter() if self.cfg.measure else contextlib.nullcontext() as meter:
                logits = logits_of(self.net(x))
                loss = F.cross_entropy(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            loss.backward()
            backward_s.append(time.perf_counter() - t0)
            saved = max(saved, meter.bytes) if meter is not None else saved
            self.optimizer.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            for layer, fraction in self.compiled.report.active_fraction.items():
                active.setdefault(layer, []).append(fraction)
            bar.update()
            rate = seen * self.ctx.world_size / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{correct / seen:.1%}", samples_s=f"{rate:.0f}",
                            refresh=False)
        elapsed = time.perf_counter() - start
        loss_sum, correct, seen = distributed.sum_over_ranks([loss_sum, correct, seen], self.ctx)
        record = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"], "train_loss": loss_sum / seen,
                  "train_acc": correct / seen, "epoch_s": elapsed, "samples_per_s": seen / elapsed,
                  "last_loss": loss.item(), "active_fraction": {k: sum(v) / len(v) for k, v in active.items()}}
        if self.cfg.measure:
            record.update(backward_s=sum(backward_s) / len(backward_s), saved_bytes=saved)
        return record

    def _evaluate(self) -> dict:
        self.net.eval()
        loss_sum = correct = seen = 0.0
        with torch.no_grad():
            for x, y in self.test_loader:
                x, y = x.to(self.ctx.device), y.to(self.ctx.device)
                logits = logits_of(self.compiled(x))
                loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
        self.net.train()
        return {"test_loss": loss_sum / seen, "test_acc": correct / seen}

    def _spike_rates(self) -> dict:
        """Mean spikes per neuron and step of each spiking layer, on one test batch run eagerly."""
        rates, hooks = {}, []
        for name, module in self.model.named_modules():
            if name and is_neuron(module):
                def hook(m, args, out, name=name):
                    spikes = out[0] if isinstance(out, tuple) else out
                    if isinstance(spikes, torch.Tensor) and bool(((spikes == 0) | (spikes == 1)).all()):
                        rates[name] = float(spikes.float().mean())  # binary output: a spiking layer
                hooks.append(module.register_forward_hook(hook))
        x, _ = next(iter(self.test_loader))
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                self.model(x.to(self.ctx.device))
        finally:
            self.model.train(was_training)
            for h in hooks:
                h.remove()
        return rates

    def _write(self, epoch: int) -> None:
        """Save the checkpoint, ``metrics.json`` and the plots after ``epoch``; the output
        folder is created here, so a run that fails before its first epoch leaves none."""
        self.out.mkdir(parents=True, exist_ok=True)
        checkpoint.save(self.out / checkpoint.CHECKPOINT, self._state(epoch))
        metrics = {"config": dataclasses.asdict(self.cfg), "world_size": self.ctx.world_size,
                   "compiled_mode": self.report.mode, "epochs": self.history}
        tmp = self.out / ".metrics.json.tmp"
        tmp.write_text(json.dumps(metrics, indent=2))
        tmp.replace(self.out / "metrics.json")
        write_plots(self.history, self.out)


def state_misfit(expected: dict, saved: dict, shown: int = 3) -> str:
    """How a checkpoint's ``saved`` state dict differs from the model's ``expected`` one:
    the first ``shown`` missing, unexpected or resized entries; ``""`` when it fits."""
    missing = [f"{k} is missing" for k in expected if k not in saved]
    unexpected = [f"{k} is not in the model" for k in saved if k not in expected]
    resized = [f"{k} is {list(saved[k].shape)} there, {list(v.shape)} here" for k, v in expected.items()
               if k in saved and tuple(saved[k].shape) != tuple(v.shape)]
    found = missing + unexpected + resized
    more = f" and {len(found) - shown} more" if len(found) > shown else ""
    return "; ".join(found[:shown]) + more


def _loader_generator_state(loader: DataLoader):
    gen = getattr(loader, "generator", None)
    return gen.get_state() if gen is not None else None


def check_config(cfg: TrainConfig) -> None:
    """Raise ``ValueError`` naming the option when ``cfg`` cannot run: checked before any
    data loads or model compiles."""
    if cfg.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {cfg.epochs}")
    if cfg.lr is not None and not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise ValueError(f"--lr must be a positive number, got {cfg.lr}")
    if cfg.seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {cfg.seed}")
    if cfg.out is not None:
        check_output_folder(Path(cfg.out))


def check_output_folder(out: Path) -> None:
    """Raise ``ValueError`` unless ``out`` is, or can be created as, a writable folder."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file, not a folder; give a folder path (new or existing)")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"--out {str(out)!r}: {str(existing)!r} is a file, so the folder cannot be created there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {str(out)!r}: no permission to write in {str(existing)!r}; give another folder")


def train(cfg: TrainConfig) -> list[dict]:
    """Train as configured (in this process, or in each ``torchrun`` process); returns the
    per-epoch history (rank 0 also writes ``metrics.json``, plots and checkpoints to
    ``cfg.out``)."""
    check_config(cfg)
    ctx = distributed.setup(cfg.device)
    try:
        return Trainer(cfg, ctx).run()
    finally:
        distributed.teardown(ctx)
