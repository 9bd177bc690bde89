"""Where data files live: local paths, and `s3://bucket/key` objects in S3-compatible storage.

    files = store.expand_url("s3://lab/mnist/*.parquet")    # S3Path objects, sorted
    store.upload(local, store.s3_path("s3://lab/codes/part-0.parquet"))

An `S3Path` is a `PurePosixPath` of "bucket/key" that prints as its URL, so the readers handle it
as they handle a local `Path`: its name, suffix and parts are the key's. This module names,
lists, checks and writes objects; what reads their bytes is ranges.py (`open_file`, a buffered
file over ranged GETs; `arrow_file`, for Parquet's row groups; `read_into`, one range of a block
of rows), and nothing reads a whole object unless the format needs it (gzip: once per node, into
the cache).

The client is pyarrow's S3 file system: pyarrow is already the table reader, its C++ client does
the ranged reads and Parquet's coalesced row-group reads without another dependency (s3fs would
add botocore and an event loop to every rank). Its settings come from the standard AWS sources,
never from hvdl's config, so no credential reaches a run folder: `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`) or `~/.aws/credentials` (`AWS_PROFILE`);
`AWS_REGION` (or `AWS_DEFAULT_REGION`, else us-east-1); `AWS_ENDPOINT_URL` (or
`AWS_ENDPOINT_URL_S3`) for a non-AWS server, whose scheme (http or https) is passed on, since
pyarrow would otherwise assume https. With an endpoint given, the EC2 instance-metadata lookup
is turned off (`AWS_EC2_METADATA_DISABLED`), which off AWS would stall start-up; connections time
out in seconds and are retried twice, so an unreachable server is an error, not a hang.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from hvdl.errors import BadInput

SCHEME = "s3://"
GLOB_CHARS = re.compile(r"[*?[]")


class StoreError(BadInput):
    """An object store that cannot be reached or read; the message names the URL and why."""


class S3Path(PurePosixPath):
    """`s3://bucket/key` as a path: parts are the bucket and the key's segments."""

    def __str__(self) -> str:
        return SCHEME + super().__str__()

    def __repr__(self) -> str:
        return f"S3Path({str(self)!r})"

    def __fspath__(self) -> str:  # not a local file: a reader must go through this module
        raise TypeError(f"{self} is an object in S3, not a local file")

    @property
    def bucket_key(self) -> str:
        return super().__str__()

    def stat(self) -> Any:
        info = file_info(self)
        return _stat(info.size or 0, info.mtime_ns or 0)

    def is_file(self) -> bool:
        from pyarrow import fs

        return file_info(self).type == fs.FileType.File

    def exists(self) -> bool:
        from pyarrow import fs

        return file_info(self).type != fs.FileType.NotFound

    def resolve(self) -> S3Path:
        return self


def _stat(size: int, mtime_ns: int) -> os.stat_result:
    seconds = mtime_ns // 10**9
    return os.stat_result((0o100444, 0, 0, 1, 0, 0, size, seconds, seconds, seconds,
                           seconds, seconds, seconds, mtime_ns, mtime_ns, mtime_ns))


def is_url(path: str | os.PathLike | S3Path) -> bool:
    return isinstance(path, S3Path) or (isinstance(path, str) and path.startswith(SCHEME))


def s3_path(url: str) -> S3Path:
    """`url` as an S3Path; StoreError for one with credentials in it or no bucket."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise StoreError(f"{redact(url)}: credentials in the URL are refused (they would be "
                         "logged); allowed: s3://bucket/key with AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY in the environment or ~/.aws/credentials")
    if not parts.netloc:
        raise StoreError(f"{url}: no bucket; allowed: s3://bucket/key")
    return S3Path(parts.netloc + parts.path)


def redact(url: str) -> str:
    """`url` without the user:password part."""
    parts = urlsplit(url)
    return url.replace(f"{parts.username or ''}:{parts.password or ''}@", "") \
        if parts.password is not None else url


# --- the client ------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def filesystem() -> Any:
    """pyarrow's S3 file system, set up from the standard AWS variables and files."""
    from pyarrow import fs

    options: dict[str, Any] = {
        "region": (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                   or "us-east-1"),
        "connect_timeout": 3.0, "request_timeout": 30.0,
        "retry_strategy": fs.AwsStandardS3RetryStrategy(max_attempts=3),
    }
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(endpoint_override=parts.netloc, scheme=parts.scheme or "https")
        os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    try:
        return fs.S3FileSystem(**options)
    except Exception as err:  # pyarrow raises ArrowInvalid and OSError for bad settings
        raise StoreError(f"S3 settings: {one_line(err)}; allowed: AWS_REGION, AWS_ENDPOINT_URL "
                         "(http://host:port) and credentials as the AWS tools read them") from None


