"""NIR (Neuromorphic Intermediate Representation) export and import, through the ``nir`` package.

**Time.** NIR states continuous-time dynamics; a simulator integrates them with forward
Euler at a step ``dt`` (seconds) that the file does not fix, so ``dt`` is a required
argument of the export (it is also written to the graph's metadata as ``dt``, which
:func:`read` uses when no ``dt`` is given).  Each discrete population maps so that one
Euler step of the NIR equations *is* the discrete update of :mod:`snnopt.spec`:

=============  ===========================================================================
snnopt         NIR (Euler step ``dt``)
=============  ===========================================================================
``lif``        ``LIF``:  ``tau = dt / (1 - beta)``, ``r = scale * tau / dt``, ``v_leak = v_rest``
               — ``v <- v + dt/tau (v_leak - v + r x) = beta v + (1 - beta) v_rest + scale x``
``if``         ``IF``:   ``r = scale / dt`` — ``v <- v + dt r x = v + scale x``
               (a ``lif`` whose beta is 1 everywhere is written as ``IF`` too)
``li``         ``LI``:   as ``lif``, no threshold
``cuba_lif``   ``CubaLIF``: ``tau_syn = dt / (1 - alpha)``, ``w_in = input_scale tau_syn / dt``,
               ``tau_mem``, ``r`` as ``lif`` — ``I <- alpha I + input_scale x``,
               ``v <- beta v + ... + scale I``
``cuba_li``    ``CubaLI``: as ``cuba_lif``, no threshold
=============  ===========================================================================

``v_threshold = threshold``, ``v_reset = v_reset``; a per-neuron ``input_scale`` is folded
into ``r`` (into ``w_in`` for the current kinds), so the states ``v`` and ``I`` are NIR's
own.  ``beta = 0`` is ``tau = dt``; a ``lif`` with ``beta = 1`` in some neurons only is
refused (``tau`` and ``r`` would be infinite).  Neuron parameters are written as full-shape
float64 arrays, so the import (``beta = 1 - dt / tau``, ``scale = r dt / tau``, computed in
float64) gives back the float32 values bit for bit; the units of an imported current are
in :func:`neuron_from_nir`.  Synapses: ``Affine``/``Linear``, ``Conv1d``/``Conv2d`` (with
``input_shape``), ``SumPool2d``/``AvgPool2d``, ``Flatten`` (dims of the batchless shape),
``Scale``; shapes are batchless and channels-first.  A NIR graph holds an edge once: an
edge the network takes ``k`` times (``fc(s + s)``) is written through a ``Scale`` of ``k``
(the file then holds that extra node).  Cycles are allowed: the edge that
closes a cycle carries the previous step (see :mod:`snnopt.export.network`).  On import,
nested graphs are inlined: an edge may name a nested graph (it then reaches its Input /
leaves its Output nodes) or one of its nodes as ``graph.node``.

**What NIR cannot hold.**  NIR's neurons fire on ``v > v_threshold`` and then set ``v`` to
``v_reset`` in the same step.  snnopt writes only populations whose spikes that
reproduces exactly:

* ``reset="zero"`` with ``reset_timing="same"``; and ``"next"`` (snnTorch's default), whose
  spikes are identical because a zero reset applied at the next charge equals one applied
  right after the spike;
* ``fire=">"``;
* either ``current_decay`` (Norse's ``"after"`` carries ``alpha I_t`` where NIR carries
  ``I_t``; the spikes are the same).

For ``"next"`` and ``"after"`` only the *state* differs: the file reproduces the spikes
from rest exactly, but a state carried with it is in NIR's convention — the membrane
after the reset (``v_reset`` where the neuron fired; snnTorch keeps the membrane before
it) and the current ``I_t`` (``"after"`` carries ``alpha I_t``).  Without extensions
:func:`read` gives back ``reset_timing="same"`` / ``current_decay="before"`` and the export
logs a warning; with ``extensions=True`` the true fields go to ``snnopt_spec`` (below) and
the round trip is exact including states.

**Initial state.** NIR has no initial state: its neurons start at ``v = 0``.  A population
with an initial membrane ``v_init`` (SpikingJelly's neurons start at ``v_reset``) is
refused unless ``extensions=True``, which writes it as node metadata ``snnopt_v_init`` (a
full-shape float64 array) that :func:`read` honours; other readers start at 0.

Everything else — the **subtractive reset** above all, ``reset="none"``, ``fire=">="``,
snnTorch's ``reset_delay=False`` and input-discarding resets — is refused with a
:class:`~snnopt.export.network.NetworkError` that names the population and the options,
unless the export is called with ``extensions=True``: then the population is written
as the nearest NIR neuron *plus* node metadata ``snnopt_spec`` (a JSON object of the
:class:`~snnopt.spec.NeuronSpec` structure fields: ``reset``, ``reset_timing``, ``fire``,
``reset_discards_input``, ``current_decay``) that :func:`read` honours.  A reader that
ignores the metadata sees reset-to-``v_reset`` — the file's graph metadata lists every
extension and what other readers do instead (``snnopt_extensions``), and a warning is
logged at export.

**Order of float operations.** A population in Norse's Euler or SpikingJelly's divided form
(``NeuronSpec.integration``, see :mod:`snnopt.spec`) is written with the parameters above,
which state the same dynamics; NIR has no word for the order in which a step rounds, so
:func:`read` computes such a file in the decay form, and a membrane that lands within
rounding of the threshold may fire differently (the export logs a warning).  With
``extensions=True`` the form and its exact constants (``integration``, ``scale``, ``tau``,
the Euler form's ``alpha``) go to node metadata ``snnopt_form``, which :func:`read` honours
(after checking them against the node's time constants): the round trip is then exact in
float32.

**Convolutions.** ``nir`` 1.0.8 infers a Conv's types from ``weight.shape[1]`` input
channels and the first kernel dim only.  A grouped Conv is therefore written as the equal
ungrouped one (zero weights between the groups; a warning says so), and a non-square
kernel is refused: nir's type check and ``nir.read`` would reject the file.

Training fields (surrogate, its parameter, ``detach_reset``, learnable parameters) do not
change the forward dynamics; they always go to node metadata (``snnopt_train``) so a
round trip gives back a trainable model.  :func:`nirtorch_node_map` lets ``nirtorch``
build a per-step PyTorch graph of the same file with snnopt's modules (it keeps the
Affine bias and the Flatten dims that nirtorch's defaults get wrong).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from .. import surrogate as _surrogate
from ..spec import NeuronSpec
from . import network as N

log = logging.getLogger(__name__)

_TRAIN_FIELDS = ("detach_reset",)
_STRUCTURE_FIELDS = ("reset", "reset_timing", "fire", "reset_discards_input", "current_decay")
_FORM_ORDERS = {"euler": "Norse's Euler order of the charge", "tau": "SpikingJelly's divided order of the charge"}


def _nir():
    try:
        import nir
    except ImportError as exc:  # pragma: no cover - the export extra is a dependency of the tests
        raise ImportError("NIR export needs the `nir` package: pip install 'snnopt[export]'") from exc
    return nir


# -- export ---------------------------------------------------------------------------------

def to_nir(net: N.Network, dt: float, *, extensions: bool = False):
    """The ``nir.NIRGraph`` of ``net`` at time step ``dt`` seconds (see the module docstring);
    type-checked by ``nir`` before it is returned."""
    nir = _nir()
    dt = N.check_dt(dt)
    shapes = net.validate()
    nodes, extended = {}, []
    for name, node in net.nodes.items():
        in_shape = _input_shape(net, shapes, name)
        nodes[name] = _export_node(nir, name, node, in_shape, shapes[name], dt, extensions, extended)
    edges = _distinct_edges(nir, net, shapes, nodes)
    metadata = {"dt": dt, "snnopt_time_step": "euler"}
    metadata.update({k: v for k, v in net.metadata.items() if isinstance(v, (int, float, str)) and k != "dt"})
    if extended:
        metadata["snnopt_extensions"] = "node metadata snnopt_spec / snnopt_v_init / snnopt_form: " + "; ".join(
            extended)
        log.warning("NIR export with extensions (node metadata snnopt_spec / snnopt_v_init / snnopt_form) that "
                    "readers other than snnopt ignore: %s", "; ".join(extended))
    try:
        return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata, type_check=True)
    except Exception as exc:
        raise N.NetworkError(f"the NIR graph fails nir's type check: {exc}") from exc


def write(net: N.Network, path, dt: float | None = None, *, extensions: bool = False) -> Path:
    """Write ``net`` to the NIR (HDF5) file ``path``."""
    if dt is None:
        dt = net.metadata.get("dt")
    if dt is None:
        raise N.NetworkError("NIR export needs the time step: pass dt= in seconds (e.g. dt=1e-3); NIR states "
                             "continuous-time dynamics and each discrete step is one Euler step of length dt")
    graph = to_nir(net, dt, extensions=extensions)
    path = Path(path)
    _nir().write(path, graph)
    return path


def _distinct_edges(nir, net: N.Network, shapes: dict, nodes: dict) -> list:
    """``net``'s edges with each edge taken ``k > 1`` times (``fc(s + s)``) written once,
    through a ``Scale`` of ``k`` added to ``nodes``: a NIR graph holds an edge once."""
    counts = Counter(net.edges)
    edges = []
    for (src, dst), k in counts.items():
        if k == 1:
            edges.append((src, dst))
            continue
        name = f"{src}_times{k}_{dst}"
        nodes[name] = nir.Scale(scale=np.full(shapes[src], float(k), dtype=np.float32))
        edges += [(src, name), (name, dst)]
    return edges


def _input_shape(net, shapes, name):
    sources = net.predecessors(name)
    return shapes[sources[0]] if sources else shapes[name]


def _np(t, dtype=None) -> np.ndarray:
    a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    return a.astype(dtype) if dtype is not None else a.copy()


def _export_node(nir, name, node, in_shape, out_shape, dt, extensions, extended):
    if isinstance(node, N.Input):
        return nir.Input(input_type={"input": np.array(node.shape)})
    if isinstance(node, N.Output):
        return nir.Output(output_type={"output": np.array(out_shape)})
    if isinstance(node, N.Affine):
        if node.bias is None:
            return nir.Linear(weight=_np(node.weight))
        return nir.Affine(weight=_np(node.weight), bias=_np(node.bias))
    if isinstance(node, N.Conv):
        return _export_conv(nir, name, node, in_shape, out_shape)
    if isinstance(node, N.Pool):
        cls = nir.SumPool2d if node.mode == "sum" else nir.AvgPool2d
        return cls(kernel_size=np.array(node.kernel_size), stride=np.array(node.stride),
                   padding=np.array(node.padding))
    if isinstance(node, N.Flatten):
        return nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=node.start_dim, end_dim=node.end_dim)
    if isinstance(node, N.Scale):
        return nir.Scale(scale=_np(node.scale))
    if isinstance(node, N.Neuron):
        return _export_neuron(nir, name, node, dt, extensions, extended)
    raise N.NetworkError(f"node {name!r}: {type(node).__name__} has no NIR primitive")


def _export_conv(nir, name, node: N.Conv, in_shape, out_shape):
    """``nir.Conv1d``/``Conv2d``, checked against the types ``nir`` infers for it (nir 1.0.8
    counts ``weight.shape[1]`` input channels and reads the kernel size from the first
    kernel dim only): a grouped conv is written as the equal ungrouped one (zero weights
    between the groups); a non-square kernel is refused."""
    conv = _nir_conv(nir, node, in_shape, _np(node.weight), node.groups)
    if not _types_fit(conv, in_shape, out_shape) and node.groups > 1:
        conv = _nir_conv(nir, node, in_shape, _ungrouped(_np(node.weight), node.groups), 1)
        if _types_fit(conv, in_shape, out_shape):
            log.warning("NIR export: %r (a Conv with groups=%d) is written as an ungrouped Conv with zero weights "
                        "between the groups, as the nir package's shape inference does not hold groups", name,
                        node.groups)
    if not _types_fit(conv, in_shape, out_shape):
        inferred = tuple(int(d) for d in conv.output_type["output"])
        raise N.NetworkError(f"node {name!r}: a Conv with kernel {tuple(node.weight.shape[2:])} on input "
                             f"{tuple(in_shape)} gives {tuple(out_shape)}, but the nir package "
                             f"{getattr(nir, '__version__', '')} infers {inferred} (it "
                             "reads the kernel size from the first kernel dim), so nir's type check and nir.read "
                             "would reject the file; use a square kernel, or export to ONNX or the event graph, "
                             "which hold it")
    return conv


def _nir_conv(nir, node: N.Conv, in_shape, weight: np.ndarray, groups: int):
    bias = _np(node.bias) if node.bias is not None else np.zeros(weight.shape[0], weight.dtype)
    cls = nir.Conv1d if node.dims == 1 else nir.Conv2d
    spatial = in_shape[1] if node.dims == 1 else np.array(in_shape[1:])
    args = (node.stride, node.padding, node.dilation)
    if node.dims == 1:
        args = tuple(a[0] for a in args)
    else:
        args = tuple(np.array(a) for a in args)
    return cls(input_shape=spatial, weight=weight, stride=args[0], padding=args[1], dilation=args[2],
               groups=groups, bias=bias)


def _types_fit(conv, in_shape, out_shape) -> bool:
    return (tuple(np.asarray(conv.input_type["input"]).tolist()) == tuple(in_shape)
            and tuple(np.asarray(conv.output_type["output"]).tolist()) == tuple(out_shape))


def _ungrouped(weight: np.ndarray, groups: int) -> np.ndarray:
    """The weight ``[out, in / groups, *k]`` of a grouped conv as the weight ``[out, in, *k]``
    of the same map without groups: output channel block ``g`` reads input block ``g`` only."""
    n_out, per_in = weight.shape[:2]
    per_out = n_out // groups
    dense = np.zeros((n_out, per_in * groups, *weight.shape[2:]), weight.dtype)
    for g in range(groups):
        dense[g * per_out:(g + 1) * per_out, g * per_in:(g + 1) * per_in] = weight[g * per_out:(g + 1) * per_out]
    return dense


def _refusal(spec: NeuronSpec) -> str | None:
    """Why NIR cannot state ``spec`` exactly (None when it can)."""
    if not spec.spiking:
        return None
    if spec.fire != ">":
        return "it fires on v >= threshold and NIR's neurons fire on v > threshold"
    if spec.reset == "subtract":
        return "it has a subtractive reset (v <- v - threshold) and NIR's neurons reset to v_reset"
    if spec.reset == "none":
        return "it never resets and NIR's spiking neurons always reset to v_reset"
    if spec.reset_timing == "same_pending" or spec.reset_discards_input:
        return "its reset (snnTorch reset_delay=False or an input-discarding reset) is not NIR's reset-to-v_reset"
    return None


def _start_refusal(node: N.Neuron) -> str | None:
    """Why NIR cannot state the initial membrane of ``node`` (None when it is zero)."""
    if node.v_init is None:
        return None
    values = "" if node.uniform("v_init") is not None else " (and other values)"
    return (f"it starts from membrane v = {float(node.v_init.reshape(-1)[0]):g}{values} (its reset state, e.g. "
            "SpikingJelly's v_reset), not 0, and NIR has no initial state")


def _options(spec: NeuronSpec, node: N.Neuron) -> str:
    """The ways out of a refusal of population ``node``."""
    retrain = [("train with reset='zero' (snnopt.nn.LIF(reset='zero'), snnTorch reset_mechanism='zero', "
                "SpikingJelly v_reset=0.0)") if spec.reset == "subtract" else None,
               "train with v_reset=0" if node.v_init is not None else None]
    return "; ".join([r for r in retrain if r] + [
        "export to ONNX or the event graph, which keep it",
        "or pass extensions=True to write NIR's neuron plus snnopt metadata that snnopt's importer honours (other "
        "readers ignore it)"])


def _state_conventions(spec: NeuronSpec) -> list[str]:
    """The ways a state of ``spec`` differs from NIR's, for a population whose spikes from
    rest NIR's neuron reproduces (zero reset at the next step, current decayed after)."""
    notes = []
    if spec.spiking and spec.reset == "zero" and spec.reset_timing == "next":
        notes.append("reset_timing='next' (its state is the membrane before the reset, NIR's after it)")
    if spec.has_current and spec.current_decay == "after":
        notes.append("current_decay='after' (its state is the current alpha*(i + x), NIR's i = alpha*i + x)")
    return notes


