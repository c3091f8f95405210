"""Lowering: canonical scan / region nodes -> the op of a backward mode.

``lower(mode, band)`` returns the pass for the time-major graph:

    dense   neuron_scan, spiking_synapse stay (exact BPTT ops)
    sparse  neuron_scan -> neuron_scan_sparse;  spiking_synapse -> spiking_synapse_sparse
            (active set and spikes tagged ``snn_aux = "active:<key>"``, ``"spikes:<key>"``;
            ineligible neurons stay dense); a synapse fed by a sparse neuron's spikes gets
            that neuron's active set as ``x_active`` (its input gradient is needed there only)
            and surrogate output as ``x_tap`` (that gradient flows back compactly)
    rate    neuron_scan -> neuron_rate_stats (rate and eligibility tagged as aux
            ``rate:<key>``, ``elig:<key>``, and for a recorded membrane its time average
            and eligibility ``vbar:<key>``, ``eligv:<key>``); each BatchNorm in training mode gets its
            input's batch ``(var, mean)`` tagged ``bn:<key>``; a graph input that a
            binary_synapse reads gets its time average from that op (from the bits it packs
            anyway), tagged ``mean:<k>`` for the k-th input

``lower_rate_pass`` rewrites the graph traced at T = 1 into the rate pass: state writes
and resets go (the spike pass did them), each scan becomes ``rate_neuron(x, r, e)``
(and its recorded membrane ``rate_neuron(x, v_bar, e_v)``) and each training BatchNorm ``rate_batch_norm`` with the
spike-pass statistics, all fed through new placeholders; sums over the time axis are
scaled by the true T.  ``expose_aux`` makes the graph return ``(output, {aux})``.

Keys are ``"<module>#<k>"``, the k-th call of that module, identical in both graphs.
"""

from __future__ import annotations

import operator
from collections import Counter

import torch
from torch import fx, nn

from .. import kernels
from ..frontend.registry import time_major_layer
from .fuse import sparse_ineligibility
from .infra import Builder, Note, PassResult

_NON_AFFINE_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                       nn.AdaptiveMaxPool3d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU,
                       nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.GELU, nn.SiLU, nn.Mish, nn.Softplus, nn.Hardswish,
                       nn.Hardsigmoid, nn.Softmax, nn.LogSoftmax, nn.MultiheadAttention,
                       # normalisations by per-sample, per-step statistics (training BatchNorm has its own rule)
                       nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
                       nn.LocalResponseNorm)
_NON_AFFINE_FUNCS = {"max_pool1d", "max_pool2d", "max_pool3d", "relu", "relu6", "leaky_relu", "elu", "selu", "celu",
                     "sigmoid", "tanh", "hardtanh", "softmax", "log_softmax", "softplus", "mish", "hardswish",
                     "hardsigmoid", "max", "amax", "min", "amin", "abs", "exp", "log", "sqrt",
                     "gelu", "silu", "scaled_dot_product_attention", "layer_norm", "group_norm", "instance_norm",
                     "normalize"}

_PRODUCTS = (operator.mul, torch.mul, "mul", operator.matmul, torch.matmul, "matmul", torch.bmm, "bmm")
"""Products: non-affine when two factors depend on the data (a spike tensor times a weight is not)."""


def neuron_keys(graph: fx.Graph) -> dict[fx.Node, str]:
    """``"<module>#<k>"`` for every neuron node, in graph order."""
    counts, keys = Counter(), {}
    for n in graph.nodes:
        if "snn" in n.meta and n.op == "call_function":
            mod = n.meta["snn_module"]
            keys[n] = f"{mod}#{counts[mod]}"
            counts[mod] += 1
    return keys


def _bn_nodes(gm: fx.GraphModule):
    counts = Counter()
    for n in gm.graph.nodes:
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.modules.batchnorm._BatchNorm):
            m = gm.get_submodule(n.target)
            key = f"{n.target}#{counts[n.target]}"
            counts[n.target] += 1
            if m.training or not m.track_running_stats:
                yield n, m, key


def _channel_dim(m: nn.Module) -> int:
    """The dim of a BatchNorm call's input that holds the channels: 1 (``[N, C, ...]``), or
    2 for a library's multi-step wrapper fed ``[T, B, C, ...]``."""
    return 2 if time_major_layer(m) else 1


