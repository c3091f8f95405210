"""``snnopt inspect`` / ``tools/inspect_graph.py``: compile a model pass by pass and write the
HTML graph report, printing the per-pass summary table.

Exit status: 0 when the model compiled, 1 when tracing or a pass failed (the page then
shows the error and where it happened), 2 when the model could not be built, the asked-for layout
is not installed or the page not written (the reason goes to stderr).
"""

from __future__ import annotations

import argparse
import logging

import torch

from ..compiler import MODES
from ..train.cli import fail, non_negative_int
from ..train.presets import PRESETS, InputShapeError, build_model
from .page import write_report
from .record import inspect_model
from .summary import format_table
from .svg import ENGINES, resolve_engine

DEFAULT_SHAPES = {"mlp": (100,), "conv": (2, 32, 32)}
"""Feature shape of one time step for each preset when ``--input-shape`` is not given."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _shape(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers (e.g. 700 or 2,34,34), "
                                         f"got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``snnopt inspect`` (for a subcommand parser or a standalone one)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("model", nargs="?", default=None, metavar="FILE.py:FUNCTION",
                        help="a function (or class) returning the model, called as FUNCTION(input_shape, n_classes) "
                             "or FUNCTION()")
    source.add_argument("--preset", choices=PRESETS, help="a model preset of snnopt train instead of FILE.py:FUNCTION")
    parser.add_argument("--input-shape", type=_shape, default=None, metavar="SHAPE",
                        help="feature shape of one time step, e.g. 700 or 2,34,34 (default for --preset: "
                             + ", ".join(f"{k} {','.join(map(str, v))}" for k, v in DEFAULT_SHAPES.items()) + ")")
    parser.add_argument("--steps", type=_positive_int, default=8, metavar="T",
                        help="time steps T of the example input (default: 8)")
    parser.add_argument("--batch", type=_positive_int, default=2, metavar="B",
                        help="batch size of the example input (default: 2)")
    parser.add_argument("--classes", type=_positive_int, default=10, metavar="N",
                        help="output classes of the model (default: 10)")
    parser.add_argument("--mode", choices=MODES, default="dense", help="compile mode (default: dense)")
    parser.add_argument("--band", type=_positive_float, default=0.05,
                        help="sparse mode: surrogate gradient only where |v - threshold| < band (default: 0.05)")
    parser.add_argument("--eval", action="store_true", help="compile the model in eval mode (default: training mode)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the model's initial weights (default: 0)")
    parser.add_argument("--layout", choices=ENGINES, default="auto",
                        help="graph drawing: graphviz (dot), matplotlib, or auto (graphviz when dot is installed)")
    parser.add_argument("--out", default="report.html", metavar="FILE.html",
                        help="the HTML page to write (default: report.html)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Build the model, record the pipeline, write the page and print the summary; errors
    that leave no page go to stderr (exit status 2)."""
    spec = args.preset or args.model
    shape = args.input_shape or DEFAULT_SHAPES.get(spec)
    if shape is None:
        return fail("inspect", "--input-shape is needed for FILE.py:FUNCTION (the feature shape of one time step, "
                               "e.g. --input-shape 2,34,34)", status=2)
    try:
        engine = resolve_engine(args.layout)
    except ValueError as exc:
        return fail("inspect", f"--layout {args.layout}: {exc} (--layout matplotlib, or auto)", status=2)
    try:
        model = build_model(spec, shape, args.classes, args.seed)
    except InputShapeError as exc:
        return fail("inspect", f"{exc}; give --input-shape C,H,W or use --preset mlp", status=2)
    except ValueError as exc:
        return fail("inspect", str(exc), status=2)
    model.train(not args.eval)
    example = torch.zeros(args.steps, args.batch, *shape)
    inspection = inspect_model(model, (example,), mode=args.mode, band=args.band)
    try:
        path = write_report(inspection, args.out, engine=engine)
    except OSError as exc:
        return fail("inspect", f"cannot write --out {args.out}: {exc}", status=2)
    print(format_table(inspection))
    print(f"wrote {path}")
    return 0 if inspection.ok else 1


def main(argv=None) -> int:
    """Run ``snnopt inspect`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = add_arguments(argparse.ArgumentParser(
        prog="snnopt inspect", description="Compile a spiking network pass by pass and write an HTML report of "
                                           "the graphs before and after each pass."))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run(args)
