"""The event graph: a spiking network as populations and projections, and an event-driven
reference simulator of it.

A neuromorphic toolchain places *populations* of neurons on cores and routes spike
*events* between them along *projections*; it has no use for the chain of layers a
framework builds a network from.  :func:`to_graph` rewrites a
:class:`~snnopt.export.network.Network` into that form, a :class:`networkx.MultiDiGraph`:

**Nodes (populations).**  Every ``Input`` (a source of events, which may be real-valued
currents), every ``Neuron`` and every ``Output`` (a sink) of the network.  Attributes:

===============================  =====================================================
``kind``                         ``"input"``, ``"neuron"`` or ``"output"``
``shape``, ``size``              the batchless shape and the number of units; a unit's
                                 index is its row-major position in ``shape``
``port``                         inputs and outputs: the position among the network's
                                 inputs (outputs), i.e. in ``run``'s tuples
``neuron_kind``, ``reset``,      neurons: the fields of :class:`~snnopt.spec.NeuronSpec`
``reset_timing``, ``fire``,      that fix the discrete dynamics (equations in
``v_reset``, ``v_rest``,         :mod:`snnopt.spec`), plus the surrogate gradient and
``scale``, ``current_decay``,    ``detach_reset`` for readers that train again
``reset_discards_input``,
``detach_reset``, ``surrogate``,
``surrogate_param``,
``integration``, ``tau``,        ``integration`` optional (absent: ``"decay"``); ``tau``
``euler_alpha``                  with ``integration="tau"``; ``euler_alpha``, the exact
                                 ``alpha``, with ``"euler"`` and a current
``beta``, ``alpha``,             neurons: per-unit parameter arrays of length ``size``
``threshold``, ``input_scale``   (those the kind has; ``input_scale`` multiplies the
                                 summed input before the neuron)
``v_init``                       optional, neurons: the initial membrane per unit (absent:
                                 zeros), where a run without a given state starts
``bias``                         optional: a constant input per unit, every step
``lines``                        optional: the target's delay lines, ``{line: {"count":
                                 m, "bias": array or None}}`` (see *delays*)
===============================  =====================================================

**Edges (projections).**  A projection ``P -> Q`` is the composite of every chain of
synaptic nodes (``Affine``, ``Conv``, ``Pool``, ``Flatten``, ``Scale`` and the fan-in sums
between them) that leads from population ``P`` to population ``Q`` without passing
through another population.  All those nodes are affine, so the chains' linear parts
compose and add up to one matrix ``W_PQ``, stored as a connectivity list over the
flattened populations: arrays ``pre``, ``post``, ``weight`` (one entry per synapse,
sorted by ``pre`` then ``post``).  Their constant parts do not depend on ``P``; they are
summed per target into ``bias`` (or a line's ``bias``).  Attributes ``delay`` (0 or 1
step), ``line`` (delay 1: the delay line, below), ``kind`` (``"dense"``, ``"conv"``,
``"pool"`` or ``"one_to_one"`` for a projection made of one such layer, else
``"composite"``), ``chain`` (the network's synaptic nodes it composes, comma-separated,
in evaluation order), ``paths`` (how many chains were merged by summing their weights)
and, for ``"conv"`` / ``"pool"``, the layer's geometry (``kernel``, ``stride``,
``padding``, ``dilation``, ``groups``, ``in_channels``, ``out_channels`` / ``pool_mode``).
Edge keys are ``"delay0"`` and ``"delay1:<line>"``.

**Input of a population.**  With ``o_P(t)`` the output of population ``P`` at step ``t``
(an input's value, a neuron's spikes, or an LI neuron's membrane), the summed input of
``Q`` is ::

    x_Q(t) = bias_Q + sum_{delay-0 projections P->Q} W_PQ o_P(t)
                    + sum_{lines l of Q} count_l * d_l(t - 1)
    d_l(t) = bias_l + sum_{delay-1 projections P->Q on line l} W_PQ o_P(t),   d_l(-1) = 0

A neuron then takes ``x_Q(t) * input_scale`` through one step of its dynamics; an output
*is* ``x_Q(t)`` (a neuron's spikes, an LI readout's membrane, or a current).

**Delays.**  A network's cycles are closed by *delayed* edges (``s -> Q`` delivers ``s``'s
output of the previous step, zeros before the first; see
:meth:`~snnopt.export.network.Network.delayed_edges`).  The event graph needs each
delayed edge to end at a neuron population ``Q`` (a synaptic delay at the population's
input; :class:`~snnopt.nn.Recurrent` exports so): the delayed value ``d_l`` with line
``l = s`` is then exactly the value of the network node ``s``, and ``count_l`` is the
number of ``s -> Q`` edges.  Projections reaching ``Q`` through ``s`` have ``delay = 1``
and ``line = s``; ``bias_l`` is the constant part of ``s`` (it enters from the second
step on, as in the network).  Every other projection has ``delay = 0``.

**Files.**  :func:`write` stores the graph as GraphML (``networkx.write_graphml``; the
arrays, ``shape`` and ``lines`` as JSON text, since GraphML attributes are scalars) or
as JSON (``networkx.node_link_data``, arrays as lists); graph attributes ``format``
(``"snnopt-events"``), ``format_version``, ``dtype`` and ``metadata`` (e.g. ``dt``).
:func:`read` inverts it and checks the graph, raising
:class:`~snnopt.export.network.NetworkError` naming the file, the population or
projection and the problem.

**Simulator.**  :class:`EventSimulator` runs the graph.  It starts each population at its
``v_init`` (the current at zero) unless the state gives another.  Per time step:

1. every target's input buffer starts at its ``bias``, every delay line's next value at
   its line ``bias``;
2. each input population emits its non-zero entries as events; each event ``(unit j,
   value a)`` adds ``a * w`` to the input buffer of every synapse ``(j, post, w)`` of each
   outgoing projection (for ``delay = 1``, to the line's next value);
3. the neuron populations, in topological order of the delay-0 projections, sum their
   input buffer and their lines' values of the previous step, advance one step with
   :func:`snnopt.nn.functional.neuron_step` and emit their non-zero outputs as events;
4. each output returns its summed input.

The synaptic work is proportional to the number of events times their fan-out
(``stats``); neuron updates are dense, since every neuron leaks every step.

**Exactness.**  The neuron update is the very function the PyTorch modules run, so
neurons given the same input produce bit-identical spikes and state.  The inputs agree
bit for bit when the weights, biases and their products with the event values are
exactly representable (e.g. integers / 64, binary or small-integer events) and the
partial sums stay within the mantissa: then every order of summation is exact.  The
simulator sums a target's bias first, then its delay-0 events, then its lines, in
line order.  With arbitrary float weights the currents agree with a dense evaluation
(:class:`~snnopt.export.runtime.NetworkModule`) to rounding only, since a matrix product
sums in another order, and composites (e.g. a Scale folded into a Linear, an average
pool into a Conv) round once instead of after every layer.
"""

from .build import to_graph
from .files import read, write
from .simulator import EventSimulator
from .validate import FORMAT

__all__ = ["FORMAT", "to_graph", "write", "read", "EventSimulator"]
