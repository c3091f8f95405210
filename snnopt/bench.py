"""Training-step benchmarks: snnopt's modes against snnTorch and SpikingJelly, side by side.

For one workload, five implementations of the same network train in the same process:

``snntorch``          ``snntorch.Leaky`` cells in a per-step Python loop, tutorial style (eager)
``spikingjelly``      multi-step (``step_mode="m"``) ``layer.Linear`` / ``layer.Conv2d`` /
                      ``layer.AvgPool2d`` + ``neuron.LIFNode`` on the best backend SpikingJelly has
                      for the device (the ``backend`` column says which ran)
``snnopt dense``      ``snnopt.compile(model, mode="dense", ...)`` of a plain model with ``snnopt.nn.LIF``
                      (a time-distributed ``Conv2d`` written
                      ``torch.unflatten(conv(torch.flatten(x, 0, 1)), 0, (T, B))``, the pattern
                      snnopt fuses with the neuron it drives)
``snnopt sparse``     the same with ``mode="sparse"`` (band 0.05)
``snnopt rate``       the same with ``mode="rate"``

All start from the same initial weights (the ``Conv2d`` and ``Linear`` weights are copied),
see the same input and labels, use the same loss and Adam (:func:`snnopt.optim.adam`: the
fused form where the device has it).  Every neuron has the same dynamics up to each
library's conventions: ``beta`` (SpikingJelly ``tau = 1 / (1 - beta)``,
no input decay), threshold 1, subtract reset, detached reset (snnTorch's only choice and
what sparse mode assumes), atan surrogate (alpha 2).  snnTorch applies the reset one step
later than the others (its ``reset_delay``), which shifts some spikes but not the cost.

What is measured, per implementation (:func:`run_bench`):

``step_s``       wall time of one training step (``zero_grad``, forward, loss, ``backward``,
                 ``optimizer.step``), median over the repeats
``backward_s``   wall time of ``loss.backward()`` alone, median over the same steps
``saved_bytes``  bytes autograd holds for backward at the end of one training forward
                 (``kept_bytes`` of :class:`~snnopt.profiling.SavedTensorMeter`: distinct
                 storages, parameters not counted)
``cuda_peak_bytes``  on CUDA: peak of ``torch.cuda.max_memory_allocated`` during one step,
                 above what was allocated before it (weights, optimizer state and input
                 are in that baseline; gradients and everything kept for backward are not)

Warm-up steps (compilation happens before them, at ``snnopt.compile``) run before any
timing; the repeats then go round-robin over the implementations, so slow drifts of the
machine hit all of them alike.  Every step starts from the initial weights (restored
outside the timed region), so each repeat times the same step.  On CUDA the timed
regions are bracketed by ``torch.cuda.synchronize``.  On a CPU only the ratios between
rows are meaningful, not the absolute times.

:func:`run_sweep` measures rate mode's target (at T = 32 a training step at least 3x
faster than dense BPTT, saved memory flat in T): ``snnopt dense`` and ``snnopt rate`` alone,
at several T, with the same measurements.
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
from .optim import adam
from .profiling import SavedTensorMeter

log = logging.getLogger(__name__)

IMPLS = ("snntorch", "spikingjelly", "snnopt dense", "snnopt sparse", "snnopt rate")
WORKLOADS = ("shd", "conv", "linear")
SWEEP_IMPLS = ("snnopt dense", "snnopt rate")
BETA = 0.9
THRESHOLD = 1.0
BAND = 0.05
LR = 1e-3
POOL = 2


@dataclass(frozen=True)
class Workload:
    """One benchmark network and its input.

    ``sizes`` are the widths of the ``Linear`` layers, input first.  With ``conv`` (the
    channels of the ``Conv2d`` layers, input channels first) the network starts with
    ``Conv2d(kernel) -> LIF -> AvgPool2d(2)`` blocks on ``[T, B, conv[0], image, image]``
    input, flattened into the ``Linear`` layers (``sizes[0]`` is then the flattened size).
    With ``readout`` the last ``Linear`` is a non-spiking readout whose output, summed over
    time, gives the logits for a cross-entropy loss against random labels; without it
    every ``Linear`` feeds a LIF layer and the loss is the sum of the output spikes.
    ``input_activity`` > 0: Bernoulli spikes with that probability; 0: standard normal
    currents.  ``gains`` multiply the default initial weights of the first layers (convs
    first), so that the hidden layers fire at a realistic rate.
    """

    name: str
    title: str
    sizes: tuple[int, ...]
    steps: int
    batch: int
    readout: bool
    input_activity: float = 0.0
    gains: tuple[float, ...] = ()
    conv: tuple[int, ...] = ()
    image: int = 0
    kernel: int = 5

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one time step of one sample."""
        return (self.conv[0], self.image, self.image) if self.conv else (self.sizes[0],)

    def describe(self, steps: str | None = None) -> str:
        """Title, layer sizes, T (or ``steps``, e.g. the T of a sweep), B and the input."""
        if self.conv:
            blocks = "".join(f"-{c}c{self.kernel}-ap{POOL}" for c in self.conv[1:])
            net = f"{self.conv[0]}x{self.image}x{self.image}{blocks}-" + "-".join(map(str, self.sizes[1:]))
        else:
            net = "-".join(map(str, self.sizes))
        inp = f"input spikes p={self.input_activity:g}" if self.input_activity > 0 else "input N(0, 1)"
        return f"{self.title} {net}, T={steps or self.steps}, B={self.batch}, {inp}"


