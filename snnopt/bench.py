"""Training-step benchmarks: snnopt's modes against snnTorch and SpikingJelly, side by side.

For one workload, five implementations of the same network train in the same process:

``snntorch``          ``snntorch.Leaky`` cells in a per-step Python loop, tutorial style (eager)
``spikingjelly``      multi-step (``step_mode="m"``) ``layer.Linear`` + ``neuron.LIFNode`` on the best
                      backend SpikingJelly has for the device (the ``backend`` column says which ran)
``snnopt dense``      ``snnopt.compile(model, mode="dense", ...)`` of a plain model with ``snnopt.nn.LIF``
``snnopt sparse``     the same with ``mode="sparse"`` (band 0.05)
``snnopt rate``       the same with ``mode="rate"``

All start from the same initial weights (the ``Linear`` weights are copied), see the same
input and labels, use the same loss and Adam.  Every neuron has the same dynamics up to
each library's conventions: ``beta`` (SpikingJelly ``tau = 1 / (1 - beta)``, no input
decay), threshold 1, subtract reset, detached reset (snnTorch's only choice and what
sparse mode assumes), atan surrogate (alpha 2).  snnTorch applies the reset one step
later than the others (its ``reset_delay``), which shifts some spikes but not the cost.

What is measured, per implementation (:func:`run_bench`):

``step_s``       wall time of one training step (``zero_grad``, forward, loss, ``backward``,
                 ``optimizer.step``), median over the repeats
``backward_s``   wall time of ``loss.backward()`` alone, median over the same steps
``saved_bytes``  bytes autograd saved for backward in one training forward
                 (:class:`~snnopt.profiling.SavedTensorMeter`; parameters not counted)
``cuda_peak_bytes``  on CUDA: peak of ``torch.cuda.max_memory_allocated`` during one step,
                 above what was allocated before it (weights, optimizer state and input
                 are in that baseline; gradients and everything kept for backward are not)

Warm-up steps (compilation happens before them, at ``snnopt.compile``) run before any
timing; the repeats then go round-robin over the implementations, so slow drifts of the
machine hit all of them alike.  Every step starts from the initial weights (restored
outside the timed region), so each repeat times the same step.  On CUDA the timed
regions are bracketed by ``torch.cuda.synchronize``.  On a CPU only the ratios between
rows are meaningful, not the absolute times.
"""

from __future__ import annotations

import datetime
import importlib
import importlib.metadata
import inspect
import logging
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from . import compile as snn_compile
from . import kernels
from .nn import LIF
from .profiling import SavedTensorMeter

log = logging.getLogger(__name__)

IMPLS = ("snntorch", "spikingjelly", "snnopt dense", "snnopt sparse", "snnopt rate")
WORKLOADS = ("shd", "linear")
BETA = 0.9
THRESHOLD = 1.0
BAND = 0.05
LR = 1e-3


@dataclass(frozen=True)
class Workload:
    """One benchmark network and its input.

    ``sizes`` are the layer widths, input first.  With ``readout`` the last ``Linear`` is a
    non-spiking readout whose output, summed over time, gives the logits for a
    cross-entropy loss against random labels; without it every ``Linear`` feeds a LIF
    layer and the loss is the sum of the output spikes.  ``input_activity`` > 0: Bernoulli
    spikes with that probability; 0: standard normal currents.  ``gains`` multiply the
    default initial weights of the first ``Linear`` layers (so that the hidden layers
    fire at a realistic rate).
    """

    name: str
    title: str
    sizes: tuple[int, ...]
    steps: int
    batch: int
    readout: bool
    input_activity: float = 0.0
    gains: tuple[float, ...] = ()

    def describe(self) -> str:
        inp = f"input spikes p={self.input_activity:g}" if self.input_activity > 0 else "input N(0, 1)"
        return f"{self.title} {'-'.join(map(str, self.sizes))}, T={self.steps}, B={self.batch}, {inp}"


