"""Frontends: the fx tracer and the neuron adapter registry."""

from .registry import NeuronAdapter, UnsupportedNeuron, adapter_for, is_neuron, register_neuron
from .tracer import TraceFailure, trace

__all__ = ["trace", "TraceFailure", "register_neuron", "adapter_for", "is_neuron", "NeuronAdapter",
           "UnsupportedNeuron"]
