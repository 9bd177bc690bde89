"""The chunk rule: cutting, the permutation, holding out, dealing, steps and the epoch order."""

import numpy as np
import pytest

from hvdl.data import chunks
from hvdl.data.chunks import Order, Piece


def rows_of(pieces, starts):
    """Global row numbers (files laid end to end) of `pieces`."""
    return np.concatenate([np.arange(starts[p.file] + p.start, starts[p.file] + p.stop)
                           for p in pieces]) if pieces else np.zeros(0, dtype=int)


@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("file_rows, per_chunk", [([10], 3), ([1001], 100), ([7, 0, 30, 5], 4),
                                                  ([60000], 1337), ([5], 100)])
def test_shards_are_disjoint_cover_and_differ_by_at_most_one_row(file_rows, per_chunk, size):
    """Test that dealt shards of world sizes 1 to 4 are disjoint, cover the data, differ by <= 1."""
    starts = np.concatenate([[0], np.cumsum(file_rows)])
    order = chunks.permute(chunks.cut(file_rows, per_chunk), seed=7)
    shards = [rows_of(chunks.deal(order, r, size), starts) for r in range(size)]
    together = np.concatenate(shards)
    assert len(together) == sum(file_rows) and len(np.unique(together)) == sum(file_rows)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    for r in range(size):  # every piece lies inside one chunk of one file
        for p in chunks.deal(order, r, size):
            assert 0 <= p.start < p.stop <= file_rows[p.file]
            assert p.start // per_chunk == (p.stop - 1) // per_chunk


def test_chunks_hold_whole_row_blocks_and_the_permutation_follows_the_seed():
    """Test that chunks are row blocks of the given size within files, permuted by the seed."""
    cut = chunks.cut([5, 3], 2)
    assert cut == [Piece(0, 0, 2), Piece(0, 2, 4), Piece(0, 4, 5), Piece(1, 0, 2), Piece(1, 2, 3)]
    assert chunks.permute(cut, 1) == chunks.permute(cut, 1)
    assert chunks.permute(cut, 1) != chunks.permute(cut, 2)
    assert sorted(chunks.permute(cut, 1), key=lambda p: (p.file, p.start)) == cut
    assert chunks.chunk_rows(784, 4, 10**6) == 4 * 2**20 // (4 * 784)  # 4 MB of features
    assert chunks.chunk_rows(784, 4, 60000) == 235  # at least 256 chunks
    assert chunks.chunk_rows(30, 4, 100) == 1


def test_holding_out_is_deterministic_and_disjoint():
    """Test that test_fraction holds out round(f·n) rows, the same for a seed, none in training."""
    order = chunks.permute(chunks.cut([1000], 64), seed=3)
    train, test = chunks.hold_out(order, 0.15)
    assert chunks.total(test) == 150 and chunks.total(train) == 850
    a, b = rows_of(train, [0]), rows_of(test, [0])
    assert not set(a) & set(b) and len(set(a) | set(b)) == 1000
    again = chunks.hold_out(chunks.permute(chunks.cut([1000], 64), seed=3), 0.15)
    assert again == (train, test)


def test_limit_keeps_the_first_rows_in_file_order():
    """Test that train_size keeps the first rows of the files in order."""
    assert chunks.limit([5, 5, 5], 7) == [5, 2, 0]
    assert chunks.limit([5, 5], 20) == [5, 5]


def test_every_rank_takes_the_same_steps():
    """Test that the steps per epoch come from the smallest shard, so every rank takes as many."""
    for n, size, batch in [(60000, 3, 64), (1001, 4, 10), (10, 4, 2)]:
        steps = chunks.steps_per_epoch(n, size, batch)
        assert steps == (n // size) // batch > 0, (n, size, batch)
        order = chunks.cut([n], 7)
        shards = [chunks.total(chunks.deal(order, r, size)) for r in range(size)]
        assert min(shards) >= steps * batch  # every rank has the rows for its steps
        assert min(shards) < (steps + 1) * batch  # and the smallest shard none for one more


@pytest.mark.parametrize("window", [5, 12, 1000])
def test_epoch_order_serves_each_row_once_in_windows_of_at_most_the_window(window):
    """Test that each epoch's order is a seeded permutation made of windows of <= window rows."""
    rows = (4, 4, 3, 4, 2, 4)
    order = Order(rows, window, seed=9, rank=1)
    for epoch in range(3):
        idx = order.indices(epoch)
        assert sorted(idx.tolist()) == list(range(sum(rows)))
        for w in order.windows(epoch):
            assert len(w.order) <= max(window, max(rows))
            assert len(w.order) == sum(rows[i] for i in w.pieces)
    assert np.array_equal(order.indices(0), Order(rows, window, seed=9, rank=1).indices(0))
    assert not np.array_equal(order.indices(0), order.indices(1))
    assert not np.array_equal(order.indices(0), Order(rows, window, seed=9, rank=2).indices(0))


def test_a_window_keeps_its_pieces_together():
    """Test that a window's rows are exactly the rows of its pieces (what a stream reads)."""
    rows = (3, 5, 2, 6)
    order = Order(rows, 8, seed=1)
    starts = np.concatenate([[0], np.cumsum(rows)])
    at = 0
    idx = order.indices(0)
    for w in order.windows(0):
        expected = set().union(*(range(starts[i], starts[i + 1]) for i in w.pieces))
        assert set(idx[at:at + len(w.order)].tolist()) == expected
        at += len(w.order)


def test_unshuffled_order_is_storage_order():
    """Test that an evaluation order serves the rows as stored."""
    assert Order((3, 4), 2, seed=0, shuffle=False).indices(5).tolist() == list(range(7))