def _conv_features(channels: Sequence[int], image: int, kernel: int) -> int:
    """Flattened size after the ``Conv2d(kernel)`` (no padding) + ``AvgPool2d(2)`` blocks."""
    for _ in channels[1:]:
        image = (image - kernel + 1) // POOL
    return channels[-1] * image * image


def workload(name: str, device: str | torch.device = "cpu", quick: bool = False, neurons: int | None = None,
             steps: int | None = None, batch_size: int | None = None) -> Workload:
    """The canonical workload ``name`` for ``device`` (sizes differ between CPU and GPU).

    ``"shd"``     SHD-like MLP 700-N-N-20 (N = 256), input 2% Bernoulli spikes, T = 100 and
                  B = 64 on CPU, T = 500 and B = 256 on GPU; cross-entropy on the readout;
                  weight gains 6 and 3 on the hidden layers, which then fire at about 5%
    ``"conv"``    conv net on N-MNIST-sized input [T, B, 2, 34, 34], 5% Bernoulli spikes:
                  Conv2d(2, 12, 5) -> LIF -> AvgPool2d(2) -> Conv2d(12, 32, 5) -> LIF ->
                  AvgPool2d(2) -> Flatten -> Linear(800, 10) readout, cross-entropy; T = 32,
                  B = 16 on CPU and 128 on GPU; weight gain 4 on both convs, whose LIF
                  layers then fire at about 5%
    ``"linear"``  one ``Linear`` (N -> N) + LIF layer, N = 4096, T = 500, B = 16, normal input,
                  loss = sum of the output spikes (the Open Neuromorphic library benchmark)

    ``quick`` gives tiny sizes for tests and smoke runs; ``neurons``, ``steps`` and
    ``batch_size`` override N (not for ``"conv"``), T and B.
    """
    gpu = torch.device(device).type == "cuda"
    if name == "shd":
        n = 16 if quick else 256
        wl = Workload("shd", "SHD-like MLP", (40 if quick else 700, n, n, 5 if quick else 20),
                      steps=10 if quick else (500 if gpu else 100), batch=4 if quick else (256 if gpu else 64),
                      readout=True, input_activity=0.02, gains=(6.0, 3.0))
    elif name == "conv":
        channels = (2, 4, 8) if quick else (2, 12, 32)
        wl = Workload("conv", "N-MNIST-sized conv net", (_conv_features(channels, 34, 5), 5 if quick else 10),
                      steps=5 if quick else 32, batch=2 if quick else (128 if gpu else 16), readout=True,
                      input_activity=0.05, gains=(4.0, 4.0), conv=channels, image=34, kernel=5)
    elif name == "linear":
        n = 32 if quick else 4096
        wl = Workload("linear", "Linear+LIF", (n, n), steps=10 if quick else 500, batch=4 if quick else 16,
                      readout=False)
    else:
        raise ValueError(f"workload must be one of {WORKLOADS}, got {name!r}")
    if neurons is not None:
        if wl.conv:
            raise ValueError("the conv workload has no neurons-per-layer setting")
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


