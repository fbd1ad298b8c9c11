"""Data parallelism for the fine-tuning skeleton: what changes when a recipe runs on several ranks at once.

A rank is one process of a ``torch.distributed`` group (Ray Train's TorchTrainer starts one per worker and
initializes the group). Every rank holds the whole trainable model and draws the same batch sequence; rank
r trains on rows r, r+w, ... of each batch, and gradients are averaged across ranks after every backward
(what DistributedDataParallel does), so all ranks take the same optimizer step and stay equal. Only rank 0
writes the run folder (checkpoints, metrics, summary), in the recipe's own formats: a run checkpointed by a
parallel run resumes in one process, and back.

Outside a group (the ordinary run) this is one rank of one: nothing changes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from edgegen.errors import EdgegenError


@dataclass(frozen=True)
class DataParallel:
    """This process's rank in a world of ``world`` ranks."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Whether this rank writes the run's files."""
        return self.rank == 0

    def shard(self, data: Any) -> Any:
        """``data`` (anything with ``batch_at(step)``) as this rank's rows of each of its batches."""
        if self.world == 1:
            return data
        if data.batch % self.world:
            raise EdgegenError(f"batch size {data.batch} does not split over {self.world} workers")
        return RankRows(data, self.rank, self.world)

    def sync(self, optimizer: Any) -> None:
        """Start every rank from rank 0's parameters and average gradients across ranks after each backward."""
        if self.world == 1:
            return
        import torch.distributed as dist

        world = self.world

        def average(p: Any) -> None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)

        for group in optimizer.param_groups:
            for p in group["params"]:
                dist.broadcast(p.data, src=0)
                p.register_post_accumulate_grad_hook(average)


class RankRows:
    """One rank's rows of every batch of ``data``."""

    def __init__(self, data: Any, rank: int, world: int) -> None:
        self.data, self.rank, self.world = data, rank, world
        self.batch = data.batch // world

    def batch_at(self, step: int) -> tuple[Any, Any, Any]:
        ids, att, mask = self.data.batch_at(step)
        rows = slice(self.rank, None, self.world)
        return ids[rows], None if att is None else att[rows], mask[rows]


def current() -> DataParallel:
    """The torch.distributed group this process trains in (one rank of one when there is none); torch is
    not imported for it: a group exists only once torch.distributed was imported and initialized."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return DataParallel()
    return DataParallel(dist.get_rank(), dist.get_world_size())
