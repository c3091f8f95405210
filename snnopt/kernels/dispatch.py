"""Calling the ``torch.ops.snnopt`` ops: straight to their bodies in plain eager code.

Every op is a ``torch.library`` custom op, and that is what torch.compile, export, FakeTensor,
functorch and ``opcheck`` see.  Through the dispatcher a Python custom op with a dozen
arguments costs about 85 us a call above its body without autograd and 160-200 us with it
(2 CPU threads: arguments converted to and from the dispatcher's types, the schema walked
for defaults, the generated autograd wrapper), against 15-50 us on the direct route below;
at the sizes of a typical SNN layer that is as much as the fused kernel itself.  :func:`call`
therefore runs the op's body directly — inside a ``torch.autograd.Function`` made of the
op's own ``setup_context`` and ``backward`` when a gradient is wanted — whenever nothing but
eager autograd can observe the call:

- not while torch.compile or export traces (``torch.compiler.is_compiling()``);
- no ``TorchDispatchMode`` active (FakeTensor, make_fx, functionalization), no functorch
  transform (vmap, grad), no autocast (whose casting rules apply to the op as a whole);
- every tensor argument a plain tensor or parameter (no subclass).

Any other call goes through ``torch.ops.snnopt``.  Both routes run the same body, setup
and backward, so values and gradients are the same; :func:`through_dispatcher` forces the
dispatcher route (to compare, or to see the ops by name in a profile).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable

import torch
from torch import nn

LIB = "snnopt"

_PLAIN = (torch.Tensor, nn.Parameter)


class _Entry:
    """One op: its definition and dispatcher handle, its body with the number of arguments
    it requires and the defaults of the others, and the autograd.Function that runs the
    body with the op's autograd formula (None: no formula)."""

    __slots__ = ("definition", "op", "body", "required", "defaults", "function")

    def __init__(self, definition, op, body: Callable):
        self.definition, self.op, self.body, self.function = definition, op, body, None
        defaults = tuple(p.default for p in inspect.signature(body).parameters.values())
        self.required = sum(d is inspect.Parameter.empty for d in defaults)
        self.defaults = defaults


_ENTRIES: dict[str, _Entry] = {}
_state = {"direct": True}


def custom_op(name: str) -> Callable:
    """Decorator: ``torch.library.custom_op("snnopt::<name>")`` that also records the body
    for :func:`call`."""
    def register(body: Callable):
        definition = torch.library.custom_op(f"{LIB}::{name}", mutates_args=())(body)
        _ENTRIES[name] = _Entry(definition, getattr(torch.ops.snnopt, name).default, body)
        return definition
    return register


class _Once(torch.autograd.Function):
    """The gradients a fused backward returned, unchanged; differentiating them once more
    raises with the op's name (its backward kernels have no derivative of their own, and a
    second derivative silently zero would be a wrong answer)."""

    @staticmethod
    def forward(ctx, name, _anchor, *grads):
        ctx.name = name
        return tuple(g.clone() if isinstance(g, torch.Tensor) else g for g in grads)

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(f"snnopt::{ctx.name}: second derivatives (create_graph=True, then a backward through the "
                           f"gradient) are not available through snnopt's fused ops, whose backward is "
                           f"differentiable once; take them through the uncompiled model")


def _once(name: str, backward: Callable) -> Callable:
    """``backward`` whose results, when autograd records the backward (``create_graph``),
    raise on being differentiated (:class:`_Once`); else ``backward`` itself."""
    def once(ctx, *grads):
        if not torch.is_grad_enabled():
            return backward(ctx, *grads)
        with torch.no_grad():
            out = backward(ctx, *grads)
        return _Once.apply(name, torch.empty(0, requires_grad=True), *out)
    return once


def register_autograd(name: str, backward: Callable, setup_context: Callable, twice: bool = False) -> None:
    """The autograd formula of op ``name`` (``torch.library`` ``register_autograd``), for
    both routes.  ``twice``: ``backward`` is itself differentiable (made of differentiable
    ops); otherwise a second derivative through it raises (:class:`_Once`)."""
    entry = _ENTRIES[name]
    if not twice:
        backward = _once(name, backward)
    entry.definition.register_autograd(backward, setup_context=setup_context)
    body = entry.body

    def forward(ctx, *args):  # the ctx-taking form: apply binds no signature per call
        output = body(*args)
        setup_context(ctx, args, output)
        return output
    entry.function = type(f"{name}_direct", (torch.autograd.Function,), {
        "forward": staticmethod(forward), "backward": staticmethod(backward)})


def _direct(args) -> bool:
    if not _state["direct"] or torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() \
            or torch._C._functorch.peek_interpreter_stack() is not None or torch._C._is_any_autocast_enabled():
        return False
    return all(type(a) in _PLAIN for a in args if isinstance(a, torch.Tensor))


def call(name: str, *args):
    """``torch.ops.snnopt.<name>(*args)`` (arguments by position), run directly when plain
    eager autograd is all that can observe it (module docstring)."""
    entry = _ENTRIES[name]
    if len(args) < entry.required or not _direct(args):  # (too few arguments: the dispatcher's error)
        return entry.op(*args)
    args = args + entry.defaults[len(args):]
    if entry.function is not None and torch.is_grad_enabled() and any(
            isinstance(a, torch.Tensor) and a.requires_grad for a in args):
        return entry.function.apply(*args)
    return entry.body(*args)


@contextlib.contextmanager
def through_dispatcher():
    """Within: every :func:`call` goes through ``torch.ops.snnopt`` (the ops then appear by
    name in a profile)."""
    previous, _state["direct"] = _state["direct"], False
    try:
        yield
    finally:
        _state["direct"] = previous