def _conv_channels(wl: Workload) -> list[tuple[int, int]]:
    """``(in, out)`` channels per ``Conv2d`` (each feeds a LIF layer)."""
    return list(zip(wl.conv[:-1], wl.conv[1:]))


def initial_layers(wl: Workload, seed: int) -> list[nn.Module]:
    """The ``Conv2d`` and ``Linear`` layers every implementation starts from, in network
    order: PyTorch's default initialisation from ``seed``, the first weights multiplied by
    ``wl.gains``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers = [nn.Conv2d(i, o, wl.kernel) for i, o in _conv_channels(wl)]
        layers += [nn.Linear(i, o) for i, o, _ in _layer_widths(wl)]
    with torch.no_grad():
        for layer, gain in zip(layers, wl.gains):
            layer.weight.mul_(gain)
    return layers


def make_batch(wl: Workload, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Time-major input ``[T, B, *wl.input_shape]`` and random labels ``[B]`` (labels only
    matter with a readout)."""
    gen = torch.Generator().manual_seed(seed + 1)
    shape = (wl.steps, wl.batch) + wl.input_shape
    if wl.input_activity > 0:
        x = (torch.rand(shape, generator=gen) < wl.input_activity).float()
    else:
        x = torch.randn(shape, generator=gen)
    y = torch.randint(wl.sizes[-1], (wl.batch,), generator=gen)
    return x.to(device), y.to(device)


