"""``python -m bench.scan [--device cuda] [--steps T --batch-size B --neurons N]``: one LIF
layer's scan on its own, against the memory roofline and SpikingJelly's LIF.

The layer is the neuron of ``snnopt bench`` (``snnopt.nn.LIF``, beta 0.9, threshold 1,
subtract reset, detached, atan surrogate) on a ``[T, B, N]`` float32 input current, in
training (the forward keeps what its backward needs).  Rows, each timed in the same process, median over the repeats:

``snnopt dense``   the layer compiled in dense mode (the fused scan kernels)
``snnopt sparse``  compiled in sparse mode (band 0.05: the active set, then the sparse backward)
``snnopt eager``   the uncompiled module (plain-torch BPTT, the autograd graph of every step)
``spikingjelly``   ``neuron.LIFNode(step_mode="m")`` with the same dynamics, on the backend
                   SpikingJelly picks for the device (column ``backend``)

The dense scan must move at least ``3 x T x B x N`` values each way: the forward reads the
input and writes the spikes and the membrane it keeps, the backward reads the output
gradient and that membrane and writes the input gradient.  The dense row's ``fwd roofline``
and ``bwd roofline`` are those bytes over the measured time, divided by the device-to-device
copy rate measured here (bytes read plus bytes written).  On a CPU the copy is one
``Tensor.copy_`` on the threads torch uses.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import snnopt
from snnopt.bench import BAND, _snnopt_lif, _spikingjelly_backend, _spikingjelly_lif, device_name

IMPLS = ("snnopt dense", "snnopt sparse", "snnopt eager", "spikingjelly")


def _median_time(fn, device: torch.device, repeats: int, warmup: int, before=None) -> float:
    """Median seconds of ``fn()`` (``before()`` runs untimed ahead of each call)."""
    times = []
    for k in range(warmup + repeats):
        if before is not None:
            before()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            elapsed = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - t0
        if k >= warmup:
            times.append(elapsed)
    return statistics.median(times)


def copy_rate(n: int, device: torch.device, repeats: int, warmup: int) -> float:
    """Bytes per second of a device-to-device copy of ``n`` float32 values (read + written)."""
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * src.element_size() / _median_time(lambda: dst.copy_(src), device, repeats, warmup)


def _layer(name: str, x: torch.Tensor, device: torch.device):
    """``(module, backend, reset)`` for implementation ``name``."""
    if name == "spikingjelly":
        from spikingjelly.activation_based import functional

        kwargs, backend = _spikingjelly_backend(device)
        module = _spikingjelly_lif(kwargs).to(device)
        return module, backend, lambda: functional.reset_net(module)
    lif = _snnopt_lif().to(device)
    if name == "snnopt eager":
        return lif, "eager", None
    # (in a container: a neuron is a leaf of the traced graph, never its root)
    compiled = snnopt.compile(torch.nn.Sequential(lif), mode=name.split()[1], example_inputs=(x,), band=BAND)
    return compiled, compiled.report.mode, None


def run(steps: int, batch: int, neurons: int, device: torch.device, repeats: int, warmup: int,
        impls=IMPLS) -> dict:
    """Forward and backward times of each implementation, and the dense scan's roofline."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = (torch.randn(steps, batch, neurons, generator=gen) * 0.6 + 0.25).to(device).requires_grad_()
    g = torch.randn(steps, batch, neurons, generator=gen).to(device)
    rate = copy_rate(x.numel(), device, repeats, warmup)
    rows = []
    for name in impls:
        try:
            module, backend, reset = _layer(name, x.detach(), device)
        except ImportError as exc:
            rows.append({"impl": name, "backend": "-", "note": f"not installed ({exc.name})"})
            continue
        state = {}

        def forward():
            if reset is not None:
                reset()
            state["out"] = module(x)

        def backward():  # (the input gradient returned, not accumulated into x.grad)
            torch.autograd.grad(state["out"], x, g)

        fwd = _median_time(forward, device, repeats, warmup)
        bwd = _median_time(backward, device, repeats, warmup, before=forward)
        rows.append({"impl": name, "backend": backend, "forward_s": fwd, "backward_s": bwd,
                     "spike_rate": float(state["out"].detach().float().mean())})
    moved = 3 * x.numel() * x.element_size()  # each way: see the module docstring
    return {"device": device_name(device), "steps": steps, "batch": batch, "neurons": neurons, "copy_rate": rate,
            "bytes": moved, "rows": rows}


def format_result(result: dict) -> str:
    lines = [f"LIF scan, T = {result['steps']}, B = {result['batch']}, N = {result['neurons']}, float32, on "
             f"{result['device']}; copy {result['copy_rate'] / 1e9:.0f} GB/s",
             "| impl | backend | forward ms | backward ms | fwd+bwd ms | fwd+bwd vs snnopt dense | fwd roofline "
             "| bwd roofline |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    dense = next((r for r in result["rows"] if r["impl"] == "snnopt dense" and "forward_s" in r), None)
    for r in result["rows"]:
        if "forward_s" not in r:
            lines.append(f"| {r['impl']} | {r['backend']} | {r['note']} | | | | | |")
            continue
        total = r["forward_s"] + r["backward_s"]
        ratio = f"{total / (dense['forward_s'] + dense['backward_s']):.2f}x" if dense else "-"
        roof = [f"{result['bytes'] / t / result['copy_rate']:.0%}" for t in (r["forward_s"], r["backward_s"])]
        if r["impl"] != "snnopt dense":
            roof = ["", ""]
        lines.append(f"| {r['impl']} | {r['backend']} | {r['forward_s'] * 1e3:.3f} | {r['backward_s'] * 1e3:.3f} "
                     f"| {total * 1e3:.3f} | {ratio} | {roof[0]} | {roof[1]} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--neurons", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--impl", action="append", choices=IMPLS, help="implementations to time (default: all)")
    args = parser.parse_args(argv)
    result = run(args.steps, args.batch_size, args.neurons, torch.device(args.device), args.repeats, args.warmup,
                 tuple(args.impl or IMPLS))
    print(format_result(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