def _neuron_metadata(name, node: N.Neuron, extensions: bool, extended: list) -> dict:
    """Node metadata of population ``name``: training fields, and with ``extensions`` the
    structure NIR cannot state (``snnopt_spec``) and the initial membrane (``snnopt_v_init``);
    refuses what the file could not reproduce without them."""
    spec = node.spec
    metadata = {"snnopt_train": json.dumps(_train_fields(spec))}
    why = _refusal(spec)
    problems = [p for p in (why, _start_refusal(node)) if p is not None]
    if problems and not extensions:
        raise N.NetworkError(f"population {name!r} cannot be written to NIR exactly: {'; and '.join(problems)}. "
                             f"Options: {_options(spec, node)}")
    notes = _state_conventions(spec)
    if notes and not extensions:
        log.warning("NIR export: population %r has %s: the file gives its spikes from rest exactly, but a state "
                    "carried with the file is in NIR's convention; pass extensions=True to keep it for snnopt's "
                    "importer", name, " and ".join(notes))
    if extensions and (why is not None or notes):
        metadata["snnopt_spec"] = json.dumps({f: getattr(spec, f) for f in _STRUCTURE_FIELDS})
        extended.append(f"{name}: " + ("dynamics NIR cannot state (others reset to v_reset on v > v_threshold)"
                                       if why is not None else "the state convention (others: same spikes from rest)"))
    if extensions and node.v_init is not None:
        metadata["snnopt_v_init"] = _np(node.v_init, np.float64)
        extended.append(f"{name}: the initial membrane (others start at 0)")
    if spec.integration != "decay":
        order = _FORM_ORDERS[spec.integration]
        if extensions:
            metadata["snnopt_form"] = json.dumps({"integration": spec.integration, "scale": spec.scale, "tau": spec.tau,
                                                  **{k: v for k, v in spec.form_fixed.items() if k == "alpha"}})
            extended.append(f"{name}: {order} (others: the same dynamics, rounded in the decay form)")
        else:
            log.warning("NIR export: population %r computes in %s; NIR states the dynamics, not the order of float "
                        "operations, so readers (snnopt's too) round it in the decay form, and a membrane within "
                        "rounding of the threshold may fire differently; pass extensions=True to keep the order for "
                        "snnopt's importer", name, order)
    return metadata