def loss_fn(wl: Workload, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the logits with a readout, else the sum of the output spikes."""
    return F.cross_entropy(out, y) if wl.readout else out.sum()


def _snnopt_lif() -> LIF:
    return LIF(beta=BETA, threshold=THRESHOLD, reset="subtract", detach_reset=True, surrogate="atan")


def _snntorch_leaky():
    import snntorch
    from snntorch import surrogate

    return snntorch.Leaky(beta=BETA, threshold=THRESHOLD, reset_mechanism="subtract",
                          spike_grad=surrogate.atan(alpha=2.0))


def _spikingjelly_lif(neuron_kwargs: dict | None):
    from spikingjelly.activation_based import neuron, surrogate

    return neuron.LIFNode(tau=1.0 / (1.0 - BETA), decay_input=False, v_threshold=THRESHOLD, v_reset=None,
                          surrogate_function=surrogate.ATan(alpha=2.0), detach_reset=True, step_mode="m",
                          **(neuron_kwargs or {}))


class SnnoptNet(nn.Module):
    """The plain multi-step model snnopt compiles: ``Linear -> LIF`` layers (and a readout
    ``Linear`` summed over time)."""

    def __init__(self, wl: Workload):
        super().__init__()
        layers = []
        for i, o, spiking in _layer_widths(wl):
            layers.append(nn.Linear(i, o))
            if spiking:
                layers.append(_snnopt_lif())
        self.net = nn.Sequential(*layers)
        self.readout = wl.readout

    def forward(self, x):
        out = self.net(x)
        return out.sum(0) if self.readout else out


class SnnoptConvNet(nn.Module):
    """The plain multi-step conv model snnopt compiles: time-distributed ``Conv2d -> LIF ->
    AvgPool2d`` blocks (``torch.flatten(x, 0, 1)`` / ``torch.unflatten(y, 0, (T, B))`` around
    the per-sample layers: the function form is the one snnopt fuses into a Conv2d region),
    then a readout ``Linear`` summed over time."""

    def __init__(self, wl: Workload):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(i, o, wl.kernel) for i, o in _conv_channels(wl))
        self.lifs = nn.ModuleList(_snnopt_lif() for _ in self.convs)
        self.pool = nn.AvgPool2d(POOL)
        self.fc = nn.Linear(*wl.sizes)

    def forward(self, x):
        T, B = x.shape[:2]
        h = x
        for conv, lif in zip(self.convs, self.lifs):
            s = lif(torch.unflatten(conv(torch.flatten(h, 0, 1)), 0, (T, B)))
            h = torch.unflatten(self.pool(torch.flatten(s, 0, 1)), 0, (T, B))
        return self.fc(h.flatten(2)).sum(0)


class SnnTorchNet(nn.Module):
    """The same network with ``snntorch.Leaky`` cells, stepped through time in Python."""

    def __init__(self, wl: Workload):
        super().__init__()
        widths = _layer_widths(wl)
        self.fcs = nn.ModuleList(nn.Linear(i, o) for i, o, _ in widths)
        self.lifs = nn.ModuleList(_snntorch_leaky() for _, _, spiking in widths if spiking)
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


class SnnTorchConvNet(nn.Module):
    """The conv network with ``snntorch.Leaky`` cells, stepped through time in Python
    (snnTorch's N-MNIST tutorial style)."""

    def __init__(self, wl: Workload):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(i, o, wl.kernel) for i, o in _conv_channels(wl))
        self.lifs = nn.ModuleList(_snntorch_leaky() for _ in self.convs)
        self.pool = nn.AvgPool2d(POOL)
        self.fc = nn.Linear(*wl.sizes)

    def forward(self, x):
        mems = [lif.reset_mem() for lif in self.lifs]
        outs = []
        for t in range(x.shape[0]):
            h = x[t]
            for k, (conv, lif) in enumerate(zip(self.convs, self.lifs)):
                s, mems[k] = lif(conv(h), mems[k])
                h = self.pool(s)
            outs.append(self.fc(h.flatten(1)))
        return torch.stack(outs).sum(0)


class SpikingJellyNet(nn.Module):
    """The same network with multi-step ``layer.Linear`` and ``neuron.LIFNode``
    (``tau = 1 / (1 - beta)``, ``decay_input=False``, ``v_reset=None``: subtract reset).
    ``neuron_kwargs`` select the backend on SpikingJelly versions that take one."""

    def __init__(self, wl: Workload, neuron_kwargs: dict | None = None):
        super().__init__()
        from spikingjelly.activation_based import layer

        layers = []
        for i, o, spiking in _layer_widths(wl):
            layers.append(layer.Linear(i, o, step_mode="m"))
            if spiking:
                layers.append(_spikingjelly_lif(neuron_kwargs))
        self.net = nn.Sequential(*layers)
        self.readout = wl.readout

    def forward(self, x):
        from spikingjelly.activation_based import functional

        functional.reset_net(self.net)
        out = self.net(x)
        return out.sum(0) if self.readout else out


class SpikingJellyConvNet(nn.Module):
    """The conv network with multi-step ``layer.Conv2d``, ``neuron.LIFNode``,
    ``layer.AvgPool2d``, ``layer.Flatten`` and ``layer.Linear`` (as :class:`SpikingJellyNet`)."""

    def __init__(self, wl: Workload, neuron_kwargs: dict | None = None):
        super().__init__()
        from spikingjelly.activation_based import layer

        layers = []
        for i, o in _conv_channels(wl):
            layers += [layer.Conv2d(i, o, wl.kernel, step_mode="m"), _spikingjelly_lif(neuron_kwargs),
                       layer.AvgPool2d(POOL, step_mode="m")]
        layers += [layer.Flatten(step_mode="m"), layer.Linear(*wl.sizes, step_mode="m")]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        from spikingjelly.activation_based import functional

        functional.reset_net(self.net)
        return self.net(x).sum(0)


def _network(name: str, wl: Workload, neuron_kwargs: dict | None = None) -> nn.Module:
    """The model of implementation ``name`` (``"snnopt"`` for the one snnopt compiles)."""
    if name == "snntorch":
        return (SnnTorchConvNet if wl.conv else SnnTorchNet)(wl)
    if name == "spikingjelly":
        return (SpikingJellyConvNet if wl.conv else SpikingJellyNet)(wl, neuron_kwargs)
    return (SnnoptConvNet if wl.conv else SnnoptNet)(wl)


def _spikingjelly_backend(device: torch.device) -> tuple[dict, str]:
    """``(LIFNode keyword arguments, backend name)`` of SpikingJelly's best LIF backend on
    ``device``.  Versions up to 0.0.0.0.15 take a ``backend`` argument: ``"cupy"`` on CUDA
    when it runs, else ``"torch"``.  2.x picks the implementation itself (on CUDA: its CUDA
    kernels, then Triton, then torch; the ``SJ_LIF_CUDA_IMPLEMENTATION`` environment
    variable overrides) and reports it through ``functional.neuron_implementation``."""
    from spikingjelly.activation_based import functional, neuron

    if "backend" in inspect.signature(neuron.LIFNode.__init__).parameters:
        candidates = ("cupy", "torch") if device.type == "cuda" else ("torch",)
        tiny = Workload("probe", "probe", (2, 2), steps=2, batch=1, readout=False)
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


def _copy_layers(source: Sequence[nn.Module], model: nn.Module) -> None:
    """Copy the weights of ``source`` into the ``Conv2d`` and ``Linear`` layers of ``model``,
    which must be the same kinds of layer in the same order."""
    targets = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    kinds = [type(m).__name__ for m in source]
    if len(targets) != len(source) or not all(isinstance(d, type(s)) for s, d in zip(source, targets)):
        raise RuntimeError(f"expected layers {kinds}, found {[type(m).__name__ for m in targets]}")
    with torch.no_grad():
        for src, dst in zip(source, targets):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)


