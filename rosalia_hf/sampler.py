"""Batches that are *exactly* half positive and half negative, in every batch, on every rank.

The authors' LISA fork draws positives and negatives at random, which gives 1:1 only in expectation. Here each
batch of ``batch_size`` pairs holds ``batch_size // 2`` positives and as many negatives. An epoch uses
``min(#positives, #negatives)`` of each class; the larger class is drawn afresh every epoch, so over epochs every
pair is seen. Batches are dealt to ranks round robin (batch ``i`` goes to rank ``i % num_replicas``), which is
also how ``accelerate`` shards a batch sampler, so the two ways of running give the same assignment.

With ``group_by_image`` the pairs of one image are kept next to each other in both class queues, so a batch
tends to hold several pairs of the same image and the collator can run the image encoders once for all of them.

:class:`ShuffledBatchSampler` is the plain alternative with the same interface (seeded per epoch, dealt to ranks the
same way), for data that cannot be split 1:1: a conversation's turns mix polarities, so a ``conversations`` split
is balanced on "has a positive turn" when it can be and shuffled otherwise (``RosaliaTrainer``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


class BalancedPolarityBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices, each exactly ``batch_size // 2`` positives then as many negatives.

    Args:
        positive: per dataset index, whether the pair is positive (non-empty reference mask).
        batch_size: pairs per batch on one rank; must be even.
        image_ids: optional per-index image key; with ``group_by_image`` pairs of one image stay together.
        num_replicas, rank: the distributed world; read from ``torch.distributed`` when initialised, else 1 and 0.
        seed: base seed; the order of epoch ``e`` depends only on ``(seed, e)``.
        shard: yield only this rank's batches. ``False`` yields the batches of every rank in order (still a multiple
            of ``num_replicas``), for a loader that ``accelerate`` shards itself: rank ``r`` then gets batches
            ``r, r + num_replicas, ...``, the same ones as with ``shard=True``.

    >>> sampler = BalancedPolarityBatchSampler([True, False, True, False, False, True], batch_size=2, seed=0)
    >>> [sorted(batch, key=lambda i: not [True, False, True, False, False, True][i]) == batch for batch in sampler]
    [True, True, True]
    """

    def __init__(
        self,
        positive: Sequence[bool],
        batch_size: int,
        *,
        image_ids: Sequence[str] | None = None,
        group_by_image: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
        shard: bool = True,
    ) -> None:
        if batch_size < 2 or batch_size % 2:
            raise ValueError(f"batch_size must be even and >= 2 for 1:1 batches, got {batch_size}")
        if image_ids is not None and len(image_ids) != len(positive):
            raise ValueError(f"image_ids has {len(image_ids)} entries for {len(positive)} pairs")
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside a world of {num_replicas}")
        self.positive = np.asarray(positive, dtype=bool)
        self.batch_size = batch_size
        self.image_ids = None if image_ids is None else np.asarray(image_ids)
        self.group_by_image = group_by_image and image_ids is not None
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.shard = shard
        self.epoch = 0
        half = batch_size // 2
        per_class = int(min(self.positive.sum(), (~self.positive).sum()))
        if per_class < half:
            raise ValueError(
                f"need at least {half} positive and {half} negative pairs for a batch of {batch_size}; "
                f"have {int(self.positive.sum())} positive and {int((~self.positive).sum())} negative"
            )
        self.total_batches = (per_class // half) // num_replicas * num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration draw the order of ``epoch`` (call before each epoch, like DistributedSampler)."""
        self.epoch = epoch

    @property
    def sampler(self) -> BalancedPolarityBatchSampler:
        # accelerate's BatchSamplerShard forwards set_epoch to ``batch_sampler.sampler``; point it back here.
        return self

    def __len__(self) -> int:
        return self.total_batches // self.num_replicas if self.shard else self.total_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = self._epoch_order(rng)
        positives = order[self.positive[order]]
        negatives = order[~self.positive[order]]
        half = self.batch_size // 2
        first, step = (self.rank, self.num_replicas) if self.shard else (0, 1)
        for batch in range(first, self.total_batches, step):
            window = slice(batch * half, (batch + 1) * half)
            yield positives[window].tolist() + negatives[window].tolist()

    def _epoch_order(self, rng: np.random.Generator) -> np.ndarray:
        """All indices in this epoch's order; pairs of one image adjacent when grouping."""
        if not self.group_by_image:
            return rng.permutation(len(self.positive))
        unique_images, image_of_pair = np.unique(self.image_ids, return_inverse=True)
        image_rank = rng.permutation(len(unique_images))[image_of_pair]
        tie_break = rng.permutation(len(self.positive))
        return np.lexsort((tie_break, image_rank))



def balanced_batches_possible(positive: Sequence[bool], batch_size: int) -> bool:
    """Whether :class:`BalancedPolarityBatchSampler` can make one batch: an even size and half of it of each class."""
    positive = np.asarray(positive, dtype=bool)
    half = batch_size // 2
    return batch_size >= 2 and batch_size % 2 == 0 and min(int(positive.sum()), int((~positive).sum())) >= half


class ShuffledBatchSampler(Sampler[list[int]]):
    """Yields lists of ``batch_size`` dataset indices in a seeded random order, the last incomplete batch dropped.

    Same arguments and rank dealing as :class:`BalancedPolarityBatchSampler`, without the 1:1 constraint.

    >>> [len(batch) for batch in ShuffledBatchSampler(7, batch_size=3, seed=0)]
    [3, 3]
    """

    def __init__(self, num_items: int, batch_size: int, *, num_replicas: int | None = None, rank: int | None = None,
                 seed: int = 0, shard: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside a world of {num_replicas}")
        self.num_items, self.batch_size = num_items, batch_size
        self.num_replicas, self.rank, self.seed, self.shard = num_replicas, rank, seed, shard
        self.epoch = 0
        self.total_batches = (num_items // batch_size) // num_replicas * num_replicas
        if self.total_batches == 0:
            raise ValueError(f"{num_items} items make no batch of {batch_size} on each of {num_replicas} ranks")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def sampler(self) -> ShuffledBatchSampler:
        return self

    def __len__(self) -> int:
        return self.total_batches // self.num_replicas if self.shard else self.total_batches

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_items)
        first, step = (self.rank, self.num_replicas) if self.shard else (0, 1)
        for batch in range(first, self.total_batches, step):
            yield order[batch * self.batch_size:(batch + 1) * self.batch_size].tolist()
