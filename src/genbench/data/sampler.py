"""Index batching: the data stays on the device as one tensor and batches are cut by index.

``IndexBatchSampler`` yields whole index tensors (no per-sample Python). Under DDP each rank owns a fixed shard
of the indices (reshuffled within the rank every epoch): GLO relies on this so each rank trains its own codes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch


def partition_indices(n: int, world_size: int, seed: int) -> list[torch.Tensor]:
    """Split range(n) into ``world_size`` fixed disjoint shards (a seeded permutation dealt round-robin)."""
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=generator)
    return [perm[rank::world_size].sort().values for rank in range(world_size)]


class IndexBatchSampler:
    """Yields (B,) int64 index tensors over this rank's shard of ``range(n)``.

    Every rank yields the same number of batches (DDP would hang otherwise): shards are cut to the smallest
    shard's length each epoch, after shuffling, so over epochs every index is still visited. The epoch seeds the
    shuffle, so a resumed run replays the same order as an uninterrupted one. It is read from ``epoch_source``
    (the trainer's ``current_epoch``) when given: Lightning may build and prefetch an epoch's iterator before it
    calls ``set_epoch`` on a resumed run, so ``set_epoch`` alone is not reliable.

    ``resume_at(epoch, batches)`` makes the next iteration of ``epoch`` skip its first ``batches`` batches (same
    order, nothing drawn twice): how a run resumed from a mid-epoch checkpoint continues exactly.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: Callable[[], torch.device] | torch.device | None = None,
        epoch_source: Callable[[], int] | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        self._device = device
        self._epoch_source = epoch_source
        self.shard = partition_indices(n, world_size, seed)[rank] if world_size > 1 else torch.arange(n)
        self.per_rank = n // world_size if world_size > 1 else n
        self._resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, batches: int) -> None:
        self._resume = (int(epoch), int(batches))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.per_rank // self.batch_size
        return -(-self.per_rank // self.batch_size)

    def _device_now(self) -> torch.device:
        if callable(self._device):
            return self._device()
        return self._device or torch.device("cpu")

    def __iter__(self) -> Iterator[torch.Tensor]:
        order = self.shard
        epoch = self._epoch_source() if self._epoch_source is not None else self.epoch
        skip = 0
        if self._resume is not None:
            resume_epoch, batches = self._resume
            self._resume = None
            skip = batches if resume_epoch == epoch else 0
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = order[torch.randperm(len(order), generator=generator)]
        order = order[: self.per_rank].to(self._device_now())  # one copy per epoch, none per step
        for start in range(skip * self.batch_size, len(self) * self.batch_size, self.batch_size):
            yield order[start : start + self.batch_size]
