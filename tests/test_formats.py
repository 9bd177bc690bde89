"""Reading every format, in parts: NPY, IDX (raw and gzip), HDF5, CSV, Parquet, image folders;
the CSV split rule; `hvdl data convert` round trips and `hvdl data inspect`."""

import gzip

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from hvdl.data import chunks
from hvdl.data.chunks import Piece
from hvdl.data.convert import main as tool
from hvdl.data.formats import idx, open_source
from hvdl.data.formats.base import DataError, Spec
from hvdl.data.formats.files import decompress

ROWS, FEATURES = 53, 6


def table(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 200, (ROWS, FEATURES)).astype(np.float32)
    y = rng.integers(0, 4, ROWS)
    return x, y


def read_all(source, per_chunk=7):
    """Every row of `source`, read chunk by chunk in file order."""
    xs, ys = [], []
    for piece in chunks.cut(source.file_rows, per_chunk):
        x, y = source.read(piece)
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), (None if ys[0] is None else np.concatenate(ys))


def counted(source):
    if source.splits:  # a CSV: its records counted first
        source.set_counts([source.count(i) for i in range(len(source.splits))])
    return source


def write_npy(tmp_path, x, y):
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    return Spec(path=str(tmp_path / "x.npy"), label=str(tmp_path / "y.npy"))


def write_idx(tmp_path, x, y, gz=False):
    suffix = ".gz" if gz else ""
    idx.write_idx(tmp_path / f"x-idx2-ubyte{suffix}", x.astype(np.uint8))
    idx.write_idx(tmp_path / f"y-idx1-ubyte{suffix}", y.astype(np.uint8))
    return Spec(path=str(tmp_path / f"x-idx2-ubyte{suffix}"),
                label=str(tmp_path / f"y-idx1-ubyte{suffix}"))


def write_hdf5(tmp_path, x, y):
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["pixels"] = x
        f["digits"] = y
    return Spec(path=str(tmp_path / "d.h5"), label="digits")


def write_parquet(tmp_path, x, y):
    columns = {f"c{j}": x[:, j] for j in range(FEATURES)} | {"y": y}
    pq.write_table(pa.table(columns), tmp_path / "d.parquet", row_group_size=10)
    return Spec(path=str(tmp_path / "d.parquet"), label="y")


