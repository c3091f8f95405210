"""Data-parallel training on PyTorch's own engine (``torchrun``, DistributedDataParallel).

``torchrun --nproc_per_node N -m snnopt.train ...`` starts N processes with ``RANK`` /
``WORLD_SIZE`` / ``MASTER_ADDR`` set; :func:`setup` joins the process group (gloo on CPU,
NCCL on CUDA).  Each rank trains on its :class:`DistributedSampler` shard with the
per-process ``--batch-size``; DDP averages the gradients, so a step equals one step on
the global batch of ``N * batch_size`` samples.  Rate mode all-reduces the BatchNorm
batch statistics of its spike pass (:func:`snnopt.compiler.synchronise_batch_stats`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the only process that prints, plots and writes files."""
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    """The device ``name`` (``cpu``, ``cuda``, ``cuda:N``); ``ValueError`` when it is not a
    device name or this machine has no such device."""
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ValueError(f"--device {name!r}: snnopt train runs on cpu or cuda, not {dev.type}")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: CUDA is not available here (no GPU found, or torch "
                         f"{torch.__version__} is built without CUDA); use --device cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"numbered from 0")
    return dev


def setup(device: str | None = None) -> Context:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1); ``device``
    defaults to cuda when available, else cpu (see :func:`resolve_device`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = resolve_device(device)
    if world <= 1:
        return Context(device=dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    rank = dist.get_rank()
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1))))
        torch.cuda.set_device(dev)
    return Context(rank, dist.get_world_size(), dev)


def wrap(module: nn.Module, ctx: Context) -> nn.Module:
    """``module`` in DistributedDataParallel when distributed (gradients averaged over ranks)."""
    if not ctx.distributed:
        return module
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def sum_over_ranks(values: list[float], ctx: Context) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (identity in one process)."""
    if not ctx.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
