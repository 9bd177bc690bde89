"""A dataset on disk: its format and what every format's reader provides.

    source = formats.open_source(Spec(format="csv", path="data/*.csv", label="digit"))
    x, y = source.read(Piece(file=0, start=0, stop=100))   # rows 0..99 of the first file

A `Source` is one split (training or test) in one format: a sorted list of files, the rows in
each, the stored shape of one example, and `read(piece)`, which decodes only the rows asked for
(x as (k, features) in the stored numeric type, the raw labels or None). The readers live beside
this module and import it and files.py; the table of formats is hvdl/data/formats/__init__.py.
Files are matched by `Spec.path`: a file, a folder or a glob (`**` recurses); the format comes
from their names when `Spec.format` is empty (both in hvdl/data/formats/files.py).

A gzip file cannot be read in parts, so it is decompressed once: `open_source`'s `local` maps it
to a decompressed copy (files.py's `decompress`; hvdl/data/dataset.py makes one per node, by
local rank 0, in `data.cache_dir`); `hvdl data convert` turns it into a format that is read in
parts instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hvdl.data.chunks import Piece
from hvdl.errors import BadInput

FORMATS = ("mnist", "patches", "idx", "npy", "csv", "parquet", "hdf5", "images", "sql")
FILE_FORMATS = ("idx", "npy", "csv", "parquet", "hdf5", "images")

Local = Callable[[Path], Path]  # a gzip file -> a decompressed copy to read in parts


class DataError(BadInput):
    """Data that cannot be trained on; the one-line message names the file, the place, the rule."""


@dataclass(frozen=True)
class Spec:
    """What to open: the `[data]` keys that locate one split (hvdl/config.py's DataConfig)."""

    format: str = ""
    path: str = ""
    label: str = ""
    features: tuple[str, ...] = ()
    table: str = ""  # sql: a table, or a query read in parts by an integer key column
    query: str = ""
    key: str = ""


class Source:
    """One split of a dataset in one format (the readers subclass it)."""

    format = ""
    files: list[Path]
    file_rows: list[int]  # rows of each file
    shape: tuple[int, ...]  # one example as stored (flattened to `features` when read)
    label_name: str | None = None  # where the labels come from, None when unlabelled
    dtype: np.dtype = np.dtype(np.float32)  # the stored feature type (what convert writes)

    @property
    def features(self) -> int:
        return math.prod(self.shape)

    @property
    def rows(self) -> int:
        return sum(self.file_rows)

    @property
    def labelled(self) -> bool:
        return self.label_name is not None

    def read(self, piece: Piece) -> tuple[np.ndarray, np.ndarray | None]:
        """Rows of `piece`: features (k, features) as stored, raw labels (k,) or None."""
        raise NotImplementedError

    def labels(self, piece: Piece) -> np.ndarray | None:
        """The raw labels of `piece` alone (readers that can skip the features override it)."""
        return self.read(piece)[1]

    def advise(self, piece: Piece) -> None:
        """`piece` will be read soon: formats stored as plain blocks let the kernel read ahead."""

    # Parts whose records the ranks count between them before any plan (a CSV's byte ranges:
    # `count(i)` each, then `set_counts`); formats that know their rows have none.
    splits: tuple | list = ()

    def count(self, i: int) -> tuple[int, int]:
        raise NotImplementedError

    def set_counts(self, counts: list[tuple[int, int]]) -> None:
        raise NotImplementedError

    # A live source (a database) is read in one state of it by every rank: rank 0 exports the
    # state (`export_state`, its snapshot), every rank imports it (`import_state`) before the
    # parts are counted. Files need nothing.
    live = False

    def export_state(self) -> Any:
        return None

    def import_state(self, state: Any) -> None:
        """Read in `state`, rank 0's `export_state()`."""

    def prepare(self, pieces: list[Piece], reduce_sum: Callable[[Any], Any]) -> None:
        """Fit what reading needs over every rank's pieces (`reduce_sum`: a sum over ranks)
        before any row is read; natural-image patches fit their normalisation, files need
        nothing."""

    def row_ids(self, piece: Piece) -> tuple[str, np.ndarray]:
        """(name, values) that identify the piece's rows in the source, so results written
        back join to them: a database's key (or ctid); for files the row's place, counted
        over the files in order."""
        first = sum(self.file_rows[:piece.file]) + piece.start
        return "row", np.arange(first, first + piece.rows, dtype=np.int64)

    def feature_names(self) -> list[str]:
        """A name per feature: the columns of a table, else f0, f1, ..."""
        return [f"f{j}" for j in range(self.features)]

    def columns(self) -> list[tuple[str, str]]:
        """(name, stored type) of what the files hold, for `hvdl data inspect`."""
        cols = [("features", f"{self.dtype} {'×'.join(map(str, self.shape)) or 'scalar'}")]
        return cols + ([(f"label ({self.label_name})", "label")] if self.labelled else [])

    def name(self, file: int) -> Path:
        """File `file` as the user named it (a gzip file, not its decompressed copy)."""
        return (self.originals or self.files)[file]

    def position(self, piece: Piece, row: int) -> str:
        """Where row `row` of `piece` is, in the user's words (for error messages)."""
        return f"{self.name(piece.file)} row {piece.start + row}"

    originals: list[Path] | None = None  # the files as named, when `files` are gzip's copies

    @property
    def listing(self) -> list[Path]:
        """Every file the dataset is made of, as the user named them (an image folder: each
        image)."""
        return self.originals or self.files

    def close(self) -> None:
        """Release open files (readers that hold them override this)."""


def pick_columns(names: list[str], spec: Spec, where: Path) -> tuple[list[str], str | None]:
    """(feature columns, label column) of a table with columns `names`, as `spec` asks."""
    known = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
    for key, wanted in (("data.label", [spec.label] if spec.label else []),
                        ("data.features", list(spec.features))):
        for name in wanted:
            if name not in names:
                raise DataError(f"{key}: column {name!r} is not in {where} (its columns: "
                                f"{known}); allowed: one of those")
    features = list(spec.features) or [n for n in names if n != spec.label]
    if spec.label in features:
        raise DataError(f"column {spec.label!r} is both the label and a feature; allowed: "
                        "data.features without the label column")
    if not features:
        raise DataError(f"{where}: no feature columns besides the label; allowed: a table with "
                        "at least one feature column")
    return features, spec.label or None


def label_column(labels: Any, name: str, where: Callable[[int], str]) -> np.ndarray:
    """An Arrow label column as an array; DataError naming the first row without a label
    (`where(k)`: row k of the column in the user's words)."""
    if labels.null_count:
        row = int(labels.is_null().to_numpy(zero_copy_only=False).argmax())
        raise DataError(f"{where(row)}: the label {name!r} is empty; allowed: a label in every "
                        "row")
    return labels.to_numpy(zero_copy_only=False)
