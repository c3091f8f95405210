"""Command line: ``snnopt demo`` trains the demo network in each mode and prints the comparison."""

from __future__ import annotations

import argparse
import logging

from . import __version__
from .demo import MODES, format_table, run_demo


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _modes(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"modes must be a comma list of {', '.join(MODES)}; got {text!r}")
    return modes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="snnopt", description="A compiler for spiking neural networks in PyTorch.")
    parser.add_argument("--version", action="version", version=f"snnopt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small spiking MLP in each backward mode and compare accuracy, "
                                       "time and saved-for-backward memory")
    demo.add_argument("--epochs", type=_positive_int, default=8, help="training epochs per mode (default: 8)")
    demo.add_argument("--batch-size", type=_positive_int, default=64, help="batch size (default: 64)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data, initial weights and batch order")
    demo.add_argument("--modes", type=_modes, default=MODES,
                      help=f"comma list of modes to run (default: {','.join(MODES)})")
    demo.add_argument("--band", type=_positive_float, default=0.05,
                      help="sparse mode: surrogate gradient only where |v - threshold| < band (default: 0.05)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv=None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    rows = run_demo(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, modes=args.modes, band=args.band,
                    progress=not args.no_progress, on_compile=lambda mode, report: print(report, flush=True))
    print()
    print(format_table(rows))
    return 0
