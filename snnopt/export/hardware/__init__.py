r"""Check a network against a neuromorphic chip's constraints and quantize it for the chip.

``check(model, "speck")`` reads the :class:`~snnopt.export.network.Network` of ``model``
and lists **every** constraint of the target :class:`Profile` it breaks, each as a
:class:`Violation` naming the network node; ``quantize(model, "loihi2")`` returns the
network mapped to the target's integer grids.  Targets: :data:`PROFILES` (``"loihi2"``,
``"speck"``, ``"xylo"``), or any :class:`Profile`.

Rules (``Violation.rule``); those marked * are what :func:`quantize` fixes, so
``check(quantize(net, t), t)`` reports none of them where the fix is possible:

==================  ===========================================================
``layer_kind``      a node kind (or conv dimensionality) the target lacks
``scale`` *         a ``Scale`` node: folded into the adjacent weights
``pool_mode`` *     average pooling on a sum-pool target: ``1/k^2`` folded into the
                    weights after it
``kernel_shape``    a non-square convolution kernel where kernels must be square
``pool_shape``      a non-square pooling window where pools must be square
``structure``       weights that reach no neuron, or a neuron fed without weights
``neuron_kind``     a neuron kind the target lacks (e.g. a non-spiking readout on Speck)
``leak``            a leaky neuron on a target without leak (Speck's IAF)
``reset``           a reset mechanism the target lacks, or a reset value other than 0
``reset_timing``    a reset applied at the next step (snnTorch); chips reset at once
``v_rest``          a nonzero resting potential
``input_scale`` *   an input gain on a population: folded into its weights
``sharing``         a parameter that varies within a layer (or channel) where the
                    target holds one value per layer (or channel)
``decay`` *         a decay not on the target's grid (12-bit on Loihi 2, bit shifts
                    on Xylo)
``threshold`` *     a threshold that is not an integer in the target's range
``state``           a reset or resting value outside the membrane's range
``weight_bits`` *   weights that are not integers on the target's weight grid
``weight_precision`` weights whose dynamic range is too large for the bits: at the
                    best per-layer scale more than :data:`VANISHING_LIMIT` of the
                    nonzero weights round to 0
``bias`` / ``bias_bits`` *  a bias where the target has none / off the bias grid
``fan_in``          more input synapses per neuron than the target allows
``neurons``         a population, a core or the chip over its neuron budget
``memory``          layers that do not fit the cores' memories (Speck)
``delay``           recurrent (delayed) edges beyond the target's delays
==================  ===========================================================

**Integer units.**  :func:`check` reads a network as the chip would hold it: weights,
biases and thresholds are numbers in the chip's integer units, so a float network
reports ``weight_bits`` until :func:`quantize` maps it.  The neuron dynamics of
:mod:`snnopt.spec` are homogeneous of degree one in (input, membrane, threshold,
``v_reset``, ``v_rest``): dividing all of them by one factor ``s`` leaves every spike
unchanged.  :func:`quantize` uses this per *layer* (a population together with every
weight node feeding it):

.. math::

    W_q = \mathrm{round}_{grid}(W\,u / s), \quad b_q = \mathrm{round}(b / s), \quad
    \theta_q = \mathrm{round}(\theta / s), \quad v_{reset,q} = \mathrm{round}(v_{reset} / s)

where ``u`` is the unit of the weights' input (1 for spikes and network inputs, the
feeding layer's ``s`` for a non-spiking population's membrane), so before rounding
``v_q = v / s`` exactly at every step and the spikes are those of the float network;
the rounding (and the decays' grids) are the only changes.  ``s`` is the smallest
scale at which every weight, bias and threshold of the layer fits its range:
``s = max(max|W u| / w_max, max|b| / b_max, max theta / theta_max)``.  On Loihi 2 the
per-layer weight exponent ``e`` then divides ``s`` by ``2^e`` (weights ``m 2^e`` with an
even mantissa ``m``) as long as thresholds and biases still fit, which refines the
threshold grid without coarsening the weights.
"""

from .rules import FIXED_BY_QUANTIZE, RULES, VANISHING_LIMIT, HardwareError, HardwareReport, Violation, check
from .profiles import PROFILES, Profile, get_profile, quantize_decay
from .quantizer import quantize

__all__ = ["Profile", "PROFILES", "Violation", "HardwareReport", "HardwareError", "check", "quantize", "RULES",
           "FIXED_BY_QUANTIZE", "VANISHING_LIMIT", "quantize_decay", "get_profile"]
