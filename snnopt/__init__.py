"""snnopt: a compiler for spiking neural networks in PyTorch.

``snnopt.compile(model, mode="dense" | "sparse" | "rate")`` traces a model with torch.fx,
rewrites its neuron recurrences into fused ops with an exact (dense), sparse (SSGD) or
rate-based backward, and returns a drop-in module sharing the model's parameters.
``snnopt.export(model, "net.nir" | "net.onnx" | "net.graphml", ...)`` writes the trained
network for neuromorphic hardware and simulators; ``snnopt.from_nir`` reads NIR back.
"""

from . import kernels, nn, surrogate
from .compiler import CompiledSNN, compile
from . import export  # noqa: E402  (callable: snnopt.export(model, path, ...))
from .export import from_nir
from .frontend.registry import UnsupportedNeuron, register_neuron
from .report import CompileReport
from .spec import NeuronSpec

__version__ = "0.1.0"

__all__ = ["compile", "CompiledSNN", "CompileReport", "NeuronSpec", "register_neuron", "UnsupportedNeuron", "nn",
           "surrogate", "kernels", "export", "from_nir", "__version__"]