def workload(name: str, device: str | torch.device = "cpu", quick: bool = False, neurons: int | None = None,
             steps: int | None = None, batch_size: int | None = None) -> Workload:
    """The canonical workload ``name`` for ``device`` (sizes differ between CPU and GPU).

    ``"shd"``     SHD-like MLP 700-N-N-20 (N = 256), input 2% Bernoulli spikes, T = 100 and
                  B = 64 on CPU, T = 500 and B = 256 on GPU; cross-entropy on the readout;
                  weight gains 6 and 3 on the hidden layers, which then fire at about 5%
    ``"linear"``  one ``Linear`` (N -> N) + LIF layer, N = 4096, T = 500, B = 16, normal input,
                  loss = sum of the output spikes (the Open Neuromorphic library benchmark)

    ``quick`` gives tiny sizes for tests and smoke runs; ``neurons``, ``steps`` and
    ``batch_size`` override N, T and B.
    """
    gpu = torch.device(device).type == "cuda"
    if name == "shd":
        n = 16 if quick else 256
        wl = Workload("shd", "SHD-like MLP", (40 if quick else 700, n, n, 5 if quick else 20),
                      steps=10 if quick else (500 if gpu else 100), batch=4 if quick else (256 if gpu else 64),
                      readout=True, input_activity=0.02, gains=(6.0, 3.0))
    elif name == "linear":
        n = 32 if quick else 4096
        wl = Workload("linear", "Linear+LIF", (n, n), steps=10 if quick else 500, batch=4 if quick else 16,
                      readout=False)
    else:
        raise ValueError(f"workload must be one of {WORKLOADS}, got {name!r}")
    if neurons is not None:
        hidden = (neurons,) * (len(wl.sizes) - 2)
        wl = replace(wl, sizes=(wl.sizes[0],) + hidden + (wl.sizes[-1],) if wl.readout else (neurons,) * len(wl.sizes))
    if steps is not None:
        wl = replace(wl, steps=steps)
    if batch_size is not None:
        wl = replace(wl, batch=batch_size)
    return wl


# ---------------------------------------------------------------- networks

def _layer_widths(wl: Workload) -> list[tuple[int, int, bool]]:
    """``(in, out, spiking)`` per ``Linear``: every layer but a readout feeds a LIF layer."""
    pairs = list(zip(wl.sizes[:-1], wl.sizes[1:]))
    return [(i, o, not (wl.readout and k == len(pairs) - 1)) for k, (i, o) in enumerate(pairs)]


def initial_linears(wl: Workload, seed: int) -> list[nn.Linear]:
    """The ``Linear`` layers every implementation starts from: PyTorch's default
    initialisation from ``seed``, the first weights multiplied by ``wl.gains``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        linears = [nn.Linear(i, o) for i, o, _ in _layer_widths(wl)]
    with torch.no_grad():
        for fc, gain in zip(linears, wl.gains):
            fc.weight.mul_(gain)
    return linears


def make_batch(wl: Workload, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Time-major input ``[T, B, sizes[0]]`` and random labels ``[B]`` (labels only matter with
    a readout)."""
    gen = torch.Generator().manual_seed(seed + 1)
    shape = (wl.steps, wl.batch, wl.sizes[0])
    if wl.input_activity > 0:
        x = (torch.rand(shape, generator=gen) < wl.input_activity).float()
    else:
        x = torch.randn(shape, generator=gen)
    y = torch.randint(wl.sizes[-1], (wl.batch,), generator=gen)
    return x.to(device), y.to(device)


