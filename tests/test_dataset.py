"""One rank's shard of a dataset (`hvdl.data.dataset.load`), in one process: memory modes, the
epoch order, labels, normalisation, layers from the data, and the bad-input checks.

Ranks other than 0 are simulated in-process with the elastic controller, under which the data
layer makes no collective (each rank surveys the whole training set itself).
"""

import re
import subprocess
import sys
from types import SimpleNamespace

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from hvdl import config as configlib
from hvdl.config import ConfigError
from hvdl.config_rules import fit_data, fit_layers
from hvdl.data import dataset
from hvdl.data.record import startup_line
from hvdl.data.settings import Settings
from hvdl.dist import Context
from procs import job_env

ROWS, FEATURES = 1000, 16


def context(rank=0, size=1):
    return Context(rank=rank, size=size, local_rank=rank, local_size=size,
                   device=torch.device("cpu"), threads=1,
                   controller="single" if size == 1 else "elastic")


def npy_data(tmp_path, rows=ROWS, labels=True, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(5.0, 3.0, (rows, FEATURES)).astype(np.float32)
    x[:, 0] = np.arange(rows)  # row ids, to follow the rows
    np.save(tmp_path / "x.npy", x)
    opts = ["--data.path", str(tmp_path / "x.npy")]
    if labels:
        np.save(tmp_path / "y.npy", rng.choice(np.array(["ant", "bee", "cat"]), rows))
        opts += ["--data.label", str(tmp_path / "y.npy")]
    return x, opts


def format_data(tmp_path, fmt, rows=ROWS):
    """The same rows of 16 byte values (feature 0: the row id mod 256) with labels, stored as
    `fmt` (csv, parquet, hdf5 or images: 4x4 gray pictures); the options that read them."""
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (rows, FEATURES)).astype(np.uint8)
    x[:, 0] = np.arange(rows) % 256
    names = np.array(["ant", "bee", "cat"])[rng.integers(0, 3, rows)]
    columns = [f"f{j}" for j in range(FEATURES)]
    if fmt == "csv":
        (tmp_path / "d.csv").write_bytes((",".join(columns) + ",y\r\n" + "".join(
            ",".join(map(str, row)) + f',"{n}"\r\n' for row, n in zip(x.tolist(), names)
        )).encode())
        return ["--data.path", str(tmp_path / "d.csv"), "--data.label", "y"]
    if fmt == "parquet":
        pq.write_table(pa.table({**{c: x[:, j] for j, c in enumerate(columns)}, "y": names}),
                       tmp_path / "d.parquet", row_group_size=23)
        return ["--data.path", str(tmp_path / "d.parquet"), "--data.label", "y"]
    if fmt == "hdf5":
        with h5py.File(tmp_path / "d.h5", "w") as f:
            f["x"], f["y"] = x, rng.integers(0, 3, rows)
        return ["--data.path", str(tmp_path / "d.h5"), "--data.features", "x", "--data.label",
                "y"]
    assert fmt == "images"
    for i, (row, n) in enumerate(zip(x, names)):
        (tmp_path / "img" / n).mkdir(parents=True, exist_ok=True)
        Image.fromarray(row.reshape(4, 4)).save(tmp_path / "img" / n / f"{i:04d}.png")
    return ["--data.path", str(tmp_path / "img"), "--data.label", "1"]


def config(*opts, model="dbn_small"):
    return configlib.load(model, ["--data.scale", "none", *opts])


def settings(*opts, model="dbn_small"):
    """The data settings of config(*opts), what dataset.load reads."""
    return Settings.of(config(*opts, model=model))


def batches(shard, epoch, start=0):
    return [(x.clone(), None if y is None else y.clone()) for x, y in shard.batches(epoch, start)]


@pytest.mark.parametrize("fmt, rank, size", [("npy", 0, 1), ("npy", 1, 3), ("csv", 1, 3),
                                             ("parquet", 1, 3), ("hdf5", 1, 3), ("images", 0, 1)])
