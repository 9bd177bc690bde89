"""A shard read as it trains: windows of pieces read by a background thread into a bounded buffer.

`StreamShard` serves the batches a `DeviceShard` of the same rows would (hvdl/data/chunks.py,
rule 6): each epoch's windows, in order, with each window's rows permuted. A reader thread
reads the next window while the current one is being trained on; two window slots bound the
memory to `data.buffer_mb` (each window is half of it). A window's pieces are requested from
the source at once (`advise`: the kernel reads ahead a plain NPY or IDX file's blocks), then
decoded straight into their permuted places and scaled there (torch's copies and arithmetic,
which leave the GIL to the training thread), so there is no second copy; on a GPU the window
lives in pinned host memory and batches go to the device with non-blocking copies. The reader
starts when a stage is set up (`prefetch`, before its optimizer is built) and runs ahead into
the next epoch's first window, so no epoch begins with a wait; the stage's end stops it
(`close`). A resumed run that starts at batch b of epoch e starts reading at the window that
holds it: it sees the same batches as an uninterrupted run.
"""

from __future__ import annotations

import atexit
import dataclasses
import queue
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from hvdl.data.chunks import Order, Piece, Window, in_file_order
from hvdl.data.shard import SCAN_ROWS, Batch, Map, Shard

Decode = Callable[[Piece], tuple[np.ndarray, np.ndarray | None]]  # rows as float32, classes
Scale = Callable[[torch.Tensor], Any]  # scales rows (k, features) in place
Advise = Callable[[Piece], None]  # a piece will be read soon (the source may read it ahead)
SLOTS = 2  # windows in memory at once: one trained on, one being read
READERS: weakref.WeakSet[Reader] = weakref.WeakSet()  # running readers, stopped at exit


@dataclasses.dataclass
class Read:
    """One window, read: its place in the sequence and its rows (in served order)."""

    epoch: int
    window: int
    x: torch.Tensor  # (rows, features) on the host
    y: torch.Tensor | None  # (rows,)
    error: BaseException | None = None


class Reader:
    """A background thread reading windows from (epoch, window) on, `SLOTS` at most held."""

    def __init__(self, shard: StreamShard, epoch: int, window: int) -> None:
        self.shard, self.next = shard, (epoch, window)
        self.done = queue.Queue()
        self.slots = threading.Semaphore(SLOTS)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, args=(epoch, window), daemon=True,
                                       name="hvdl-stream")
        self.thread.start()
        READERS.add(self)

    def run(self, epoch: int, first: int) -> None:
        while not self.stopped.is_set():
            windows = self.shard.needed(epoch)
            for w in range(first, len(windows)):
                while not self.slots.acquire(timeout=0.1):
                    if self.stopped.is_set():
                        return
                if self.stopped.is_set():
                    return
                try:
                    x, y = self.shard.read_window(windows[w], self.stopped)
                    if self.stopped.is_set():  # a part of the window: nobody waits for it
                        return
                    self.done.put(Read(epoch, w, x, y))
                except BaseException as err:  # handed to the training thread, raised there
                    self.done.put(Read(epoch, w, torch.empty(0), None, error=err))
                    return
            epoch, first = epoch + 1, 0

    def get(self) -> Read:
        read = self.done.get()
        if read.error is not None:
            raise read.error
        self.next = (read.epoch, read.window + 1)
        return read

    def release(self) -> None:
        """The training thread is done with a window: its slot may be read into again."""
        self.slots.release()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        READERS.discard(self)


@atexit.register
def stop_readers() -> None:
    """A reader still running when the interpreter exits stops first: torch work in a thread
    that finalisation cuts short aborts the process."""
    for reader in list(READERS):
        reader.close()


