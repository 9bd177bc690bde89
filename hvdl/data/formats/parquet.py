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
from hvdl.data.formats import store
from hvdl.data.formats.base import DataError, Source, Spec, check_readable, pick_columns
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
                self.handles.append(pq.ParquetFile(store.arrow_file(f) if isinstance(f, S3Path)
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
        self.cached: tuple[tuple[int, int], Any] | None = None

    def group(self, file: int, g: int, columns: list[str]) -> Any:
        if self.cached is None or self.cached[0] != (file, g, tuple(columns)):
            self.cached = ((file, g, tuple(columns)),
                           self.handles[file].read_row_group(g, columns=columns))
        return self.cached[1]

    def table(self, piece: Piece, columns: list[str]) -> Any:
        """The piece's rows of `columns`, from the row groups that hold them."""
        import pyarrow as pa

        parts, offset = [], 0
        for g, rows in enumerate(self.group_rows[piece.file]):
            lo, hi = max(piece.start, offset), min(piece.stop, offset + rows)
            if lo < hi:
                parts.append(self.group(piece.file, g, columns).slice(lo - offset, hi - lo))
            offset += rows
        return pa.concat_tables(parts)

    def labels(self, piece: Piece) -> np.ndarray | None:
        if not self.label_name:
            return None
        return self.label_values(self.table(piece, [self.label_name]), piece)

    def label_values(self, table: Any, piece: Piece) -> np.ndarray:
        labels = table.column(self.label_name)
        if labels.null_count:
            row = int(labels.is_null().to_numpy(zero_copy_only=False).argmax())
            raise DataError(f"{self.name(piece.file)} row {piece.start + row}: the label "
                            f"{self.label_name!r} is empty; allowed: a label in every row")
        return labels.to_numpy(zero_copy_only=False)

    def read(self, piece: Piece) -> tuple[np.ndarray, np.ndarray | None]:
        columns = self.feature_cols + ([self.label_name] if self.label_name else [])
        table = self.table(piece, columns)
        if self.listed:
            column = table.column(self.feature_cols[0]).combine_chunks()
            x = np.asarray(column.flatten().to_numpy(zero_copy_only=False))
            x = x.reshape(table.num_rows, self.shape[0])
        else:
            x = np.empty((table.num_rows, len(self.feature_cols)), dtype=self.dtype)
            for j, name in enumerate(self.feature_cols):
                col = table.column(name)
                if col.null_count:
                    x = x.astype(np.float64, copy=False)  # nulls become NaN, found by the checks
                x[:, j] = col.to_numpy(zero_copy_only=False)
        return x, (self.label_values(table, piece) if self.label_name else None)

    def feature_names(self) -> list[str]:
        return list(self.feature_cols) if not self.listed else super().feature_names()

    def columns(self) -> list[tuple[str, str]]:
        schema = self.handles[0].schema_arrow
        cols = [(c, str(schema.field(c).type)) for c in self.feature_cols]
        return cols + ([(self.label_name, f"{schema.field(self.label_name).type} (label)")]
                       if self.label_name else [])


def schema_text(schema: Any) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)