def _kernel_backend(op: str, device: torch.device) -> str:
    return kernels.status().get(op, {}).get(device.type, "?")


_SNNOPT_OPS = {"dense": "neuron_scan", "sparse": "neuron_scan_sparse", "rate": "neuron_rate_stats"}


def _build(name: str, wl: Workload, layers, x: torch.Tensor, device: torch.device) -> _Impl:
    """Build implementation ``name`` on ``device`` with the weights of ``layers``
    (:func:`initial_layers`); a foreign library that is missing or fails to build gives a
    row with a note instead."""
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
                model, impl.backend = _network(name, wl), "eager"
            else:
                kwargs, impl.backend = _spikingjelly_backend(device)
                model = _network(name, wl, kwargs)
        except Exception as exc:  # noqa: BLE001 - another library's failure must not stop the benchmark
            impl.note = f"skipped: {type(exc).__name__}: {exc}"
            log.warning("%s: %s", name, impl.note, exc_info=True)
            return impl
        _copy_layers(layers, model)
        impl.params = model.to(device)
        impl.forward = model
    else:
        mode = name.split()[-1]
        model = _network("snnopt", wl)
        _copy_layers(layers, model)
        model.to(device)
        compiled = snn_compile(model, mode=mode, example_inputs=(x,), band=BAND)
        impl.params, impl.forward = model, compiled
        impl.backend = f"{compiled.report.mode}, {_kernel_backend(_SNNOPT_OPS[mode], device)}"
    impl.optimizer = adam(impl.params.parameters(), lr=LR)
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
    """Bytes autograd holds for backward once the training forward is done (the graph of
    ``loss``) and, on CUDA, the step's peak."""
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
    impl.saved_bytes = meter.kept_bytes
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
        layers = initial_layers(wl, seed)
        built = []
        for name in impls:
            log.info("building %s for %s", name, wl.describe())
            built.append(_build(name, wl, layers, x, device))
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


def run_sweep(workload_name: str = "shd", steps: Sequence[int] = (4, 32, 100),
              device: str | torch.device | None = None, repeats: int = 5, warmup: int = 2, quick: bool = False,
              threads: int | None = None, neurons: int | None = None, batch_size: int | None = None, seed: int = 0,
              progress: bool = False) -> dict:
    """Rate mode's target (at T = 32 a training step >= 3x faster than dense BPTT, saved
    memory flat in T): :func:`run_bench` of :data:`SWEEP_IMPLS` (``snnopt dense`` and
    ``snnopt rate``) on workload ``workload_name`` once per T in ``steps``, same
    measurements.

    The result holds ``date``, ``device``, ``device_name``, ``threads``, ``workload`` (at
    the first T), ``repeats`` and ``versions`` as :func:`run_bench`'s, ``steps`` and
    ``runs``: the :func:`run_bench` result of each T, in the order of ``steps``.
    """
    steps = tuple(steps)
    if not steps or min(steps) < 1:
        raise ValueError(f"steps must be a non-empty list of positive T, got {steps}")
    runs = [run_bench(workload_name, device=device, repeats=repeats, warmup=warmup, quick=quick, threads=threads,
                      neurons=neurons, steps=t, batch_size=batch_size, seed=seed, impls=SWEEP_IMPLS,
                      progress=progress) for t in steps]
    keys = ("date", "device", "device_name", "threads", "workload", "repeats", "versions")
    return {**{k: runs[0][k] for k in keys}, "steps": steps, "runs": runs}


