"""NumPy .npy files, and what the array formats (npy, idx.py's IDX, hdf5.py's HDF5) share.

    --data.path 'x-*.npy' --data.label 'y-*.npy'           # one label file per feature file
    --data.path train-images-idx3-ubyte --data.label train-labels-idx1-ubyte
    --data.path run.h5 --data.features images --data.label digits

Rows are the first axis; the other axes are one example's shape. NPY and raw IDX files are
memory-mapped for each read, so a rank touches only the pages of its own rows and holds no
mapping afterwards; HDF5 datasets are read by h5py slices. A gzip-compressed IDX or NPY file is
read through its decompressed copy (hvdl/data/formats/files.py).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from hvdl.data.chunks import Piece
from hvdl.data.formats import ranges
from hvdl.data.formats.base import DataError, Local, Source, Spec
from hvdl.data.formats.files import check_readable, expand, is_gzip
from hvdl.data.formats.store import S3Path

NUMERIC_KINDS = "biuf"  # bool, signed and unsigned integers, floats


def check_numeric(dtype: np.dtype, where: str) -> None:
    if dtype.kind not in NUMERIC_KINDS:
        raise DataError(f"{where}: the features are {dtype}; allowed: numbers (bool, integer or "
                        "float arrays)")


def same_schema(schemas: list[Any], files: list[Path], what: str) -> None:
    """DataError naming the first file whose shape or type differs from the first file's."""
    for f, schema in zip(files, schemas):
        if schema != schemas[0]:
            raise DataError(f"files whose schemas differ: {files[0]} holds {what} {schemas[0]}, "
                            f"{f} holds {schema}; allowed: files of one shape and type")


def label_files(spec: Spec, files: list[Path]) -> list[Path] | None:
    """The label files matched one to one with the feature files, or None when unlabelled."""
    if not spec.label:
        return None
    labels = expand(spec.label, key="data.label")
    if len(labels) != len(files):
        raise DataError(f"data.label {spec.label} matches {len(labels)} files, data.path matches "
                        f"{len(files)}; allowed: one label file per feature file, in the same "
                        "sorted order")
    return labels


def check_lengths(rows: list[int], label_rows: list[int], files: list[Path],
                  labels: list[Path]) -> None:
    for f, n, lf, m in zip(files, rows, labels, label_rows):
        if n != m:
            raise DataError(f"features and labels of different lengths: {f} has {n} rows, {lf} "
                            f"has {m}; allowed: one label per row")


# --- NumPy .npy -----------------------------------------------------------------------------

def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, Block | None]:
    """(shape, dtype, its rows as one block or None in Fortran order) of a .npy file, checked
    against its length."""
    check_readable(path)
    with ranges.open_file(path, buffering=4096) as f:
        if f.peek(2)[:2] == b"PK":
            raise DataError(f"{path}: an .npz archive, not an .npy file; allowed: one array per "
                            ".npy file")
        try:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                    np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(f)
            offset = f.tell()
        except (ValueError, OSError, EOFError) as err:
            raise DataError(f"{path}: not a complete NumPy .npy file ({err}); allowed: a file "
                            "written by numpy.save") from None
    size, needed = path.stat().st_size, offset + math.prod(shape) * dtype.itemsize
    if size < needed:
        raise DataError(f"{path}: not a complete NumPy .npy file ({size} bytes, its header's "
                        f"{shape} {dtype} array needs {needed}); allowed: a file written by "
                        "numpy.save")
    if fortran and len(shape) > 1 and isinstance(path, S3Path):
        raise DataError(f"{path}: a Fortran-order array, which an object store cannot serve "
                        "by rows; allowed: C order (numpy.ascontiguousarray before numpy.save)")
    block = Block(path, offset, dtype, shape) if shape and not (fortran and len(shape) > 1) \
        else None
    return shape, dtype, block


class Block(NamedTuple):
    """A file's rows stored as one C-order block: where the data starts, its type and shape."""

    path: Path
    offset: int
    dtype: np.dtype
    dims: tuple[int, ...]

    def where(self, piece: Piece) -> tuple[int, tuple[int, ...]]:
        """(byte offset, shape) of `piece`'s rows."""
        row = self.dtype.itemsize * math.prod(self.dims[1:])
        return self.offset + piece.start * row, (piece.rows, *self.dims[1:])

    def read(self, piece: Piece) -> np.ndarray:
        """`piece`'s rows in one read: a memory map reads a few pages per fault, which rows of
        a piece dealt in random order pay for in small disk reads when they are not cached."""
        offset, shape = self.where(piece)
        out = np.empty(shape, dtype=self.dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))
        done = ranges.read_into(self.path, offset, view)
        if done < len(view):
            raise DataError(f"{self.path}: ends at byte {offset + done}, inside rows it should "
                            "hold; allowed: a complete file (was it truncated?)")
        return out

    def advise(self, piece: Piece) -> None:
        """Tell the kernel that `piece`'s rows will be read soon: it reads them ahead, many
        requests at once, which a disk or a network file system serves faster than one read
        after another."""
        if hasattr(os, "posix_fadvise") and not isinstance(self.path, S3Path):
            offset, shape = self.where(piece)
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, offset, self.dtype.itemsize * math.prod(shape),
                                 os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)


class NpySource(Source):
    format = "npy"

    def __init__(self, files: list[Path], spec: Spec, *, local: Local, **_: Any) -> None:
        self.originals, self.files = files, [local(f) if is_gzip(f) else f for f in files]
        headers = [npy_header(f) for f in self.files]
        same_schema([(h[0][1:], str(h[1])) for h in headers], self.files, "examples of")
        shape, self.dtype = headers[0][0][1:], headers[0][1]
        self.blocks = [h[2] for h in headers]
        check_numeric(self.dtype, str(self.files[0]))
        self.shape = shape or (1,)
        self.file_rows = [h[0][0] for h in headers]
        self.label_files = label_files(spec, files)
        if self.label_files is not None:
            self.label_files = [local(f) if is_gzip(f) else f for f in self.label_files]
            label_headers = [npy_header(f) for f in self.label_files]
            self.label_blocks = [h[2] for h in label_headers]
            for f, (s, _, _) in zip(self.label_files, label_headers):
                if len(s) != 1 and not (len(s) == 2 and s[1] == 1):
                    raise DataError(f"{f}: labels of shape {s}; allowed: one label per row")
            check_lengths(self.file_rows, [h[0][0] for h in label_headers], self.files,
                          self.label_files)
            self.label_name = spec.label

    def read(self, piece: Piece) -> tuple[np.ndarray, np.ndarray | None]:
        x = read_rows(self.files[piece.file], self.blocks[piece.file], piece)
        return x.reshape(piece.rows, -1), self.labels(piece)

    def labels(self, piece: Piece) -> np.ndarray | None:
        if self.label_files is None:
            return None
        f = piece.file
        return read_rows(self.label_files[f], self.label_blocks[f], piece).reshape(-1)

    def advise(self, piece: Piece) -> None:
        blocks = [self.blocks[piece.file]]
        if self.label_files is not None:
            blocks.append(self.label_blocks[piece.file])
        for block in blocks:
            if block is not None:
                block.advise(piece)


def read_rows(path: Path, block: Block | None, piece: Piece) -> np.ndarray:
    """Rows of `piece` from a .npy file: one read of its block (C order), else through a memory
    map dropped at once."""
    if block is not None:
        return block.read(piece)
    mapped = np.load(path, mmap_mode="r")
    out = np.array(mapped[piece.start:piece.stop])
    del mapped
    return out
