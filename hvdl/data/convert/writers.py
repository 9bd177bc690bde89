"""Writers for `hvdl data convert`: a dataset written chunk by chunk in any readable format.

Each writer is opened with what the whole dataset looks like (rows, one example's shape, the
stored types, the column names) and then given the rows in order, a chunk at a time, so a
conversion never holds more than a chunk. Output goes to temporary files beside the targets and
is renamed over them only when complete: a failed conversion leaves nothing behind.

| format  | features                                   | labels                           |
|---------|--------------------------------------------|----------------------------------|
| npy     | DST (rows, *shape)                         | DST with `.labels` before `.npy` |
| idx     | DST (rows, *shape), gzip if it ends in .gz | DST with `.labels` inserted      |
| hdf5    | dataset `features` (rows, *shape)          | dataset `labels`                 |
| parquet | one column per feature, row groups of a chunk | column `label`                |
| csv     | one column per feature, header line        | column `label`                   |
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hvdl.data.formats import idx, store
from hvdl.data.formats.base import DataError
from hvdl.data.formats.parquet import SHAPE_KEY
from hvdl.data.formats.store import S3Path

LABEL_COLUMN = "label"


@dataclass(frozen=True)
class Layout:
    """What the whole output holds."""

    rows: int
    shape: tuple[int, ...]  # one example
    dtype: np.dtype  # of the features
    names: list[str]  # one per feature, for tables
    label_dtype: np.dtype | None  # None: unlabelled


def label_path(dst: Path) -> Path:
    """Where npy and idx outputs keep their labels: `train.npy` -> `train.labels.npy`."""
    name = dst.name.removesuffix(".gz")
    stem, dot, suffix = name.rpartition(".")
    base = f"{stem}.labels.{suffix}" if dot else f"{name}.labels"
    return dst.with_name(base + (".gz" if dst.name.endswith(".gz") else ""))


def temporary(path: Path) -> Path:
    """Where `path` is written until it is complete: beside it, or for an object in S3 a local
    file uploaded whole by `commit`."""
    if isinstance(path, S3Path):
        return store.staging(path)
    return path.with_name(f".{path.name}.part")


class Writer:
    """Base: the targets and their temporary files; `commit` renames, `abort` removes."""

    def __init__(self, dst: Path, layout: Layout) -> None:
        self.layout, self.targets = layout, [dst]
        if layout.label_dtype is not None and self.separate_labels:
            self.targets.append(label_path(dst))

    separate_labels = False

    def write(self, x: np.ndarray, y: np.ndarray | None) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Flush and close the temporary files."""

    def commit(self) -> list[Path]:
        self.finish()
        for target in self.targets:
            if isinstance(target, S3Path):
                try:
                    store.upload(temporary(target), target)
                finally:
                    temporary(target).unlink(missing_ok=True)
            else:
                os.replace(temporary(target), target)
        return self.targets

    def abort(self) -> None:
        try:
            self.finish()
        except Exception:  # the conversion failed already; what matters is the cleanup
            pass
        for target in self.targets:
            temporary(target).unlink(missing_ok=True)


class NpyWriter(Writer):
    separate_labels = True

    def __init__(self, dst: Path, layout: Layout) -> None:
        super().__init__(dst, layout)
        self.x = np.lib.format.open_memmap(temporary(dst), mode="w+", dtype=layout.dtype,
                                           shape=(layout.rows, *layout.shape))
        self.y = None
        if layout.label_dtype is not None:
            self.y = np.lib.format.open_memmap(temporary(self.targets[1]), mode="w+",
                                               dtype=layout.label_dtype, shape=(layout.rows,))
        self.at = 0

    def write(self, x: np.ndarray, y: np.ndarray | None) -> None:
        self.x[self.at:self.at + len(x)] = x.reshape(len(x), *self.layout.shape)
        if self.y is not None:
            self.y[self.at:self.at + len(x)] = y
        self.at += len(x)

    def finish(self) -> None:
        for array in (self.x, self.y):
            if array is not None:
                array.flush()
        self.x = self.y = None


