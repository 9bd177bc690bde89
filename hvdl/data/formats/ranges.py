"""Reading a data file's bytes, wherever it lives: a local file, or an `s3://` object through
ranged GETs (the object store's client, paths and errors: store.py).

    with ranges.open_file(path) as f:          # a seekable binary file, local or an object
        head = f.read(16)
    ranges.read_into(path, offset, buffer)     # one range of a block of rows (NPY, IDX)
    ranges.arrow_file(path)                    # pyarrow's random-access file (Parquet)

`open_file` serves CSV byte ranges, HDF5, images and gzip; `arrow_file` Parquet's row groups
(pyarrow coalesces their ranges); `read_into` NPY's and IDX's blocks of rows. Nothing here reads a
whole object: each read of an object is one ranged GET of what was asked.
"""

from __future__ import annotations

import io
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from hvdl.data.formats.store import S3Path, failure, filesystem


def arrow_file(path: Path | S3Path) -> Any:
    """A pyarrow random-access file (Parquet reads its row groups through it); an object's is
    opened once per process (opening costs a HEAD request) and shared: its reads are
    independent ranged GETs."""
    if not isinstance(path, S3Path):
        import pyarrow as pa

        return pa.OSFile(str(path), "rb")
    return opened(path.bucket_key)


@lru_cache(maxsize=4096)
def opened(bucket_key: str) -> Any:
    try:
        return filesystem().open_input_file(bucket_key)
    except OSError as err:
        raise failure(S3Path(bucket_key), err) from None


class Ranges(io.RawIOBase):
    """An S3 object as a raw seekable file: each read is one ranged GET."""

    def __init__(self, path: S3Path) -> None:
        self.path, self.source, self.at = path, arrow_file(path), 0
        self.size = self.source.size()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.at = {0: 0, 1: self.at, 2: self.size}[whence] + offset
        return self.at

    def tell(self) -> int:
        return self.at

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self.size - self.at))
        if n:
            try:
                data = self.source.read_at(n, self.at)
            except OSError as err:
                raise failure(self.path, err) from None
            view[:len(data)] = data
            n = len(data)
        self.at += n
        return n


def open_file(path: Path | S3Path, buffering: int = 256 * 1024) -> Any:
    """A binary file to read and seek in: the local file, or the object through ranged GETs."""
    if isinstance(path, S3Path):
        return io.BufferedReader(Ranges(path), buffer_size=buffering)
    return open(path, "rb")


def read_into(path: Path | S3Path, offset: int, view: memoryview) -> int:
    """Fill `view` from byte `offset` of the file; the bytes read (fewer at its end)."""
    if isinstance(path, S3Path):
        with Ranges(path) as f:
            f.seek(offset)
            return f.readinto(view)
    with open(path, "rb", buffering=0) as f:
        done = 0
        while done < len(view):
            got = os.preadv(f.fileno(), [view[done:]], offset + done)
            if got == 0:
                break
            done += got
        return done
