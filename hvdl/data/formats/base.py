"""A dataset on disk: its files, its format, and what every format's reader provides.

    source = formats.open_source(Spec(format="csv", path="data/*.csv", label="digit"))
    x, y = source.read(Piece(file=0, start=0, stop=100))   # rows 0..99 of the first file

A `Source` is one split (training or test) in one format: a sorted list of files, the rows in
each, the stored shape of one example, and `read(piece)`, which decodes only the rows asked for
(x as (k, features) in the stored numeric type, the raw labels or None). The readers live beside
this module and import only it; the table of formats is hvdl/data/formats/__init__.py. Files are
matched by `Spec.path`: a file, a folder or a glob (`**` recurses); the format comes from their
names when `Spec.format` is empty.

A gzip file cannot be read in parts, so it is decompressed once: `open_source`'s `local` maps it
to a decompressed copy (hvdl/data/dataset.py makes one per node, by local rank 0, in
`data.cache_dir`); `hvdl data convert` turns it into a format that is read in parts instead.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from glob import glob, has_magic
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hvdl.data.chunks import Piece
from hvdl.data.formats import store
from hvdl.data.formats.store import S3Path
from hvdl.errors import BadInput

FORMATS = ("mnist", "patches", "idx", "npy", "csv", "parquet", "hdf5", "images", "sql")
FILE_FORMATS = ("idx", "npy", "csv", "parquet", "hdf5", "images")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SUFFIXES = {".npy": "npy", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet",
            ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5", ".idx": "idx",
            **{s: "images" for s in IMAGE_SUFFIXES}}
IDX_NAME = re.compile(r"idx\d-ubyte")
GZIP_MAGIC = b"\x1f\x8b"

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


# --- files ----------------------------------------------------------------------------------

def expand(path: str, *, key: str = "data.path") -> list[Path]:
    """The files `path` names: a file, the files of a folder (recursively), or a glob's; in an
    object store (s3://bucket/...), an object, the objects under a prefix, or a glob's."""
    if not path:
        raise DataError(f"config key '{key}' is empty; allowed: a file, a folder or a glob")
    if store.is_url(path):
        return expand_url(path, key)
    text = os.path.expanduser(path)
    if has_magic(text):
        files = sorted(Path(p) for p in glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"{key} {path}: the glob matches no file; allowed: a glob that "
                            "matches the data files")
        return files
    found = Path(text)
    if found.is_file():
        return [found]
    if found.is_dir():
        files = sorted(p for p in found.rglob("*") if p.is_file() and not hidden(p, found))
        if not files:
            raise DataError(f"{key} {path}: the folder holds no file; allowed: a folder of data "
                            "files")
        return files
    raise DataError(f"{key} {path}: no such file or folder; allowed: a file, a folder or a glob")


def expand_url(url: str, key: str) -> list[Path]:
    """expand() in an object store: the same rules and messages, prefixes for folders."""
    found = store.expand_url(url)
    if not has_magic(url):  # a prefix: Spark's and Hadoop's bookkeeping objects are not data
        root = store.s3_path(url.rstrip("/"))
        found = [p for p in found if not hidden(p, root)]
    if found:
        return found
    bucket = store.S3Path(store.s3_path(url).parts[0])
    if not bucket.exists():
        raise DataError(f"{key} {url}: no such bucket {bucket.name!r} at the object store; "
                        "allowed: an existing bucket (AWS_ENDPOINT_URL names the server)")
    if has_magic(url):
        raise DataError(f"{key} {url}: the glob matches no object; allowed: a glob that "
                        "matches the data objects")
    raise DataError(f"{key} {url}: no such object or prefix; allowed: s3://bucket/key, a "
                    "prefix holding data objects, or a glob")


def hidden(path: Path, root: Path) -> bool:
    """Spark's and Hadoop's bookkeeping files (_SUCCESS, .crc) and dot files are not data."""
    return any(part.startswith((".", "_")) for part in path.relative_to(root).parts)


def plain_suffix(path: Path) -> str:
    """The suffix that names the format, past a `.gz`."""
    name = path.name.lower().removesuffix(".gz")
    return Path(name).suffix


def format_of(path: Path) -> str | None:
    """The format a file's name says, or None."""
    if IDX_NAME.search(path.name):
        return "idx"
    return SUFFIXES.get(plain_suffix(path))


def infer_format(files: list[Path], path: str) -> str:
    """The one format the files' names agree on; DataError when none or several."""
    kinds = {format_of(f) for f in files}
    if len(kinds) == 1 and None not in kinds:
        return kinds.pop()
    named = sorted(k for k in kinds if k)
    unknown = next((f for f in files if format_of(f) is None), None)
    what = (f"its files are {' and '.join(named)}" if len(named) > 1
            else f"{unknown.name} has no known suffix")
    raise DataError(f"data.path {path}: cannot tell the format ({what}); allowed: set "
                    f"data.format to one of {', '.join(FILE_FORMATS)}")


def of_format(files: list[Path], fmt: str) -> list[Path]:
    """The files of a folder that belong to format `fmt` (a folder may hold a README too)."""
    if fmt == "images":
        return [f for f in files if plain_suffix(f) in IMAGE_SUFFIXES]
    keep = [f for f in files if format_of(f) == fmt]
    return keep or files  # names that say nothing: trust the format given


def is_gzip(path: Path) -> bool:
    with store.open_file(path, buffering=4096) as f:
        return f.read(2) == GZIP_MAGIC


def fingerprint(files: list[Path]) -> str:
    """A digest of the files' names and sizes: the same dataset gives the same fingerprint."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.name}\t{f.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def decompressed(path: Path, folder: Path) -> Path:
    """Where `path`'s decompressed copy goes: named by the file's place, size and time."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return folder / f"{key.hexdigest()[:16]}-{path.name.removesuffix('.gz')}"


def decompress(path: Path, folder: Path) -> Path:
    """`path`'s decompressed copy in `folder`, made unless it is there already."""
    out = decompressed(path, folder)
    if out.is_file():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{out.name}.")
    try:
        with os.fdopen(fd, "wb") as dst, store.open_file(path) as raw, \
                gzip.GzipFile(fileobj=raw, mode="rb") as src:
            shutil.copyfileobj(src, dst, length=4 * 2**20)
        os.replace(tmp, out)
    except (OSError, EOFError) as err:
        os.unlink(tmp)
        raise DataError(f"{path}: corrupt or truncated gzip data ({err}); allowed: a complete "
                        "gzip file") from None
    return out


def default_cache() -> Path:
    return Path(tempfile.gettempdir()) / "hvdl-cache"


def check_readable(path: Path) -> None:
    """DataError for an empty or unreadable file (before a reader trips over it)."""
    if isinstance(path, S3Path):
        size = store.file_info(path).size or 0  # expand() listed it: it exists
    else:
        size = local_size(path)
    if size == 0:
        raise DataError(f"{path}: the file is empty; allowed: a file with data")


def local_size(path: Path) -> int:
    try:
        size = path.stat().st_size
        with open(path, "rb"):
            pass
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror}); allowed: a readable file") \
            from None
    return size
