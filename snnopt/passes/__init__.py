"""Graph passes over the canonical IR (invariants: README.md in this folder)."""

from .binary import binary_synapses, mark_binary_inputs
from .canonicalize import canonicalize_neurons
from .dce import dce
from .fuse import fuse_synapses
from .infra import Note, PassError, PassManager, PassResult
from .lower import expose_aux, lower, lower_rate_pass
from .pool import fast_pooling
from .reroll import reroll_time
from .steps import collapse_steps
from .verify import VerificationError, verify


def pipeline(mode: str, band: float = 0.05, device: str = "cpu") -> list:
    """The passes ``snnopt.compile`` runs for ``mode`` on the time-major graph of inputs on
    ``device`` (a device type).  Dense mode off the CPU leaves synapses to the BLAS: there
    the matrix products are cheap and telling binary input apart costs a device sync; average
    pooling has its own kernel on the CPU only (PyTorch's is fast on CUDA)."""
    passes = [canonicalize_neurons, reroll_time]
    if mode == "sparse":
        passes.append(fuse_synapses)
    if mode != "dense" or device == "cpu":
        passes.append(binary_synapses(event=mode != "dense"))
    passes += [lower(mode, band), expose_aux, dce]
    if device == "cpu":
        passes.append(fast_pooling)  # last: it sees only the pooling left alive
    return passes


__all__ = ["canonicalize_neurons", "reroll_time", "fuse_synapses", "binary_synapses", "mark_binary_inputs",
           "fast_pooling", "lower", "lower_rate_pass", "collapse_steps", "expose_aux", "dce", "verify", "pipeline",
           "PassManager", "PassResult", "PassError", "Note", "VerificationError"]