# ---------------------------------------------------------------- tables

def _speedup(base: dict | None, row: dict, key: str) -> str:
    """``base[key] / row[key]``: > 1 when the row is faster than the base."""
    if base is None or row is None or row[key] is None or base[key] is None or not row[key] > 0:
        return "-"
    return f"{base[key] / row[key]:.2f}"


def _mib(n: int | None, digits: int = 2) -> str:
    return "-" if n is None else f"{n / 2**20:.{digits}f}"


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
                 _mib(r["saved_bytes"])]
        if cuda:
            cells.append(_mib(r["cuda_peak_bytes"], 1))
        cells += [_speedup(snntorch, r, "step_s"), _speedup(dense, r, "step_s"), _speedup(dense, r, "backward_s")]
        body.append(cells)
    return header, body


def sweep_table_rows(sweep: dict) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the sweep table, one row per T: step times and saved memory of
    ``snnopt dense`` and ``snnopt rate``, and rate's speedup (dense time / rate time)."""
    cuda = any(r["cuda_peak_bytes"] is not None for run in sweep["runs"] for r in run["rows"])
    header = ["T", "dense step ms", "rate step ms", "rate step x vs dense", "rate backward x vs dense",
              "dense saved MiB", "rate saved MiB"] + (["dense CUDA peak MiB", "rate CUDA peak MiB"] if cuda else [])
    body = []
    for t, run in zip(sweep["steps"], sweep["runs"]):
        by_impl = {r["impl"]: r for r in run["rows"] if r["step_s"] is not None}
        dense, rate = by_impl.get("snnopt dense"), by_impl.get("snnopt rate")
        cells = [str(t)] + ["-" if r is None else f"{r['step_s'] * 1e3:.2f}" for r in (dense, rate)]
        cells += [_speedup(dense, rate, "step_s"), _speedup(dense, rate, "backward_s")]
        cells += [_mib(None if r is None else r["saved_bytes"]) for r in (dense, rate)]
        if cuda:
            cells += [_mib(None if r is None else r["cuda_peak_bytes"], 1) for r in (dense, rate)]
        body.append(cells)
    return header, body


def _text_table(header: list[str], body: list[list[str]], left: int) -> str:
    """A text table: the first ``left`` columns left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]

    def line(cells):
        return " | ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(header), rule] + [line(c) for c in body])


def _markdown_table(header: list[str], body: list[list[str]], left: int) -> list[str]:
    aligns = ["---" if i < left else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(aligns) + " |"]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def format_table(result: dict) -> str:
    """The result as a text table (``impl`` and ``backend`` left-aligned, numbers right-aligned)."""
    return _text_table(*table_rows(result), left=2)


def format_sweep(sweep: dict) -> str:
    """The sweep as a text table (:func:`sweep_table_rows`)."""
    return _text_table(*sweep_table_rows(sweep), left=0)


def _describe(result: dict, workload: str, measured: str) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    return (f"{result['date']}, {result['device']}: {result['device_name']}, {result['threads']} threads; "
            f"{workload}; {measured}median of {result['repeats']} steps; {versions}")


def describe_run(result: dict) -> str:
    """One line naming the date, device, threads, workload and repeats of a result."""
    return _describe(result, result["workload"].describe(), "")


def describe_sweep(sweep: dict) -> str:
    """One line naming the date, device, threads, workload, the T swept and the repeats of
    a sweep."""
    steps = "/".join(map(str, sweep["steps"]))
    return _describe(sweep, sweep["workload"].describe(steps=steps), "snnopt dense and rate; ")


RESULTS_HEADER = """\
# Benchmark results

