"""Reader for a folder of images (PNG, JPEG, BMP, GIF, TIFF, WebP), decoded by Pillow.

    --data.format images --data.path photos/ --data.label 1     # classes: photos/<class>/*.png
    --data.path 'scans/**/*.png' --data.label 2                   # the grandparent folder's name

The images, sorted by path, are the rows of one dataset (so chunks hold many images each); a
rank decodes only its own. Every image must have the first one's size; they are read as
grayscale (1 channel) when the first is, else as RGB (3), so one example is (C, H, W) uint8.
`data.label` = k names the class by the folder k levels above each image.
"""

from __future__ import annotations

import io
from glob import has_magic
from pathlib import Path
from typing import Any

import numpy as np

from hvdl.data.chunks import Piece
from hvdl.data.formats import ranges, store
from hvdl.data.formats.base import DataError, Source, Spec
from hvdl.data.formats.store import S3Path

GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def data_root(path: str) -> Path:
    """The folder the images' label levels are counted in: the path before any glob."""
    if store.is_url(path):
        text, cut = path.rstrip("/"), store.GLOB_CHARS.search(path)
        if cut:
            text = path[:cut.start()].rpartition("/")[0]
        root = store.s3_path(text)
        return root if cut or not root.is_file() else root.parent
    parts = Path(path).expanduser().parts
    kept = [p for p in parts[:next((i for i, p in enumerate(parts) if has_magic(p)),
                                   len(parts))]]
    root = Path(*kept) if kept else Path(".")
    return root if root.is_dir() else root.parent


def fetched(path: S3Path) -> io.BytesIO:
    """An image object's bytes, in one GET (Pillow seeks about in a file)."""
    with ranges.open_file(path) as f:
        return io.BytesIO(f.read())


class ImageSource(Source):
    format = "images"
    dtype = np.dtype(np.uint8)

    def __init__(self, files: list[Path], spec: Spec, **_: Any) -> None:
        self.images, self.root = files, data_root(spec.path)
        self.files = [self.root]  # one dataset, one row per image
        self.file_rows = [len(files)]
        first = self.decode(files[0], mode=None)
        self.mode = "L" if first.ndim == 2 else "RGB"
        first = self.decode(files[0], mode=self.mode)
        self.size = first.shape[:2]
        self.shape = (1 if self.mode == "L" else 3, *self.size)
        self.level = self.label_level(spec.label) if spec.label else None
        self.label_name = f"folder level {self.level}" if self.level else None

    def label_level(self, label: str) -> int:
        if not label.isdigit() or int(label) < 1:
            raise DataError(f"config key 'data.label' is {label!r} for images; allowed: a folder "
                            "level, 1 for the folder holding each image, 2 for its parent, ...")
        level = int(label)
        for f in self.images:
            if len(f.relative_to(self.root).parts) <= level:
                raise DataError(f"{f} is not {level} folder(s) below {self.root}; allowed: "
                                f"data.label {level} with images in <class>/ folders "
                                f"{level} level(s) deep")
        return level

    def decode(self, path: Path, mode: str | None) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(fetched(path) if isinstance(path, S3Path) else path) as image:
                if mode is None:
                    mode = "L" if image.mode in GRAY_MODES else "RGB"
                return np.asarray(image.convert(mode))
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise DataError(f"{path}: not an image Pillow can read ({err}); allowed: PNG, JPEG, "
                            "BMP, GIF, TIFF or WebP files") from None

    def read(self, piece: Piece) -> tuple[np.ndarray, np.ndarray | None]:
        files = self.images[piece.start:piece.stop]
        x = np.empty((len(files), *self.shape), dtype=np.uint8)
        for k, f in enumerate(files):
            image = self.decode(f, self.mode)
            if image.shape[:2] != self.size:
                h, w = image.shape[:2]
                raise DataError(f"{f} is {h}×{w}, the first image {self.images[0].name} is "
                                f"{self.size[0]}×{self.size[1]}; allowed: images of one size")
            x[k] = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)  # (C, H, W)
        return x.reshape(len(files), -1), self.labels(piece)

    def labels(self, piece: Piece) -> np.ndarray | None:
        if not self.level:
            return None
        return np.array([f.parents[self.level - 1].name
                         for f in self.images[piece.start:piece.stop]])

    def position(self, piece: Piece, row: int) -> str:
        return str(self.images[piece.start + row])

    @property
    def listing(self) -> list[Path]:
        return self.images
