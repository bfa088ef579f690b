"""Several processes training one network (DistributedDataParallel), as `torchrun` starts them.

    torchrun --nproc_per_node N -m training.train RUN_DIR ...

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them (plain
`python -m training.train`) there is one process and nothing here does anything. Each rank draws its
own slice of every step's samples, DDP averages the gradients, and rank 0 alone writes the run folder.
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # on this machine: which GPU it uses

    @property
    def main(self) -> bool:
        """The process that writes checkpoints, the log and the model folder."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def from_environment() -> Ranks:
    """The ranks torchrun announced in the environment, else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Ranks()
    return Ranks(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def start(device: torch.device) -> tuple[Ranks, torch.device]:
    """Join the process group (NCCL on GPUs, gloo on the CPU) when torchrun started several processes;
    returns the ranks and this process's device (its own GPU on a multi-GPU machine)."""
    ranks = from_environment()
    if not ranks.distributed:
        return ranks, device
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=ranks.rank,
                            world_size=ranks.world_size)
    return ranks, device


def stop(ranks: Ranks) -> None:
    if ranks.distributed and dist.is_initialized():
        # the DDP wrapper sits in reference cycles and would keep gloo's process group (and its threads) alive
        # until the interpreter exits, where destroying them aborted one run in 12 ("terminate called without
        # an active exception"): free it now, and let every rank get here before the group goes
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def wrap(network: torch.nn.Module, ranks: Ranks, device: torch.device) -> torch.nn.Module:
    """The module the training step calls: DDP around `network` when there are several ranks (it starts
    every rank from rank 0's weights and averages the gradients in backward), else `network` itself."""
    if not ranks.distributed:
        return network
    from torch.nn.parallel import DistributedDataParallel

    # the decoder's segmentation heads of the coarser stages get no gradient (no deep supervision): without
    # find_unused_parameters their gradient bucket never becomes ready and is never averaged
    return DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True)


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()


def mean_over_ranks(values: list[float], ranks: Ranks) -> list[float]:
    """Each value averaged over the ranks (the same list on every rank)."""
    if not ranks.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return (tensor / ranks.world_size).tolist()
