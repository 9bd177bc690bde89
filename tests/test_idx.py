"""Tests for the IDX reader and writer and the MNIST loader (hvdl/data/formats/idx.py and
mnist.py)."""

from __future__ import annotations

import gzip
import re
import time
from pathlib import Path

import numpy as np
import pytest

from hvdl.data.formats.base import DataError
from hvdl.data.formats.idx import IdxError, read_idx, write_idx
from hvdl.data.formats.mnist import FILES, MissingDataError, load_mnist, resolve_data_dir
from hvdl.errors import BadInput

DTYPES = ["uint8", "int8", "int16", "int32", "float32", "float64"]


def make_split(folder: Path, split: str, n: int = 5, gz: bool = True) -> tuple:
    """Write a small valid MNIST split into `folder`; return its images and labels."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    image_name, label_name = (name if gz else name.removesuffix(".gz") for name in FILES[split])
    write_idx(folder / image_name, images)
    write_idx(folder / label_name, labels)
    return images, labels


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip(tmp_path: Path, dtype: str, suffix: str) -> None:
    """Test that every IDX element type survives write_idx then read_idx, raw and gzip."""
    array = (np.arange(2 * 3 * 4) - 7).astype(dtype).reshape(2, 3, 4)
    path = tmp_path / f"a.idx{suffix}"
    write_idx(path, array)
    assert path.read_bytes().startswith(b"\x1f\x8b") == (suffix == ".gz")
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.flags.writeable
    np.testing.assert_array_equal(back, array)


def test_gzip_detected_by_content_not_name(tmp_path: Path) -> None:
    """Test that a gzip file without .gz and a raw file named .gz both read correctly."""
    array = np.arange(10, dtype=np.uint8)
    write_idx(tmp_path / "raw.gz.tmp", array)
    (tmp_path / "gzipped").write_bytes(gzip.compress((tmp_path / "raw.gz.tmp").read_bytes()))
    (tmp_path / "raw.gz").write_bytes((tmp_path / "raw.gz.tmp").read_bytes())
    np.testing.assert_array_equal(read_idx(tmp_path / "gzipped"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "raw.gz"), array)


def test_header_is_big_endian(tmp_path: Path) -> None:
    """Test that the writer emits the published header layout byte for byte."""
    write_idx(tmp_path / "a", np.array([[1, 2, 3]], dtype=np.int16))
    assert (tmp_path / "a").read_bytes() == bytes.fromhex("00000b02 00000001 00000003"
                                                          "0001 0002 0003")


@pytest.mark.parametrize("cut, message", [
    (-1, "truncated or padded: 75 bytes (decompressed, with the header), the header's 3×4×5 "
         "uint8 elements need 76; allowed: a complete IDX file"),
    (10, "IDX header declares 3 dimensions (16 bytes) but the file holds only 10 bytes"),
    (2, "2 bytes is too short for the 4-byte IDX magic number"),
])
def test_truncated(tmp_path: Path, cut: int, message: str) -> None:
    """Test that a truncated file raises IdxError naming the file and the exact shortfall."""
    path = tmp_path / "images.gz"
    write_idx(path, np.zeros((3, 4, 5), dtype=np.uint8))
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:cut]))
    with pytest.raises(IdxError) as info:
        read_idx(path)
    assert str(info.value).startswith(f"{path}: ") and str(info.value).endswith(message)
    assert "\n" not in str(info.value)


def test_too_long(tmp_path: Path) -> None:
    """Test that trailing bytes after the payload are an error, not silently ignored."""
    path = tmp_path / "labels"
    write_idx(path, np.zeros(4, dtype=np.int32))
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(IdxError, match=r"labels: truncated or padded: 25 bytes \(with the "
                                       r"header\), the header's 4 int32 elements need 24"):
        read_idx(path)


@pytest.mark.parametrize("header, message", [(b"\x08\x08\x08\x01", "bad IDX magic number"),
                                             (b"\x00\x00\x0a\x01", "unknown IDX type code 0x0A"),
                                             (b"\x00\x00\x08\x00", "declares 0 dimensions")])
def test_wrong_magic(tmp_path: Path, header: bytes, message: str) -> None:
    """Test that a bad magic number, type code or zero dimension count is an IdxError."""
    path = tmp_path / "bad"
    path.write_bytes(header + b"\x00\x00\x00\x01\x00")
    with pytest.raises(IdxError, match=message):
        read_idx(path)


def test_corrupt_gzip(tmp_path: Path) -> None:
    """Test that a damaged gzip stream raises a one-line DataError naming the file."""
    path = tmp_path / "x.gz"
    write_idx(path, np.arange(1000, dtype=np.uint8))
    data = bytearray(path.read_bytes())
    data[20:30] = b"\xff" * 10
    path.write_bytes(bytes(data[:-4]))
    with pytest.raises(DataError, match="^" + re.escape(f"{path}: corrupt or truncated gzip data")):
        read_idx(path)


def test_wrong_dimension_count(tmp_path: Path) -> None:
    """Test that read_idx(ndim=...) and load_mnist reject images that are not 3-d."""
    make_split(tmp_path, "test")
    image_path = tmp_path / FILES["test"][0]
    write_idx(image_path, np.zeros((5, 784), dtype=np.uint8))
    expected = f"{image_path}: expected 3 dimensions, found 2 (5×784)"
    with pytest.raises(IdxError, match="^" + re.escape(expected) + "$"):
        read_idx(image_path, ndim=3)
    with pytest.raises(IdxError, match=r"images are 2-d \(5×784\), expected N×28×28"):
        load_mnist(tmp_path, "test")


def test_load_small_split(tmp_path: Path) -> None:
    """Test that load_mnist returns what was written, for .gz and uncompressed names."""
    images, labels = make_split(tmp_path, "train", n=7, gz=False)
    got_images, got_labels = load_mnist(tmp_path, "train")
    assert got_images.shape == (7, 28, 28) and got_labels.shape == (7,)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_count_mismatch(tmp_path: Path) -> None:
    """Test that images and labels of different lengths raise IdxError naming both files."""
    make_split(tmp_path, "train", n=5)
    write_idx(tmp_path / FILES["train"][1], np.zeros(4, dtype=np.uint8))
    with pytest.raises(IdxError) as info:
        load_mnist(tmp_path, "train")
    names = [str(tmp_path / name) for name in FILES["train"]]
    assert str(info.value) == f"{names[0]} and {names[1]}: 5 images but 4 labels"


def test_labels_out_of_range(tmp_path: Path) -> None:
    """Test that a label of 10 or more raises IdxError giving its value and index."""
    make_split(tmp_path, "test", n=5)
    write_idx(tmp_path / FILES["test"][1], np.array([0, 9, 10, 3, 200], dtype=np.uint8))
    with pytest.raises(IdxError, match=r"2 labels outside 0\.\.9, the first is 10 at index 2"):
        load_mnist(tmp_path, "test")


def test_wrong_element_type(tmp_path: Path) -> None:
    """Test that float images are rejected: MNIST images are uint8."""
    make_split(tmp_path, "test", n=3)
    write_idx(tmp_path / FILES["test"][0], np.zeros((3, 28, 28), dtype=np.float32))
    with pytest.raises(IdxError, match="images are float32, expected uint8"):
        load_mnist(tmp_path, "test")


def test_missing_files(tmp_path: Path) -> None:
    """Test that a missing file names itself, its folder and how to fetch it, on one line."""
    with pytest.raises(MissingDataError) as info:
        load_mnist(tmp_path, "train")
    message = str(info.value)
    assert message.startswith(f"MNIST file train-images-idx3-ubyte.gz is missing from {tmp_path}")
    assert f"run `hvdl fetch mnist --data-dir {tmp_path}`" in message
    assert "set HVDL_DATA to a folder holding the four MNIST files" in message
    assert "\n" not in message and isinstance(info.value, BadInput)


def test_mnist_subfolder_and_split_name(tmp_path: Path) -> None:
    """Test that files in data_dir/mnist are found and an unknown split is a ValueError."""
    (tmp_path / "mnist").mkdir()
    make_split(tmp_path / "mnist", "test", n=2)
    assert load_mnist(tmp_path, "test")[0].shape == (2, 28, 28)
    with pytest.raises(ValueError, match="unknown MNIST split 'val'"):
        load_mnist(tmp_path, "val")


def test_resolve_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Test that the data folder comes from the argument, then $HVDL_DATA, then data/."""
    monkeypatch.delenv("HVDL_DATA", raising=False)
    assert resolve_data_dir() == Path(__file__).resolve().parents[1] / "data"
    monkeypatch.setenv("HVDL_DATA", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    assert resolve_data_dir("elsewhere") == Path("elsewhere")


# Published class counts of MNIST: digits 0..9 in the training and test sets.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.parametrize("split, counts", [("train", TRAIN_COUNTS), ("test", TEST_COUNTS)])
def test_vendored_mnist(monkeypatch: pytest.MonkeyPatch, split: str, counts: list) -> None:
    """Test that the vendored data/mnist loads fast with the published shapes and class counts."""
    monkeypatch.delenv("HVDL_DATA", raising=False)
    start = time.perf_counter()
    images, labels = load_mnist(resolve_data_dir(), split)
    elapsed = time.perf_counter() - start
    assert images.shape == (sum(counts), 28, 28) and images.dtype == np.uint8
    assert labels.shape == (sum(counts),) and labels.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == counts
    assert images.max() == 255 and images.min() == 0
    assert elapsed < 3.0, f"load_mnist({split!r}) took {elapsed:.2f} s"  # ~0.25 s unloaded