Rows appended by `snnopt bench` (`python -m bench.run`), one block per run, newest last.
Each block names the date, the device (CPU model or GPU name), the number of torch threads,
the workload sizes (T, the number of time steps, among them) and the library versions.
All implementations train the same network from the same initial weights on the same
input, in one process.  Workloads: `shd`, an SHD-like MLP 700-N-N-20 on 2% input spikes
(T=100, B=64 on CPU; T=500, B=256 on GPU); `conv`, a conv net on N-MNIST-sized input
2x34x34 with 5% input spikes, Conv2d(12, 5x5)-LIF-AvgPool(2)-Conv2d(32, 5x5)-LIF-AvgPool(2)-
Linear(800, 10) readout (T=32; B=16 on CPU, 128 on GPU); `linear`, one Linear+LIF layer
with 4096 neurons, T=500, B=16 (the Open Neuromorphic library benchmark).

Rows:

- `snntorch`: `snntorch.Leaky` cells in a per-step Python loop (eager);
- `spikingjelly`: multi-step `layer.Linear` / `layer.Conv2d` / `layer.AvgPool2d` +
  `neuron.LIFNode`, on the backend named in the `backend` column (SpikingJelly picks its
  best one for the device);
- `snnopt dense` / `sparse` / `rate`: `snnopt.compile` of a model with `snnopt.nn.LIF`;
  the `backend` column gives the compiled mode and the kernel backend of its neuron op.

Columns:

- `step ms`: one training step (zero_grad, forward, loss, backward, Adam step; the same
  Adam, fused where the device has it, for every row), median
  over the repeats; `backward ms`: `loss.backward()` alone, median over the same steps;
- `saved MiB`: what autograd holds for backward after one training forward (distinct
  storages, parameters not counted); `CUDA peak MiB` (GPU runs only): peak allocation
  during a step above what was allocated before it;
- `step x vs snnTorch`, `step x vs snnopt dense`, `backward x vs snnopt dense`: speedups,
  the baseline's time divided by the row's (> 1: the row is faster).

T sweeps (`snnopt bench --sweep-steps 4,32,100`) measure rate mode's target, a training
step at least 3x faster than dense BPTT at T=32 with saved memory flat in T: `snnopt
dense` and `snnopt rate` alone, one row per T, the same measurements; `rate step x vs
dense` and `rate backward x vs dense` are dense's time divided by rate's.

On a CPU only the ratios are meaningful, not the absolute times: they depend on the
core count, the other load of the machine and the BLAS build.  Absolute times are
quoted from GPUs.
"""


def results_block(result: dict) -> str:
    """The Markdown block :func:`append_results` writes: a dated heading, the run's
    description and the table."""
    lines = [f"## {result['date']} · {result['workload'].name} · {result['device_name']}", "",
             describe_run(result), ""] + _markdown_table(*table_rows(result), left=2)
    return "\n".join(lines) + "\n"


def sweep_block(sweep: dict) -> str:
    """The Markdown block :func:`append_sweep` writes: a dated heading, the sweep's
    description and its table."""
    lines = [f"## {sweep['date']} · {sweep['workload'].name} T sweep · {sweep['device_name']}", "",
             describe_sweep(sweep), ""] + _markdown_table(*sweep_table_rows(sweep), left=0)
    return "\n".join(lines) + "\n"


def default_results_path() -> Path:
    """``bench/RESULTS.md`` of the source checkout snnopt runs from, else of the current
    directory."""
    checkout = Path(__file__).resolve().parent.parent / "bench" / "RESULTS.md"
    return checkout if checkout.exists() else Path("bench") / "RESULTS.md"


def _append(block: str, path: str | Path | None) -> Path:
    path = Path(path) if path is not None else default_results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", encoding="utf-8") as f:
        if new:
            f.write(RESULTS_HEADER)
        f.write("\n" + block)
    return path


def append_results(result: dict, path: str | Path | None = None) -> Path:
    """Append :func:`results_block` of ``result`` to ``path`` (default
    :func:`default_results_path`), creating the file with :data:`RESULTS_HEADER`."""
    path = _append(results_block(result), path)
    log.info("appended %s results to %s", result["workload"].name, path)
    return path


def append_sweep(sweep: dict, path: str | Path | None = None) -> Path:
    """Append :func:`sweep_block` of ``sweep`` to ``path``, as :func:`append_results`."""
    path = _append(sweep_block(sweep), path)
    log.info("appended %s T sweep to %s", sweep["workload"].name, path)
    return path
