"""The chunk rule: how a dataset is cut, held out, dealt to the ranks and ordered each epoch.

A dataset is a list of files, each a run of rows (examples), in sorted file order.

1. **Chunks.** Every file is cut into blocks of `chunk_rows` rows (the last block of a file may be
   shorter), `chunk_rows` being `data.chunk_mb` of float32 features, or less where that would
   give fewer than 256 chunks (so a small table's held-out rows and shards are spread over all of
   it); a separate test file is cut by its own row count. The block size depends on the
   feature and row counts alone, so the same data stored in any format is cut the same way and
   gives the same shards, the same batches and the same trained weights. Reading follows each
   format's own units (memory-mapped row ranges for NPY and raw IDX, row groups for Parquet,
   h5py slices for HDF5, byte ranges aligned to line starts for CSV, one file per image).
2. **One permutation** of all chunks, drawn from the run's seed, mixes the files and their parts.
3. **Held out.** With `test_fraction` f the first round(f·n) rows of the permuted sequence are the
   test split (the chunk at the boundary is split between the two), the rest the training split.
4. **Dealing.** The training rows of the permuted sequence are cut into N contiguous intervals:
   rank r of N takes rows [r·n/N, (r+1)·n/N), that is whole chunks plus at most a part of one
   chunk at each end (together, the rank's *pieces*). Shards are disjoint, cover the split and
   differ in size by at most one row; more ranks than chunks is fine, more ranks than rows is not.
   A rank opens and reads only its pieces.
5. **Steps.** Every rank takes ⌊⌊n/N⌋ / batch⌋ full batches per epoch, so the collectives
   stay in step.
6. **Epoch order.** Each epoch a rank permutes its pieces (from seed, rank and epoch), groups
   consecutive pieces into *windows* of at most `window_rows` rows (half of `data.buffer_mb`), and
   permutes the rows within each window. Batches are consecutive runs of that order. The rows left
   after the last full batch (at most batch rows, plus one) end the order, so they are a different
   random handful each epoch and none is left out for the whole run. A shard held in memory and a
   streamed one are served in exactly this order: the memory mode never changes the batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

FEATURE_BYTES = 4  # float32: what a chunk's size is measured in, whatever the stored type
MIN_CHUNKS = 256  # a small dataset is still cut this fine, so that what is held out and what
                  # each rank holds are spread over the whole file, not a few runs of it


@dataclass(frozen=True)
class Piece:
    """Rows [start, stop) of file `file`."""

    file: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def block_rows(features: int, chunk_mb: float) -> int:
    """Rows in `chunk_mb` MB of float32 features, at least one."""
    return max(1, int(chunk_mb * 2**20) // (FEATURE_BYTES * max(1, features)))


def chunk_rows(features: int, chunk_mb: float, rows: int) -> int:
    """Rows per chunk: `block_rows`, fewer when that would make less than MIN_CHUNKS chunks of
    the `rows` rows, at least one."""
    return max(1, min(block_rows(features, chunk_mb), -(-rows // MIN_CHUNKS)))


def in_file_order(pieces: Sequence[Piece]) -> list[tuple[int, Piece]]:
    """(offset in the sequence, piece) of each piece, in the order the files hold them: reading
    so lets a reader reuse what it read for the piece before (a CSV split, a row group)."""
    offsets = np.concatenate([[0], np.cumsum([p.rows for p in pieces])])[:-1]
    found = sorted(zip(offsets.tolist(), pieces), key=lambda op: (op[1].file, op[1].start))
    return [(int(o), p) for o, p in found]


def window_rows(features: int, buffer_mb: float) -> int:
    """Rows per shuffle window: half the buffer (one window is read while the other is used)."""
    return max(1, int(buffer_mb * 2**20) // (2 * FEATURE_BYTES * max(1, features)))


def limit(file_rows: Sequence[int], total: int) -> list[int]:
    """The files' row counts when only the first `total` rows (in file order) are kept."""
    kept, left = [], total
    for rows in file_rows:
        kept.append(min(rows, left))
        left -= kept[-1]
    return kept


