"""Tests for `hvdl fetch` (hvdl.fetch) against a real HTTP server on 127.0.0.1.

The server serves small IDX files written by the tests; the MD5 table is patched to match them,
and the public mirrors are patched away so that no test can reach the network.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from hvdl import fetch
from hvdl.data.formats import mnist
from hvdl.data.formats.idx import write_idx


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; `/short/<name>` sends half of `good/<name>` under the full length."""

    requests: list[str]  # paths asked for, set per server

    def do_GET(self) -> None:
        """Record the request, then serve it."""
        self.requests.append(self.path)
        if not self.path.startswith("/short/"):
            return super().do_GET()
        data = (Path(self.directory) / "good" / self.path.split("/")[-1]).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.close_connection = True

    def log_message(self, *args) -> None:
        """Keep the test output quiet."""


def write_split_files(folder: Path, seed: int) -> None:
    """Write the four MNIST files, with 4 train and 3 test examples, into `folder`."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for split, n in (("train", 4), ("test", 3)):
        images_name, labels_name = mnist.FILES[split]
        write_idx(folder / images_name, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / labels_name, rng.integers(0, 10, n, dtype=np.uint8))


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, list, Path]]:
    """A local server (base URL, request log, served folder) with good/ and bad/ mirrors.

    good/ holds four valid files whose MD5s become mnist.MD5; bad/ is good/ with the training
    images cut in half, so their MD5 does not match.
    """
    root = tmp_path / "served"
    write_split_files(root / "good", seed=0)
    shutil.copytree(root / "good", root / "bad")
    bad = root / "bad" / mnist.FILES["train"][0]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    md5s = {name: hashlib.md5((root / "good" / name).read_bytes()).hexdigest()
            for name in mnist.MD5}
    monkeypatch.setattr(mnist, "MD5", md5s)
    monkeypatch.setattr(fetch, "MIRRORS", ())  # never the public mirrors
    handler = type("TestHandler", (Handler,), {"requests": []})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler.requests, root
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def run_fetch(target: Path, *mirrors: str, force: bool = False) -> int:
    """Run `hvdl fetch mnist` into `target` from `mirrors`; return its exit status."""
    argv = ["mnist", "--data-dir", str(target), "--timeout", "10"]
    for mirror in mirrors:
        argv += ["--mirror", mirror]
    return fetch.main(argv + ["--force"] * force)


def test_fetch_then_load(server: tuple, tmp_path: Path) -> None:
    """Test that all four files arrive, match what was served, and load as MNIST."""
    base, requests, root = server
    target = tmp_path / "data"
    assert run_fetch(target, f"{base}/good/") == 0
    assert sorted(p.name for p in target.iterdir()) == sorted(mnist.MD5)
    for name in mnist.MD5:
        assert (target / name).read_bytes() == (root / "good" / name).read_bytes()
    assert mnist.load_mnist(target, "train")[0].shape == (4, 28, 28)
    assert mnist.load_mnist(target, "test")[1].shape == (3,)
    assert sorted(requests) == sorted(f"/good/{name}" for name in mnist.MD5)


def test_second_run_downloads_nothing(server: tuple, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    """Test that files already present with the right MD5 are not requested again."""
    base, requests, _ = server
    assert run_fetch(tmp_path, f"{base}/good/") == 0
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    requests.clear()
    capsys.readouterr()
    assert run_fetch(tmp_path, f"{base}/good/") == 0
    assert requests == []
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before
    assert "0 files downloaded, 4 already present" in capsys.readouterr().out


def test_falls_back_to_next_mirror(server: tuple, tmp_path: Path) -> None:
    """Test that a mirror answering 404, bad MD5 or a cut-off transfer is skipped for the next."""
    base, requests, _ = server
    mirrors = (f"{base}/missing/", f"{base}/bad/", f"{base}/short/", f"{base}/good/")
    assert run_fetch(tmp_path, *mirrors) == 0
    name = mnist.FILES["train"][0]
    assert requests[:4] == [f"/missing/{name}", f"/bad/{name}", f"/short/{name}", f"/good/{name}"]
    assert mnist.load_mnist(tmp_path, "train")[0].shape == (4, 28, 28)
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_corrupt_download_leaves_nothing(server: tuple, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    """Test that a file no mirror serves intact exits 2, one line, with no file or temp file."""
    base, _, _ = server
    target = tmp_path / "data"
    assert run_fetch(target, f"{base}/bad/", f"{base}/short/") == 2
    assert list(target.iterdir()) == []
    err = capsys.readouterr().err.strip()
    name = mnist.FILES["train"][0]
    assert err.startswith(f"hvdl fetch: {target / name}: no mirror served it with md5 ")
    assert f"{base}/bad/{name}: md5 " in err
    assert f"{base}/short/{name}: transfer cut off after " in err
    assert "\n" not in err, err


def test_corrupt_download_keeps_good_file(server: tuple, tmp_path: Path) -> None:
    """Test that --force against a corrupt mirror leaves an existing good file untouched."""
    base, _, root = server
    shutil.copytree(root / "good", tmp_path / "data")
    good = tmp_path / "data" / mnist.FILES["train"][0]
    before = (good.read_bytes(), good.stat().st_ino, good.stat().st_mtime_ns)
    assert run_fetch(tmp_path / "data", f"{base}/bad/", force=True) == 2
    assert (good.read_bytes(), good.stat().st_ino, good.stat().st_mtime_ns) == before
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted(mnist.MD5)


def test_missing_data_hint_then_fetch(server: tuple, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that the missing-data message gives a fetch command that, when run, fixes it."""
    base, _, _ = server
    monkeypatch.setenv("HVDL_DATA", str(tmp_path))
    with pytest.raises(mnist.MissingDataError) as info:
        mnist.load_mnist(mnist.resolve_data_dir(), "test")
    message = str(info.value)
    assert f"missing from {tmp_path}: run `hvdl fetch mnist --data-dir {tmp_path}`" in message
    assert "or set HVDL_DATA to a folder holding the four MNIST files" in message
    assert fetch.main(["mnist", "--mirror", f"{base}/good/"]) == 0  # $HVDL_DATA as target
    assert mnist.load_mnist(mnist.resolve_data_dir(), "test")[0].shape == (3, 28, 28)


def test_unknown_dataset(capsys: pytest.CaptureFixture) -> None:
    """Test that an unknown dataset name exits 2 with one line naming the allowed ones."""
    assert fetch.main(["cifar10"]) == 2
    err = capsys.readouterr().err
    assert err == "hvdl fetch: unknown dataset 'cifar10' (allowed: mnist)\n"