def loss_fn(wl: Workload, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the logits with a readout, else the sum of the output spikes."""
    return F.cross_entropy(out, y) if wl.readout else out.sum()


class SnnoptNet(nn.Module):
    """The plain multi-step model snnopt compiles: ``Linear -> LIF`` layers (and a readout
    ``Linear`` summed over time)."""

    def __init__(self, wl: Workload):
        super().__init__()
        layers = []
        for i, o, spiking in _layer_widths(wl):
            layers.append(nn.Linear(i, o))
            if spiking:
                layers.append(LIF(beta=BETA, threshold=THRESHOLD, reset="subtract", detach_reset=True,
                                  surrogate="atan"))
        self.net = nn.Sequential(*layers)
        self.readout = wl.readout

    def forward(self, x):
        out = self.net(x)
        return out.sum(0) if self.readout else out


class SnnTorchNet(nn.Module):
    """The same network with ``snntorch.Leaky`` cells, stepped through time in Python."""

    def __init__(self, wl: Workload):
        super().__init__()
        import snntorch
        from snntorch import surrogate

        widths = _layer_widths(wl)
        self.fcs = nn.ModuleList(nn.Linear(i, o) for i, o, _ in widths)
        self.lifs = nn.ModuleList(snntorch.Leaky(beta=BETA, threshold=THRESHOLD, reset_mechanism="subtract",
                                                 spike_grad=surrogate.atan(alpha=2.0))
                                  for _, _, spiking in widths if spiking)
        self.readout = wl.readout

    def forward(self, x):
        mems = [lif.reset_mem() for lif in self.lifs]
        outs = []
        for t in range(x.shape[0]):
            h = x[t]
            for k, fc in enumerate(self.fcs):
                h = fc(h)
                if k < len(self.lifs):
                    h, mems[k] = self.lifs[k](h, mems[k])
            outs.append(h)
        out = torch.stack(outs)
        return out.sum(0) if self.readout else out


class SpikingJellyNet(nn.Module):
    """The same network with multi-step ``layer.Linear`` and ``neuron.LIFNode``
    (``tau = 1 / (1 - beta)``, ``decay_input=False``, ``v_reset=None``: subtract reset).
    ``neuron_kwargs`` select the backend on SpikingJelly versions that take one."""

    def __init__(self, wl: Workload, neuron_kwargs: dict | None = None):
        super().__init__()
        from spikingjelly.activation_based import layer, neuron, surrogate

        layers = []
        for i, o, spiking in _layer_widths(wl):
            layers.append(layer.Linear(i, o, step_mode="m"))
            if spiking:
                layers.append(neuron.LIFNode(tau=1.0 / (1.0 - BETA), decay_input=False, v_threshold=THRESHOLD,
                                             v_reset=None, surrogate_function=surrogate.ATan(alpha=2.0),
                                             detach_reset=True, step_mode="m", **(neuron_kwargs or {})))
        self.net = nn.Sequential(*layers)
        self.readout = wl.readout

    def forward(self, x):
        from spikingjelly.activation_based import functional

        functional.reset_net(self.net)
        out = self.net(x)
        return out.sum(0) if self.readout else out


def _spikingjelly_backend(wl: Workload, device: torch.device) -> tuple[dict, str]:
    """``(LIFNode keyword arguments, backend name)`` of SpikingJelly's best LIF backend on
    ``device``.  Versions up to 0.0.0.0.15 take a ``backend`` argument: ``"cupy"`` on CUDA
    when it runs, else ``"torch"``.  2.x picks the implementation itself (on CUDA: its CUDA
    kernels, then Triton, then torch; the ``SJ_LIF_CUDA_IMPLEMENTATION`` environment
    variable overrides) and reports it through ``functional.neuron_implementation``."""
    from spikingjelly.activation_based import functional, neuron

    if "backend" in inspect.signature(neuron.LIFNode.__init__).parameters:
        candidates = ("cupy", "torch") if device.type == "cuda" else ("torch",)
        tiny = replace(wl, sizes=(2, 2), steps=2, batch=1, readout=False)
        for backend in candidates:
            try:
                net = SpikingJellyNet(tiny, {"backend": backend}).to(device)
                net(torch.ones(2, 1, 2, device=device)).sum().backward()
                return {"backend": backend}, backend
            except Exception as exc:  # noqa: BLE001 - a missing optional backend fails in many ways
                log.info("SpikingJelly backend %s is not usable on %s: %s", backend, device, exc)
        raise RuntimeError(f"no SpikingJelly LIF backend ran on {device}")
    if hasattr(functional, "neuron_implementation"):
        return {}, str(functional.neuron_implementation("lif", device)["implementation"])
    return {}, "torch"


# ---------------------------------------------------------------- implementations

@dataclass
class _Impl:
    """One implementation under test: its parameters' owner, how to run it, and its results."""

    name: str
    backend: str = ""
    params: nn.Module | None = None
    forward: Callable | None = None
    note: str = ""
    optimizer: torch.optim.Optimizer | None = None
    initial: dict = field(default_factory=dict)
    step_s: list = field(default_factory=list)
    backward_s: list = field(default_factory=list)
    saved_bytes: int = 0
    cuda_peak_bytes: int | None = None


def _copy_linears(source: Sequence[nn.Linear], model: nn.Module) -> None:
    targets = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if len(targets) != len(source):
        raise RuntimeError(f"expected {len(source)} Linear layers, found {len(targets)}")
    with torch.no_grad():
        for src, dst in zip(source, targets):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)


