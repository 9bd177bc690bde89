"""Reader for a PostgreSQL table or query, each rank reading its own part in one snapshot.

    --data.format sql --data.path postgresql://trainer@db:5432/lab --data.table digits \
        --data.label digit                                  # features: the other columns
    --data.format sql --data.path postgresql://trainer@db/lab --data.key id \
        --data.query "SELECT id, pixels_a, pixels_b, label FROM scans WHERE day < '2026-01-01'"

The password comes from `PGPASSWORD` or `~/.pgpass` (libpq reads both), never from the URL, so it
reaches no run folder; `PGSSLMODE` and the other libpq variables apply too.

Parts. The rows are cut into splits as a CSV file's bytes are (hvdl/data/formats/delimited.py):
ranges of the table's physical pages (`ctid` ranges, read by PostgreSQL's TID range scan), or,
with `data.key`, ranges of an integer key column (the only way to read a query in parts). The
ranks count the splits' rows between them, then each reads only the splits that hold its rows,
in `ctid` (or key) order, so the row order, and with it the chunk rule's shards and the weights,
is that of the table. No process reads the whole table.

One state. Rank 0 opens a REPEATABLE READ transaction and exports its snapshot
(`pg_export_snapshot`); every other rank imports it (`SET TRANSACTION SNAPSHOT`), so rows written
during the run reach no rank, and the table's extent (its pages, or the key's range) is rank 0's,
taken in that snapshot. The transactions stay open, read-only, while the source is in use (a
streamed shard reads in every epoch). Under elastic training, where no collective runs while the
data are opened, each rank takes its own snapshot.

Reading is through the ADBC PostgreSQL driver, which returns Arrow batches (the server sends
binary COPY); `python -m hvdl.bench.sources` measures it against psycopg's binary COPY
(results/sources/). A split's features come as one float8[] column, converted once.

Greenplum: a query through the coordinator funnels every row through it; `ctid` ranges are per
segment there, so against Greenplum use `data.key` (a distribution-aware key lets each segment
scan its own share) or parallel retrieve cursors, which read from the segments directly. Not
tested here: no Greenplum server can be installed on this machine.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

from hvdl.data import chunks
from hvdl.data.chunks import Piece
from hvdl.data.formats.base import DataError, Source, Spec, label_column, pick_columns

SCHEMES = ("postgresql://", "postgres://")
PAGE_BYTES = 8192  # PostgreSQL's default block size (read from the server when it differs)


def is_database(path: str) -> bool:
    return path.startswith(SCHEMES)


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Where:
    """The table or query as the user named it, standing in for a file in listings."""

    def __init__(self, url: str, what: str) -> None:
        self.url, self.name = url, what

    def __str__(self) -> str:
        return f"{self.url} {self.name}"

    def exists(self) -> bool:  # not a file: no fingerprint of names and sizes
        return False

    def is_file(self) -> bool:
        return False


def connect_url(url: str) -> str:
    """`url` checked (no password in it), with a connect timeout unless it sets one."""
    parts = urlsplit(url)
    if parts.password is not None:
        safe = url.replace(f":{parts.password}@", "@")
        raise DataError(f"{safe}: a password in the URL is refused (it would be logged); "
                        "allowed: postgresql://user@host:port/db with the password in "
                        "PGPASSWORD or ~/.pgpass")
    query = dict(parse_qsl(parts.query))
    query.setdefault("connect_timeout", "5")
    return urlunsplit(parts._replace(query=urlencode(query)))


def failure(url: str, err: BaseException) -> DataError:
    """A driver error in one line, in the user's terms."""
    text = " ".join(str(err).split())
    text = text.split("Query was:")[0].strip()
    low = text.lower()
    if "password authentication failed" in low or "no password supplied" in low \
            or "authentication failed" in low:
        return DataError(f"{url}: the server refused the login ({text[:200]}); allowed: the "
                         "user's password in PGPASSWORD or ~/.pgpass")
    if "connection refused" in low or "could not connect" in low or "timeout" in low \
            or "could not translate host name" in low:
        return DataError(f"{url}: cannot reach the database server ({text[:200]}); allowed: a "
                         "server that answers at that host and port")
    if "does not exist" in low and "database" in low:
        return DataError(f"{url}: {text[:200]}; allowed: an existing database")
    return DataError(f"{url}: {text[:300]}")


def connect(url: str) -> Any:
    """An ADBC connection in autocommit mode; DataError (one line) when there is none."""
    import adbc_driver_postgresql.dbapi as pg  # the sql extra (pyproject.toml)

    address = connect_url(url)
    try:
        return pg.connect(address, autocommit=True)
    except Exception as err:  # the driver's errors have no common base beyond Exception
        raise failure(url, err) from None