def _export_neuron(nir, name, node: N.Neuron, dt, extensions, extended):
    spec = node.spec
    metadata = _neuron_metadata(name, node, extensions, extended)
    f64 = np.float64
    scale = np.full(node.shape, spec.scale, f64)
    gain = _np(node.input_scale, f64) if node.input_scale is not None else np.ones(node.shape, f64)
    if not spec.has_current:  # a current kind takes the input gain in w_in, so its current is NIR's
        scale = scale * gain
    v_rest = np.full(node.shape, spec.v_rest, f64)
    kind = spec.kind
    beta = _np(node.beta, f64) if node.beta is not None else None
    if kind == "lif" and bool(np.all(beta == 1.0)):
        kind = "if"
    if kind == "if":
        r = scale / dt
    else:
        tau = _tau(name, "beta", beta, dt)
        r = scale * tau / dt
    params = {}
    if spec.spiking:
        params.update(v_threshold=_np(node.threshold, f64), v_reset=np.full(node.shape, spec.v_reset, f64))
    if kind == "if":
        return nir.IF(r=r, **params, metadata=metadata)
    if kind in ("lif", "li"):
        cls = nir.LIF if kind == "lif" else nir.LI
        return cls(tau=tau, r=r, v_leak=v_rest, **params, metadata=metadata)
    tau_syn = _tau(name, "alpha", _np(node.alpha, f64), dt)
    cls = nir.CubaLIF if kind == "cuba_lif" else nir.CubaLI
    return cls(tau_syn=tau_syn, tau_mem=tau, r=r, v_leak=v_rest, w_in=gain * tau_syn / dt, **params,
               metadata=metadata)