def cut(file_rows: Sequence[int], rows_per_chunk: int) -> list[Piece]:
    """Every file's rows as chunks of `rows_per_chunk` rows, in file order."""
    return [Piece(f, start, min(start + rows_per_chunk, rows))
            for f, rows in enumerate(file_rows) for start in range(0, rows, rows_per_chunk)]


def permute(chunks: Sequence[Piece], seed: int) -> list[Piece]:
    """The chunks in the run's order, drawn from `seed`."""
    order = np.random.default_rng([seed, 0xC0DE]).permutation(len(chunks))
    return [chunks[i] for i in order]


def total(pieces: Sequence[Piece]) -> int:
    return sum(p.rows for p in pieces)


def take(pieces: Sequence[Piece], start: int, stop: int) -> list[Piece]:
    """Rows [start, stop) of the pieces laid end to end, as pieces."""
    out, offset = [], 0
    for p in pieces:
        lo, hi = max(start, offset), min(stop, offset + p.rows)
        if lo < hi:
            out.append(Piece(p.file, p.start + lo - offset, p.start + hi - offset))
        offset += p.rows
        if offset >= stop:
            break
    return out


def hold_out(pieces: Sequence[Piece], fraction: float) -> tuple[list[Piece], list[Piece]]:
    """(training, test) pieces: the first round(fraction·n) rows of the sequence are held out."""
    n = total(pieces)
    held = int(round(fraction * n))
    return take(pieces, held, n), take(pieces, 0, held)


def deal(pieces: Sequence[Piece], rank: int, size: int) -> list[Piece]:
    """Rank `rank`'s pieces: rows [rank·n/size, (rank+1)·n/size) of the sequence."""
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} is outside 0..{size - 1}")
    n = total(pieces)
    return take(pieces, rank * n // size, (rank + 1) * n // size)


def steps_per_epoch(n: int, size: int, batch_size: int) -> int:
    """Full batches every rank takes per epoch (the same on all ranks)."""
    return (n // size) // batch_size


@dataclass(frozen=True)
class Window:
    """Some of a rank's pieces read together, and the order of their rows."""

    pieces: tuple[int, ...]  # indices into the rank's pieces, in reading order
    order: np.ndarray  # a permutation of the window's rows (as laid end to end)


@dataclass(frozen=True)
class Order:
    """A rank's epoch order over its pieces (rule 6 of this module's docstring)."""

    piece_rows: tuple[int, ...]  # rows of each of the rank's pieces, in storage order
    window_rows: int
    seed: int
    rank: int = 0
    shuffle: bool = True

    @classmethod
    def whole(cls, rows: int, seed: int = 0, shuffle: bool = True) -> Order:
        """One piece and one window: a plain permutation of `rows` rows each epoch."""
        return cls((rows,), max(1, rows), seed, shuffle=shuffle)

    @property
    def rows(self) -> int:
        return sum(self.piece_rows)

    def windows(self, epoch: int) -> list[Window]:
        """This epoch's windows, in the order they are served."""
        if not self.shuffle:
            return [Window(tuple(range(len(self.piece_rows))), np.arange(self.rows))]
        rng = np.random.default_rng([self.seed, self.rank, epoch])
        out, group, rows = [], [], 0
        for i in rng.permutation(len(self.piece_rows)).tolist():
            if group and rows + self.piece_rows[i] > self.window_rows:
                out.append(Window(tuple(group), rng.permutation(rows)))
                group, rows = [], 0
            group.append(i)
            rows += self.piece_rows[i]
        if group:
            out.append(Window(tuple(group), rng.permutation(rows)))
        return out

    def indices(self, epoch: int) -> np.ndarray:
        """This epoch's order as row indices into the pieces laid end to end (storage order)."""
        starts = np.concatenate([[0], np.cumsum(self.piece_rows)])
        parts = []
        for window in self.windows(epoch):
            rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in window.pieces])
            parts.append(rows[window.order])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