def write_csv(tmp_path, x, y):
    lines = [",".join([f"c{j}" for j in range(FEATURES)] + ["y"])]
    lines += [",".join(f"{v:g}" for v in row) + f",{label}" for row, label in zip(x, y)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    return Spec(path=str(tmp_path / "d.csv"), label="y")


def write_npy_fortran_big_endian(tmp_path, x, y):
    """Features in Fortran order (read through a memory map), labels big-endian (in one read)."""
    np.save(tmp_path / "x.npy", np.asfortranarray(x))
    np.save(tmp_path / "y.npy", y.astype(">i8"))
    return Spec(path=str(tmp_path / "x.npy"), label=str(tmp_path / "y.npy"))


WRITERS = {"npy": write_npy, "npy.fortran": write_npy_fortran_big_endian, "idx": write_idx,
           "idx.gz": lambda t, x, y: write_idx(t, x, y, True),
           "hdf5": write_hdf5, "parquet": write_parquet, "csv": write_csv}


@pytest.mark.parametrize("kind", list(WRITERS))
def test_each_format_reads_back_what_was_written_in_parts(tmp_path, kind):
    """Test that every format's reader gives the stored rows and labels, read chunk by chunk."""
    x, y = table()
    spec = WRITERS[kind](tmp_path, x, y)
    source = counted(open_source(spec, local=lambda p: decompress(p, tmp_path / "cache"),
                                 split_mb=0.0005))
    assert source.format == kind.split(".")[0] and source.rows == ROWS
    assert source.features == FEATURES and source.labelled
    got, labels = read_all(source)
    np.testing.assert_array_equal(got.astype(np.float32), x)
    np.testing.assert_array_equal(labels.astype(np.int64), y)
    source.advise(Piece(0, 11, 29))  # a hint only: what is read next is unchanged
    part, part_labels = source.read(Piece(0, 11, 29))  # a part that straddles reading units
    np.testing.assert_array_equal(part.astype(np.float32), x[11:29])
    np.testing.assert_array_equal(source.labels(Piece(0, 11, 29)).astype(np.int64), y[11:29])
    source.close()


def test_several_files_form_one_dataset_in_sorted_order(tmp_path):
    """Test that a glob's files are one dataset in sorted name order."""
    x, y = table()
    np.save(tmp_path / "b.npy", x[20:])
    np.save(tmp_path / "a.npy", x[:20])
    source = open_source(Spec(path=str(tmp_path / "*.npy")))
    assert [f.name for f in source.files] == ["a.npy", "b.npy"] and source.file_rows == [20, 33]
    np.testing.assert_array_equal(read_all(source)[0], x)


def test_csv_splits_at_line_starts_with_quoted_fields_and_crlf(tmp_path):
    """Test that CSV byte splits of a sweep of sizes, boundaries between \\r and \\n and inside
    quoted fields among them, give every record exactly once, with its own line number, quotes
    and CRLF endings included, and that their counts add up to the rows and lines."""
    rows = [(i, 0.5 * i, f'"name, {i} said ""hi"""' if i % 3 else f"plain{i}") for i in range(40)]
    text = ("id,value,label\r\n" + "".join(f"{a},{b},{c}\r\n" for a, b, c in rows)).encode()
    (tmp_path / "q.csv").write_bytes(text)
    quoted = np.cumsum([c == ord('"') for c in text]) % 2  # 1 from an opening quote on
    expected = [f'name, {i} said "hi"' if i % 3 else f"plain{i}" for i in range(40)]
    between_cr_lf = inside_quotes = 0
    for size in [*range(17, 48, 3), 100, 2**20]:  # bytes; 2**20: one split
        source = counted(open_source(Spec(path=str(tmp_path / "q.csv"), label="label"),
                                     split_mb=size / 2**20))
        begins = [begin for _, begin, _ in source.splits[1:]]
        between_cr_lf += sum(text[b - 1:b + 1] == b"\r\n" for b in begins)
        inside_quotes += sum(bool(quoted[b - 1]) for b in begins)
        assert source.rows == 40 and sum(c[0] for c in source.counts) == 40, size
        assert sum(c[1] for c in source.counts) == 40, size  # each line end counted once
        ids, lines = [], []  # split by split: each record once, in file order, on its own line
        for i in range(len(source.splits)):
            x, _ = source.split_rows(i)
            start, data = source.split_data(i)
            found = list(source.records(i, start, data))
            assert len(x) == len(found) == source.counts[i][0], (size, i)
            assert [int(fields[0]) for _, fields in found] == x[:, 0].astype(int).tolist()
            ids += x[:, 0].astype(int).tolist()
            lines += [line for line, _ in found]
        assert ids == list(range(40)) and lines == list(range(2, 42)), size
        x, labels = read_all(source, per_chunk=6)
        np.testing.assert_array_equal(x, [[a, b] for a, b, _ in rows])
        assert labels.tolist() == expected
        assert [source.position(Piece(0, 0, 40), k) for k in (0, 17, 39)] == [
            f"{tmp_path / 'q.csv'} line {k + 2}" for k in (0, 17, 39)], size
    assert between_cr_lf > 0 and inside_quotes > 0  # the sweep hits both kinds of boundary


def test_images_folder_labels_by_folder_level(tmp_path):
    """Test that an image folder reads as (C, H, W) uint8 rows labelled by their folder."""
    rng = np.random.default_rng(1)
    pictures = {}
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            picture = rng.integers(0, 255, (14, 12), dtype=np.uint8)
            Image.fromarray(picture).save(tmp_path / cls / f"{i}.png")
            pictures[f"{cls}/{i}"] = picture
    source = open_source(Spec(path=str(tmp_path), label="1"))
    assert source.format == "images" and source.shape == (1, 14, 12) and source.rows == 6
    x, labels = read_all(source, per_chunk=4)
    assert labels.tolist() == ["cat"] * 3 + ["dog"] * 3
    np.testing.assert_array_equal(x[4].reshape(14, 12), pictures["dog/1"])


def test_images_converted_to_parquet_come_back_in_their_shape(tmp_path):
    """Test that an image folder converted to Parquet reads back as (C, H, W) rows, not flat."""
    rng = np.random.default_rng(2)
    for cls in ("a", "b"):
        (tmp_path / "photos" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (9, 7), dtype=np.uint8)).save(
                tmp_path / "photos" / cls / f"{i}.png")
    out = tmp_path / "p.parquet"
    assert tool(["convert", str(tmp_path / "photos"), str(out), "--label", "1"]) == 0
    images = open_source(Spec(path=str(tmp_path / "photos"), label="1"))
    source = open_source(Spec(path=str(out), label="label"))
    assert source.shape == images.shape == (1, 9, 7)
    np.testing.assert_array_equal(read_all(source, per_chunk=3)[0],
                                  read_all(images, per_chunk=3)[0])
    picked = open_source(Spec(path=str(out), label="label", features=("f0", "f1")))
    assert picked.shape == (2,)  # columns picked by name are flat rows


