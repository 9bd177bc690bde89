"""The MNIST database of handwritten digits, loaded from its four IDX files.

    from hvdl.data.formats.mnist import load_mnist, resolve_data_dir
    images, labels = load_mnist(resolve_data_dir(), "train")   # uint8 (60000, 28, 28), (60000,)

Reference: Y. LeCun, C. Cortes, C. J. C. Burges, "The MNIST database of handwritten digits",
http://yann.lecun.com/exdb/mnist/ (CC BY-SA 3.0). The files are vendored in `data/mnist/`; if
they are missing, `hvdl fetch mnist` downloads them again and checks the MD5 sums below.

A data folder holds the MNIST files either directly or in a `mnist/` subfolder (the project's
`data/` does the latter); `mnist_dir` picks the subfolder when it exists. Files may be gzip
compressed (the published `.gz` names) or not (the same names without `.gz`). `load_mnist` reads
a split whole through the IDX reader training uses (a gzip file through its decompressed copy in
the cache folder, made once), well under a second for the 60,000 training images.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hvdl.data.chunks import Piece
from hvdl.data.formats.base import Local, Spec
from hvdl.data.formats.idx import IdxError, IdxSource, idx_rows, read_idx
from hvdl.errors import BadInput

# split -> (images file, labels file), as published.
FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# MD5 of each published (gzip) file; `hvdl fetch mnist` checks downloads against them.
MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

IMAGE_SIZE = (28, 28)
NUM_CLASSES = 10


class MissingDataError(BadInput):
    """An MNIST file is absent; the message says which, where, and how to get it."""


def resolve_data_dir(value: str = "") -> Path:
    """The data folder: `value` if given, else $HVDL_DATA, else the project's `data/`."""
    if value:
        return Path(value)
    if os.environ.get("HVDL_DATA"):
        return Path(os.environ["HVDL_DATA"])
    return Path(__file__).resolve().parents[3] / "data"  # the project's data/


def mnist_dir(data_dir: Path) -> Path:
    """The folder that holds (or should hold) the MNIST files: `data_dir/mnist` if it exists."""
    sub = Path(data_dir) / "mnist"
    return sub if sub.is_dir() else Path(data_dir)


def find_file(data_dir: Path, name: str) -> Path:
    """The path of MNIST file `name` (with or without `.gz`) under `data_dir`."""
    folder = mnist_dir(data_dir)
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    raise MissingDataError(
        f"MNIST file {name} is missing from {folder}: run `hvdl fetch mnist --data-dir "
        f"{data_dir}` or set HVDL_DATA to a folder holding the four MNIST files")


def check_pair(images: np.ndarray, labels: np.ndarray, where: str) -> None:
    """Raise IdxError unless images are uint8 N×28×28 and labels uint8 N with values 0..9."""
    if images.ndim != 3 or images.shape[1:] != IMAGE_SIZE:
        shape = "×".join(map(str, images.shape))
        raise IdxError(f"{where}: images are {images.ndim}-d ({shape}), expected N×28×28")
    if labels.ndim != 1:
        shape = "×".join(map(str, labels.shape))
        raise IdxError(f"{where}: labels are {labels.ndim}-d ({shape}), expected 1-d")
    for what, array in (("images", images), ("labels", labels)):
        if array.dtype != np.uint8:
            raise IdxError(f"{where}: {what} are {array.dtype}, expected uint8")
    if len(images) != len(labels):
        raise IdxError(f"{where}: {len(images)} images but {len(labels)} labels")
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        raise IdxError(f"{where}: {bad.size} labels outside 0..9, the first is "
                       f"{labels[bad[0]]} at index {bad[0]}")


def load_mnist(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 28, 28) and labels uint8 (N,) of `split` ("train" or "test").

    Raises MissingDataError if a file is absent and IdxError if a file is malformed or the
    two files do not match; both messages are one line naming the files.
    """
    if split not in FILES:
        raise ValueError(f"unknown MNIST split {split!r}, expected one of {', '.join(FILES)}")
    image_path, label_path = (find_file(Path(data_dir), name) for name in FILES[split])
    images = read_idx(image_path)
    labels = read_idx(label_path)
    check_pair(images, labels, f"{image_path} and {label_path}")
    return images, labels


def open_split(data_dir: Path, split: str, local: Local) -> IdxSource:
    """The split's images and labels as a dataset read in parts, checked to be MNIST's."""
    image_path, label_path = (find_file(Path(data_dir), name) for name in FILES[split])
    source = IdxSource([image_path], Spec(format="idx", path=str(image_path),
                                          label=str(label_path)), local=local)
    where = f"{image_path} and {label_path}"
    if source.shape != IMAGE_SIZE or source.dtype != np.uint8:
        shape = "×".join(map(str, source.shape))
        raise IdxError(f"{where}: images are {source.dtype} N×{shape}, expected uint8 N×28×28")
    labels = idx_rows(source.label_files[0], source.label_headers[0],
                      Piece(0, 0, source.rows))  # (N,), 60 KB
    if labels.dtype != np.uint8:
        raise IdxError(f"{where}: labels are {labels.dtype}, expected uint8")
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        raise IdxError(f"{where}: {bad.size} labels outside 0..9, the first is "
                       f"{labels[bad[0]]} at index {bad[0]}")
    return source

