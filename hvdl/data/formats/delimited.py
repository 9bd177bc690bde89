"""Reader for CSV and TSV files with a header line.

    --data.path 'exports/*.csv' --data.label species            # features: the other columns

The label column may hold integers or strings; features must be numbers. A file is read in
byte ranges (`splits` of data.chunk_mb) aligned to line starts as Hadoop's input splits are: a
split's records are the lines that begin in it, so every line belongs to exactly one split and a
reader needs only a seek. Records therefore may not span lines (a quoted field holding a line
break is refused). How many records a split holds is only known by parsing it, so the ranks
first count the splits between them (hvdl/data/plan.py); then each parses just the splits
that hold its rows. Parsing is pyarrow's; a cell pyarrow refuses is located again line by line,
to name the file, line and column.
"""

from __future__ import annotations

import csv
import io
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from hvdl.data.chunks import Piece
from hvdl.data.formats import ranges
from hvdl.data.formats.base import DataError, Local, Source, Spec, pick_columns
from hvdl.data.formats.files import check_readable, is_gzip, plain_suffix


class CsvSource(Source):
    format = "csv"
    dtype = np.dtype(np.float64)

    def __init__(self, files: list[Path], spec: Spec, *, local: Local, split_mb: float = 4,
                 **_: Any) -> None:
        self.originals, self.files = files, [local(f) if is_gzip(f) else f for f in files]
        self.delimiter = "\t" if plain_suffix(files[0]) == ".tsv" else ","
        headers = [self.header(f) for f in self.files]
        for f, (names, _) in zip(files, headers):
            if names != headers[0][0]:
                raise DataError(f"files whose schemas differ: {files[0]} has columns "
                                f"{', '.join(headers[0][0])}, {f} has {', '.join(names)}; "
                                "allowed: files with one header")
        self.names = headers[0][0]
        self.feature_cols, self.label_name = pick_columns(self.names, spec, files[0])
        self.shape = (len(self.feature_cols),)
        size = max(1, int(split_mb * 2**20))
        sizes = [f.stat().st_size for f in self.files]
        self.splits = [(i, begin, min(begin + size, end))
                       for i, (end, (_, data_start)) in enumerate(zip(sizes, headers))
                       for begin in range(data_start, end, size)]
        self.data_start = [h[1] for h in headers]
        self.parsed: OrderedDict[int, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
        self.file_rows: list[int] = []  # known once `set_counts` has run

    def header(self, path: Path) -> tuple[list[str], int]:
        """The column names and the byte where the records begin."""
        check_readable(path)
        with ranges.open_file(path, buffering=16 * 1024) as f:
            line = f.readline()
        names = next(csv.reader([line.decode("utf-8-sig", "replace")],
                                delimiter=self.delimiter), [])
        names = [n.strip() for n in names]
        if not names or len(set(names)) != len(names) or "" in names:
            raise DataError(f"{path}: the first line is not a header of distinct column names "
                            f"({line[:80]!r}); allowed: a header line naming every column")
        return names, len(line)

    # -- the split rule and the count ----------------------------------------------------------

    def split_data(self, i: int) -> tuple[int, bytes]:
        """(byte offset, bytes) of split `i`'s records: the lines that begin inside it."""
        file, begin, end = self.splits[i]
        with ranges.open_file(self.files[file], buffering=16 * 1024) as f:
            start = begin
            if begin > self.data_start[file]:  # a record starts here only after a line end
                f.seek(begin - 1)
                start = begin - 1 + len(f.readline())
            if start >= end:
                return start, b""
            f.seek(start)
            data = f.read(end - start)
            if not data.endswith(b"\n"):
                data += f.readline()  # the last record runs past the split's end
        return start, data

    def count(self, i: int) -> tuple[int, int]:
        """(records, line ends) in split `i`: the ranks share this work before reading."""
        start, data = self.split_data(i)
        if b'"' in data:
            self.check_quotes(i, start, data)
        table = self.parse(i, start, data, columns=[self.names[0]], types=False)
        return table.num_rows, data.count(b"\n")

    def set_counts(self, counts: list[tuple[int, int]]) -> None:
        """Every split's (records, line ends), in split order, as the ranks counted them."""
        self.counts = counts
        self.file_rows = [0] * len(self.files)
        self.first_row, self.first_line, lines = [], [], {}
        for (file, _, _), (records, newlines) in zip(self.splits, counts):
            self.first_row.append(self.file_rows[file])
            self.first_line.append(lines.get(file, 2))  # line 1 is the header
            self.file_rows[file] += records
            lines[file] = self.first_line[-1] + newlines

    # -- parsing -----------------------------------------------------------------------------

    def parse(self, i: int, start: int, data: bytes, *, columns: list[str],
              types: bool = True) -> Any:
        """pyarrow's table of `data` (split `i`, from byte `start`), or a DataError saying why
        not."""
        import pyarrow as pa
        import pyarrow.csv as pacsv

        if not data.strip():
            return pa.table({c: pa.array([], pa.string()) for c in columns})
        kinds = {c: pa.float64() for c in self.feature_cols} if types else {}
        if self.label_name:
            kinds[self.label_name] = pa.string()
        try:
            return pacsv.read_csv(
                io.BytesIO(data),
                read_options=pacsv.ReadOptions(column_names=self.names, use_threads=True),
                parse_options=pacsv.ParseOptions(delimiter=self.delimiter),
                convert_options=pacsv.ConvertOptions(
                    include_columns=columns, column_types={c: kinds[c] for c in columns
                                                           if c in kinds}))
        except pa.ArrowInvalid as err:
            raise DataError(self.locate(i, start, data, types)
                            or f"{self.name(self.splits[i][0])}: {err}") from None

    def line_at(self, i: int, start: int) -> int:
        """The line number of byte `start` in split `i`'s file (counted when not yet known)."""
        file = self.splits[i][0]
        if hasattr(self, "first_line"):
            return self.first_line[i]
        with ranges.open_file(self.files[file]) as f:
            f.seek(self.data_start[file])
            return 2 + f.read(start - self.data_start[file]).count(b"\n")

    def records(self, i: int, start: int, data: bytes) -> Any:
        """(line number, fields) of each record of a split, read by Python's csv module."""
        line = self.line_at(i, start)
        for raw in data.split(b"\n"):
            text = raw.decode("utf-8", "replace").removesuffix("\r")
            if text:  # pyarrow skips empty lines too
                yield line, next(csv.reader([text], delimiter=self.delimiter))
            line += 1

    def check_quotes(self, i: int, start: int, data: bytes) -> None:
        for line, text in zip(range(self.line_at(i, start), 1 << 62), data.split(b"\n")):
            if text.count(b'"') % 2:
                raise DataError(f"{self.name(self.splits[i][0])} line {line}: a quoted field "
                                "spans lines; allowed: one record per line (CSV is read in "
                                "byte ranges split at line starts)")

    def locate(self, i: int, start: int, data: bytes, types: bool) -> str | None:
        """The first ragged row or non-numeric feature cell of a split, in words."""
        path, width = self.name(self.splits[i][0]), len(self.names)
        index = {name: j for j, name in enumerate(self.names)}
        for line, fields in self.records(i, start, data):
            if len(fields) != width:
                return (f"{path} line {line}: a ragged row of {len(fields)} fields, the header "
                        f"has {width}; allowed: {width} fields in every row")
            for name in self.feature_cols if types else []:
                cell = fields[index[name]].strip()
                try:
                    float(cell)
                except ValueError:
                    return (f"{path} line {line} column {name!r}: {cell!r} is not a number; "
                            "allowed: numbers in every feature column")
        return None

    def split_rows(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Split `i`'s features (rows, features) and labels, parsed once and kept a little."""
        if i in self.parsed:
            self.parsed.move_to_end(i)
            return self.parsed[i]
        start, data = self.split_data(i)
        columns = self.feature_cols + ([self.label_name] if self.label_name else [])
        table = self.parse(i, start, data, columns=columns)
        x = np.empty((table.num_rows, len(self.feature_cols)), dtype=np.float64)
        for j, name in enumerate(self.feature_cols):  # nulls (empty, "nan") become NaN
            x[:, j] = table.column(name).to_numpy(zero_copy_only=False)
        y = None
        if self.label_name:
            labels = table.column(self.label_name)
            if labels.null_count:
                row = labels.is_null().to_numpy(zero_copy_only=False).argmax()
                line = next(ln for k, (ln, _) in enumerate(self.records(i, start, data))
                            if k == row)
                raise DataError(f"{self.name(self.splits[i][0])} line {line}: the label "
                                f"{self.label_name!r} is empty; allowed: a label in every row")
            y = integers_if_all(np.asarray(labels.to_numpy(zero_copy_only=False), dtype=str))
        self.parsed[i] = (x, y)
        if len(self.parsed) > 2:
            self.parsed.popitem(last=False)
        return x, y

    def read(self, piece: Piece) -> tuple[np.ndarray, np.ndarray | None]:
        xs, ys = [], []
        for i, (file, _, _) in enumerate(self.splits):
            lo = self.first_row[i]
            hi = lo + self.counts[i][0]
            if file != piece.file or hi <= piece.start or lo >= piece.stop or hi == lo:
                continue
            x, y = self.split_rows(i)
            a, b = max(piece.start, lo) - lo, min(piece.stop, hi) - lo
            xs.append(x[a:b])
            ys.append(None if y is None else y[a:b])
        x = np.concatenate(xs) if xs else np.zeros((0, self.features))
        return x, (None if self.label_name is None else np.concatenate(ys))

    def position(self, piece: Piece, row: int) -> str:
        target = piece.start + row
        for i, (file, _, _) in enumerate(self.splits):
            lo = self.first_row[i]
            if file == piece.file and lo <= target < lo + self.counts[i][0]:
                start, data = self.split_data(i)
                line = next(ln for k, (ln, _) in enumerate(self.records(i, start, data))
                            if k == target - lo)
                return f"{self.name(file)} line {line}"
        return super().position(piece, row)

    def feature_names(self) -> list[str]:
        return list(self.feature_cols)

    def columns(self) -> list[tuple[str, str]]:
        """Each column's type as pyarrow reads the first split: a feature column of text is
        shown with its distinct values, since it is most likely a label."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.csv as pacsv

        start, data = self.split_data(0) if self.splits else (0, b"")
        try:
            table = pacsv.read_csv(
                io.BytesIO(data), read_options=pacsv.ReadOptions(column_names=self.names),
                parse_options=pacsv.ParseOptions(delimiter=self.delimiter))
        except pa.ArrowInvalid:
            table = None
        cols = []
        for name in self.feature_cols:
            kind = "number"
            if table is not None and not is_numeric(table.schema.field(name).type):
                values = pc.unique(table.column(name)).to_pylist()
                shown = ", ".join(map(str, values[:8])) + (", ..." if len(values) > 8 else "")
                kind = (f"text, {len(values)} distinct values in the first {table.num_rows:,} "
                        f"rows ({shown})")
            cols.append((name, kind))
        return cols + ([(self.label_name, "label")] if self.label_name else [])


def is_numeric(kind: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind)


def integers_if_all(labels: np.ndarray) -> np.ndarray:
    """A CSV's label strings as integers when every one of them is one."""
    try:
        return labels.astype(np.int64)
    except ValueError:
        return labels