def _tau(name, what, decay: np.ndarray, dt: float) -> np.ndarray:
    """``tau = dt / (1 - decay)`` for a decay in ``[0, 1)`` (``decay = 0``: ``tau = dt``)."""
    ok = (decay >= 0) & (decay < 1)
    if bool(np.all(ok)):
        return dt / (1.0 - decay)
    if what == "beta" and bool(np.all(ok | (decay == 1))):
        raise N.NetworkError(f"population {name!r}: beta is 1 in {int(np.sum(decay == 1))} of its {decay.size} "
                             "neurons and below 1 in the others; NIR's LIF cannot hold beta = 1 (tau = dt / (1 - "
                             "beta) and r = tau / dt are infinite), and only a population whose beta is 1 everywhere "
                             "is written as IF. Options: split the population into a LIF and an IF one, give those "
                             "neurons a beta below 1, or export to ONNX or the event graph, which hold it")
    bad = decay[~ok].reshape(-1)[:3].tolist()
    raise N.NetworkError(f"population {name!r}: {what} must lie in [0, 1) for a NIR time constant "
                         f"tau = dt / (1 - {what}); found {bad}")


def _train_fields(spec: NeuronSpec) -> dict:
    return {"surrogate": spec.surrogate.name, "surrogate_param": spec.surrogate.param,
            "detach_reset": spec.detach_reset, "learnable": sorted(spec.learnable)}


