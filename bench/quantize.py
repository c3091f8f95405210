"""``python -m bench.quantize [options]``: the accuracy cost of quantizing for each chip.

Trains the demo network (``Linear -> LIF -> Linear -> LIF -> Linear -> LI``, logits = the
readout membrane averaged over time; :mod:`snnopt.demo`) on the embedded Randman data
set in dense mode, seeded, then evaluates the test accuracy of its float network and of
``snnopt.export.hardware.quantize(network, target)`` for each target, both run by
:class:`~snnopt.export.NetworkModule`.  Prints one row per target: float and quantized
accuracy, their difference, the target's weight resolution and the number of
:func:`~snnopt.export.hardware.check` violations before and after quantization (what
remains after quantization is what it cannot fix, e.g. leaky neurons on Speck).
Nothing is written unless ``--output`` names a file to append the table to.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from snnopt.train import Trainer, TrainConfig
from snnopt.train.presets import SpikingMLP
from snnopt.export import NetworkModule, to_network
from snnopt.export.hardware import PROFILES, check, get_profile, quantize


class SequenceMLP(SpikingMLP):
    """The demo MLP returning the readout membrane ``[T, B, classes]`` (no time mean), so the
    whole network exports; the logits are its mean over time."""

    def forward(self, x):
        return self.readout(self.fc3(self.lif2(self.fc2(self.lif1(self.fc1(x))))))


def train(*, epochs: int, hidden: int, n_steps: int, batch_size: int, lr: float, seed: int,
          dataset_kwargs: dict | None = None):
    """``(model, test_loader)``: the ``mlp`` preset trained by :class:`snnopt.train.Trainer`
    (dense mode, cross-entropy on the time-mean of the readout, Adam), as a :class:`SequenceMLP`."""
    trainer = Trainer(TrainConfig(model="mlp", mode="dense", epochs=epochs, batch_size=batch_size, lr=lr,
                                  steps=n_steps, hidden=hidden, seed=seed, out=None, progress=False,
                                  data_options=dict(dataset_kwargs or {})))
    trainer.run()
    data = trainer.train_loader.dataset
    model = SequenceMLP(math.prod(data.sensor_size), hidden, data.n_classes)
    model.load_state_dict(trainer.model.state_dict())
    return model.eval(), trainer.test_loader


def accuracy(module: torch.nn.Module, loader) -> float:
    """Test accuracy of a module returning ``[T, B, classes]``: argmax of the time mean."""
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((module(x).mean(0).argmax(1) == y).sum())
            total += len(y)
    return correct / total


def measure(targets=tuple(PROFILES), *, epochs: int = 4, hidden: int = 64, n_steps: int = 25, batch_size: int = 64,
            lr: float = 1e-2, seed: int = 0, dataset_kwargs: dict | None = None) -> list[dict]:
    """Train once, then one row per target: ``target``, ``float_acc``, ``quantized_acc``,
    ``change`` (quantized - float), ``weight_bits`` (levels of the weight grid in bits),
    ``violations_before`` / ``violations_after`` (:func:`check` on the float and the
    quantized network).  The float accuracy is the exported network's, so every row
    compares the same network."""
    model, test_loader = train(epochs=epochs, hidden=hidden, n_steps=n_steps, batch_size=batch_size, lr=lr,
                               seed=seed, dataset_kwargs=dataset_kwargs)
    x0, _ = next(iter(test_loader))
    network = to_network(model, x0)
    float_acc = accuracy(NetworkModule(network), test_loader)
    rows = []
    for target in targets:
        profile = get_profile(target)
        quantized = quantize(network, profile)
        q_acc = accuracy(NetworkModule(quantized), test_loader)
        rows.append({"target": profile.name, "float_acc": float_acc, "quantized_acc": q_acc,
                     "change": q_acc - float_acc, "weight_bits": profile.weight_levels,
                     "violations_before": len(check(network, profile).violations),
                     "violations_after": len(check(quantized, profile).violations)})
    return rows


def format_table(rows) -> str:
    """The rows of :func:`measure` as a text table."""
    header = ["target", "float acc", "quantized acc", "change", "weight bits", "violations before",
              "violations after"]
    body = [[r["target"], f"{r['float_acc']:.1%}", f"{r['quantized_acc']:.1%}", f"{r['change'] * 100:+.1f} pt",
             f"{r['weight_bits']:g}", str(r["violations_before"]), str(r["violations_after"])] for r in rows]
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]

    def line(cells):
        return " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), "-+-".join("-" * w for w in widths)] + [line(r) for r in body])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.quantize", description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default=",".join(PROFILES),
                        help=f"comma list of targets (default: {','.join(PROFILES)})")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs (default: 4)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden neurons per layer (default: 64)")
    parser.add_argument("--steps", type=int, default=25, help="time steps per sample (default: 25)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default: 0.01)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, weights and batch order")
    parser.add_argument("--output", default=None, help="append the table to this file")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in PROFILES]
    if unknown:
        _parser().error(f"unknown targets {unknown}; choose from {', '.join(PROFILES)}")
    start = time.perf_counter()
    rows = measure(targets, epochs=args.epochs, hidden=args.hidden, n_steps=args.steps, batch_size=args.batch_size,
                   lr=args.lr, seed=args.seed)
    table = format_table(rows)
    print(table)
    print(f"(demo MLP, hidden {args.hidden}, T = {args.steps}, {args.epochs} epochs, seed {args.seed}; "
          f"{time.perf_counter() - start:.1f} s)")
    if args.output:
        with open(args.output, "a") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
