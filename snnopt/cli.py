"""Command line: ``snnopt demo`` trains the demo network in each mode and prints the comparison;
``snnopt bench`` times training steps of snnopt's modes against snnTorch and SpikingJelly;
``snnopt export`` writes a model (or a NIR file) as NIR, ONNX or an event graph;
``snnopt train`` trains a model with metrics, plots and checkpoints; ``snnopt inspect``
writes an HTML report of what every compiler pass did."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from . import __version__
from . import bench as benchmarks
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


def _positive_ints(text: str, example: str) -> tuple[int, ...]:
    try:
        values = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers (e.g. {example}), got {text!r}")
    return values


def _step_list(text: str) -> tuple[int, ...]:
    return _positive_ints(text, "4,32,100")


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
    _add_bench(sub)
    _add_export(sub)
    from .train.cli import add_arguments as add_train_arguments
    add_train_arguments(sub.add_parser("train", help="train a spiking network on the embedded data or a tonic "
                                                     "dataset, with metrics, plots and checkpoints"))
    from .inspect.cli import add_arguments as add_inspect_arguments
    add_inspect_arguments(sub.add_parser("inspect", help="compile a model pass by pass and write an HTML report "
                                                         "of the graphs"))
    return parser


def _shape(text: str) -> tuple[int, ...]:
    return _positive_ints(text, "700 or 2,34,34")


def _add_export(sub) -> None:
    export = sub.add_parser("export", help="write a model (FILE.py:FUNCTION) or a NIR file as NIR, ONNX or an event "
                                           "graph (format from the suffix of --out)")
    export.add_argument("source", help="FILE.py:FUNCTION returning the model (an nn.Module; called as FUNCTION() or "
                                       "FUNCTION(input_shape, n_classes)), or a .nir file")
    export.add_argument("--out", required=True, help="output file: .nir, .onnx, .graphml or .json")
    export.add_argument("--input-shape", type=_shape, default=None,
                        help="feature shape of one time step, e.g. 700 or 2,34,34 (needed for FILE.py:FUNCTION)")
    export.add_argument("--n-classes", type=_positive_int, default=None,
                        help="classes, for a FUNCTION(input_shape, n_classes) as snnopt train calls it")
    export.add_argument("--weights", default=None,
                        help="a state_dict saved with torch.save, or an snnopt train checkpoint, to load into the "
                             "model")
    export.add_argument("--dt", type=_positive_float, default=None,
                        help="time step in seconds (required for NIR output unless the source is a NIR file)")
    export.add_argument("--extensions", action="store_true",
                        help="NIR: write what NIR cannot state (subtractive reset, v >= threshold, an initial "
                             "membrane, snnTorch's state convention) as snnopt metadata instead of refusing or "
                             "warning; other readers will not honour it")
    export.add_argument("--check", default=None, metavar="TARGET",
                        help="also check the network against a hardware profile (loihi2, speck, xylo)")


def _export(parser: argparse.ArgumentParser, args) -> int:
    import torch

    from . import export as snn_export
    from .export.hardware import get_profile
    from .export.sources import load_source

    options = {"extensions": True} if args.extensions else {}
    try:
        _check_out(args.out, snn_export.SUFFIXES)
        if args.check:
            get_profile(args.check)  # an unknown target is reported before anything is written
        if args.source.lower().endswith(".nir"):
            model, example = snn_export.from_nir(args.source, dt=args.dt), None
        else:
            if args.input_shape is None:
                parser.error("--input-shape is needed to trace FILE.py:FUNCTION (e.g. --input-shape 2,34,34)")
            model = load_source(args.source, input_shape=args.input_shape, n_classes=args.n_classes,
                                weights=args.weights)
            example = (torch.zeros(1, 1, *args.input_shape),)
        path = snn_export.export(model, args.out, dt=args.dt, example_inputs=example, **options)
    except (ValueError, OSError) as exc:
        print(f"snnopt export: {exc}")
        return 1
    print(f"wrote {path}")
    if args.check:
        report = snn_export.check(model, args.check, example_inputs=example)
        print(report)
        return 0 if report.ok else 2
    return 0


def _check_out(out: str, suffixes: dict) -> None:
    """Raise ``ValueError`` when the suffix of ``--out`` names no export format (before anything is loaded)."""
    suffix = Path(out).suffix
    if suffix.lower() not in suffixes:
        what = f"its suffix {suffix!r} names no output format" if suffix else "it has no suffix to tell the format"
        *rest, last = suffixes
        raise ValueError(f"--out {out!r}: {what}; end --out in {', '.join(rest)} or {last} (e.g. --out net.onnx)")


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text}")
    return value


def _add_bench(sub) -> None:
    bench = sub.add_parser("bench", help="time training steps of snnopt's modes against snnTorch and SpikingJelly "
                                         "(step and backward time, saved-for-backward memory, ratios)")
    bench.add_argument("--workload", choices=benchmarks.WORKLOADS + ("all",), default="shd",
                       help="shd: SHD-like MLP 700-N-N-20; conv: conv net on N-MNIST-sized input 2x34x34; "
                            "linear: one Linear+LIF layer (the Open Neuromorphic benchmark); all: each in turn "
                            "(default: shd)")
    bench.add_argument("--device", default=None,
                       help="torch device, e.g. cpu or cuda (default: cuda when available, else cpu)")
    bench.add_argument("--repeats", type=_positive_int, default=5,
                       help="timed training steps per implementation; the median is reported (default: 5)")
    bench.add_argument("--warmup", type=_non_negative_int, default=2,
                       help="untimed steps per implementation before timing (default: 2)")
    bench.add_argument("--quick", action="store_true", help="tiny sizes, for tests and smoke runs")
    bench.add_argument("--neurons", type=_positive_int, default=None,
                       help="neurons per hidden layer (default: 256 for shd, 4096 for linear; not for conv)")
    bench.add_argument("--steps", type=_positive_int, default=None, help="time steps T (default: the workload's)")
    bench.add_argument("--sweep-steps", type=_step_list, default=None, metavar="T,T,...",
                       help="instead of the comparison, time snnopt dense and rate alone at each T of this comma "
                            "list (e.g. 4,32,100): rate's step speedup and the saved memory of both per T")
    bench.add_argument("--batch-size", type=_positive_int, default=None, help="batch size (default: the workload's)")
    bench.add_argument("--threads", type=_positive_int, default=None,
                       help="torch.set_num_threads for the run (default: torch's)")
    bench.add_argument("--results", default=None,
                       help="Markdown file the results are appended to (default: bench/RESULTS.md)")
    bench.add_argument("--no-append", action="store_true", help="print the table only; append nothing")
    bench.add_argument("--no-progress", action="store_true", help="no progress bars")


def _bench(parser: argparse.ArgumentParser, args) -> int:
    names = benchmarks.WORKLOADS if args.workload == "all" else (args.workload,)
    if args.neurons is not None and "conv" in names:
        parser.error("--neurons does not apply to the conv workload")
    if args.sweep_steps is not None and args.steps is not None:
        parser.error("--steps and --sweep-steps exclude each other")
    common = dict(device=args.device, repeats=args.repeats, warmup=args.warmup, quick=args.quick,
                  threads=args.threads, neurons=args.neurons, batch_size=args.batch_size,
                  progress=not args.no_progress)
    for k, name in enumerate(names):
        if k:
            print()
        if args.sweep_steps is not None:
            sweep = benchmarks.run_sweep(name, steps=args.sweep_steps, **common)
            print(benchmarks.describe_sweep(sweep))
            print(benchmarks.format_sweep(sweep), flush=True)
            if not args.no_append:
                print(f"appended to {benchmarks.append_sweep(sweep, args.results)}")
            continue
        result = benchmarks.run_bench(name, steps=args.steps, **common)
        print(benchmarks.describe_run(result))
        print(benchmarks.format_table(result), flush=True)
        if not args.no_append:
            print(f"appended to {benchmarks.append_results(result, args.results)}")
    return 0


def main(argv=None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "bench":
        return _bench(parser, args)
    if args.command == "export":
        return _export(parser, args)
    if args.command == "train":
        from .train.cli import run as run_train
        return run_train(args)
    if args.command == "inspect":
        from .inspect.cli import run as run_inspect
        return run_inspect(args)
    rows = run_demo(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, modes=args.modes, band=args.band,
                    progress=not args.no_progress, on_compile=lambda mode, report: print(report, flush=True))
    print()
    print(format_table(rows))
    return 0