class IdxWriter(Writer):
    separate_labels = True

    def __init__(self, dst: Path, layout: Layout) -> None:
        super().__init__(dst, layout)
        if layout.label_dtype is not None and layout.label_dtype.kind not in "biu":
            raise DataError(f"{dst}: IDX stores numbers and the labels are "
                            f"{layout.label_dtype}; allowed: npy, csv, parquet or hdf5 for "
                            "string labels")
        self.label_type = np.dtype(np.uint8)
        self.files = [self.open(dst, layout.dtype, (layout.rows, *layout.shape))]
        if layout.label_dtype is not None:
            self.files.append(self.open(self.targets[1], self.label_type, (layout.rows,)))

    def open(self, path: Path, dtype: np.dtype, dims: tuple[int, ...]) -> Any:
        code = idx.type_code(dtype)
        f = (gzip.open if path.name.endswith(".gz") else open)(temporary(path), "wb")
        f.write(bytes([0, 0, code, len(dims)]) + np.asarray(dims, dtype=">u4").tobytes())
        return f

    def write(self, x: np.ndarray, y: np.ndarray | None) -> None:
        self.files[0].write(x.astype(idx.TYPES[idx.type_code(x.dtype)]).tobytes())
        if y is not None:
            if y.min(initial=0) < 0 or y.max(initial=0) > 255:
                raise DataError("IDX labels are written as uint8 and a label is outside 0..255;"
                                " allowed: npy, csv, parquet or hdf5 for these labels")
            self.files[1].write(y.astype(self.label_type).tobytes())

    def finish(self) -> None:
        for f in self.files:
            f.close()
        self.files = []


class Hdf5Writer(Writer):
    def __init__(self, dst: Path, layout: Layout) -> None:
        import h5py

        super().__init__(dst, layout)
        self.file = h5py.File(temporary(dst), "w")
        self.x = self.file.create_dataset("features", shape=(layout.rows, *layout.shape),
                                          dtype=layout.dtype)
        self.y = None
        if layout.label_dtype is not None:
            kind = h5py.string_dtype() if layout.label_dtype.kind in "UO" else layout.label_dtype
            self.y = self.file.create_dataset("labels", shape=(layout.rows,), dtype=kind)
        self.at = 0

    def write(self, x: np.ndarray, y: np.ndarray | None) -> None:
        self.x[self.at:self.at + len(x)] = x.reshape(len(x), *self.layout.shape)
        if self.y is not None:
            self.y[self.at:self.at + len(x)] = y.astype(object) if y.dtype.kind == "U" else y
        self.at += len(x)

    def finish(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class TableWriter(Writer):
    """Parquet or CSV through pyarrow, one column per feature."""

    def __init__(self, dst: Path, layout: Layout, kind: str) -> None:
        import pyarrow as pa

        super().__init__(dst, layout)
        fields = [pa.field(n, pa.from_numpy_dtype(layout.dtype)) for n in layout.names]
        if layout.label_dtype is not None:
            kind_of = pa.string() if layout.label_dtype.kind in "UO" \
                else pa.from_numpy_dtype(layout.label_dtype)
            fields.append(pa.field(LABEL_COLUMN, kind_of))
        # One example's shape (an image's) rides in the schema's metadata: the columns alone
        # would give it back flat (hvdl/data/formats/parquet.py reads it).
        self.schema = pa.schema(fields, metadata={SHAPE_KEY: json.dumps(list(layout.shape))})
        self.kind = kind
        if kind == "parquet":
            import pyarrow.parquet as pq

            self.out = pq.ParquetWriter(temporary(dst), self.schema)
        else:
            import pyarrow.csv as pacsv

            self.sink = (gzip.open if dst.name.endswith(".gz") else open)(temporary(dst), "wb")
            self.out = pacsv.CSVWriter(self.sink, self.schema, write_options=pacsv.WriteOptions(
                quoting_style="needed"))

    def write(self, x: np.ndarray, y: np.ndarray | None) -> None:
        import pyarrow as pa

        columns = [pa.array(x[:, j]) for j in range(x.shape[1])]
        if y is not None:
            columns.append(pa.array(y.astype(str) if y.dtype.kind == "U" else y))
        table = pa.Table.from_arrays(columns, schema=self.schema)
        if self.kind == "parquet":
            self.out.write_table(table, row_group_size=max(1, len(x)))
        else:
            self.out.write_table(table)

    def finish(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None
            if self.kind == "csv":
                self.sink.close()


def open_writer(dst: Path, fmt: str, layout: Layout) -> Writer:
    if fmt == "npy":
        return NpyWriter(dst, layout)
    if fmt == "idx":
        return IdxWriter(dst, layout)
    if fmt == "hdf5":
        return Hdf5Writer(dst, layout)
    if fmt in ("parquet", "csv"):
        return TableWriter(dst, layout, fmt)
    raise DataError(f"cannot write format {fmt!r}; allowed: npy, idx, hdf5, parquet, csv")
