"""Sharding: disjoint shards that cover the data, equal steps on every rank, seeded order."""

import numpy as np
import pytest
import torch

from hvdl.data.shard import DeviceShard, shard_indices, steps_per_epoch


@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [10, 1001, 60000])
def test_shards_are_disjoint_and_cover(n, size):
    """Test that the shards of world sizes 1 to 4 are disjoint and together cover the data."""
    shards = [shard_indices(n, r, size, seed=7) for r in range(size)]
    together = np.concatenate(shards)
    assert len(together) == n and len(np.unique(together)) == n
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_more_ranks_than_examples_is_refused():
    """Test that sharding 3 examples over 4 ranks is an error naming the limit."""
    with pytest.raises(ValueError, match="at most 3 ranks"):
        shard_indices(3, 0, 4, seed=0)


def test_every_rank_takes_the_same_number_of_steps():
    """Test that shards of unequal size still give all ranks the same steps per epoch."""
    n, size, batch = 1003, 3, 16
    steps = steps_per_epoch(n, size, batch)
    for r in range(size):
        idx = shard_indices(n, r, size, seed=0)
        shard = DeviceShard(torch.arange(len(idx)), None, batch_size=batch, steps=steps)
        assert len(list(shard.batches(0))) == steps


def test_epoch_order_is_seeded_and_reshuffled():
    """Test that each epoch's order comes from seed + epoch: repeatable, different per epoch."""
    shard = DeviceShard(torch.arange(100), torch.arange(100), batch_size=10, seed=3)
    first = [x for x, _ in shard.batches(0)]
    again = [x for x, _ in shard.batches(0)]
    other = [x for x, _ in shard.batches(1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert sorted(torch.cat(first).tolist()) == list(range(100))


def test_evaluation_shard_serves_every_example_once():
    """Test that an unshuffled shard yields all examples, the last batch partial."""
    shard = DeviceShard(torch.arange(25), torch.arange(25), batch_size=10, shuffle=False)
    seen = torch.cat([x for x, _ in shard.batches(0)])
    assert seen.tolist() == list(range(25))


def test_resume_starts_at_the_given_batch():
    """Test that batches(epoch, start) continues exactly where a full pass would be."""
    shard = DeviceShard(torch.arange(50), None, batch_size=5, seed=1)
    full = [x for x, _ in shard.batches(2)]
    tail = [x for x, _ in shard.batches(2, start=4)]
    assert all(torch.equal(a, b) for a, b in zip(full[4:], tail))
