"""Measuring what autograd keeps for backward."""

from __future__ import annotations

import threading
import weakref

import torch


def _is_parameter(t: torch.Tensor) -> bool:
    """``t`` is a parameter or a view of one (``F.linear`` saves ``weight.t()``)."""
    return isinstance(t, torch.nn.Parameter) or isinstance(t._base, torch.nn.Parameter)


class SavedTensorMeter:
    """Context manager measuring the memory autograd holds for backward while it is active.

    Every tensor saved for backward inside the block is tracked by its storage for as
    long as autograd holds it: a storage counts with its full size (``nbytes``, the memory
    it keeps alive) once, however many saved tensors or views share it, and stops
    counting when the last of them is released (its graph dropped, or freed by
    ``backward``).  Parameters (and views of them) and the storages of ``exclude`` are
    not counted: the model and the caller hold them anyway.  The meter holds only weak
    references, so it keeps nothing alive.

    ``bytes``       peak over the block of the saved bytes held at one time (for a forward
                    that keeps its whole graph: the saved bytes of the graph at the end)
    ``count``       distinct storages held at that peak
    ``kept_bytes``  saved bytes still held when the block exits (what the graph alive
                    at that point needs for backward; 0 when the graph was dropped or
                    its backward ran inside the block)
    """

    def __init__(self, exclude=()):
        self._exclude = {(t.device, t.untyped_storage().data_ptr()) for t in exclude}
        self._held: dict = {}  # storage key -> [nbytes, saved tensors alive]
        self._refs: set = set()
        self._lock = threading.RLock()  # backward may release saved tensors on another thread
        self._current = 0
        self.bytes = 0
        self.count = 0
        self.kept_bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        # A fresh alias held by autograd alone: it dies exactly when autograd releases the
        # saved tensor, and (unlike ``t`` itself, which may be the node's own output) it has
        # no ``grad_fn``, so holding it makes no reference cycle through the graph.
        saved = t.detach()
        if _is_parameter(t):
            return saved
        storage = saved.untyped_storage()
        key = (saved.device, storage.data_ptr())
        if key in self._exclude or storage.nbytes() == 0:
            return saved
        with self._lock:
            entry = self._held.get(key)
            if entry is None:
                self._held[key] = [storage.nbytes(), 1]
                self._current += storage.nbytes()
                if self._current > self.bytes:
                    self.bytes, self.count = self._current, len(self._held)
            else:
                entry[1] += 1
            self._refs.add(weakref.ref(saved, lambda ref, key=key: self._release(ref, key)))
        return saved

    def _release(self, ref, key) -> None:
        with self._lock:
            if ref not in self._refs:  # the block has exited
                return
            self._refs.discard(ref)
            entry = self._held[key]
            entry[1] -= 1
            if entry[1] == 0:
                self._current -= entry[0]
                del self._held[key]

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        with self._lock:
            self.kept_bytes = self._current
            self._refs.clear()
            self._held.clear()
        return False
