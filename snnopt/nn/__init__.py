"""Spiking neuron modules: multi-step (time-major ``[T, B, ...]``) and single-step cells."""

from .functional import neuron_step
from .neurons import IF, LI, LIF, CubaLIF, CubaLIFCell, IFCell, LICell, LIFCell, Neuron, Recurrent

__all__ = ["LIF", "IF", "CubaLIF", "LI", "LIFCell", "IFCell", "CubaLIFCell", "LICell", "Neuron", "Recurrent",
           "neuron_step"]