# -- import ---------------------------------------------------------------------------------

def load(source):
    """``source`` (a path or a ``nir.NIRGraph``) as a ``nir.NIRGraph``, with errors that name the file."""
    nir = _nir()
    if isinstance(source, nir.NIRGraph):
        return source
    path = Path(source)
    if path.is_dir():
        raise N.NetworkError(_directory_message(path))
    if not path.is_file():
        raise N.NetworkError(f"NIR file {str(path)!r} does not exist")
    try:
        import h5py

        with h5py.File(path, "r") as f:
            if "node" not in f:
                raise N.NetworkError(f"{str(path)!r} is an HDF5 file but not a NIR graph (no 'node' group)")
        return nir.read(path, type_check=False)
    except N.NetworkError:
        raise
    except Exception as exc:  # h5py and nir raise OSError, KeyError, ValueError, TypeError on damaged files
        raise N.NetworkError(f"cannot read NIR file {str(path)!r}: it is damaged, truncated or not a NIR file "
                             f"({type(exc).__name__}: {exc})") from exc


def _directory_message(path: Path) -> str:
    """Why the directory ``path`` is no NIR source, with the ``.nir`` files it holds (if any)."""
    found = sorted(p.name for p in path.glob("*.nir") if p.is_file())
    held = f"; it holds {', '.join(found[:5])}{', ...' if len(found) > 5 else ''}" if found else ""
    return (f"{str(path)!r} is a directory, not a NIR file: pass the path of a .nir file (the HDF5 file nir.write "
            f"or snnopt.export writes){held}")