class TableSource(Source):
    format = "sql"
    live = True

    def __init__(self, spec: Spec, *, split_mb: float = 4, **_: Any) -> None:
        if bool(spec.table) == bool(spec.query):
            raise DataError("format sql needs data.table or data.query (one of them); allowed: "
                            "--data.table NAME, or --data.query 'SELECT ...' with --data.key")
        if spec.query and not spec.key:
            raise DataError("data.query is read in parts by an integer key column; allowed: "
                            "data.key naming one of the query's columns")
        self.url, self.spec, self.chunk_mb = spec.path, spec, split_mb
        self.lock = threading.Lock()
        self.connection = connect(spec.path)
        self.cursor = self.connection.cursor()
        if spec.table:
            found = self.one("SELECT to_regclass($1)::text", (spec.table,))
            if found is None:
                raise DataError(f"data.table {spec.table!r} does not exist in {self.url}; "
                                "allowed: an existing table or view (schema.name)")
            self.source = found
        else:
            self.source = f"({spec.query}) AS hvdl_query"
        self.files = [Where(self.url, f"table {spec.table}" if spec.table else "query")]
        schema = self.arrow(f"SELECT * FROM {self.source} LIMIT 0").schema
        self.feature_cols, self.label_name = pick_columns(schema.names, spec, self.files[0])
        if spec.key and spec.key not in schema.names:
            raise DataError(f"data.key: column {spec.key!r} is not in {self.files[0]} (its "
                            f"columns: {', '.join(schema.names[:20])}); allowed: one of those")
        self.check_types(schema)
        self.shape = (len(self.feature_cols),)
        self.splits: list[tuple[int, Any, Any]] = []  # (0, low, high): pages or key values
        self.file_rows = [0]
        self.parsed: OrderedDict[int, Any] = OrderedDict()

    def check_types(self, schema: Any) -> None:
        import pyarrow as pa

        for name in self.feature_cols:
            t = schema.field(name).type
            if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
                    or pa.types.is_decimal(t)):
                label = (f" (text: if it names each row's class, make it the label, data.label "
                         f"{name!r})") if pa.types.is_string(t) else ""
                raise DataError(f"{self.files[0]}: feature column {name!r} holds {t}{label}; "
                                "allowed: number columns")
        if self.spec.key and not pa.types.is_integer(schema.field(self.spec.key).type):
            raise DataError(f"data.key {self.spec.key!r} holds {schema.field(self.spec.key).type}"
                            "; allowed: an integer column")
        self.dtype = np.dtype(np.float64)

    # -- the driver ------------------------------------------------------------------------------

    def run(self, sql: str, params: tuple = ()) -> None:
        try:
            self.cursor.execute(sql, params or None)
        except Exception as err:
            raise failure(self.url, err) from None

    def one(self, sql: str, params: tuple = ()) -> Any:
        with self.lock:
            self.run(sql, params)
            return self.cursor.fetchone()[0]

    def arrow(self, sql: str) -> Any:
        with self.lock:
            self.run(sql)
            try:
                return self.cursor.fetch_arrow_table()
            except Exception as err:
                raise failure(self.url, err) from None

    # -- one snapshot, and the splits in it ------------------------------------------------------

    def export_state(self) -> tuple[str, tuple[int, int, int]]:
        """Rank 0: open the run's transaction, export its snapshot and the extent it sees."""
        self.run("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        self.exported = self.one("SELECT pg_export_snapshot()")
        return self.exported, self.extent()

    def import_state(self, state: tuple[str, tuple[int, int, int]]) -> None:
        """Every rank: read in rank 0's snapshot, cut its extent into splits."""
        snapshot, (low, high, step) = state
        if getattr(self, "exported", None) != snapshot:
            self.run("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            self.run(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        bounds = list(range(low, high, step)) or [low]
        self.splits = [(0, a, None if k == len(bounds) - 1 else bounds[k + 1])
                       for k, a in enumerate(bounds)]

    def extent(self) -> tuple[int, int, int]:
        """(first, end, step) of the splits: pages, or key values. A split holds about one
        chunk's rows (the chunk rule's size for this many rows), so a rank's chunks, dealt
        across the table, cost it little more than its own rows."""
        features = len(self.feature_cols)
        if not self.spec.key:
            page = int(self.one("SELECT current_setting('block_size')::int"))
            pages = max(1, int(self.one("SELECT pg_relation_size($1::regclass)",
                                        (self.source,))) // page)
            rows = float(self.one("SELECT reltuples FROM pg_class WHERE oid = $1::regclass",
                                  (self.source,)))
            if rows <= 0:  # never analysed: guess from the row's width
                rows = pages * page / (features * 8 + 24)
            per_chunk = chunks.chunk_rows(features, self.chunk_mb, int(rows))
            return 0, pages, max(1, round(per_chunk * pages / max(rows, 1)))
        key = quoted(self.spec.key)
        rows, low, high = self.arrow(
            f"SELECT count(*), min({key}), max({key}) FROM {self.source}").to_pylist()[0].values()
        if not rows:
            return 0, 1, 1
        splits = max(1, rows // chunks.chunk_rows(features, self.chunk_mb, rows))
        return int(low), int(high) + 1, max(1, math.ceil((high - low + 1) / splits))

    def where(self, i: int) -> str:
        _, low, high = self.splits[i]
        if self.spec.key:
            key = quoted(self.spec.key)
            return f"{key} >= {low}" + (f" AND {key} < {high}" if high is not None else "")
        return f"ctid >= '({low},0)'::tid" + (f" AND ctid < '({high},0)'::tid"
                                              if high is not None else "")

    def count(self, i: int) -> tuple[int, int]:
        return int(self.one(f"SELECT count(*) FROM {self.source} WHERE {self.where(i)}")), 0

    def set_counts(self, counts: list[tuple[int, int]]) -> None:
        self.counts = [c for c, _ in counts]
        self.first_row = list(np.cumsum([0] + self.counts[:-1]))
        self.file_rows = [sum(self.counts)]
        if not self.file_rows[0]:
            raise DataError(f"{self.files[0]} returns no rows; allowed: a table or query with "
                            "the training rows")

    # -- reading ---------------------------------------------------------------------------------

    def split_arrays(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Split `i`'s rows as (features float64, raw labels), fetched and converted once (a
        rank reads its pieces in table order, so consecutive pieces share a split)."""
        if i not in self.parsed:
            # The features as one float8[] column: one conversion for the split, not one per
            # column (a NULL stays a null element, then NaN, found by the checks)
            features = ", ".join(quoted(c) for c in self.feature_cols)
            label = f", {quoted(self.label_name)}" if self.label_name else ""
            order = quoted(self.spec.key) if self.spec.key else "ctid"
            ident = f", {quoted(self.spec.key)}" if self.spec.key else ", ctid::text"
            table = self.arrow(f"SELECT ARRAY[{features}]::float8[] AS hvdl_x{label}{ident} "
                               f"AS hvdl_id FROM {self.source} WHERE {self.where(i)} "
                               f"ORDER BY {order}")
            flat = table.column("hvdl_x").combine_chunks().flatten()
            x = flat.to_numpy(zero_copy_only=False).reshape(table.num_rows, -1)
            self.parsed[i] = (x, self.label_values(table, self.first_row[i]),
                              table.column("hvdl_id").to_numpy(zero_copy_only=False))
            while len(self.parsed) > 4:
                self.parsed.popitem(last=False)
        return self.parsed[i]

    def label_values(self, table: Any, first: int) -> np.ndarray | None:
        if not self.label_name:
            return None
        return label_column(table.column(self.label_name), self.label_name,
                            lambda row: f"{self.files[0]} row {first + row}")

    def parts(self, piece: Piece) -> list[tuple[np.ndarray, Any, np.ndarray]]:
        """(features, labels, row ids) of the piece's rows, split by split."""
        found = []
        for i, (first, n) in enumerate(zip(self.first_row, self.counts)):
            lo, hi = max(piece.start, first), min(piece.stop, first + n)
            if lo < hi:
                found.append(tuple(None if a is None else a[lo - first:hi - first]
                                   for a in self.split_arrays(i)))
        return found

    def read(self, piece: Piece) -> tuple[np.ndarray, np.ndarray | None]:
        found = self.parts(piece)
        return (np.concatenate([p[0] for p in found]),
                np.concatenate([p[1] for p in found]) if self.label_name else None)

    def row_ids(self, piece: Piece) -> tuple[str, np.ndarray]:
        """The key's values (or the rows' ctids, as text in `source_ctid`: a table may not have a
        column named ctid) of the piece: what joins results to the rows."""
        return (self.spec.key or "source_ctid"), np.concatenate([p[2] for p in self.parts(piece)])

    def position(self, piece: Piece, row: int) -> str:
        return f"{self.files[0]} row {piece.start + row} (in {'key' if self.spec.key else 'ctid'}" \
               " order)"

    def feature_names(self) -> list[str]:
        return list(self.feature_cols)

    def columns(self) -> list[tuple[str, str]]:
        cols = [(c, "number") for c in self.feature_cols]
        return cols + ([(self.label_name, "label")] if self.label_name else [])

    def close(self) -> None:
        try:
            self.connection.close()
        except Exception:  # closing after a failure: nothing more to report
            pass
