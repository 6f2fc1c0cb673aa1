"""Data-parallel dataset runs under torchrun: which rank this process is, its device, and the final barrier.

torchrun (torch.distributed.run) starts the processes and sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous address; we only read them. The ranks share nothing but one gloo all-reduce at the end
(how many rows failed), which is also the barrier after which rank 0 merges the parts. A crashed
rank is torchrun's to handle: it stops the others and exits non-zero.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

from swiftops.dataset.sharding import Shard
from swiftops.protocol.errors import ConfigError

logger = logging.getLogger(__name__)

# Ranks of a skewed dataset (or a resumed run where some shards are already done) reach the barrier
# hours apart; gloo's default 30 minutes would kill a healthy run.
BARRIER_TIMEOUT = timedelta(days=7)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise ConfigError(f"environment variable {name}={value!r} must be a whole number")
    return int(value)


@dataclass(frozen=True)
class TorchrunRank:
    """This process's place in a torchrun launch."""

    rank: int
    world_size: int
    local_rank: int

    @classmethod
    def from_environment(cls) -> TorchrunRank | None:
        """The rank torchrun gave this process, or None when it was not started by torchrun."""
        world_size = _env_int("WORLD_SIZE")
        if world_size is None:
            return None
        rank = _env_int("RANK") or 0
        if not 0 <= rank < world_size:
            raise ConfigError(f"RANK={rank} is out of range for WORLD_SIZE={world_size}")
        return cls(rank, world_size, _env_int("LOCAL_RANK") or 0)

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.world_size)

    def pick_device(self) -> str:
        """cuda:LOCAL_RANK when CUDA is present (made the current device, so the engine's "cuda" means it), else cpu."""
        import torch

        if not torch.cuda.is_available():
            return "cpu"
        count = torch.cuda.device_count()
        if self.local_rank >= count:
            raise ConfigError(
                f"LOCAL_RANK={self.local_rank} but this machine has {count} GPUs; "
                f"run at most {count} processes per node (--nproc_per_node)"
            )
        torch.cuda.set_device(self.local_rank)
        return f"cuda:{self.local_rank}"

    def start(self) -> None:
        """Join the process group (gloo: the one all-reduce below is a few bytes on the CPU, no NCCL needed)."""
        import torch.distributed as dist

        if dist.is_initialized():
            return
        if "MASTER_ADDR" not in os.environ:
            raise ConfigError(
                "WORLD_SIZE is set but MASTER_ADDR is not: start data-parallel runs with "
                "`swiftops infer --nproc_per_node N` or torchrun, or shard over separate processes "
                "with --shard_index/--num_shards and `swiftops merge-results`"
            )
        dist.init_process_group("gloo", rank=self.rank, world_size=self.world_size, timeout=BARRIER_TIMEOUT)

    def total_over_ranks(self, count: int) -> int:
        """Sum `count` over all ranks; returns once every rank has called it (the barrier before merging)."""
        import torch
        import torch.distributed as dist

        value = torch.tensor([count], dtype=torch.int64)
        dist.all_reduce(value)
        return int(value.item())

    def stop(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def relaunch_under_torchrun(nproc_per_node: int, args: list[str]) -> NoReturn:
    """Replace this process with torchrun running `swiftops ARGS` on `nproc_per_node` local ranks.

    --standalone picks a free rendezvous port on this machine; the ranks see WORLD_SIZE and so do not relaunch.
    exec (not a child process) lets signals such as Ctrl-C and SIGTERM reach torchrun directly.
    """
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and nproc_per_node > gpus:  # fail here, not in N ranks' tracebacks
        raise ConfigError(
            f"--nproc_per_node {nproc_per_node} but this machine has {gpus} GPUs; "
            f"use at most {gpus} (one process per GPU)"
        )
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc_per_node}",
        "-m",
        "swiftops.cli.main",
        *args,
    ]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
