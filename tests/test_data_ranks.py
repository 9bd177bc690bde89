"""The data layer with real ranks: the chunk rule for every format on 1 to 4 ranks, streaming,
one training step on user data equal on 1 and 2 ranks, and MNIST in five formats training to
the same weights."""

import json

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from hvdl import config as configlib
from hvdl.data import chunks
from hvdl.data.convert import main as tool
from hvdl.data.formats import idx
from hvdl.data.formats.mnist import load_mnist, resolve_data_dir
from hvdl.trainers.cnn import build
from procs import ROOT, check_job, run_job, train_here

pytestmark = pytest.mark.slow

ROWS = 103
CSV_CLASSES = [f'{n}, said "{n}"' for n in ("ant", "bee", "cat")]  # the quoted CSV labels read
CHUNK = ["--data.chunk_mb", str(8 * 16 / 2**20), "--data.buffer_mb", str(3 * 16 * 8 / 2**20),
         "--batch_size", "5"]  # chunks of 8 rows of 4 features, windows of 3 chunks


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """The same 103 rows (feature 0: the row id) in every format, and the options for each."""
    t = tmp_path_factory.mktemp("formats")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 250, (ROWS, 4)).astype(np.uint8)
    x[:, 0] = np.arange(ROWS)
    y = rng.integers(0, 3, ROWS)
    names = np.array(["ant", "bee", "cat"])[y]
    np.save(t / "x.npy", x.astype(np.float32))
    np.save(t / "y.npy", y)
    idx.write_idx(t / "x-idx2-ubyte", x)
    idx.write_idx(t / "y-idx1-ubyte.gz", y.astype(np.uint8))
    with h5py.File(t / "d.h5", "w") as f:
        f["x"], f["y"] = x, y
    (t / "d.csv").write_bytes(("id,b,c,d,cls\r\n" + "".join(  # quoted labels, CRLF endings
        f'{a},{b},{c},{d},"{n}, said ""{n}"""\r\n' for (a, b, c, d), n in zip(x.tolist(), names)
    )).encode())
    pq.write_table(pa.table({"id": x[:, 0], "b": x[:, 1], "c": x[:, 2], "d": x[:, 3],
                             "cls": names}), t / "d.parquet", row_group_size=7)
    for i in range(ROWS):
        (t / "img" / names[i]).mkdir(parents=True, exist_ok=True)
        picture = np.full((4, 4), 9, dtype=np.uint8)
        picture[0, 0] = i
        Image.fromarray(picture).save(t / "img" / names[i] / f"{i:03d}.png")
    npy = ["--data.path", str(t / "x.npy"), "--data.label", str(t / "y.npy"), *CHUNK]
    return {
        "npy": npy,
        "npy-stream": [*npy, "--data.memory", "stream"],
        "idx": ["--data.path", str(t / "x-idx2-ubyte"), "--data.label",
                str(t / "y-idx1-ubyte.gz"), *CHUNK],
        "hdf5": ["--data.path", str(t / "d.h5"), "--data.features", "x", "--data.label", "y",
                 *CHUNK],
        "csv": ["--data.path", str(t / "d.csv"), "--data.label", "cls", *CHUNK],
        "parquet": ["--data.path", str(t / "d.parquet"), "--data.label", "cls", *CHUNK],
        "images": ["--data.path", str(t / "img"), "--data.label", "1", *CHUNK],
        "held-out": [*npy, "--data.test_fraction", "0.25"],
    }


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_every_format_is_dealt_disjoint_covering_shards_with_equal_steps(tmp_path, datasets,
                                                                         size):
    """Test that for each format, N real ranks hold disjoint shards covering the data, differing
    by at most a row, and take the same steps; streaming deals and orders as holding does."""
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(datasets))
    check_job(size, [str(ROOT / "tests" / "jobs" / "data_shards.py"), str(spec),
                     str(tmp_path / "out")], "mpirun", timeout=300)
    found = {name: [json.loads((tmp_path / "out" / f"{name}-rank{r}.json").read_text())
                    for r in range(size)] for name in datasets}
    for name, ranks in found.items():
        train = [r["train"] for r in ranks]
        test = sorted(i for r in ranks for i in r["test"])
        together = sorted(i for ids in train for i in ids)
        assert len(together) == len(set(together)), name
        assert sorted(together + test) == list(range(ROWS)), name
        assert max(map(len, train)) - min(map(len, train)) <= 1, name
        assert {r["steps"] for r in ranks} == {len(together) // size // 5}, name
        assert ranks[0]["classes"] in ([0, 1, 2], ["ant", "bee", "cat"], CSV_CLASSES), name
        assert (ranks[0]["classes"] == CSV_CLASSES) == (name == "csv"), name
    assert len(test) == round(0.25 * ROWS) and not found["npy-stream"][0]["held"]
    for held, streamed in zip(found["npy"], found["npy-stream"]):
        assert held["batches"] == streamed["batches"] and held["train"] == streamed["train"]
    for name in ("idx", "hdf5", "csv", "parquet"):  # the same rows in any format, the same shards
        assert [r["train"] for r in found[name]] == [r["train"] for r in found["npy"]], name
        assert [r["labels"] for r in found[name]] == [r["labels"] for r in found["npy"]], name


def trained_weights(results, fmt, path, rows, classes, shape):
    """The final weights of the one LeNet-5 run under `results`, after checking that it read
    `path` as `fmt` with `rows` (train, test) and that every weight moved from its start."""
    (run_dir,) = [p for p in results.iterdir() if p.is_dir()]
    info = json.loads((run_dir / "data.json").read_text())
    assert (info["format"], info["path"]) == (fmt, str(path)), info
    assert info["rows"] == {"train": rows[0], "test": rows[1]}, info["rows"]
    assert info["classes"] == classes and info["shape"] == list(shape), info
    meta = json.loads((run_dir / "metadata.json").read_text())["data"]
    assert (meta["format"], meta["path"], meta["rows"]) == (fmt, str(path), info["rows"])
    newest = sorted((run_dir / "checkpoints").glob("step-*.pt"))[-1]
    state = torch.load(newest, weights_only=True)
    assert (state["data"]["format"], state["data"]["path"]) == (fmt, str(path))
    torch.manual_seed(42)  # the run's seed: LeNet-5's start as training made it
    start = build(configlib.load("lenet5", []), {"classes": classes, "shape": shape}).state_dict()
    assert state["model"].keys() == start.keys()
    still = [name for name, w in start.items() if torch.equal(state["model"][name], w)]
    assert not still, f"weights that never moved from their start: {still}"
    return state["model"]


def test_a_step_on_user_data_is_the_same_on_1_and_2_ranks(tmp_path):
    """Test that SGD on one global batch of a user's CSV images (quoted string labels, CRLF) gives
    the same weights in one process and with -np 2, weights that moved, from the CSV's 96
    rows."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (96, 256))
    names = ["circle", "square", "star, 5 points"]
    classes = np.array(names)[rng.integers(0, 3, 96)]
    header = ",".join(f"p{j}" for j in range(256)) + ",shape\r\n"  # quoted labels, CRLF
    rows = "".join(",".join(map(str, p)) + f',"{c}"\r\n' for p, c in zip(pixels, classes))
    (tmp_path / "shapes.csv").write_bytes((header + rows).encode())
    weights = {}
    for np_ in (1, 2):
        out = tmp_path / f"np{np_}"
        args = ["-m", "hvdl.train", "--data.path", str(tmp_path / "shapes.csv"), "--data.label",
                "shape", "--data.shape", "1,16,16", "--data.scale", "standardize",
                "--batch_size", str(96 // np_), "--epochs", "2", "--optimizer", "sgd",
                "--momentum", "0.9", "--lr", "0.05", "--lr_scaling", "none", "--schedule",
                "constant", "--label_smoothing", "0", "--results_dir", str(out)]
        if np_ == 1:  # the reference, in this process
            train_here(args)
        else:
            check_job(2, args, "mpirun")
        weights[np_] = trained_weights(out, "csv", tmp_path / "shapes.csv", (96, 0), names,
                                       (1, 16, 16))
    for name, w1 in weights[1].items():
        torch.testing.assert_close(weights[2][name], w1, rtol=0, atol=1e-6, msg=name)
    assert weights[1]["classifier.5.weight"].shape == (3, 84)


def test_mnist_in_five_formats_trains_to_bit_identical_weights(tmp_path):
    """Test that a slice of MNIST as IDX, CSV, Parquet, NPY and HDF5 (written by `hvdl data
    convert`) trains LeNet-5 on 2 ranks (mpirun) to the same weights, bit for bit, each run
    reading its own format's 1200 + 300 rows and moving every weight."""
    images, labels = load_mnist(resolve_data_dir(), "train")
    test_images, test_labels = load_mnist(resolve_data_dir(), "test")
    files = {}
    for split, (im, lab) in {"train": (images[:1200], labels[:1200]),
                             "test": (test_images[:300], test_labels[:300])}.items():
        idx.write_idx(tmp_path / f"{split}-images-idx3-ubyte", im)
        idx.write_idx(tmp_path / f"{split}-labels-idx1-ubyte", lab)
        files[split] = (tmp_path / f"{split}-images-idx3-ubyte",
                        tmp_path / f"{split}-labels-idx1-ubyte")
    runs = {"idx": ["--data.path", str(files["train"][0]), "--data.label", str(files["train"][1]),
                    "--data.test_path", str(files["test"][0]), "--data.test_label",
                    str(files["test"][1])]}
    for fmt, suffix in (("csv", "csv"), ("parquet", "parquet"), ("npy", "npy"), ("hdf5", "h5")):
        for split in ("train", "test"):
            image_file, label_file = files[split]
            assert tool(["convert", str(image_file), str(tmp_path / f"{split}.{suffix}"),
                         "--label", str(label_file)]) == 0
        label = {"npy": "train.labels.npy", "hdf5": "labels"}.get(fmt, "label")
        runs[fmt] = ["--data.path", str(tmp_path / f"train.{suffix}"), "--data.test_path",
                     str(tmp_path / f"test.{suffix}"), "--data.shape", "1,28,28",
                     "--data.label", str(tmp_path / label) if fmt == "npy" else label]
        if fmt == "npy":
            runs[fmt] += ["--data.test_label", str(tmp_path / "test.labels.npy")]
        if fmt == "hdf5":
            runs[fmt] += ["--data.features", "features"]
    weights = {}
    for fmt, options in runs.items():
        check_job(2, ["-m", "hvdl.train", *options, "--epochs", "1", "--max_steps", "6",
                      "--results_dir", str(tmp_path / f"runs-{fmt}")], "mpirun")
        weights[fmt] = trained_weights(tmp_path / f"runs-{fmt}", fmt, options[1], (1200, 300),
                                       list(range(10)), (1, 28, 28))
    for fmt, found in weights.items():
        for name, tensor in weights["idx"].items():
            assert torch.equal(found[name], tensor), (fmt, name)


def test_bad_data_in_rank_1s_shard_is_reported_once_by_rank_0(tmp_path):
    """Test that a NaN only rank 1 reads ends both ranks with one line from rank 0, status 2
    under mpirun, and no run folder."""
    x = np.ones((100, 3), dtype=np.float32)
    order = chunks.permute(chunks.cut([100], chunks.chunk_rows(3, 4, 100)), seed=42)
    mine = chunks.deal(order, 1, 2)
    x[mine[0].start, 2] = np.nan
    np.save(tmp_path / "x.npy", x)
    proc = run_job(2, ["-m", "hvdl.train", "--model", "rbm_mnist", "--layers", "0,4",
                       "--batch_size", "10", "--data.path", str(tmp_path / "x.npy"),
                       "--results_dir", str(tmp_path / "runs")], "mpirun", timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text[-3000:]
    assert text.count("hvdl: error:") == 1, text[-3000:]
    assert f"x.npy row {mine[0].start} column 'f2'" in text
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
