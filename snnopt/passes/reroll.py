"""reroll_time: fold unrolled per-step loops back into multi-step neuron scans.

A trace of ``for t in range(T): s, v = cell(fc(x[t]), v)`` holds T scan nodes of
length 1 linked by their state.  For each such chain ``n_0 .. n_{L-1}`` (same module,
``n_t``'s state argument is ``n_{t-1}``'s state output) the pass *lifts* the per-step
inputs ``x_0 .. x_{L-1}`` to one time-major tensor ``X`` with ``X[t] == x_t``:

    getitem(S, t) for t = 0..L-1           ->  S                (S[:L] if longer)
    S[t, *rest], rest a basic index         ->  S[:, *rest]
    outputs of an already rerolled chain    ->  its [L, B, ...] output
    the same value at every step            ->  value expanded to [L, ...]
    f(a_t, c) with f time-distributable     ->  f(lift(a), c)

where ``f`` is elementwise, a last-dim module (Linear, activations, eval Dropout), a
per-sample module run on ``[L*B, ...]`` and unflattened (Conv, pooling, Flatten, eval
BatchNorm), ``flatten(start_dim >= 1)`` or a ``view``/``reshape`` that keeps the batch
dimension.  The chain becomes one scan over ``X``; ``torch.stack`` of a family becomes the
lifted tensor (its time axis moved to the stack's dim), and any other use of a per-step value
reads ``select(out, 0, t)``.
Chains whose inputs cannot be lifted (recurrent inputs, stateful or unknown ops) stay
per-step and the report says why.
"""

from __future__ import annotations

import operator
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import fx, nn

from .. import kernels
from .infra import Builder, Note, PassResult

NAME = "reroll_time"

_LAST_DIM = (nn.Linear, nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Identity, nn.GELU, nn.SiLU, nn.ELU,
             nn.Hardtanh)
_PER_SAMPLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.MaxPool1d,
               nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
               nn.Flatten, nn.Upsample, nn.ZeroPad2d)
_EVAL_ONLY = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_ELEMENTWISE = {operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, torch.add, torch.sub,
                torch.mul, torch.div, torch.relu, torch.sigmoid, torch.tanh, torch.clamp, torch.exp, F.relu,
                F.leaky_relu, F.gelu, F.silu, F.elu, torch.sign, torch.abs}
_ELEMENTWISE_METHODS = {"add", "sub", "mul", "div", "relu", "sigmoid", "tanh", "clamp", "exp", "neg", "abs",
                        "float", "to", "contiguous", "__add__", "__mul__", "__sub__", "__truediv__"}
_PER_SAMPLE_FUNCS = {F.conv1d, F.conv2d, F.conv3d, F.avg_pool1d, F.avg_pool2d, F.max_pool1d, F.max_pool2d,
                     F.adaptive_avg_pool2d}


class CannotLift(Exception):
    pass


def _same(values) -> bool:
    first = values[0]
    return all(v is first or (not isinstance(v, fx.Node) and not isinstance(first, fx.Node) and v == first)
               for v in values[1:])


def _val(node):
    return node.meta.get("val") if isinstance(node, fx.Node) else None


