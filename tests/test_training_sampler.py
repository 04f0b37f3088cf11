"""The 1:1 batch sampler: exact balance in every batch and on every rank, determinism, disjointness."""

from __future__ import annotations

import numpy as np
import pytest

from rosalia_hf.sampler import BalancedPolarityBatchSampler


def _dataset(num_images: int = 40, seed: int = 1) -> tuple[list[bool], list[str]]:
    rng = np.random.default_rng(seed)
    positive, image_ids = [], []
    for image in range(num_images):
        for _ in range(int(rng.integers(1, 6))):
            positive.append(bool(rng.random() < 0.35))
            image_ids.append(f"img{image}")
    return positive, image_ids


@pytest.mark.parametrize("batch_size", [2, 4, 8])
@pytest.mark.parametrize("group_by_image", [True, False])
def test_every_batch_on_every_rank_is_exactly_half_positive(batch_size, group_by_image):
    positive, image_ids = _dataset()
    for rank in range(2):
        sampler = BalancedPolarityBatchSampler(
            positive, batch_size, image_ids=image_ids, group_by_image=group_by_image, num_replicas=2, rank=rank
        )
        batches = list(sampler)
        assert len(batches) == len(sampler) > 0
        for batch in batches:
            assert len(batch) == batch_size
            assert sum(positive[i] for i in batch) == batch_size // 2


def test_ranks_are_disjoint_and_cover_the_smaller_class():
    positive, image_ids = _dataset()
    seen = []
    for rank in range(2):
        sampler = BalancedPolarityBatchSampler(positive, 4, image_ids=image_ids, num_replicas=2, rank=rank, seed=3)
        seen.append({i for batch in sampler for i in batch})
    assert not seen[0] & seen[1]
    used = seen[0] | seen[1]
    smaller = min(sum(positive), len(positive) - sum(positive))
    # every batch takes 2 of each class; at most one batch per rank of the smaller class is left over
    assert sum(positive[i] for i in used) > smaller - 2 * 2 * 2


def test_order_depends_only_on_seed_and_epoch():
    positive, image_ids = _dataset()
    make = lambda seed: BalancedPolarityBatchSampler(positive, 4, image_ids=image_ids, seed=seed)  # noqa: E731
    first, again, other_seed = make(0), make(0), make(1)
    assert list(first) == list(again)
    assert list(first) != list(other_seed)
    again.set_epoch(1)
    assert list(first) != list(again)
    first.set_epoch(1)
    assert list(first) == list(again)


def test_epochs_draw_different_members_of_the_larger_class():
    positive, image_ids = _dataset()
    sampler = BalancedPolarityBatchSampler(positive, 4, image_ids=image_ids, seed=0)
    negatives_per_epoch = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        negatives_per_epoch.append({i for batch in sampler for i in batch if not positive[i]})
    assert negatives_per_epoch[0] != negatives_per_epoch[1]


def test_grouping_puts_pairs_of_one_image_together():
    positive, image_ids = _dataset(num_images=60)
    def images_per_batch(group: bool) -> float:
        sampler = BalancedPolarityBatchSampler(positive, 8, image_ids=image_ids, group_by_image=group, seed=0)
        return float(np.mean([len({image_ids[i] for i in batch}) for batch in sampler]))
    assert images_per_batch(True) < images_per_batch(False)


@pytest.mark.parametrize(
    ("positive", "batch_size", "message"),
    [([True, False], 3, "even"), ([True, True, False], 4, "at least 2 positive and 2 negative")],
)
def test_rejects_impossible_configurations(positive, batch_size, message):
    with pytest.raises(ValueError, match=message):
        BalancedPolarityBatchSampler(positive, batch_size)


def test_unsharded_order_deals_the_same_batches_to_each_rank():
    positive, image_ids = _dataset()
    every = list(BalancedPolarityBatchSampler(positive, 4, image_ids=image_ids, num_replicas=2, rank=0, shard=False))
    assert len(every) % 2 == 0
    for rank in range(2):
        own = list(BalancedPolarityBatchSampler(positive, 4, image_ids=image_ids, num_replicas=2, rank=rank))
        assert every[rank::2] == own
