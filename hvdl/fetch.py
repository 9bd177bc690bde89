"""Download a dataset's files from public mirrors, checking each MD5 sum.

    python -m hvdl.fetch mnist                          # into data/mnist/ (or $HVDL_DATA)
    python -m hvdl.fetch mnist --data-dir /scratch/mnist --force
    python -m hvdl.fetch mnist --mirror http://127.0.0.1:8000/mnist/   # a local copy

Mirrors are tried in order for every file. A download goes to a temporary file in the target
folder, is fsynced and checked against its MD5, and only then renamed over the final name, so an
interrupted or corrupt download never leaves a partial file and never touches a good one. Files
already present with the right MD5 are skipped unless --force. Exit status 0 on success, 2 with
a one-line message when a file cannot be fetched from any mirror or the dataset is unknown.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from tqdm import tqdm

from hvdl.data.formats import mnist
from hvdl.errors import ArgumentParser

# The standard MNIST mirrors, in the order torchvision tries them.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
DATASETS = ("mnist",)
CHUNK = 1 << 20  # bytes read per network call


class FetchError(RuntimeError):
    """A file that no mirror could serve with the right MD5; the message is one line."""


def file_md5(path: Path) -> str:
    """Hex MD5 digest of the file at `path`."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, timeout: float) -> str:
    """Stream `url` into `dest` (fsynced) and return the MD5 of what was written."""
    label = url.rsplit("/", 1)[-1]
    digest, size = hashlib.md5(), 0
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as f:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=label,
                  leave=False, disable=None) as bar:  # disable=None: no bar when not a tty
            for chunk in iter(lambda: response.read(CHUNK), b""):
                f.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                bar.update(len(chunk))
        if total is not None and size != total:  # urllib returns a cut-off body silently
            raise ConnectionError(f"transfer cut off after {size} of {total} bytes")
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest()


def describe(exc: BaseException) -> str:
    """A short one-line account of a download failure."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    return " ".join((str(exc) or type(exc).__name__).split())


def fetch_from(url: str, final: Path, md5: str, timeout: float) -> str:
    """Download `url` to `final` if its MD5 is `md5`; return "" on success, else why not.

    The temporary file is removed on every path that does not rename it to `final`.
    """
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(name)
    try:
        got = download(url, tmp, timeout)
        if got != md5:
            return f"{url}: md5 {got}"
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, final)
        return ""
    except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError is an OSError
        return f"{url}: {describe(exc)}"
    finally:
        tmp.unlink(missing_ok=True)


def fetch_file(name: str, folder: Path, mirrors: Sequence[str], md5: str,
               timeout: float) -> None:
    """Fetch file `name` into `folder` from the first mirror that serves it with `md5`."""
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + name
        failure = fetch_from(url, folder / name, md5, timeout)
        if not failure:
            print(f"fetched {name} from {url}", file=sys.stderr)
            return
        failures.append(failure)
    raise FetchError(f"{folder / name}: no mirror served it with md5 {md5} "
                     f"({'; '.join(failures)})")


def fetch_files(folder: Path, md5s: Mapping[str, str], mirrors: Sequence[str] = MIRRORS,
                force: bool = False, timeout: float = 60.0) -> list[str]:
    """Make `folder` hold every file of `md5s` with its MD5; return the names downloaded."""
    folder.mkdir(parents=True, exist_ok=True)
    fetched = []
    for name, md5 in md5s.items():
        path = folder / name
        if not force and path.is_file() and file_md5(path) == md5:
            print(f"{name} already present with md5 {md5}", file=sys.stderr)
            continue
        fetch_file(name, folder, mirrors, md5, timeout)
        fetched.append(name)
    sync_dir(folder)
    return fetched


def sync_dir(folder: Path) -> None:
    """fsync `folder` so that the renames in it survive a crash (a no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line arguments of `hvdl fetch`."""
    parser = ArgumentParser(prog="hvdl fetch", description=__doc__.split("\n")[0])
    parser.add_argument("dataset", help=f"dataset to fetch: {', '.join(DATASETS)}")
    parser.add_argument("--data-dir", default="",
                        help="target folder (default: $HVDL_DATA, else the project's data/; "
                             "its mnist/ subfolder when that exists)")
    parser.add_argument("--mirror", action="append", default=None, metavar="URL",
                        help="mirror base URL, repeatable, tried in order (default: the "
                             "public MNIST mirrors)")
    parser.add_argument("--force", action="store_true",
                        help="download even files already present with the right md5")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for a mirror to answer (default: 60)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Fetch a dataset; return 0 on success, 2 with a one-line message on failure."""
    args = parse_args(argv)
    if args.dataset not in DATASETS:
        print(f"hvdl fetch: unknown dataset {args.dataset!r} (allowed: {', '.join(DATASETS)})",
              file=sys.stderr)
        return 2
    folder = mnist.mnist_dir(mnist.resolve_data_dir(args.data_dir))
    try:
        fetched = fetch_files(folder, mnist.MD5, args.mirror or MIRRORS, args.force,
                              args.timeout)
    except (FetchError, OSError) as exc:
        print("hvdl fetch: " + " ".join(str(exc).split()), file=sys.stderr)  # one line
        return 2
    print(f"{args.dataset}: {len(fetched)} files downloaded, {len(mnist.MD5) - len(fetched)} "
          f"already present, in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