def _kernel_backend(op: str, device: torch.device) -> str:
    return kernels.status().get(op, {}).get(device.type, "?")


_SNNOPT_OPS = {"dense": "neuron_scan", "sparse": "neuron_scan_sparse", "rate": "neuron_rate_stats"}


def _build(name: str, wl: Workload, linears, x: torch.Tensor, device: torch.device) -> _Impl:
    """Build implementation ``name`` on ``device`` with the weights of ``linears``; a foreign
    library that is missing or fails to build gives a row with a note instead."""
    impl = _Impl(name)
    if name in ("snntorch", "spikingjelly"):
        try:
            importlib.import_module(name)
        except ImportError:
            impl.note = f"skipped: {name} is not installed"
            log.warning("%s", impl.note)
            return impl
        try:
            if name == "snntorch":
                model, impl.backend = SnnTorchNet(wl), "eager"
            else:
                kwargs, impl.backend = _spikingjelly_backend(wl, device)
                model = SpikingJellyNet(wl, kwargs)
        except Exception as exc:  # noqa: BLE001 - another library's failure must not stop the benchmark
            impl.note = f"skipped: {type(exc).__name__}: {exc}"
            log.warning("%s: %s", name, impl.note, exc_info=True)
            return impl
        _copy_linears(linears, model)
        impl.params = model.to(device)
        impl.forward = model
    else:
        mode = name.split()[-1]
        model = SnnoptNet(wl)
        _copy_linears(linears, model)
        model.to(device)
        compiled = snn_compile(model, mode=mode, example_inputs=(x,), band=BAND)
        impl.params, impl.forward = model, compiled
        impl.backend = f"{compiled.report.mode}, {_kernel_backend(_SNNOPT_OPS[mode], device)}"
    impl.optimizer = torch.optim.Adam(impl.params.parameters(), lr=LR)
    impl.initial = {k: v.detach().clone() for k, v in impl.params.state_dict().items()}
    return impl


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _restore(impl: _Impl) -> None:
    with torch.no_grad():
        for k, v in impl.params.state_dict().items():
            v.copy_(impl.initial[k])


def _train_step(impl: _Impl, wl: Workload, x, y, device: torch.device) -> tuple[float, float]:
    """One training step from the initial weights: ``(step seconds, backward seconds)``."""
    _restore(impl)
    _sync(device)
    t0 = time.perf_counter()
    impl.optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(wl, impl.forward(x), y)
    _sync(device)
    t1 = time.perf_counter()
    loss.backward()
    _sync(device)
    t2 = time.perf_counter()
    impl.optimizer.step()
    _sync(device)
    return time.perf_counter() - t0, t2 - t1


def _measure_memory(impl: _Impl, wl: Workload, x, y, device: torch.device) -> None:
    """Saved-for-backward bytes of one training forward and, on CUDA, the step's peak."""
    _restore(impl)
    impl.optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    with SavedTensorMeter() as meter:
        loss = loss_fn(wl, impl.forward(x), y)
    loss.backward()
    impl.optimizer.step()
    impl.saved_bytes = meter.bytes
    if device.type == "cuda":
        _sync(device)
        impl.cuda_peak_bytes = torch.cuda.max_memory_allocated(device) - base


def _row(impl: _Impl) -> dict:
    ran = impl.forward is not None
    return {
        "impl": impl.name,
        "backend": impl.backend,
        "note": impl.note,
        "step_s": statistics.median(impl.step_s) if ran else None,
        "backward_s": statistics.median(impl.backward_s) if ran else None,
        "saved_bytes": impl.saved_bytes if ran else None,
        "cuda_peak_bytes": impl.cuda_peak_bytes,
    }


# ---------------------------------------------------------------- runner

