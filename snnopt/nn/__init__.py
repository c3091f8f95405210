"""Spiking neuron modules: multi-step (time-major ``[T, B, ...]``) and single-step cells."""

from .functional import neuron_step
from .neurons import IF, LI, LIF, CubaLIF, CubaLIFCell, IFCell, LICell, LIFCell

__all__ = ["LIF", "IF", "CubaLIF", "LI", "LIFCell", "IFCell", "CubaLIFCell", "LICell", "neuron_step"]