def batch_stats(x: torch.Tensor, channel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(var, mean)`` of ``x`` per channel (dim ``channel``, 1 or 2), over every other dim, the
    variance biased (``var_mean(..., correction=0)``), in ``x``'s dtype: from one pass of
    PyTorch's batch-norm kernel with ``eps = 0`` (``var = invstd^-2``; a ``var_mean`` over the
    other dims is 2-3x slower on the CPU).  A channel without variance gets ``var = 0``."""
    flat = x.flatten(0, 1) if channel == 2 else x
    _, mean, invstd = torch.native_batch_norm(flat, None, None, None, None, True, 0.0, 0.0)
    var = torch.where(invstd == 0, 0.0, invstd.pow(-2))  # the kernel returns invstd 0 for var 0 with eps 0
    return var.to(x.dtype), mean.to(x.dtype)


def _tag(node: fx.Node, key: str) -> fx.Node:
    node.meta["snn_aux"] = key
    return node


def _swap(b: Builder, old: fx.Node, new: fx.Node, aux: dict[int, str]) -> None:
    """Replace neuron node ``old`` by ``new`` (same output layout), keeping its ``snn`` meta and
    tagging output items ``{index: aux_key}``."""
    new.meta.update({k: v for k, v in old.meta.items() if k.startswith("snn")})
    with b.graph.inserting_after(new):
        for index, key in aux.items():
            _tag(b.call(operator.getitem, (new, index), from_=[old]), key)
    old.replace_all_uses_with(new)
    b.graph.erase_node(old)


def lower(mode: str, band: float = 0.05):
    if mode not in ("dense", "sparse", "rate"):
        raise ValueError(f"mode must be 'dense', 'sparse' or 'rate', got {mode!r}")

    def lower_pass(gm: fx.GraphModule) -> PassResult:
        b = Builder(gm, f"lower[{mode}]")
        if mode == "dense":
            return _lower_dense(gm)
        if mode == "sparse":
            return _lower_sparse(gm, b, band)
        return _lower_rate_stats(gm, b)

    lower_pass.__name__ = f"lower[{mode}]"
    return lower_pass


def _lower_dense(gm):
    notes = [Note("rewritten", n.name, f"`{n.meta['snn_module']}` -> dense fused scan ({n.meta['snn'].describe()})")
             for n in gm.graph.nodes if n.op == "call_function" and n.target in (kernels.neuron_scan,
                                                                                  kernels.spiking_synapse)
             and not n.meta.get("snn_cell")]
    return PassResult(gm, False, notes)


def _lower_sparse(gm, b: Builder, band: float):
    notes, modified = [], False
    keys = neuron_keys(gm.graph)
    for n in list(gm.graph.nodes):
        if n.op != "call_function":
            continue
        if n.target is kernels.spiking_synapse:
            with gm.graph.inserting_before(n):
                new = b.call(kernels.spiking_synapse_sparse, (*n.args, band), from_=[n])
            active = 2
        elif n.target is kernels.neuron_scan:
            reason = sparse_ineligibility(n.meta["snn"], n)
            if reason is not None:
                if "snn_dense_reason" not in n.meta:
                    n.meta["snn_dense_reason"] = reason
                    kind = "info" if not n.meta["snn"].spiking else "warning"  # a readout is dense by nature
                    notes.append(Note(kind, n.name, f"`{n.meta['snn_module']}` kept dense in sparse mode: {reason}"))
                continue
            record = len(n.args) > 7 and bool(n.args[7])
            with gm.graph.inserting_before(n):
                new = b.call(kernels.neuron_scan_sparse, (*n.args[:7], band, record), from_=[n])
            active = 4
        else:
            continue
        _swap(b, n, new, {active: f"active:{keys[n]}", 0: f"spikes:{keys[n]}"})
        notes.append(Note("rewritten", new.name, f"`{new.meta['snn_module']}` -> sparse scan (band {band:g})"))
        modified = True
    for n in list(gm.graph.nodes):
        if n.op == "call_function" and n.target in (kernels.spiking_synapse_sparse, kernels.binary_synapse) \
                and "x_active" not in n.kwargs:
            active = _producer_active_set(n.args[0])
            if active is not None:
                producer = active.args[0]
                n.kwargs = {**n.kwargs, "x_active": active, "x_tap": _surrogate_output(b, producer, active)}
                notes.append(Note("rewritten", n.name, f"input gradient computed only on the active set of "
                                                       f"`{producer.meta['snn_module']}` and passed back compactly"))
                modified = True
    return PassResult(gm, modified, notes)


_SURROGATE_OUTPUT = {kernels.neuron_scan_sparse: 5, kernels.spiking_synapse_sparse: 4}
"""Output index of the surrogate values on the active set (the tap, :mod:`snnopt.kernels.ops`)."""


def _producer_active_set(x) -> fx.Node | None:
    """The active-set output of the sparse neuron whose spikes ``x`` are (its backward reads
    ``dL/dx`` there only), or None."""
    if not (isinstance(x, fx.Node) and x.target is operator.getitem and x.args[1] == 0):
        return None
    producer = x.args[0]
    if producer.target not in _SURROGATE_OUTPUT:
        return None
    return next((u for u in producer.users if str(u.meta.get("snn_aux", "")).startswith("active:")), None)


def _surrogate_output(b: Builder, producer: fx.Node, after: fx.Node) -> fx.Node:
    """The node of ``producer``'s surrogate output (the tap), made after ``after`` if absent."""
    index = _SURROGATE_OUTPUT[producer.target]
    found = next((u for u in producer.users if u.target is operator.getitem and u.args[1] == index), None)
    if found is not None:
        return found
    with b.graph.inserting_after(after):
        return b.call(operator.getitem, (producer, index), from_=[producer])