def test_streamed_and_held_shards_serve_the_same_batches(tmp_path, fmt, rank, size):
    """Test that in every format a streamed shard and a held one give the same batches in the
    same order, epoch after epoch and from a resumed batch, with windows smaller than the
    shard."""
    opts = (npy_data(tmp_path)[1] if fmt == "npy" else  # 300 images: fewer files to write
            format_data(tmp_path, fmt, rows=300 if fmt == "images" else ROWS))
    opts += ["--batch_size", "10", "--data.chunk_mb", "0.001", "--data.buffer_mb", "0.01"]
    held = dataset.load(settings(*opts, "--data.memory", "device"), context(rank, size),
                        labels=True).train
    streamed = dataset.load(settings(*opts, "--data.memory", "stream"), context(rank, size),
                            labels=True).train
    assert held.held and not streamed.held and held.steps == streamed.steps > 0
    assert len(held.order.windows(0)) > 2  # the shuffle windows are smaller than the shard
    epochs = {}
    for epoch in (0, 1, 0):
        a, b = batches(held, epoch), batches(streamed, epoch)
        assert len(a) == len(b) == held.steps
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        epochs[epoch] = torch.cat([x for x, _ in a])
    assert len(epochs[0].unique(dim=0)) == len(epochs[0])  # distinct rows, each once
    assert not torch.equal(epochs[0], epochs[1])  # the second epoch is ordered anew
    tail_a, tail_b = batches(held, 2, start=7), batches(streamed, 2, start=7)
    assert len(tail_a) == len(tail_b) == held.steps - 7
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb)
               for (xa, ya), (xb, yb) in zip(tail_a, tail_b, strict=True))
    assert all(torch.equal(xa, xb)
               for (xa, _), (xb, _) in zip(batches(held, 2)[7:], tail_a, strict=True))
    scanned = torch.cat([x for x, _ in streamed.scan(33)])
    assert torch.equal(scanned, held.x)
    streamed.close()


@pytest.mark.parametrize("scale", ["none", "standardize"])
def test_a_prefetched_stream_serves_the_held_batches_from_its_start(tmp_path, scale):
    """Test that `prefetch` starts the reader at the window a (resumed) start needs, that the
    batches from there use that reader, scaled as held ones are, and that `close` stops it."""
    _, opts = npy_data(tmp_path)
    opts += ["--batch_size", "10", "--data.chunk_mb", "0.001", "--data.buffer_mb", "0.01",
             "--data.scale", scale]
    held = dataset.load(settings(*opts, "--data.memory", "device"), context(), labels=True).train
    streamed = dataset.load(settings(*opts, "--data.memory", "stream"), context(),
                            labels=True).train
    streamed.prefetch(1, 37)
    reader = streamed.reader
    assert reader is not None and reader.thread.is_alive() and reader.next[0] == 1
    a, b = batches(held, 1, start=37), batches(streamed, 1, start=37)
    assert streamed.reader is reader  # the prefetched reader, not a new one
    assert len(a) == len(b) == held.steps - 37
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    streamed.close()
    assert streamed.reader is None and not reader.thread.is_alive()


def test_a_run_that_ends_while_its_stream_reads_ahead_exits_cleanly(tmp_path):
    """Test that a process whose stream is still reading a window when it exits ends with
    status 0: the reader is stopped before the interpreter finalises (else torch aborts)."""
    x = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.float32, (160_000, 784))
    x[:] = 0.5  # 4 windows of 128 MB: one takes a few tenths of a second to read
    del x
    script = f"""
import torch
from hvdl import config
from hvdl.data import dataset
from hvdl.data.settings import Settings
from hvdl.dist import Context
ctx = Context(rank=0, size=1, local_rank=0, local_size=1, device=torch.device("cpu"),
              threads=1, controller="single")
cfg = config.load("rbm_mnist", ["--data.path", "{tmp_path / 'x.npy'}", "--data.memory",
                                "stream", "--data.buffer_mb", "256", "--batch_size", "1000",
                                "--data.scale", "none"])
shard = dataset.load(Settings.of(cfg), ctx).train
first = len(shard.needed(0)[0].order) // 1000
for k, (x, _) in enumerate(shard.batches(0)):
    if k == first:  # the first batch of window 2: the reader has just begun window 3
        break
assert shard.reader.thread.is_alive()
"""
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=120, env=job_env())
        assert done.returncode == 0, (done.returncode, done.stderr[-2000:])


