"""Reader for Parquet files, or folders of them (as Spark writes), read by row groups.

    --data.path spark_out/ --data.label y --data.features a,b,c

Only the columns asked for are read. The label column may hold integers or strings; features
must be number columns, or one column holding a fixed-size list of numbers per row (an image,
an embedding). A file written by `hvdl data convert` carries one example's shape (an image's
(C, H, W)) in its schema's metadata, so its rows come back in that shape.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from hvdl.data.chunks import Piece
from hvdl.data.formats import ranges
from hvdl.data.formats.base import DataError, Source, Spec, label_column, pick_columns
from hvdl.data.formats.files import check_readable
from hvdl.data.formats.store import S3Path

SHAPE_KEY = b"hvdl.shape"  # schema metadata: one example's shape, as a JSON list


class ParquetSource(Source):
    format = "parquet"

    def __init__(self, files: list[Path], spec: Spec, **_: Any) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.files, self.handles = files, []
        for f in files:
            check_readable(f)
            try:
                self.handles.append(pq.ParquetFile(ranges.arrow_file(f) if isinstance(f, S3Path)
                                                   else f))
            except (pa.ArrowException, OSError) as err:
                raise DataError(f"{f}: not a complete Parquet file ({err}); allowed: a file "
                                "written by pyarrow, Spark or pandas") from None
        schema = self.handles[0].schema_arrow
        for f, h in zip(files, self.handles):
            if not h.schema_arrow.equals(schema):
                raise DataError(f"files whose schemas differ: {files[0]} has {schema_text(schema)}"
                                f", {f} has {schema_text(h.schema_arrow)}; allowed: files of one "
                                "schema")
        self.feature_cols, self.label_name = pick_columns(schema.names, spec, files[0])
        types = [schema.field(c).type for c in self.feature_cols]
        self.listed = len(types) == 1 and pa.types.is_fixed_size_list(types[0])
        numeric = [t.value_type if self.listed else t for t in types]
        for name, t in zip(self.feature_cols, numeric):
            if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
                text = pa.types.is_string(t) or pa.types.is_large_string(t)
                label = (f" (text: if it names each row's class, make it the label, data.label "
                         f"{name!r})") if text else ""
                raise DataError(f"{files[0]}: feature column {name!r} holds {t}{label}; allowed: "
                                "number columns, or one column of fixed-size lists of numbers")
        self.dtype = np.result_type(*[t.to_pandas_dtype() for t in numeric])
        self.shape = (types[0].list_size,) if self.listed else (len(self.feature_cols),)
        saved = json.loads((schema.metadata or {}).get(SHAPE_KEY, b"[]"))
        if saved and math.prod(saved) == self.shape[0] and (self.listed or not spec.features):
            self.shape = tuple(saved)
        self.group_rows = [[h.metadata.row_group(g).num_rows for g in range(h.num_row_groups)]
                           for h in self.handles]
        self.file_rows = [sum(g) for g in self.group_rows]
        self.cached: tuple[tuple[int, int, bool], Any] | None = None

    def group(self, file: int, g: int, features: bool = True) -> tuple[Any, Any]:
        """Row group `g` of a file as arrays: (features (rows, features) in the stored type, or
        None; raw labels or None), converted once (a rank reads its pieces in file order, so
        consecutive pieces share it). features=False reads the label column alone."""
        key = (file, g, features)
        if self.cached is None or self.cached[0] not in (key, (file, g, True)):
            columns = (self.feature_cols if features else []) + (
                [self.label_name] if self.label_name else [])
            table = self.handles[file].read_row_group(g, columns=columns)
            first = sum(self.group_rows[file][:g])
            self.cached = (key, (self.features_of(table) if features else None,
                                 self.label_values(table, file, first)))
        return self.cached[1]

    def features_of(self, table: Any) -> np.ndarray:
        if self.listed:
            column = table.column(self.feature_cols[0]).combine_chunks()
            x = np.asarray(column.flatten().to_numpy(zero_copy_only=False))
            return x.reshape(table.num_rows, self.features)
        x = np.empty((table.num_rows, len(self.feature_cols)), dtype=self.dtype)
        for j, name in enumerate(self.feature_cols):
            col = table.column(name)
            if col.null_count:
                x = x.astype(np.float64, copy=False)  # nulls become NaN, found by the checks
            x[:, j] = col.to_numpy(zero_copy_only=False)
        return x

    def label_values(self, table: Any, file: int, first: int) -> np.ndarray | None:
        if not self.label_name:
            return None
        return label_column(table.column(self.label_name), self.label_name,
                            lambda row: f"{self.name(file)} row {first + row}")

    def slices(self, piece: Piece, features: bool) -> tuple[Any, Any]:
        """The piece's (features, labels), sliced from the row groups that hold them."""
        xs, ys, offset = [], [], 0
        for g, rows in enumerate(self.group_rows[piece.file]):
            lo, hi = max(piece.start, offset), min(piece.stop, offset + rows)
            if lo < hi:
                x, y = self.group(piece.file, g, features)
                xs.append(None if x is None else x[lo - offset:hi - offset])
                ys.append(None if y is None else y[lo - offset:hi - offset])
            offset += rows
        return (np.concatenate(xs) if features else None,
                np.concatenate(ys) if self.label_name else None)

    def labels(self, piece: Piece) -> np.ndarray | None:
        return self.slices(piece, features=False)[1] if self.label_name else None

    def read(self, piece: Piece) -> tuple[np.ndarray, np.ndarray | None]:
        x, y = self.slices(piece, features=True)
        return x.reshape(piece.rows, -1), y

    def feature_names(self) -> list[str]:
        return list(self.feature_cols) if not self.listed else super().feature_names()

    def columns(self) -> list[tuple[str, str]]:
        schema = self.handles[0].schema_arrow
        cols = [(c, str(schema.field(c).type)) for c in self.feature_cols]
        return cols + ([(self.label_name, f"{schema.field(self.label_name).type} (label)")]
                       if self.label_name else [])


def schema_text(schema: Any) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)