def test_inspect_shows_a_text_column_with_its_values_and_suggests_it_as_the_label(
        tmp_path, capsys):
    """Test that a CSV column of words is typed text, with its values, and named as the label."""
    (tmp_path / "s.csv").write_text("a,b,kind\n1,2,cat\n3,4,dog\n5,6.5,cat\n")
    assert tool(["inspect", str(tmp_path / "s.csv")]) == 0
    out = capsys.readouterr().out
    assert "  a                        number" in out and "  b                        number" in out
    assert "kind                     text, 2 distinct values in the first 3 rows (cat, dog)" in out
    assert "if it names each row's class, it is the label: --label kind" in out
    assert tool(["inspect", str(tmp_path / "s.csv"), "--label", "kind"]) == 0
    assert "label: kind: 2 classes" in capsys.readouterr().out
    pq.write_table(pa.table({"a": [1.0, 2.0], "kind": ["x", "y"]}), tmp_path / "s.parquet")
    with pytest.raises(DataError, match="column 'kind' holds string .text: if it names each "
                                        "row's class, make it the label, data.label 'kind'"):
        open_source(Spec(path=str(tmp_path / "s.parquet")))


def test_convert_round_trips_between_every_format(tmp_path, capsys):
    """Test that IDX converted to each format and back to NPY keeps every value and label."""
    x, y = table()
    spec = write_idx(tmp_path, x, y)
    for fmt, name, label in (("npy", "o.npy", "o.labels.npy"), ("parquet", "o.parquet", "label"),
                             ("csv", "o.csv", "label"), ("hdf5", "o.h5", "labels"),
                             ("idx", "o.idx", "o.labels.idx")):
        assert tool(["convert", spec.path, str(tmp_path / name), "--label", spec.label]) == 0
        label = str(tmp_path / label) if "." in label else label
        back = tmp_path / f"back-{fmt}.npy"
        features = ["--features", "features"] if fmt == "hdf5" else []
        assert tool(["convert", str(tmp_path / name), str(back), "--label", label,
                     *features]) == 0
        np.testing.assert_array_equal(np.load(back).reshape(ROWS, -1).astype(np.float32), x)
        np.testing.assert_array_equal(np.load(tmp_path / f"back-{fmt}.labels.npy"), y)
    assert "train on it with --data.path" in capsys.readouterr().out


def test_convert_refuses_to_overwrite_and_leaves_nothing_when_it_fails(tmp_path, capsys):
    """Test that convert keeps an existing file and leaves no partial output on bad input."""
    x, y = table()
    spec = write_csv(tmp_path, x, y)
    (tmp_path / "out.npy").write_bytes(b"precious")
    assert tool(["convert", spec.path, str(tmp_path / "out.npy")]) == 2
    assert (tmp_path / "out.npy").read_bytes() == b"precious"
    assert "exists; allowed: a new path, or --overwrite" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text((tmp_path / "d.csv").read_text() + "1,2,3,x,5,6,1\n")
    assert tool(["convert", str(bad), str(tmp_path / "new.npy")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "d.csv", "out.npy"]


def test_inspect_prints_rows_columns_classes_and_the_sharing(tmp_path, capsys):
    """Test that inspect names the format, rows, columns, classes and each rank's rows."""
    x, y = table()
    spec = write_parquet(tmp_path, x, y)
    assert tool(["inspect", spec.path, "--label", "y", "--ranks", "3", "--batch-size", "5"]) == 0
    out = capsys.readouterr().out
    assert "format: parquet" in out and f"rows: {ROWS}" in out and "c0" in out
    assert "label: y: 4 classes" in out
    counts = np.bincount(y)
    for c in range(4):
        assert f"  {c:<24} {counts[c]}" in out
    assert "rank 2: 18 rows" in out and "3 steps per epoch of 5" in out


def test_gzip_is_decompressed_once_into_the_cache(tmp_path):
    """Test that a gzip file is read through one decompressed copy, reused while unchanged."""
    x, y = table()
    write_idx(tmp_path, x, y, gz=True)
    first = decompress(tmp_path / "x-idx2-ubyte.gz", tmp_path / "cache")
    assert first.read_bytes() == gzip.decompress((tmp_path / "x-idx2-ubyte.gz").read_bytes())
    stamp = first.stat().st_mtime_ns
    assert decompress(tmp_path / "x-idx2-ubyte.gz", tmp_path / "cache") == first
    assert first.stat().st_mtime_ns == stamp


def test_a_truncated_gzip_file_is_bad_input(tmp_path):
    """Test that a gzip file cut short is a one-line DataError naming it."""
    data = gzip.compress(b"x" * 100000)
    (tmp_path / "t.csv.gz").write_bytes(data[:len(data) // 2])
    with pytest.raises(DataError, match="t.csv.gz: corrupt or truncated gzip data"):
        decompress(tmp_path / "t.csv.gz", tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir())
