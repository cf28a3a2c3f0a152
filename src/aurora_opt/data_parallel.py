"""Setting up data-parallel training: join torchrun's process group, wrap the model, leave cleanly.

The optimizers need none of this (they share their work over whatever process group is
initialized, see :mod:`aurora_opt.distributed`); it is the few lines every training script around
them repeats::

    device = init_distributed()
    model = distribute_model(model.to(device), "fsdp2", blocks=list(model.blocks))
    optimizer = Aurora(param_groups(model))
    ...
    finish_distributed()
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist


def init_distributed() -> torch.device:
    """Join the process group that ``torchrun`` describes in the environment; return this rank's device.

    NCCL with one GPU per rank (``LOCAL_RANK``) when CUDA is available, else gloo on the CPU.
    A no-op that returns the device when the group is already initialized.
    """
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def distribute_model(model: torch.nn.Module, mode: str, *, blocks: Sequence[torch.nn.Module] = ()) -> torch.nn.Module:
    """Make ``model`` data-parallel over the default process group; build the optimizer afterwards.

    ``"ddp"``: wrap in ``DistributedDataParallel`` (parameters replicated, gradients averaged).
    ``"fsdp2"``: ``fully_shard`` each of ``blocks`` (e.g. the transformer layers), then the whole
    model, in place (parameters become ``Shard(0)`` DTensors). Either way the optimizer is then
    built as usual, e.g. ``Aurora(param_groups(model))``, and shares its work over the same group.
    """
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if mode == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for block in blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    raise ValueError(f"unknown data-parallel mode {mode!r}; expected 'ddp' or 'fsdp2'")


def finish_distributed() -> None:
    """Leave the process group in step with the other ranks: a barrier, then destroy every group.

    Without the barrier a fast rank can tear down its connections (rank 0 also hosts the
    rendezvous store) while a slower one is still in its last collective, which then fails.
    A no-op when torch.distributed is not initialized.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    dist.destroy_process_group()