class StreamShard(Shard):
    """A shard that stays on disk; see the module docstring."""

    held = False

    def __init__(self, pieces: list[Piece], decode: Decode, *, advise: Advise, scale: Scale,
                 order: Order, batch_size: int, epoch_rows: int, features: int,
                 shape: tuple[int, ...], device: torch.device, labels: bool,
                 lock: threading.Lock | None = None, maps: tuple[Map, ...] = ()) -> None:
        self.pieces, self.decode, self.advise = pieces, decode, advise
        self.scale, self.order = scale, order
        self.batch_size, self.epoch_rows, self.features = batch_size, epoch_rows, features
        self.shape, self.device, self.labels, self.maps = shape, device, labels, maps
        self.lock = lock or threading.Lock()  # one reader of the source at a time
        self.reader: Reader | None = None

    def __len__(self) -> int:
        return self.order.rows

    def needed(self, epoch: int) -> list[Window]:
        """The windows of `epoch` that hold rows of its full batches."""
        wanted, out, rows = self.steps * self.batch_size, [], 0
        for window in self.order.windows(epoch):
            if rows >= wanted:
                break
            out.append(window)
            rows += len(window.order)
        return out

    def read_window(self, window: Window, stopped: threading.Event | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The window's rows decoded into their served places and scaled (pinned when going to
        a GPU); partly read if `stopped` is set meanwhile. The copies and the arithmetic are
        torch's, which leave the GIL to the training thread."""
        rows = len(window.order)
        place = torch.empty(rows, dtype=torch.int64)
        place[torch.from_numpy(window.order)] = torch.arange(rows)  # row j is served at place[j]
        x = torch.empty((rows, self.features), dtype=torch.float32,
                        pin_memory=self.device.type == "cuda")
        y = torch.empty(rows, dtype=torch.int64) if self.labels else None
        pieces = in_file_order([self.pieces[i] for i in window.pieces])
        for _, piece in pieces:
            self.advise(piece)  # the whole window requested at once, then read in file order
        for offset, piece in pieces:
            if stopped is not None and stopped.is_set():
                break
            with self.lock:
                px, py = self.decode(piece)
            dest = place[offset:offset + len(px)]
            x.index_copy_(0, dest, torch.from_numpy(px))
            if y is not None:
                y.index_copy_(0, dest, torch.from_numpy(py.astype(np.int64, copy=False)))
        self.scale(x)
        return x, y

    def to_device(self, x: torch.Tensor, y: torch.Tensor | None) -> Batch:
        x = x.to(self.device, non_blocking=True).reshape(len(x), *self.shape)
        for fn in self.maps:
            x = fn(x)
        return x, (None if y is None or not self.labels else y.to(self.device, non_blocking=True))

    def start_at(self, epoch: int, start: int) -> tuple[list[Window], int, int]:
        """(the windows of `epoch`, the one holding batch `start`, the rows before it there)."""
        windows = self.needed(epoch)
        skip, first = start * self.batch_size, 0
        while first < len(windows) and skip >= len(windows[first].order):
            skip -= len(windows[first].order)
            first += 1
        return windows, first, skip

    def prefetch(self, epoch: int, start: int = 0) -> None:
        self.read_from(epoch, self.start_at(epoch, start)[1])

    def read_from(self, epoch: int, window: int) -> None:
        """Have the reader read from `window` of `epoch` on, unless it already does."""
        if self.reader is None or self.reader.next != (epoch, window):
            self.close()
            self.reader = Reader(self, epoch, window)

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        windows, first, skip = self.start_at(epoch, start)
        self.read_from(epoch, first)
        left = (self.steps - start) * self.batch_size  # rows still to serve this epoch
        carry: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        carried = 0
        for _ in range(first, len(windows)):
            read = self.reader.get()
            x, y, lo = read.x, read.y, skip
            skip = 0
            while lo < len(x) and left > 0:
                take = min(self.batch_size - carried, len(x) - lo, left)
                carry.append((x[lo:lo + take], None if y is None else y[lo:lo + take]))
                carried, lo, left = carried + take, lo + take, left - take
                if carried == self.batch_size:
                    yield self.to_device(*join(carry))
                    carry, carried = [], 0
            self.reader.release()
            if left == 0:
                break

    def scan(self, rows: int = SCAN_ROWS) -> Iterator[Batch]:
        """Every row once, in storage order, read in the training thread."""
        buffered: list[tuple[np.ndarray, np.ndarray | None]] = []
        count = 0
        for piece in self.pieces:
            with self.lock:
                x, y = self.decode(piece)
            buffered.append((x, y))
            count += len(x)
            while count >= rows:
                x, y = join_arrays(buffered)
                yield self.served(x, y, rows)
                buffered, count = [(x[rows:], None if y is None else y[rows:])], count - rows
        if count:
            x, y = join_arrays(buffered)
            yield self.served(x, y, count)

    def served(self, x: np.ndarray, y: np.ndarray | None, rows: int) -> Batch:
        """The first `rows` of a scan's rows (copies of the pieces), scaled, on the device."""
        x = self.scale(torch.from_numpy(np.ascontiguousarray(x[:rows])))
        return self.to_device(x, None if y is None else torch.from_numpy(
            np.ascontiguousarray(y[:rows])))

    def derived(self, **changes: Any) -> StreamShard:
        """A copy with other batches or maps; this shard's reader stops (it restarts if used)."""
        self.close()
        fields = {"advise": self.advise, "scale": self.scale, "order": self.order,
                  "batch_size": self.batch_size, "epoch_rows": self.epoch_rows,
                  "features": self.features, "shape": self.shape, "device": self.device,
                  "labels": self.labels, "lock": self.lock, "maps": self.maps}
        fields.update(changes)
        return StreamShard(self.pieces, self.decode, **fields)

    def rebatched(self, batch_size: int, *, labels: bool = True,
                  key: str = "batch_size") -> StreamShard:
        self.check_batch(batch_size, key)
        return self.derived(batch_size=batch_size, labels=self.labels and labels)

    def mapped(self, fn: Map) -> StreamShard:
        with torch.no_grad():
            probe = fn(torch.zeros((1, *self.shape), device=self.device))
        return self.derived(maps=(*self.maps, torch.no_grad()(fn)), shape=tuple(probe.shape[1:]))

    def to(self, dtype: torch.dtype) -> StreamShard:
        return self.derived(maps=(*self.maps, lambda x: x.to(dtype)))

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None


def join(parts: list[tuple[torch.Tensor, torch.Tensor | None]]) -> tuple[torch.Tensor,
                                                                         torch.Tensor | None]:
    if len(parts) == 1:
        return parts[0]
    ys = [y for _, y in parts]
    return torch.cat([x for x, _ in parts]), (None if ys[0] is None else torch.cat(ys))


def join_arrays(parts: list[tuple[np.ndarray, np.ndarray | None]]) -> tuple[np.ndarray,
                                                                          np.ndarray | None]:
    ys = [y for _, y in parts]
    return (np.concatenate([x for x, _ in parts]),
            None if ys[0] is None else np.concatenate(ys))