_SHAPE_ONLY = {"zeros_like", "ones_like", "full_like", "empty_like", "rand_like", "randn_like", "new_zeros",
               "new_ones", "new_full", "new_empty"}
"""Constructors that read only the shape of their tensor argument: a mask made from them
(a dropout mask kept for the whole sequence, say) does not depend on the data."""


def non_affine_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """Nodes that are not affine in the model's inputs: the listed modules, the listed
    functions of values that depend on the inputs (``exp`` of a parameter is not), and
    products (elementwise or matrix) of two tensors that both depend on the inputs' values."""
    data = _data_dependent(gm)
    found = []
    for n in gm.graph.nodes:
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), _NON_AFFINE_MODULES):
            found.append(n)
        elif n.op in ("call_function", "call_method"):
            name = _name(n)
            if name in _NON_AFFINE_FUNCS and any(a in data for a in n.all_input_nodes):
                found.append(n)
            elif n.target in _PRODUCTS and sum(
                    isinstance(a, fx.Node) and a in data and isinstance(a.meta.get("val"), torch.Tensor)
                    and a.meta["val"].dim() > 1 for a in n.args) > 1:
                found.append(n)
    return found


def _op_name(gm: fx.GraphModule, n: fx.Node) -> str:
    """How a warning names node ``n``: ``MaxPool2d `pool``` for a module, else ``relu (node `relu_1`)``."""
    if n.op == "call_module":
        return f"{type(gm.get_submodule(n.target)).__name__} `{n.target}`"
    return f"{_name(n)} (node `{n.name}`)"


def _name(n: fx.Node) -> str:
    return n.target if isinstance(n.target, str) else getattr(n.target, "__name__", "")


def _data_dependent(gm: fx.GraphModule) -> set[fx.Node]:
    """The nodes whose values depend on the values of the graph's inputs (a shape-only
    constructor such as ``ones_like(x)`` cuts the dependence)."""
    data: set[fx.Node] = set()
    for n in gm.graph.nodes:  # topological order
        if n.op == "placeholder" or (_name(n) not in _SHAPE_ONLY and any(a in data for a in n.all_input_nodes)):
            data.add(n)
    return data


def _lower_rate_stats(gm, b: Builder):
    notes, modified = [], False
    keys = neuron_keys(gm.graph)
    for n in list(gm.graph.nodes):
        if not (n.op == "call_function" and n.target is kernels.neuron_scan):
            continue
        spec = n.meta["snn"]
        key = keys[n]
        if spec.learnable:
            notes.append(Note("warning", n.name, f"`{n.meta['snn_module']}`: learnable "
                                                 f"{'/'.join(sorted(spec.learnable))} get no gradient in rate mode"))
        record = len(n.args) > 7 and bool(n.args[7])
        with gm.graph.inserting_before(n):
            new = b.call(kernels.neuron_rate_stats, (*n.args[:7], record), from_=[n])
        aux = {4: f"rate:{key}", 5: f"elig:{key}"}
        if record:
            aux.update({6: f"vbar:{key}", 7: f"eligv:{key}"})
        _swap(b, n, new, aux)
        notes.append(Note("rewritten", new.name, f"`{new.meta['snn_module']}` -> rate spike pass (r, e)"))
        modified = True
    modified |= _input_means(gm, b)
    for n, m, key in list(_bn_nodes(gm)):
        if any(u.meta.get("snn_aux", "").startswith("bn:") for u in n.args[0].users):
            continue
        with gm.graph.inserting_after(n.args[0]):
            stats = _tag(b.call(batch_stats, (n.args[0], _channel_dim(m)), from_=[n]), f"bn:{key}")
        stats.meta["snn_bn"] = n.target
        modified = True
    for n in non_affine_nodes(gm):
        if not n.meta.get("snn_non_affine_noted"):
            n.meta["snn_non_affine_noted"] = True
            notes.append(Note("warning", n.name, f"non-affine op {_op_name(gm, n)} between neurons breaks the rate "
                                                 f"approximation (value and gradient no longer consistent); an "
                                                 f"affine op in its place (average instead of max pooling, no "
                                                 f"activation between synapses) or dense / sparse mode keeps them so"))
    return PassResult(gm, modified, notes)