def read(source, dt: float | None = None) -> N.Network:
    """The :class:`Network` of a NIR graph (a path or a ``nir.NIRGraph``).  ``dt`` (seconds)
    defaults to the graph's metadata ``dt``; nested graphs are inlined and ``Identity``
    nodes removed.  Unsupported nodes raise a :class:`NetworkError` naming them."""
    graph = load(source)
    if dt is None:
        dt = _meta(graph.metadata, "dt")
        if dt is None:
            raise N.NetworkError("the NIR graph does not record its time step; pass dt= (seconds) — "
                                 "snnTorch and SpikingJelly export with 1e-4, Norse with 1e-3")
    dt = N.check_dt(dt)
    nodes, edges = _flatten_graph(graph)
    net = N.Network(metadata={"dt": dt})
    shapes = _ShapeOracle(nodes, edges)
    for name, node in nodes.items():
        net.nodes[name] = _import_node(name, node, dt, shapes)
    net.edges = list(edges)
    net.validate()
    return net


def _meta(metadata, key):
    value = (metadata or {}).get(key)
    if isinstance(value, bytes):
        value = value.decode("utf8")
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    return value


def _flatten_graph(graph):
    """Nodes and edges with nested graphs inlined (names ``outer.inner``) and pass-through
    nodes (a nested graph's Input/Output, Identity) removed, their inputs wired to their outputs."""
    nodes, edges, passthrough = _inline(graph, "")
    for name in passthrough:
        preds = [a for a, b in edges if b == name]
        succs = [b for a, b in edges if a == name]
        edges = [(a, b) for a, b in edges if name not in (a, b)] + [(p, q) for p in preds for q in succs]
        nodes.pop(name)
    for s, d in edges:
        for end in (s, d):
            if end not in nodes:
                raise N.NetworkError(f"NIR edge {s!r} -> {d!r} names an unknown node {end!r}")
    return nodes, edges


def _inline(graph, prefix: str):
    """``(nodes, edges, pass-through names)`` of ``graph`` with its nested graphs inlined.  An
    edge may name a nested graph ``g`` (it then reaches all of ``g``'s Input, or leaves all of
    its Output, nodes) or one of those nodes as ``g.<name>``."""
    nir = _nir()
    nodes, edges, passthrough, nested = {}, [], [], {}
    for name, node in graph.nodes.items():
        full = prefix + name
        if isinstance(node, nir.NIRGraph):
            inner_nodes, inner_edges, inner_passthrough = _inline(node, full + ".")
            nodes.update(inner_nodes)
            edges.extend(inner_edges)
            passthrough += inner_passthrough
            nested[full] = node
        else:
            nodes[full] = node
            if (prefix and isinstance(node, (nir.Input, nir.Output))) or type(node).__name__ == "Identity":
                passthrough.append(full)
    for src, dst in graph.edges:
        sources = _ends(prefix + src, nested, "outputs")
        targets = _ends(prefix + dst, nested, "inputs")
        edges.extend((s, d) for s in sources for d in targets)
    return nodes, edges, passthrough


def _ends(name: str, nested: dict, side: str) -> list[str]:
    """The node names an edge end ``name`` stands for: a nested graph's Input (Output) nodes, or itself."""
    graph = nested.get(name)
    return [name] if graph is None else [f"{name}.{n}" for n in getattr(graph, side)]


class _ShapeOracle:
    """Batchless output shapes of NIR nodes, for neurons stored with scalar parameters."""

    def __init__(self, nodes, edges):
        self.nodes, self.edges, self.cache, self.visiting = nodes, edges, {}, set()

    def input_of(self, name):
        for src in [s for s, d in self.edges if d == name]:
            shape = self.output_of(src)
            if shape is not None:
                return shape
        return None

    def output_of(self, name):
        if name in self.cache:
            return self.cache[name]
        if name in self.visiting:
            return None
        self.visiting.add(name)
        node = self.nodes[name]
        shape = _array_shape(node)
        if shape is None:
            shape = self.input_of(name)
            if shape is not None and type(node).__name__ not in _NEURONS + ("Output", "Scale"):
                shape = _synapse(name, node, 0.0).out_shape(name, shape)
        self.visiting.discard(name)
        self.cache[name] = shape
        return shape


_NEURONS = ("LIF", "IF", "LI", "CubaLIF", "CubaLI")


def _array_shape(node):
    kind = type(node).__name__
    if kind == "Input":
        return tuple(int(s) for s in np.asarray(node.input_type["input"]).reshape(-1))
    field = {"LIF": "v_threshold", "IF": "v_threshold", "LI": "tau", "CubaLIF": "v_threshold", "CubaLI": "tau_mem",
             "Scale": "scale"}.get(kind)
    if field is None:
        return None
    a = np.asarray(getattr(node, field))
    return tuple(a.shape) if a.ndim else None


def _import_node(name, node, dt, shapes: _ShapeOracle) -> N.Node:
    kind = type(node).__name__
    if kind == "Input":
        return N.Input(_array_shape(node))
    if kind == "Output":
        return N.Output()
    if kind in _NEURONS:
        shape = shapes.output_of(name)
        if shape is None:
            raise N.NetworkError(f"NIR node {name!r} ({kind}): cannot tell the population's shape (scalar "
                                 "parameters and no input of known shape)")
        return neuron_from_nir(name, node, dt, shape)
    return _synapse(name, node, dt)