def device_name(device: str | torch.device) -> str:
    """The GPU's name, or the CPU model (``/proc/cpuinfo`` on Linux, else :mod:`platform`)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def _versions() -> dict:
    versions = {"torch": torch.__version__, "snnopt": __version__}
    for name in ("snntorch", "spikingjelly"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def run_bench(workload_name: str = "shd", device: str | torch.device | None = None, repeats: int = 5,
              warmup: int = 2, quick: bool = False, threads: int | None = None, neurons: int | None = None,
              steps: int | None = None, batch_size: int | None = None, seed: int = 0,
              impls: Sequence[str] = IMPLS, progress: bool = False) -> dict:
    """Benchmark one workload (:func:`workload`) for each of ``impls`` and return the results.

    ``device`` defaults to CUDA when available.  ``threads`` sets ``torch.set_num_threads``
    for the run (restored afterwards).  The result holds ``date``, ``device``,
    ``device_name``, ``threads``, ``workload`` (a :class:`Workload`), ``repeats``,
    ``versions`` and ``rows``: one dict per implementation with ``impl``, ``backend``,
    ``note`` (why a row has no numbers), ``step_s``, ``backward_s``, ``saved_bytes`` and
    ``cuda_peak_bytes`` (see the module docstring; ``None`` where not measured).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    unknown = [n for n in impls if n not in IMPLS]
    if unknown:
        raise ValueError(f"implementations must be among {IMPLS}, got {unknown}")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but torch.cuda.is_available() is False")
    wl = workload(workload_name, device, quick=quick, neurons=neurons, steps=steps, batch_size=batch_size)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        x, y = make_batch(wl, seed, device)
        linears = initial_linears(wl, seed)
        built = []
        for name in impls:
            log.info("building %s for %s", name, wl.describe())
            built.append(_build(name, wl, linears, x, device))
        runnable = [impl for impl in built if impl.forward is not None]
        with tqdm(total=len(runnable) * (warmup + 1 + repeats), disable=not progress, unit="step",
                  dynamic_ncols=True, desc=wl.name) as bar:
            for impl in runnable:
                for _ in range(warmup):
                    _train_step(impl, wl, x, y, device)
                    bar.update()
                _measure_memory(impl, wl, x, y, device)
                bar.update()
            for _ in range(repeats):
                for impl in runnable:
                    step_s, backward_s = _train_step(impl, wl, x, y, device)
                    impl.step_s.append(step_s)
                    impl.backward_s.append(backward_s)
                    bar.update()
        result = {
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "device": device.type,
            "device_name": device_name(device),
            "threads": torch.get_num_threads(),
            "workload": wl,
            "repeats": repeats,
            "versions": _versions(),
            "rows": [_row(impl) for impl in built],
        }
    finally:
        torch.set_num_threads(previous_threads)
    for row in result["rows"]:
        if row["step_s"] is not None:
            log.info("%s: step %.2f ms, backward %.2f ms, saved %.2f MiB", row["impl"], row["step_s"] * 1e3,
                     row["backward_s"] * 1e3, row["saved_bytes"] / 2**20)
    return result


# ---------------------------------------------------------------- tables

def _speedup(base: dict | None, row: dict, key: str) -> str:
    """``base[key] / row[key]``: > 1 when the row is faster than the base."""
    if base is None or row[key] is None or base[key] is None or not row[key] > 0:
        return "-"
    return f"{base[key] / row[key]:.2f}"


def table_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the result table.  ``x`` columns are speedups: the time of the
    named baseline divided by the row's time (> 1: the row is faster)."""
    rows = result["rows"]
    snntorch = next((r for r in rows if r["impl"] == "snntorch" and r["step_s"] is not None), None)
    dense = next((r for r in rows if r["impl"] == "snnopt dense" and r["step_s"] is not None
                  and r["backend"].startswith("dense")), None)
    cuda = any(r["cuda_peak_bytes"] is not None for r in rows)
    header = ["impl", "backend", "step ms", "backward ms", "saved MiB"] + (["CUDA peak MiB"] if cuda else []) + \
        ["step x vs snnTorch", "step x vs snnopt dense", "backward x vs snnopt dense"]
    body = []
    for r in rows:
        if r["step_s"] is None:
            body.append([r["impl"], r["note"] or r["backend"]] + ["-"] * (len(header) - 2))
            continue
        cells = [r["impl"], r["backend"], f"{r['step_s'] * 1e3:.2f}", f"{r['backward_s'] * 1e3:.2f}",
                 f"{r['saved_bytes'] / 2**20:.2f}"]
        if cuda:
            cells.append("-" if r["cuda_peak_bytes"] is None else f"{r['cuda_peak_bytes'] / 2**20:.1f}")
        cells += [_speedup(snntorch, r, "step_s"), _speedup(dense, r, "step_s"), _speedup(dense, r, "backward_s")]
        body.append(cells)
    return header, body


