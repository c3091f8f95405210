"""Measuring what autograd keeps for backward."""

from __future__ import annotations

import torch


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class SavedTensorMeter:
    """Context manager counting the bytes autograd saves for backward while it is active.

    Tensors saved several times are counted once per distinct storage; parameters are
    not counted (they are held by the model anyway).  ``bytes`` is the total after the
    block; ``count`` the number of distinct saved tensors.
    """

    def __init__(self, exclude=()):
        self._exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self._seen: set = set()
        self.bytes = 0
        self.count = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor):
        if isinstance(t, torch.nn.Parameter):
            return t
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if t.untyped_storage().data_ptr() not in self._exclude and key not in self._seen:
            self._seen.add(key)
            self.bytes += tensor_bytes(t)
            self.count += 1
        return t

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        return False