def _synapse(name, node, dt) -> N.Node:
    kind = type(node).__name__
    t = _torch
    if kind in ("Affine", "Linear"):
        bias = getattr(node, "bias", None)
        return N.Affine(t(node.weight), None if bias is None else t(bias))
    if kind in ("Conv1d", "Conv2d"):
        if isinstance(node.padding, str):
            raise N.NetworkError(f"NIR node {name!r}: {kind} with padding={node.padding!r}; snnopt reads numeric "
                                 "padding (re-export with explicit padding)")
        bias = t(node.bias) if node.bias is not None and bool(np.any(np.asarray(node.bias) != 0)) else None
        return N.Conv(t(node.weight), bias, _ints(node.stride), _ints(node.padding), _ints(node.dilation),
                      int(np.asarray(node.groups)))
    if kind in ("SumPool2d", "AvgPool2d"):
        return N.Pool("sum" if kind == "SumPool2d" else "avg", _ints(node.kernel_size), _ints(node.stride),
                      _ints(node.padding))
    if kind == "Flatten":
        return N.Flatten(int(node.start_dim), int(node.end_dim))
    if kind == "Scale":
        return N.Scale(t(node.scale))
    raise N.NetworkError(f"NIR node {name!r} is a {kind}, which snnopt does not read; snnopt reads Input, Output, "
                         "Affine, Linear, Conv1d, Conv2d, SumPool2d, AvgPool2d, Flatten, Scale, LIF, IF, LI, "
                         "CubaLIF, CubaLI (and nested graphs)")


def _torch(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.get_default_dtype())


def _ints(v) -> tuple:
    return tuple(int(x) for x in np.asarray(v).reshape(-1))


def neuron_from_nir(name: str, node, dt: float, shape: tuple) -> N.Neuron:
    """The :class:`~snnopt.export.network.Neuron` of a NIR neuron node (inverse of the export
    mapping; float64 arithmetic, rounded once to torch's default dtype).

    The membrane state is NIR's ``v``.  A CubaLIF/CubaLI's current state is NIR's ``I``
    when ``r dt / tau_mem`` is the same for every neuron (always so in files snnopt writes):
    ``w_in dt / tau_syn`` becomes the ``input_scale`` and ``r dt / tau_mem`` the ``scale``.
    Otherwise both gains go into ``input_scale`` and the current state is
    ``I r dt / tau_mem``."""
    kind = type(node).__name__
    f64 = np.float64

    def full(value, what):
        a = np.asarray(value, f64)
        try:
            return np.broadcast_to(a, shape).copy()
        except ValueError:
            raise N.NetworkError(f"NIR node {name!r}: {what} of shape {a.shape} does not fit the population "
                                 f"shape {shape}") from None

    def scalar(value, what):
        a = full(value, what)
        if a.size and not bool(np.all(a == a.reshape(-1)[0])):
            raise N.NetworkError(f"NIR node {name!r}: per-neuron {what} values are not supported by snnopt's "
                                 f"neurons (one {what} per population)")
        return float(a.reshape(-1)[0].astype(_real_dtype())) if a.size else 0.0

    r = full(node.r, "r")
    if kind == "IF":
        beta, gain = None, r * dt
        v_rest = 0.0
    else:
        tau = full(node.tau if kind in ("LIF", "LI") else node.tau_mem, "tau")
        if not bool(np.all(tau > 0)):
            raise N.NetworkError(f"NIR node {name!r}: time constants must be positive")
        beta = 1.0 - dt / tau
        gain = r * dt / tau
        v_rest = scalar(node.v_leak, "v_leak")
    alpha = current = None
    if kind in ("CubaLIF", "CubaLI"):
        tau_syn = full(node.tau_syn, "tau_syn")
        alpha = 1.0 - dt / tau_syn
        current = full(node.w_in, "w_in") * (dt / tau_syn)
    spiking = kind in ("LIF", "IF", "CubaLIF")
    meta = getattr(node, "metadata", None) or {}
    structure = _json(name, meta, "snnopt_spec")
    train = _json(name, meta, "snnopt_train")
    v_init = _meta(meta, "snnopt_v_init")
    real = _real_dtype()
    scale, input_scale = _gains(gain, current, real)
    spec_kind = {"LIF": "lif", "IF": "if", "LI": "li", "CubaLIF": "cuba_lif", "CubaLI": "cuba_li"}[kind]
    fields = dict(kind=spec_kind, reset="zero" if spiking else "none", scale=scale,
                  v_rest=v_rest, v_reset=scalar(node.v_reset if node.v_reset is not None else 0.0, "v_reset")
                  if spiking else 0.0)
    fields.update({k: v for k, v in structure.items() if k in _STRUCTURE_FIELDS})
    params = {"beta": beta, "alpha": alpha, "threshold": full(node.v_threshold, "v_threshold") if spiking else None}
    params = {k: None if v is None else torch.as_tensor(np.asarray(v, f64).astype(real)) for k, v in params.items()}
    values = {k: _uniform(v) for k, v in params.items()}
    tensors = tuple((k, k) for k, v in params.items() if v is not None and values[k] is None)
    form = _json(name, meta, "snnopt_form")
    try:
        if train:
            fields.update(surrogate=_surrogate.Surrogate(str(train["surrogate"]), float(train["surrogate_param"])),
                          detach_reset=bool(train.get("detach_reset", False)),
                          learnable=frozenset(train.get("learnable", ())))
        if form:
            fields.update(integration=str(form["integration"]), scale=float(form["scale"]),
                          tau=None if form.get("tau") is None else float(form["tau"]))
            values.update(beta=None, alpha=None if form.get("alpha") is None else float(form["alpha"]))
        spec = NeuronSpec(**values, param_attrs=tensors, **fields)
        if form:
            spec = dataclasses.replace(spec, beta=spec.form_fixed["beta"])
    except (KeyError, TypeError, ValueError) as exc:
        raise N.NetworkError(f"NIR node {name!r}: its snnopt metadata is invalid: {exc}") from exc
    for param, value in spec.form_fixed.items():
        if not np.allclose(params[param].double().numpy(), value, rtol=1e-6, atol=0):
            raise N.NetworkError(f"NIR node {name!r}: metadata snnopt_form ({spec.integration} form) gives {param} "
                                 f"{value!r}, the node's time constants another: remove the metadata from a file "
                                 "whose parameters were changed")
        params[param] = torch.full(shape, value, dtype=params[param].dtype)
    return N.Neuron(spec, shape, **params, input_scale=input_scale,
                    v_init=None if v_init is None else torch.as_tensor(full(v_init, "snnopt_v_init").astype(real)))