class _Lifter:
    """Builds time-major equivalents of per-step families of nodes."""

    def __init__(self, gm: fx.GraphModule, b: Builder):
        self.gm, self.b = gm, b
        self.known: dict[fx.Node, tuple[fx.Node, int]] = {}
        self.cache: dict[tuple, fx.Node] = {}

    def lift(self, items: list) -> tuple[str, object]:
        """``("inv", value)`` when every step sees the same value, else ``("ms", node)``."""
        if _same(items):
            return "inv", items[0]
        if not all(isinstance(n, fx.Node) for n in items):
            raise CannotLift("a per-step value changes in a way the compiler cannot follow")
        key = tuple(items)
        if key in self.cache:
            return "ms", self.cache[key]
        node = self._lift_nodes(items)
        self.cache[key] = node
        return "ms", node

    def as_time_major(self, items: list) -> fx.Node:
        kind, value = self.lift(items)
        if kind == "ms":
            return value
        if not isinstance(value, fx.Node):
            raise CannotLift("the per-step input is a constant")
        ms = self.b.method("unsqueeze", (value, 0), from_=[value])  # -1: any batch size and features
        return self.b.method("expand", (ms, len(items), *[-1] * _val(value).dim()), from_=[value])

    def _lift_nodes(self, items: list[fx.Node]) -> fx.Node:
        L = len(items)
        first = items[0]
        if all(n in self.known for n in items):
            srcs = {self.known[n][0] for n in items}
            if len(srcs) == 1 and [self.known[n][1] for n in items] == list(range(L)):
                return srcs.pop()
        upstream = _per_step_scan(first)
        if upstream is not None:
            raise CannotLift(f"its input comes from `{upstream.meta['snn_module']}`, which stays per-step")
        indexed = _time_index_source(items)
        if indexed is not None:
            src, rest = indexed
            steps = slice(None) if _val(src).shape[0] == L else slice(0, L)
            if steps == slice(None) and not any(i != slice(None) for i in rest):
                return src
            return self.b.call(operator.getitem, (src, (steps, *rest)), from_=[src])
        if not all(n.op == first.op and n.target == first.target and len(n.args) == len(first.args)
                   and n.kwargs.keys() == first.kwargs.keys() for n in items):
            raise CannotLift(f"`{first.name}` is not computed the same way at every step")
        _check_time_dim(items)
        if first.op in ("placeholder", "get_attr", "output"):
            raise CannotLift(f"`{first.name}` differs between steps")
        args = [self.lift([n.args[k] for n in items]) for k in range(len(first.args))]
        kwargs = {k: self.lift([n.kwargs[k] for n in items]) for k in first.kwargs}
        if all(kind == "inv" for kind, _ in args) and all(kind == "inv" for kind, _ in kwargs.values()):
            self._check_deterministic(first)
            return self.as_time_major([first] * L)
        return self._apply(first, args, kwargs, L)

    def _check_deterministic(self, node: fx.Node):
        if node.op == "call_module":
            m = self.gm.get_submodule(node.target)
            if isinstance(m, _EVAL_ONLY) and m.training:
                raise CannotLift(f"{type(m).__name__} `{node.target}` in training mode differs at every step")

    def _apply(self, node: fx.Node, args, kwargs, L: int) -> fx.Node:
        plain_args = [v for _, v in args]
        plain_kwargs = {k: v for k, (_, v) in kwargs.items()}
        ms_positions = [i for i, (kind, _) in enumerate(args) if kind == "ms"]
        batch = _val(node.args[0]).shape[0] if isinstance(_val(node.args[0]), torch.Tensor) else None
        b = self.b
        if node.op == "call_module":
            m = self.gm.get_submodule(node.target)
            if ms_positions != [0] or kwargs:
                raise CannotLift(f"module `{node.target}` takes a per-step value other than its input")
            if isinstance(m, _EVAL_ONLY):
                if m.training:
                    reason = "per-step batch statistics" if isinstance(m, nn.modules.batchnorm._BatchNorm) \
                        else "per-step random masks"
                    raise CannotLift(f"{type(m).__name__} `{node.target}` in training mode uses {reason}, "
                                     f"which a merged time-major call would change")
                return self._merged(lambda x: b.module(node.target, (x,), from_=[node]), plain_args[0], L, batch, node)
            if isinstance(m, _LAST_DIM):
                return b.module(node.target, tuple(plain_args), from_=[node])
            if isinstance(m, _PER_SAMPLE):
                return self._merged(lambda x: b.module(node.target, (x,), from_=[node]), plain_args[0], L, batch, node)
            raise CannotLift(f"{type(m).__name__} `{node.target}` is not known to be time-distributable "
                             f"(it may keep state across steps)")
        target = node.target
        if (node.op == "call_function" and target in _ELEMENTWISE) or \
                (node.op == "call_method" and target in _ELEMENTWISE_METHODS):
            make = b.call if node.op == "call_function" else b.method
            return make(target, tuple(plain_args), plain_kwargs, from_=[node])
        if ms_positions != [0]:
            raise CannotLift(f"`{node.name}` ({_target_name(node)}) combines per-step values in a way that is "
                             f"not time-distributable")
        if node.op == "call_function" and target is F.linear:
            return b.call(target, tuple(plain_args), plain_kwargs, from_=[node])
        if node.op == "call_function" and target in _PER_SAMPLE_FUNCS:
            rest = tuple(plain_args[1:])
            return self._merged(lambda x: b.call(target, (x, *rest), plain_kwargs, from_=[node]),
                                plain_args[0], L, batch, node)
        if _target_name(node) == "flatten":
            start = plain_args[1] if len(plain_args) > 1 else plain_kwargs.get("start_dim", 0)
            end = plain_args[2] if len(plain_args) > 2 else plain_kwargs.get("end_dim", -1)
            if start < 1 and start != -1:
                raise CannotLift(f"`{node.name}` flattens the batch dimension")
            return b.call(torch.flatten, (plain_args[0], start + 1 if start >= 0 else start,
                                          end + 1 if end >= 0 else end), from_=[node])
        if node.op == "call_method" and target in ("view", "reshape"):
            shape = plain_args[1:]
            if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
                shape = tuple(shape[0])
            if not shape or shape[0] != batch:
                raise CannotLift(f"`{node.name}` reshapes across the batch dimension")
            return b.method(target, (plain_args[0], L, *shape), from_=[node])
        raise CannotLift(f"`{node.name}` ({_target_name(node)}) is not known to be time-distributable")

    def _merged(self, call, x_ms: fx.Node, L: int, batch, node: fx.Node) -> fx.Node:
        flat = self.b.call(torch.flatten, (x_ms, 0, 1), from_=[node])
        return self.b.call(torch.unflatten, (call(flat), 0, (L, batch)), from_=[node])


