"""Export trained spiking networks for neuromorphic hardware and simulators.

``snnopt.export(model, path, dt=..., example_inputs=...)`` writes the network ``model``
computes (a plain model, a :class:`~snnopt.CompiledSNN` or a module from
:func:`from_nir`) in the format named by the suffix of ``path``:

``.nir``               NIR (HDF5) through the ``nir`` package (:mod:`snnopt.export.nir`)
``.onnx``              ONNX with neurons as ``ai.snnopt`` functions in a ``Scan`` over time
                       (:mod:`snnopt.export.onnx`)
``.graphml``/``.json`` the event graph: populations and projections
                       (:mod:`snnopt.export.events`)

``snnopt.export.onnx.run(path, x, state)`` runs an exported ONNX file with onnxruntime and
``snnopt.export.EventSimulator(graph).run(x, state)`` simulates an event graph, taking and
returning states as :meth:`NetworkModule.run` does.  Every format is written from the same
:class:`~snnopt.export.network.Network` (:func:`to_network`), which
:class:`~snnopt.export.runtime.NetworkModule` runs in PyTorch.
"""

from __future__ import annotations

import logging
import os
import sys
import types

from .events import EventSimulator, to_graph
from .extract import to_network
from .hardware import PROFILES, HardwareError, HardwareReport, Profile, Violation, check, quantize
from .network import Network, NetworkError, check_dt
from .runtime import NetworkModule

__all__ = ["export", "to_network", "from_nir", "check", "quantize", "to_graph", "EventSimulator", "Network",
           "NetworkError", "NetworkModule",
           "Profile", "PROFILES", "HardwareReport", "HardwareError", "Violation"]

log = logging.getLogger(__name__)


def export(model, path, *, format: str | None = None, dt: float | None = None, example_inputs=None, **options):
    """Write the network of ``model`` to ``path``; returns the path.

    ``format``: ``"nir"``, ``"onnx"`` or ``"events"`` (default: from the suffix).  ``dt``:
    the time step in seconds (required for NIR, recorded elsewhere).  ``example_inputs``:
    a time-major input ``[T, B, ...]`` to trace ``model`` with (not needed for a module
    from :func:`from_nir` or a ``.nir`` path).  Other keyword ``options`` go to the
    format's writer.  The folder of ``path`` must exist.
    """
    from pathlib import Path

    path = Path(path)
    fmt = format or SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the export format of {str(path)!r} from its suffix; use .nir, .onnx, "
                         f".graphml or .json, or pass format='nir' | 'onnx' | 'events'")
    if not path.parent.is_dir():
        raise ValueError(f"cannot write {str(path)!r}: the folder {str(path.parent)!r} does not exist; create it "
                         "first")
    dt = None if dt is None else check_dt(dt)
    net = to_network(model, example_inputs)
    _note_no_neuron(net, model)
    if dt is not None:
        net.metadata["dt"] = dt
    if fmt == "nir":
        from . import nir as writer
        writer.write(net, path, dt=dt, **options)
    elif fmt == "onnx":
        from . import onnx as writer
        writer.write(net, path, **options)
    elif fmt == "events":
        from . import events as writer
        writer.write(net, path, **options)
    else:
        raise ValueError(f"unknown export format {fmt!r}; use 'nir', 'onnx' or 'events'")
    return path


def _note_no_neuron(net: Network, model) -> None:
    """Log a warning when ``net`` holds no neuron population (not even an LI readout): the file
    is then a stateless map, legal in every format but rarely what exporting a spiking network means."""
    if any(node.kind == "neuron" for node in net.nodes.values()):
        return
    layers = sorted({node.kind for node in net.nodes.values()} - {"input", "output"})
    log.warning("the network of %s holds no spiking neuron (only %s nodes): the exported file computes a stateless "
                "map with no spikes; to export a spiking network, put a neuron (e.g. snnopt.nn.LIF) after the layers "
                "and make the model's output depend on it", _describe(model), ", ".join(layers) or "input/output")


def _describe(model) -> str:
    """How a warning names ``model``: its class (a ``CompiledSNN``'s source model's), or the path it was read from."""
    if isinstance(model, (str, os.PathLike)):
        return repr(str(model))
    return type(getattr(model, "source", model)).__name__


SUFFIXES = {".nir": "nir", ".onnx": "onnx", ".graphml": "events", ".json": "events"}
"""The format :func:`export` writes for each file suffix."""


def from_nir(source, *, dt: float | None = None) -> NetworkModule:
    """A :class:`NetworkModule` running the NIR graph ``source`` (a path or a
    ``nir.NIRGraph``); see :func:`snnopt.export.nir.read`.  The parameters are read in torch's
    default dtype (``torch.get_default_dtype()``), whatever the file's arrays hold (float64
    ones included), so the module runs on inputs of that dtype."""
    from . import nir as reader

    return NetworkModule(reader.read(source, dt=dt))


class _CallableModule(types.ModuleType):
    """``snnopt.export(...)`` calls :func:`export`; ``snnopt.export.check`` etc. stay attributes."""

    def __call__(self, *args, **kwargs):
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
