"""Data-parallel training across the processes that `torchrun` or `accelerate launch` starts.

Both launchers set RANK, WORLD_SIZE, LOCAL_RANK and the env:// rendezvous; `join` reads them (none
set: one process, nothing changes). Every process builds the same model from the same seed and
walks the same batch order; each takes its share of every global batch (rows rank, rank + world,
...), divides its loss by the global count of loss units (supervised tokens, or pairs), and the
LoRA gradients are summed across processes with one all-reduce per optimizer step before
clipping. So W processes take exactly the steps one process takes with the same global batch (up
to float summation order). Not torch's DDP wrapper: it averages gradients over processes, which is
only right when every process holds the same number of tokens; here shards of one batch do not.
Only rank 0 writes checkpoints, snapshots, logs and the adapter. gloo on the CPU, nccl on CUDA.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from personalm.errors import PersonalmError


@dataclass(frozen=True)
class Group:
    """This process's place among the training processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, rows: Sequence[int]) -> list[int]:
        """This process's rows of a global batch."""
        return list(rows[self.rank :: self.world])

    def sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Element-wise sums over all processes (float64)."""
        if self.world == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def sum_grads(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over all processes, in one flat all-reduce (a process
        whose share of a batch was empty contributes zeros)."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        offset = 0
        for p in params:
            p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def launched_rank() -> int:
    """This process's rank as the launcher set it (0 when not launched as one of several)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def join(device: torch.device) -> Group:
    """The group this process belongs to, joined (one process when no launcher set WORLD_SIZE)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Group()
    try:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError):
        raise PersonalmError(
            "WORLD_SIZE is set but RANK is not: start training with torchrun or accelerate launch"
        ) from None
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Group(rank, world, local_rank)


def leave(group: Group) -> None:
    """Wait for every process, then close the group (a no-op for one process)."""
    if group.world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