def _check_time_dim(items: list[fx.Node]) -> None:
    """Steps indexed along a later dim (``x[:, t]``, batch-first data) cannot become a
    time-major sequence: say so, with the fix."""
    first = items[0]
    if not (first.op == "call_function" and first.target is operator.getitem):
        return
    indices = [n.args[1] for n in items]
    if not all(isinstance(i, tuple) and len(i) == len(indices[0]) for i in indices):
        return
    varying = [d for d in range(len(indices[0])) if len({repr(i[d]) for i in indices}) > 1]
    if varying and varying[0] > 0:
        raise CannotLift(f"`{first.name}` takes the steps from dim {varying[0]} of `{first.args[0]}`; snnopt takes "
                         f"time-major inputs [T, B, ...]: pass x.transpose(0, {varying[0]}) and loop over x[t]")


def _target_name(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def _per_step_scan(node: fx.Node):
    """The scan node if ``node`` is the squeezed output of a single-step scan left per-step."""
    if node.op == "call_method" and node.target == "squeeze":
        got = node.args[0]
        if got.op == "call_function" and got.target is operator.getitem:
            scan = got.args[0]
            if scan.op == "call_function" and scan.target is kernels.neuron_scan and "snn_per_step_reason" in scan.meta:
                return scan
    return None


def _basic_index(index) -> bool:
    """A basic index that keeps or drops whole dims: ints, slices, ``None`` and ``...``."""
    return index is None or index is Ellipsis or isinstance(index, (int, slice))


def _time_index_source(items: list[fx.Node]):
    """``(S, rest)`` when ``items[t]`` is ``S[t, *rest]`` (``S[t]``, ``S[t, :]``, ``S.select(0, t)``)
    for t = 0..L-1, with ``rest`` a basic index the same at every step; then
    ``S[:L, *rest][t] == items[t]``."""
    srcs, idxs, rests = set(), [], set()
    for n in items:
        if n.op == "call_function" and n.target is operator.getitem:
            index = n.args[1] if isinstance(n.args[1], tuple) else (n.args[1],)
            if not index or not isinstance(index[0], int) or not all(_basic_index(i) for i in index[1:]):
                return None
            srcs.add(n.args[0])
            idxs.append(index[0])
            rests.add(repr(index[1:]))
        elif _target_name(n) == "select" and len(n.args) == 3 and n.args[1] == 0:
            srcs.add(n.args[0])
            idxs.append(n.args[2])
            rests.add(repr(()))
        else:
            return None
    if len(srcs) != 1 or len(rests) != 1 or idxs != list(range(len(items))):
        return None
    src = srcs.pop()
    if not isinstance(_val(src), torch.Tensor):
        return None
    first = items[0]
    rest = first.args[1][1:] if first.target is operator.getitem and isinstance(first.args[1], tuple) else ()
    return src, tuple(rest)


def _is_state_of(arg, prev: fx.Node, k: int) -> bool:
    return isinstance(arg, fx.Node) and arg.op == "call_function" and arg.target is operator.getitem \
        and arg.args[0] is prev and arg.args[1] == k


def _outputs(n: fx.Node) -> dict:
    """``{k: getitem(n, k)}`` for the scan node's outputs in use."""
    return {u.args[1]: u for u in n.users if u.op == "call_function" and u.target is operator.getitem}


def find_chains(graph: fx.Graph) -> list[list[fx.Node]]:
    """Chains of single-step scans of one module linked through their state."""
    by_module = defaultdict(list)
    for n in graph.nodes:
        if n.op == "call_function" and n.target is kernels.neuron_scan and n.meta.get("snn_cell") \
                and "snn_per_step_reason" not in n.meta:
            by_module[n.meta["snn_module"]].append(n)
    chains = []
    for calls in by_module.values():
        current = []
        for n in calls:
            cuba = n.meta["snn"].has_current
            if current and _is_state_of(n.args[1], current[-1], 1) and \
                    (not cuba or _is_state_of(n.args[2], current[-1], 2)):
                current.append(n)
            else:
                if current:
                    chains.append(current)
                current = [n]
        chains.append(current)
    order = {n: i for i, n in enumerate(graph.nodes)}
    return sorted(chains, key=lambda c: order[c[0]])


def reroll_time(gm: fx.GraphModule) -> PassResult:
    b = Builder(gm, NAME)
    lifter = _Lifter(gm, b)
    notes, modified = [], False
    finals: dict[fx.Node, fx.Node] = {}
    for chain in find_chains(gm.graph):
        module = chain[0].meta["snn_module"]
        if len(chain) < 2:
            continue
        try:
            ms = _reroll_chain(b, lifter, chain, finals)
        except CannotLift as exc:
            for n in chain:
                n.meta["snn_per_step_reason"] = str(exc)
            notes.append(Note("eager", chain[0].name, f"`{module}` stays per-step ({len(chain)} steps): {exc}"))
            continue
        modified = True
        notes.append(Note("rewritten", ms.name, f"`{module}`: {len(chain)} per-step calls -> one multi-step scan"))
    if modified:
        _lift_stacks(gm, lifter)
        _replace_per_step_uses(b, lifter, finals)
        gm.graph.eliminate_dead_code()
    return PassResult(gm, modified, notes)


def _reroll_chain(b: Builder, lifter: _Lifter, chain: list[fx.Node], finals: dict) -> fx.Node:
    L = len(chain)
    first = chain[0]
    for n in chain:
        x = n.args[0]
        if not (x.op == "call_method" and x.target == "unsqueeze" and x.args[1] == 0):
            raise CannotLift(f"`{n.name}` is not a canonical single-step call")
    outs = [_outputs(n) for n in chain]
    record = False
    for t, o in enumerate(outs[:-1]):
        for k, node in o.items():
            nxt = chain[t + 1]
            extra = [u for u in node.users if u is not nxt]
            if k == 2 and extra:
                raise CannotLift("its synaptic current is used outside the recurrence")
            if k == 1 and extra:
                record = True
    with b.graph.inserting_before(first):
        X = lifter.as_time_major([n.args[0].args[0] for n in chain])
        ms = b.call(kernels.neuron_scan, (X, first.args[1], first.args[2], *first.args[3:7], record),
                    from_=chain)
        ms.meta.update(snn=first.meta["snn"], snn_module=first.meta["snn_module"], snn_cell=False, rerolled=L)
        out_ms = b.call(operator.getitem, (ms, 0), from_=[ms])
        v_T = b.call(operator.getitem, (ms, 1), from_=[ms])
        i_T = b.call(operator.getitem, (ms, 2), from_=[ms])
        v_seq = b.call(operator.getitem, (ms, 3), from_=[ms]) if record else None
    for t, (n, o) in enumerate(zip(chain, outs)):
        if 0 in o:
            squeezed = [u for u in o[0].users if u.op == "call_method" and u.target == "squeeze"]
            for u in squeezed:
                lifter.known[u] = (out_ms, t)
            if len(squeezed) != len(o[0].users):
                raise CannotLift(f"`{n.name}`'s output is used before squeezing")
        if 1 in o and record:
            lifter.known[o[1]] = (v_seq, t)
    if 1 in outs[-1]:
        finals[outs[-1][1]] = v_T
    if 2 in outs[-1]:
        finals[outs[-1][2]] = i_T
    return ms


def _lift_stacks(gm: fx.GraphModule, lifter: _Lifter) -> None:
    for node in list(gm.graph.nodes):
        if not (node.op == "call_function" and node.target is torch.stack):
            continue
        seq = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if not isinstance(dim, int) or not isinstance(seq, (list, tuple)) or len(seq) < 2:
            continue
        with gm.graph.inserting_before(node):
            try:
                kind, value = lifter.lift(list(seq))
            except CannotLift:
                continue
            if kind != "ms":
                continue
            if dim != 0:  # stack(items, d) is the time-major tensor with its time axis moved to d
                value = lifter.b.method("movedim", (value, 0, dim), from_=[node])
        node.replace_all_uses_with(value)


def _replace_per_step_uses(b: Builder, lifter: _Lifter, finals: dict) -> None:
    for node, (ms, t) in lifter.known.items():
        if not node.users:
            continue
        with b.graph.inserting_after(ms):
            replacement = finals.get(node) or b.call(torch.select, (ms, 0, t), from_=[node])
        node.replace_all_uses_with(replacement)
    for node, final in finals.items():
        if node.users:
            node.replace_all_uses_with(final)