def _gains(membrane: np.ndarray, current: np.ndarray | None, real) -> tuple[float, torch.Tensor | None]:
    """``(scale, input_scale)`` of an imported population whose membrane gains ``membrane``
    times its current (or input) and whose current gains ``current`` times the input (see
    :func:`neuron_from_nir`)."""
    m = membrane.astype(real)
    if bool(np.all(m == m.reshape(-1)[0])):
        c = None if current is None else current.astype(real)
        return float(m.reshape(-1)[0]), None if c is None or bool(np.all(c == 1)) else torch.as_tensor(c)
    total = membrane if current is None else membrane * current
    return 1.0, torch.as_tensor(total.astype(real))


def _real_dtype():
    """NumPy's dtype for torch's default dtype: parameters are rounded once, to what the model computes in."""
    return np.float64 if torch.get_default_dtype() == torch.float64 else np.float32


def _uniform(t: torch.Tensor | None) -> float | None:
    if t is None or t.numel() == 0:
        return None
    first = t.reshape(-1)[0]
    return float(first) if bool((t == first).all()) else None


def _json(name, meta, key) -> dict:
    text = _meta(meta, key)
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        raise N.NetworkError(f"NIR node {name!r}: metadata {key!r} is not valid JSON") from None
    if not isinstance(value, dict):
        raise N.NetworkError(f"NIR node {name!r}: metadata {key!r} must be a JSON object")
    return value


# -- nirtorch ---------------------------------------------------------------------------------

def nirtorch_node_map(dt: float) -> dict:
    """A ``node_map`` for ``nirtorch.nir_to_torch`` that builds snnopt's per-step modules:
    neurons as :class:`snnopt.nn.Neuron` cells (``forward(x, state) -> (out, state)``), Affine
    with its bias, Flatten over the batchless dims, SumPool2d as a sum, Scale as a product."""
    nir = _nir()
    from .runtime import layer_for

    dt = N.check_dt(dt)

    def neuron(node):
        shape = _array_shape(node)
        if shape is None:
            raise N.NetworkError(f"{type(node).__name__} with scalar parameters: nirtorch gives no input shape; "
                                 "use snnopt.from_nir instead")
        return layer_for(neuron_from_nir(type(node).__name__, node, dt, shape), multi_step=False)

    def synapse(node):
        return layer_for(_synapse(type(node).__name__, node, dt))

    mapping = {cls: neuron for cls in (nir.LIF, nir.IF, nir.LI, nir.CubaLIF, nir.CubaLI)}
    mapping.update({cls: synapse for cls in (nir.Affine, nir.Linear, nir.Conv1d, nir.Conv2d, nir.SumPool2d,
                                             nir.AvgPool2d, nir.Flatten, nir.Scale)})
    return mapping