def format_table(result: dict) -> str:
    """The result as a text table (``impl`` and ``backend`` left-aligned, numbers right-aligned)."""
    header, body = table_rows(result)
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]

    def line(cells):
        return " | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(header), rule] + [line(c) for c in body])


def describe_run(result: dict) -> str:
    """One line naming the date, device, threads, workload and repeats of a result."""
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    return (f"{result['date']}, {result['device']}: {result['device_name']}, {result['threads']} threads; "
            f"{result['workload'].describe()}; median of {result['repeats']} steps; {versions}")


RESULTS_HEADER = """\
# Benchmark results

Rows appended by `snnopt bench` (`python -m bench.run`), one block per run, newest last.
Each block names the date, the device (CPU model or GPU name), the number of torch threads,
the workload sizes and the library versions.  All implementations train the same network
from the same initial weights on the same input, in one process.  Workloads: `shd`, an
SHD-like MLP 700-N-N-20 on 2% input spikes (T=100, B=64 on CPU; T=500, B=256 on GPU);
`linear`, one Linear+LIF layer with 4096 neurons, T=500, B=16 (the Open Neuromorphic
library benchmark).  The conv net on N-MNIST-sized input is not included yet.

Rows:

- `snntorch`: `snntorch.Leaky` cells in a per-step Python loop (eager);
- `spikingjelly`: multi-step `layer.Linear` + `neuron.LIFNode`, on the backend named in
  the `backend` column (SpikingJelly picks its best one for the device);
- `snnopt dense` / `sparse` / `rate`: `snnopt.compile` of a model with `snnopt.nn.LIF`;
  the `backend` column gives the compiled mode and the kernel backend of its neuron op.

Columns:

- `step ms`: one training step (zero_grad, forward, loss, backward, Adam step), median
  over the repeats; `backward ms`: `loss.backward()` alone, median over the same steps;
- `saved MiB`: what autograd saved for backward in one training forward (parameters not
  counted); `CUDA peak MiB` (GPU runs only): peak allocation during a step above what was
  allocated before it;
- `step x vs snnTorch`, `step x vs snnopt dense`, `backward x vs snnopt dense`: speedups,
  the baseline's time divided by the row's (> 1: the row is faster).

On a CPU only the ratios are meaningful, not the absolute times: they depend on the
core count, the other load of the machine and the BLAS build.  Absolute times are
quoted from GPUs.
"""


def results_block(result: dict) -> str:
    """The Markdown block :func:`append_results` writes: a dated heading, the run's
    description and the table."""
    header, body = table_rows(result)
    aligns = ["---" if i < 2 else "---:" for i in range(len(header))]
    lines = [f"## {result['date']} · {result['workload'].name} · {result['device_name']}",
             "", describe_run(result), "",
             "| " + " | ".join(header) + " |", "| " + " | ".join(aligns) + " |"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def default_results_path() -> Path:
    """``bench/RESULTS.md`` of the source checkout snnopt runs from, else of the current
    directory."""
    checkout = Path(__file__).resolve().parent.parent / "bench" / "RESULTS.md"
    return checkout if checkout.exists() else Path("bench") / "RESULTS.md"


def append_results(result: dict, path: str | Path | None = None) -> Path:
    """Append :func:`results_block` of ``result`` to ``path`` (default
    :func:`default_results_path`), creating the file with :data:`RESULTS_HEADER`."""
    path = Path(path) if path is not None else default_results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", encoding="utf-8") as f:
        if new:
            f.write(RESULTS_HEADER)
        f.write("\n" + results_block(result))
    log.info("appended %s results to %s", result["workload"].name, path)
    return path
