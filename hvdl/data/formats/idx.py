"""Read and write IDX files, the format of the MNIST database.

    from hvdl.data.formats.idx import read_idx
    images = read_idx("data/mnist/train-images-idx3-ubyte.gz")   # uint8 (60000, 28, 28)

Format (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"): a 4-byte magic number
`00 00 TT NN` where TT is the element type and NN the number of dimensions, then NN big-endian
uint32 sizes, then the elements in C order, big-endian. A file is gzip-compressed when it starts
with the gzip magic bytes `1f 8b`, whatever its name. Every malformed file raises `IdxError`, a
one-line message naming the file and the exact mismatch. One reader, `IdxSource`, reads rows in
parts for training; `read_idx` reads a whole file through it.
"""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from hvdl.data.chunks import Piece
from hvdl.data.formats import ranges
from hvdl.data.formats.arrays import Block, check_lengths, label_files, same_schema
from hvdl.data.formats.base import DataError, Local, Source, Spec
from hvdl.data.formats.files import check_readable, decompress, default_cache, is_gzip
from hvdl.errors import BadInput

# IDX type code -> big-endian NumPy dtype of the stored elements.
TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IdxError(BadInput):
    """A malformed IDX file; the message names the file and what does not match."""


def _shape_text(dims: tuple[int, ...]) -> str:
    """Dimensions as `60000×28×28`."""
    return "×".join(str(d) for d in dims)


def parse_header(data: bytes, path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """Element dtype, dimensions and header length from the start of an IDX file."""
    if len(data) < 4:
        raise IdxError(f"{path}: {len(data)} bytes is too short for the 4-byte IDX magic number")
    if data[0:2] != b"\x00\x00":
        raise IdxError(f"{path}: bad IDX magic number 0x{data[:4].hex()}, "
                       "expected two zero bytes, a type code and a dimension count")
    code, ndim = data[2], data[3]
    if code not in TYPES:
        known = ", ".join(f"0x{c:02X}" for c in TYPES)
        raise IdxError(f"{path}: unknown IDX type code 0x{code:02X}, expected one of {known}")
    if ndim == 0:
        raise IdxError(f"{path}: IDX header declares 0 dimensions, expected at least 1")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise IdxError(f"{path}: IDX header declares {ndim} dimensions ({header_len} bytes) "
                       f"but the file holds only {len(data)} bytes")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    return TYPES[code], dims, header_len


def read_idx(path: str | os.PathLike, ndim: int | None = None,
             local: Local | None = None) -> np.ndarray:
    """The whole IDX file `path` as an array in native byte order, read by `IdxSource`, the
    reader training uses (a gzip file through its decompressed copy: `local`, by default in the
    cache folder). `ndim`: the number of dimensions the file must declare. Raises IdxError (or
    DataError for a corrupt gzip stream) naming the file and what does not match."""
    path = Path(path)
    source = IdxSource([path], Spec(format="idx", path=str(path)),
                       local=local or (lambda p: decompress(p, default_cache())))
    dims = source.headers[0][1]
    if ndim is not None and len(dims) != ndim:
        raise IdxError(f"{path}: expected {ndim} dimensions, found {len(dims)} "
                       f"({_shape_text(dims)})")
    return idx_rows(source.files[0], source.headers[0], Piece(0, 0, dims[0])).reshape(dims)


def type_code(dtype: np.dtype) -> int:
    """The IDX type code for `dtype`; ValueError if IDX cannot store it."""
    for code, idx_dtype in TYPES.items():
        if idx_dtype.newbyteorder("=") == dtype.newbyteorder("="):
            return code
    allowed = ", ".join(t.newbyteorder("=").name for t in TYPES.values())
    raise ValueError(f"IDX cannot store dtype {dtype}; allowed: {allowed}")


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write `array` to `path` as IDX, gzip-compressed when the name ends in `.gz`."""
    path = Path(path)
    array = np.asarray(array)
    code = type_code(array.dtype)
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX stores 1 to 255 dimensions, got {array.ndim}")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + array.astype(TYPES[code]).tobytes()
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)  # mtime=0: the same array gives the same bytes
    path.write_bytes(data)


# --- IDX files as a dataset read in parts (the one IDX reader of training) --------------------

def idx_header(path: Path, named: Path | None = None) -> tuple[np.dtype, tuple[int, ...], int]:
    """(element type, dimensions, header length) of a raw IDX file, checked against its size;
    errors name `named`, the file as the user gave it (a gzip file, not its copy)."""
    named = named or path
    check_readable(path)
    with ranges.open_file(path, buffering=4096) as f:
        head = f.read(4 + 4 * 255)
    dtype, dims, header_len = parse_header(head, named)
    expected = header_len + math.prod(dims) * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        what = "decompressed, " if named != path else ""
        raise IdxError(f"{named}: truncated or padded: {size} bytes ({what}with the header), "
                       f"the header's {_shape_text(dims)} {dtype.newbyteorder('=').name} "
                       f"elements need {expected}; allowed: a complete IDX file")
    return dtype, dims, header_len


class IdxSource(Source):
    format = "idx"

    def __init__(self, files: list[Path], spec: Spec, *, local: Local, **_: Any) -> None:
        self.originals, self.files = files, [local(f) if is_gzip(f) else f for f in files]
        self.headers = [idx_header(f, g) for f, g in zip(self.files, files, strict=True)]
        same_schema([(h[1][1:], str(h[0])) for h in self.headers], self.files, "examples of")
        self.dtype = self.headers[0][0].newbyteorder("=")
        self.shape = self.headers[0][1][1:] or (1,)
        self.file_rows = [h[1][0] for h in self.headers]
        self.label_files = label_files(spec, files)
        if self.label_files is not None:
            named = self.label_files
            self.label_files = [local(f) if is_gzip(f) else f for f in named]
            self.label_headers = [idx_header(f, g)
                                  for f, g in zip(self.label_files, named, strict=True)]
            for f, (_, dims, _) in zip(named, self.label_headers):
                if len(dims) != 1:
                    raise DataError(f"{f}: labels of {len(dims)} dimensions; allowed: a 1-d IDX "
                                    "file, one label per row")
            check_lengths(self.file_rows, [h[1][0] for h in self.label_headers], files, named)
            self.label_name = spec.label

    def read(self, piece: Piece) -> tuple[np.ndarray, np.ndarray | None]:
        x = idx_rows(self.files[piece.file], self.headers[piece.file], piece)
        y = None
        if self.label_files is not None:
            y = idx_rows(self.label_files[piece.file], self.label_headers[piece.file], piece)
        return x.reshape(piece.rows, -1), y

    def labels(self, piece: Piece) -> np.ndarray | None:
        if self.label_files is None:
            return None
        return idx_rows(self.label_files[piece.file], self.label_headers[piece.file], piece)

    def advise(self, piece: Piece) -> None:
        idx_block(self.files[piece.file], self.headers[piece.file]).advise(piece)
        if self.label_files is not None:
            idx_block(self.label_files[piece.file], self.label_headers[piece.file]).advise(piece)


def idx_rows(path: Path, header: tuple[np.dtype, tuple[int, ...], int], piece: Piece) -> np.ndarray:
    out = idx_block(path, header).read(piece)
    return out.astype(header[0].newbyteorder("="), copy=False)


def idx_block(path: Path, header: tuple[np.dtype, tuple[int, ...], int]) -> Block:
    """A raw IDX file's rows: one block after its header."""
    dtype, dims, offset = header
    return Block(path, offset, dtype, dims)
