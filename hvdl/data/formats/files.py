"""Where a dataset's files are and what their names say: a path, a folder, a glob or an
s3:// URL expanded to the files it names; the format their names tell; gzip files found and
decompressed once into a cache; the fingerprint that tells one dataset from another; an empty or
unreadable file refused in one line. The readers (beside this module) and hvdl/data/dataset.py
use these before they open anything.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import tempfile
from glob import glob, has_magic
from pathlib import Path

from hvdl.data.formats import ranges, store
from hvdl.data.formats.base import FILE_FORMATS, DataError
from hvdl.data.formats.store import S3Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SUFFIXES = {".npy": "npy", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet",
            ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5", ".idx": "idx",
            **{s: "images" for s in IMAGE_SUFFIXES}}
IDX_NAME = re.compile(r"idx\d-ubyte")
GZIP_MAGIC = b"\x1f\x8b"


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
    with ranges.open_file(path, buffering=4096) as f:
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
        with os.fdopen(fd, "wb") as dst, ranges.open_file(path) as raw, \
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
