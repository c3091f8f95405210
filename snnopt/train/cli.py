"""``snnopt train`` / ``python -m snnopt.train`` (also under ``torchrun``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..frontend.tracer import TraceFailure
from ..passes import PassError
from .loop import DEFAULT_LR, TrainConfig, train
from .presets import InputShapeError

MODES = ("dense", "sparse", "rate")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    d = TrainConfig()
    parser.add_argument("--dataset", default=d.dataset,
                        help="embedded (default, no download), shd, nmnist or dvsgesture (from --data-dir)")
    parser.add_argument("--data-dir", default=None, help="folder holding the downloaded dataset")
    parser.add_argument("--model", default=d.model, help="mlp, conv, or FILE.py:FUNCTION returning an nn.Module "
                                                         "(called as FUNCTION(input_shape, n_classes) with input_shape "
                                                         "one sample's frame, e.g. (2, 34, 34), or as FUNCTION())")
    parser.add_argument("--mode", choices=MODES, default=d.mode, help="backward mode (default: dense)")
    parser.add_argument("--epochs", type=_positive(int), default=d.epochs, help=f"epochs (default: {d.epochs})")
    parser.add_argument("--batch-size", type=_positive(int), default=d.batch_size,
                        help=f"batch size per process (default: {d.batch_size})")
    parser.add_argument("--lr", type=_positive(float), default=d.lr,
                        help=f"Adam learning rate (default: {DEFAULT_LR}; with --resume the checkpoint's, and a "
                             f"new value applies from the resumed epoch on)")
    parser.add_argument("--steps", type=_positive(int), default=d.steps,
                        help=f"time steps (frames) per sample (default: {d.steps})")
    parser.add_argument("--band", type=_positive(float), default=d.band, help="sparse mode gradient band")
    parser.add_argument("--seed", type=non_negative_int, default=d.seed,
                        help="seed of the weights and the batch order (an integer >= 0)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--out", default=d.out, help=f"output folder (default: {d.out})")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
        return value
    return parse


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def fail(command: str, message: str, status: int = 1) -> int:
    """Write ``snnopt COMMAND: message`` to stderr; returns the exit ``status``."""
    print(f"snnopt {command}: {message}", file=sys.stderr)
    return status


def config_from(args) -> TrainConfig:
    return TrainConfig(dataset=args.dataset, data_dir=args.data_dir, model=args.model, mode=args.mode,
                       epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, steps=args.steps, band=args.band,
                       seed=args.seed, device=args.device, out=args.out, resume=args.resume,
                       progress=not args.no_progress)


def run(args) -> int:
    """Train as ``args`` say; errors in the inputs, and a model that does not compile, are
    written to stderr (exit status 1), not raised."""
    try:
        history = train(config_from(args))
    except InputShapeError as exc:
        return fail("train", f"{exc}; --model mlp takes frames of any shape")
    except (TraceFailure, PassError) as exc:
        return fail("train", f"cannot compile the model {args.model}: {exc}")
    except (ValueError, OSError) as exc:
        return fail("train", str(exc))
    last = history[-1] if history else None
    if last is not None and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
        print(f"epoch {last['epoch']}: test accuracy {last['test_acc']:.1%}, train loss {last['train_loss']:.4f}; "
              f"results in {args.out}")
    return 0


def main(argv=None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="snnopt train", description="Train a spiking network."))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run(parser.parse_args(argv))
