"""Sharing a folder among the processes of a torchrun launch: rank and world size, and the gathered summary."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

from .common import UsageError

logger = logging.getLogger(__name__)


@dataclass
class Distributed:
    """Rank and world size from the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK); one process otherwise.

    A gloo process group is opened only to collect the counts of every rank for the summary; without it each
    rank still does its own share, and rank 0 summarises what it knows.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group_open: bool = False

    @classmethod
    def from_environment(cls) -> Distributed:
        try:
            world_size = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError as error:
            raise UsageError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({error})") from None
        if world_size < 1 or not 0 <= rank < world_size:
            raise UsageError(f"invalid RANK={rank} for WORLD_SIZE={world_size}")
        return cls(rank, world_size, local_rank)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def open_group(self) -> None:
        if not self.enabled or "MASTER_ADDR" not in os.environ:
            return
        import torch.distributed as dist

        if not dist.is_available():
            return
        try:
            # Ranks finish their shares at different times; the gather waits for the slowest, so no short timeout.
            dist.init_process_group("gloo", rank=self.rank, world_size=self.world_size, timeout=timedelta(days=7))
            self.group_open = True
        except (RuntimeError, ValueError) as error:
            logger.warning("could not open the process group (%s); each rank reports only its own files", error)

    def gather(self, value: dict) -> list[dict]:
        if not self.group_open:
            return [value]
        import torch.distributed as dist

        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def close(self) -> None:
        if self.group_open:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.group_open = False