def _input_means(gm: fx.GraphModule, b: Builder) -> bool:
    """Tag ``mean:<k>``: the time average of the k-th graph input, returned by the first
    binary_synapse that reads it (the rate pass's input; reading the input again would cost
    as much as packing it)."""
    modified = False
    for k, ph in enumerate(n for n in gm.graph.nodes if n.op == "placeholder"):
        readers = [u for u in ph.users if u.target is kernels.binary_synapse and u.args[0] is ph]
        if not readers or any(u.kwargs.get("mean") for u in readers):
            continue
        n = readers[0]
        n.kwargs = {**n.kwargs, "mean": True}
        with gm.graph.inserting_after(n):
            _tag(b.call(operator.getitem, (n, 2), from_=[n]), f"mean:{k}")
        modified = True
    return modified


def expose_aux(gm: fx.GraphModule) -> PassResult:
    """Make the graph return ``(output, {aux_key: value})`` for every ``snn_aux`` node."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    if out.meta.get("snn_aux_exposed"):
        return PassResult(gm, False)
    aux = {n.meta["snn_aux"]: n for n in gm.graph.nodes if "snn_aux" in n.meta}
    out.args = ((out.args[0], aux),)
    out.meta["snn_aux_exposed"] = True
    return PassResult(gm, True)


def lower_rate_pass(keys_T: set[str], recorded_T: frozenset = frozenset()):
    """The pass for the T = 1 graph (see the module docstring).  ``keys_T``: the neuron keys
    of the full graph; ``recorded_T``: those whose membrane sequence it records.  At T = 1
    a recorded membrane is often the final state itself (a one-step loop does not reroll),
    so for those neurons a use of the final state stands for the membrane sequence."""

    def lower_rate(gm: fx.GraphModule) -> PassResult:
        b = Builder(gm, "lower_rate_pass")
        if any(n.target is kernels.rate_neuron for n in gm.graph.nodes):
            return PassResult(gm, False)
        for n in list(gm.graph.nodes):  # the spike pass has kept and reset the modules' state already
            if n.meta.get("snn_side_effect"):
                gm.graph.erase_node(n)
        gm.graph.eliminate_dead_code()
        keys = neuron_keys(gm.graph)
        if not keys:
            raise RateUnsupported("the model has no compiled neuron to take rates of")
        if set(keys.values()) != keys_T:
            raise RateUnsupported("the neurons of the T = 1 trace differ from those of the full trace")
        for n in keys:
            if n.args[0].meta["val"].shape[0] != 1:
                raise StepsNotFromInput(f"`{n.meta['snn_module']}` runs {n.args[0].meta['val'].shape[0]} steps on a "
                                      "one-step input: the model's time steps do not follow the first dim of its "
                                      "input (a fixed number of steps over a static input, say); rate mode needs "
                                      "the time-major input [T, B, ...] to drive the steps")
        last_ph = [n for n in gm.graph.nodes if n.op == "placeholder"][-1]
        inputs = []

        def placeholder(name, key, example):
            nonlocal last_ph
            with gm.graph.inserting_after(last_ph):
                last_ph = b.placeholder(name)
            last_ph.meta["example"] = example
            inputs.append(key)
            return last_ph

        for n, key in keys.items():
            users = {u.args[1]: u for u in n.users if u.target is operator.getitem}
            membrane = {3, 1} if key in recorded_T else {3}
            if set(users) - {0} - membrane or len(users) != len(n.users):
                raise RateUnsupported(f"`{n.meta['snn_module']}`'s final state is used")
            safe = key.replace(".", "_").replace("#", "_")
            val = n.args[0].meta["val"]
            state = torch.zeros(val.shape[1:], dtype=val.dtype, device=val.device)
            stats = {}
            for index, (value, elig) in ((0, ("rate", "elig")), (3, ("vbar", "eligv")), (1, ("vbar", "eligv"))):
                if index not in users:
                    continue
                if value not in stats:
                    stats[value] = (placeholder(f"{value}_{safe}", f"{value}:{key}", state),
                                    placeholder(f"{elig}_{safe}", f"{elig}:{key}", state))
                with gm.graph.inserting_before(n):
                    x = n.args[0] if index != 1 else b.call(operator.getitem, (n.args[0], 0), from_=[n])
                    rn = b.call(kernels.rate_neuron, (x, *stats[value]), from_=[n])
                rn.meta.update({k: v for k, v in n.meta.items() if k.startswith("snn")})
                users[index].replace_all_uses_with(rn)
                gm.graph.erase_node(users[index])
            gm.graph.erase_node(n)
        for n, m, key in list(_bn_nodes(gm)):
            safe = key.replace(".", "_").replace("#", "_")
            val = n.args[0].meta["val"]
            var = placeholder(f"bn_var_{safe}", f"bn:{key}:0",
                              torch.ones(m.num_features, dtype=val.dtype, device=val.device))
            mean = placeholder(f"bn_mean_{safe}", f"bn:{key}:1",
                               torch.zeros(m.num_features, dtype=val.dtype, device=val.device))
            with gm.graph.inserting_before(n):
                w = b.get_attr(f"{n.target}.weight", from_=[n]) if m.affine else None
                bias = b.get_attr(f"{n.target}.bias", from_=[n]) if m.affine else None
                x = n.args[0]
                if _channel_dim(m) == 2:  # [T, B, C, ...] -> [T x B, C, ...] and back
                    x = b.call(torch.flatten, (x, 0, 1), from_=[n])
                rbn = b.call(kernels.rate_batch_norm, (x, mean, var, w, bias, m.eps), from_=[n])
                if x is not n.args[0]:
                    rbn = b.call(torch.Tensor.view_as, (rbn, n.args[0]), from_=[n])
            n.replace_all_uses_with(rbn)
            gm.graph.erase_node(n)
        time_t = placeholder("time_steps", "T", 1.0)
        _scale_time_sums(gm, b, time_t)
        gm.meta["rate_inputs"] = inputs
        return PassResult(gm, True)

    lower_rate.__name__ = "lower_rate_pass"
    return lower_rate


class RateUnsupported(Exception):
    """The model cannot run the rate pass; the compiler falls back to dense mode."""


class StepsNotFromInput(RateUnsupported):
    """The neurons of the one-step trace ran several steps: the model makes its own."""


def _scale_time_sums(gm: fx.GraphModule, b: Builder, time_t: fx.Node) -> None:
    """Multiply sums over the time axis by T (at T = 1 they would return one step's value).
    The time axis starts at the tensor inputs, or where the model makes it from a static
    input (nodes tagged ``snn_time_axis`` by :func:`~snnopt.passes.steps.collapse_steps`)."""
    time_major = {n for n in gm.graph.nodes if n.meta.get("snn_time_axis")} or \
        {n for n in gm.graph.nodes if n.op == "placeholder" and n is not time_t
         and isinstance(n.meta.get("val"), torch.Tensor)}
    derived = set()  # values computed from the time axis: one step of it, or the sequence itself
    for n in gm.graph.nodes:
        if "snn" in n.meta:
            time_major.add(n)
            continue
        if n in time_major or n.op not in ("call_function", "call_method", "call_module"):
            continue
        ins = [a for a in n.all_input_nodes if a in time_major]
        if any(a in time_major or a in derived for a in n.all_input_nodes):
            derived.add(n)
        val = n.meta.get("val")
        name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", "")
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0 if name == "stack" else None)
        if name == "stack" and dim == 0 and n in derived:  # a one-step loop's recorded steps: the time axis again
            time_major.add(n)
        elif not ins:
            continue
        elif name == "sum" and dim in (0, (0,), [0]):
            with gm.graph.inserting_after(n):
                scaled = b.call(operator.mul, (n, time_t), from_=[n])
            n.replace_all_uses_with(scaled)
            scaled.args = (n, time_t)
        elif isinstance(val, torch.Tensor) and val.dim() > 0 and val.shape[0] == 1:
            time_major.add(n)
