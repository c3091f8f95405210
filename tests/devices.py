"""The devices the kernel tests run on: the CPU always, CUDA where a GPU and the fused CUDA
kernels are both there (skipped with the reason otherwise)."""

from __future__ import annotations

import pytest
import torch

from snnopt.kernels import native


def _cuda_missing() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device: the CUDA kernels are checked on a machine with a GPU"
    if native.backend("cuda") != "native":
        return f"the fused CUDA kernels did not build: {native._state.get('error')}"
    return None


CUDA_MISSING = _cuda_missing()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(CUDA_MISSING is not None,
                                                                reason=CUDA_MISSING or ""))]
"""Parameters for a test's ``device`` argument."""