def one_line(err: BaseException) -> str:
    """An Arrow/AWS error in one line, without the SDK's detail lines."""
    text = " ".join(str(err).split())
    return text[:300]


def failure(url: Any, err: BaseException) -> StoreError:
    """The StoreError for an S3 call that failed: what went wrong, in the user's terms."""
    text = one_line(err)
    if "ACCESS_DENIED" in text or "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text \
            or "403" in text:
        return StoreError(f"{url}: access denied by the object store ({text}); allowed: "
                          "credentials that may read it, from AWS_ACCESS_KEY_ID and "
                          "AWS_SECRET_ACCESS_KEY or ~/.aws/credentials")
    if "NoSuchBucket" in text or "NO_SUCH_BUCKET" in text or "bucket does not exist" in text:
        return StoreError(f"{url}: no such bucket; allowed: an existing bucket")
    if "curlCode" in text or "connect" in text.lower() or "resolve" in text.lower() \
            or "NETWORK_CONNECTION" in text:
        return StoreError(f"{url}: the object store cannot be reached ({text}); allowed: a "
                          "server that answers at AWS_ENDPOINT_URL (or AWS's)")
    return StoreError(f"{url}: the object store refused the request ({text})")


def file_info(path: S3Path) -> Any:
    try:
        return filesystem().get_file_info(path.bucket_key)
    except OSError as err:
        raise failure(path, err) from None


# --- listing -------------------------------------------------------------------------------

def expand_url(url: str, key: str = "data.path") -> list[S3Path]:
    """The objects `url` names: one object, every object under a prefix, or a glob's matches
    (`*` within a segment, `**` across them), sorted; [] when none."""
    from pyarrow import fs

    root = s3_path(url.rstrip("/") if not GLOB_CHARS.search(url) else url)
    text = root.bucket_key
    if not GLOB_CHARS.search(text):
        info = file_info(root)
        if info.type == fs.FileType.File:
            return [root]
        return listing(root, text, recursive=True)
    fixed = text[:GLOB_CHARS.search(text).start()].rpartition("/")[0]
    pattern = re.compile(translate(text))
    base = S3Path(fixed)
    return [p for p in listing(base, fixed, recursive="**" in text or "/" in text[len(fixed) + 1:])
            if pattern.fullmatch(p.bucket_key)]


def listing(base: S3Path, prefix: str, *, recursive: bool) -> list[S3Path]:
    from pyarrow import fs

    try:
        found = filesystem().get_file_info(fs.FileSelector(prefix, recursive=recursive,
                                                           allow_not_found=True))
    except OSError as err:
        raise failure(base, err) from None
    return sorted(S3Path(i.path) for i in found if i.type == fs.FileType.File)


def translate(pattern: str) -> str:
    """A glob as a regular expression over keys: `**/` any folders, `*` and `?` within one."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1:]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


# --- writing -------------------------------------------------------------------------------

def path_of(text: str | os.PathLike) -> Path | S3Path | str:
    """A command line's path: an S3Path for s3://..., a database URL as it is, else a local
    Path."""
    if isinstance(text, str) and text.startswith(("postgresql://", "postgres://")):
        return text
    return s3_path(text) if is_url(text) else Path(text)


def staging(target: S3Path) -> Path:
    """The local file an object is written to before it is uploaded whole."""
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / "hvdl-upload"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{os.getpid()}-{target.bucket_key.replace('/', '_')}.part"


def upload(local: Path, target: S3Path) -> None:
    """Copy a finished local file to `target` (a multipart upload for a large one)."""
    import shutil

    try:
        with open(local, "rb") as src, filesystem().open_output_stream(
                target.bucket_key, compression=None) as dst:
            shutil.copyfileobj(src, dst, length=8 * 2**20)
    except OSError as err:
        raise failure(target, err) from None


def empty(prefix: S3Path) -> bool:
    """Whether no object lies at or under `prefix`."""
    from pyarrow import fs

    if file_info(prefix).type == fs.FileType.File:
        return False
    return not listing(prefix, prefix.bucket_key, recursive=True)