def test_an_epoch_serves_distinct_rows_and_reshuffles(tmp_path):
    """Test that an epoch's batches hold distinct rows and the next epoch orders them anew."""
    _, opts = npy_data(tmp_path)
    shard = dataset.load(settings(*opts, "--batch_size", "32"), context()).train
    first = torch.cat([x[:, 0] for x, _ in shard.batches(0)])
    again = torch.cat([x[:, 0] for x, _ in shard.batches(0)])
    other = torch.cat([x[:, 0] for x, _ in shard.batches(1)])
    assert len(first) == 31 * 32 and len(set(first.tolist())) == len(first)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_simulated_ranks_share_the_rows_out_disjointly(tmp_path):
    """Test that the shards of 3 ranks are disjoint, cover the data and take equal steps."""
    _, opts = npy_data(tmp_path)
    shards = [dataset.load(settings(*opts, "--data.chunk_mb", "0.002"), context(r, 3)).train
              for r in range(3)]
    ids = [torch.cat([x[:, 0] for x, _ in s.scan()]) for s in shards]
    together = torch.cat(ids)
    assert sorted(together.tolist()) == list(range(ROWS))
    assert {s.steps for s in shards} == {ROWS // 3 // 64}


def test_labels_map_to_one_sorted_vocabulary_and_layers_come_from_the_data(tmp_path):
    """Test that string labels become indices of the sorted classes, and 0s in layers are filled."""
    x, opts = npy_data(tmp_path)
    data = dataset.load(settings(*opts, "--layers", "0,20,0"), context(), labels=True)
    assert data.classes == ("ant", "bee", "cat")
    raw = np.load(tmp_path / "y.npy")
    order = torch.cat([x[:, 0] for x, _ in data.train.scan()]).long().numpy()
    labels = torch.cat([y for _, y in data.train.scan()]).numpy()
    np.testing.assert_array_equal(np.array(data.classes)[labels], raw[order])
    fitted = fit_layers(config(*opts, "--layers", "0,20,0"), data)
    assert fitted.layers == (FEATURES, 20, 3)
    with pytest.raises(ConfigError, match="starts with 784 inputs, the data has 16 features"):
        fit_layers(config(*opts, "--layers", "784,20,3"), data)
    with pytest.raises(ConfigError, match="ends with 10 classes, the data has 3"):
        fit_layers(config(*opts, "--layers", "16,20,10"), data)


@pytest.mark.parametrize("scale", ["none", "standardize", "minmax"])
def test_the_record_holds_the_training_values_range_and_the_start_line_says_it(tmp_path, scale):
    """Test that data.json's range is the training rows' as stored and as scaled (per feature
    shifts and divisors included), on 2 simulated ranks, and the start line names the scaling."""
    x, opts = npy_data(tmp_path, labels=False)
    opts += ["--data.test_fraction", "0.25", "--data.scale", scale]
    shards = [dataset.load(settings(*opts), context(r, 2)) for r in range(2)]
    train = torch.cat([torch.cat([b for b, _ in d.train.scan()]) for d in shards])
    ids = train[:, 0].numpy() if scale == "none" else None
    stored = x[np.sort(ids.astype(int))] if ids is not None else None
    for data in shards:
        found = data.info["range"]
        assert found["scaled"] == pytest.approx((train.min().item(), train.max().item()),
                                                rel=1e-5, abs=1e-6)
        if stored is not None:
            assert found["stored"] == (stored.min(), stored.max())
        line = startup_line(data.info, context(0, 2))
        lo, hi = found["stored"]
        assert (f"values [{lo:.4g}, {hi:.4g}], not scaled" if scale == "none" else
                f"values [{lo:.4g}, {hi:.4g}] scaled ({scale}) to") in line, line


@pytest.mark.parametrize("family, visible, span, chosen", [
    ("rbm", "auto", (0.0, 1.0), "bernoulli"),
    ("dbn", "auto", (-2.5, 3.0), "gaussian"),
    ("dbn", "gaussian", (0.0, 1.0), "gaussian"),
    ("cnn", "auto", (-2.5, 3.0), "auto"),  # no RBM: nothing to choose, nothing refused
    ("rbm", "bernoulli", (-2.5, 3.0), "rbm.visible is bernoulli (probabilities in [0, 1]), but "
                                      "the scaled training values span [-2.5, 3]"),
    ("deep_ae", "auto", (0.0, 1.5), "family deep_ae reconstructs its input with sigmoid units"),
    ("sae", "auto", (-0.1, 1.0), "family sae reconstructs its input with sigmoid units"),
    ("stacked_ae", "auto", (0.0, 2.0), "family stacked_ae reconstructs its input with sigmoid"),
])
def test_visible_units_are_chosen_from_the_scaled_range_or_refused(family, visible, span, chosen):
    """Test rbm.visible auto against the data's range, and units that cannot model the data."""
    model = {"rbm": "rbm_mnist", "dbn": "dbn_small", "cnn": "lenet5", "deep_ae": "deep_ae_mnist",
             "sae": "sae_mnist", "stacked_ae": "stacked_ae_mnist"}[family]
    given = configlib.load(model, ["--rbm.visible", visible])
    data = SimpleNamespace(features=784, classes=tuple(range(10)),
                           info={"range": {"scaled": span}})
    if " " in chosen:
        with pytest.raises(ConfigError, match=re.escape(chosen)):
            fit_data(given, data)
        return
    fitted, said = fit_data(given, data)
    assert fitted.rbm.visible == chosen
    assert (said is not None) == (visible == "auto" and family != "cnn")
    if said:
        assert said.startswith(f"rbm.visible auto: {chosen} (the scaled training values span")


@pytest.mark.parametrize("scale", ["unit", "standardize", "minmax"])
def test_scales_use_the_whole_training_set(tmp_path, scale):
    """Test that every simulated rank scales with the statistics of the whole training set."""
    x, opts = npy_data(tmp_path, labels=False)
    opts += ["--data.test_fraction", "0.2", "--data.scale", scale]
    shards = [dataset.load(settings(*opts), context(r, 2)) for r in range(2)]
    train = torch.cat([torch.cat([b for b, _ in d.train.scan()]) for d in shards]).double()
    if scale == "unit":
        ids = np.rint(train[:, 0].numpy() * 255).astype(int)
        np.testing.assert_allclose(train.numpy(), x[ids] / 255, rtol=1e-6)
        assert shards[0].info["scale"]["div"][0] == 255
    elif scale == "standardize":
        np.testing.assert_allclose(train.mean(0).numpy(), 0, atol=1e-5)
        np.testing.assert_allclose(train.std(0, unbiased=False).numpy(), 1, atol=1e-5)
    else:
        np.testing.assert_allclose(train.min(0).values.numpy(), 0, atol=1e-6)
        np.testing.assert_allclose(train.max(0).values.numpy(), 1, atol=1e-6)
    assert shards[0].info["scale"] == shards[1].info["scale"]
    test = torch.cat([torch.cat([b for b, _ in d.test.scan()]) for d in shards])
    assert len(test) == 200 and len(train) == 800


def test_image_shaped_examples_are_standardised_per_channel(tmp_path):
    """Test that (C, H, W) examples get one mean and deviation per channel."""
    rng = np.random.default_rng(2)
    x = np.stack([rng.normal(10, 2, (200, 16)), rng.normal(-3, 5, (200, 16))], axis=1)
    np.save(tmp_path / "img.npy", x.reshape(200, 2, 4, 4).astype(np.float32))
    data = dataset.load(settings("--data.path", str(tmp_path / "img.npy"), "--data.scale",
                               "standardize", model="lenet5"), context(), images=False)
    shift = np.array(data.info["scale"]["shift"]).reshape(2, 16)
    assert np.allclose(shift, shift[:, :1]) and abs(shift[0, 0] - 10) < 0.5
    assert abs(shift[1, 0] + 3) < 1


def test_a_given_record_reads_new_data_as_training_did(tmp_path):
    """Test that a checkpoint's classes and scale are applied as they are to other data."""
    x, opts = npy_data(tmp_path)
    first = dataset.load(settings(*opts, "--data.scale", "standardize"), context(), labels=True)
    x2, opts2 = npy_data(tmp_path / "..", seed=5)
    again = dataset.load(settings(*opts2, "--data.scale", "standardize"), context(), labels=True,
                         given=first.info)
    assert again.info["scale"] == first.info["scale"] and again.classes == first.classes


def test_a_small_training_subset_leaves_the_test_file_cut_by_its_own_size(tmp_path):
    """Test that train_size 100 (one row a chunk) does not cut a 5,000-row test file into 5,000
    one-row reads: the test file is cut by its own row count (at most 256 chunks)."""
    from hvdl.data.chunks import MIN_CHUNKS

    _, opts = npy_data(tmp_path, labels=False)
    np.save(tmp_path / "t.npy", np.ones((5000, FEATURES), np.float32))
    data = dataset.load(settings(*opts, "--data.test_path", str(tmp_path / "t.npy"),
                               "--train_size", "100", "--batch_size", "10"), context())
    assert len(data.train.order.piece_rows) == 100  # the training subset: one row a chunk
    assert sum(data.test.order.piece_rows) == 5000
    assert len(data.test.order.piece_rows) <= MIN_CHUNKS
