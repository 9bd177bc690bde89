"""Each rank reads only its part: bytes read while 4 real ranks load their shards of a few-MB file
in every format, measured by the kernel (`rchar` of /proc/self/io: every read() and pread(),
page-cache hits included), and the memory a held shard takes against `data.budget_mb`.

One mpirun loads all the datasets in turn; this file is also the worker it runs:

    mpirun -np 4 python tests/test_locality.py SPEC.json OUT_DIR

Every reader of these formats reads through read()/pread() (NPY by pread of its rows, HDF5 by
h5py, Parquet and CSV by pyarrow and Python file objects, images by Pillow), none through a memory
map, whose reads rchar would not see.
"""

import json
import sys
from pathlib import Path

import pytest

RANKS = 4
SLACK = 256 * 2**10  # headers, a Parquet footer, the first image (every rank opens it), /proc
LINE_SLACK = 8 * 2**10  # per CSV split read: one buffered read past each end to find line starts
ROWS, FEATURES = 32768, 32  # 4 MiB of float32 features: 256 chunks of 128 rows
IMAGES = 1024


def rchar() -> int:
    with open("/proc/self/io") as f:
        return int(f.readline().split()[1])


def worker(spec_path: str, out_dir: str) -> int:
    """Load each dataset of SPEC as training does; write what each load read, per rank."""
    import numpy  # noqa: F401  (everything a load imports lazily is imported first: a module's
    import numpy.random  # noqa: F401  file read during a load would count as data read)
    import psutil  # noqa: F401
    import pyarrow
    import pyarrow.compute  # noqa: F401
    import pyarrow.csv  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    from PIL import Image

    from hvdl import config as configlib
    from hvdl import dist, host
    from hvdl.data import dataset, plan
    from hvdl.data.formats import arrays, delimited, images, parquet  # noqa: F401
    from hvdl.data.settings import Settings

    Image.init()
    host.rss_mb()
    # pyarrow imports pandas, where it is installed, at its first conversion to NumPy
    pyarrow.array([0.0]).to_numpy(zero_copy_only=False)
    counted = {}

    def count_records(source, sharing):  # the CSV's first pass, measured apart
        before = rchar()
        plan.count_records(source, sharing)
        counted.update(bytes=rchar() - before, source=source)

    dataset.count_records = count_records
    ctx = dist.init(threads=1)
    found = {}
    for name, options in json.loads(Path(spec_path).read_text()).items():
        config = configlib.load("rbm_mnist", ["--data.scale", "none", "--layers", "0,4",
                                              *options])
        counted.clear()
        dist.barrier()
        before = rchar()
        data = dataset.load(Settings.of(config), ctx, labels=True)
        read = rchar() - before
        shard, source = data.train, counted["source"]
        mine = data.info["shards"][ctx.rank]["pieces"]
        touched = []  # the CSV splits that hold this rank's rows: (bytes) each
        for i, (file, begin, end) in enumerate(source.splits):
            lo, hi = source.first_row[i], source.first_row[i] + source.counts[i][0]
            if any(f == file and a < hi and b > lo for f, a, b in mine):
                touched.append(end - begin)
        found[name] = {
            "read": read, "counting": counted["bytes"], "touched": touched,
            "splits": len(source.splits), "rows": len(shard),
            "held": shard.held, "features": data.features, "budget_mb": data.info["budget_mb"],
            "resident": shard.x.nbytes + shard.y.nbytes if shard.held else 0}
    (Path(out_dir) / f"rank{ctx.rank}.json").write_text(json.dumps(found))
    dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(worker(*sys.argv[1:]))


import numpy as np  # noqa: E402  (the worker above imports only what it measures around)

from procs import check_job  # noqa: E402

pytestmark = pytest.mark.slow

SHARE_MB = ROWS * FEATURES * 4 / RANKS / 2**20  # a rank's shard as held: float32 features


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """The same random rows as NPY, HDF5, Parquet (row groups of a chunk, as `hvdl data convert`
    writes), a CSV of long numbers, and 48×48 PNG images; {name: (options, bytes on disk)}."""
    import h5py
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    t = tmp_path_factory.mktemp("locality")
    rng = np.random.default_rng(0)
    x = rng.random((ROWS, FEATURES), dtype=np.float32)
    y = rng.integers(0, 3, ROWS)
    np.save(t / "x.npy", x)
    np.save(t / "y.npy", y)
    with h5py.File(t / "d.h5", "w") as f:
        f["x"], f["y"] = x, y
    pq.write_table(pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)),
                                                                    FEATURES), "y": y}),
                   t / "d.parquet", row_group_size=ROWS // 256)
    # CSV: splits of data.chunk_mb bytes (16 KiB) much finer than a chunk's text (~20 KiB of
    # 17-digit numbers), so the splits holding a rank's rows are well under the whole file
    rows = 16384
    (t / "d.csv").write_text("".join(
        [",".join(f"f{j}" for j in range(16)) + ",y\n"] +
        [",".join(f"{v:.17f}" for v in r) + f",{c}\n"
         for r, c in zip(x[:rows, :16].astype(np.float64).tolist(), y[:rows].tolist())]))
    pictures = rng.integers(0, 256, (IMAGES, 48, 48), dtype=np.uint8)  # ~2.4 KiB each as PNG
    for i, picture in enumerate(pictures):
        (t / "img" / str(y[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture).save(t / "img" / str(y[i]) / f"{i:04d}.png")
    budget = ["--data.budget_mb", str(1.1 * SHARE_MB)]  # the shard fits, the whole file not
    npy = ["--data.path", str(t / "x.npy"), "--data.label", str(t / "y.npy")]
    return {
        "npy": ([*npy, *budget], (t / "x.npy").stat().st_size + (t / "y.npy").stat().st_size),
        "npy over budget": ([*npy, "--data.budget_mb", str(0.9 * SHARE_MB)], None),
        "hdf5": (["--data.path", str(t / "d.h5"), "--data.features", "x", "--data.label", "y",
                  *budget], (t / "d.h5").stat().st_size),
        "parquet": (["--data.path", str(t / "d.parquet"), "--data.label", "y", *budget],
                    (t / "d.parquet").stat().st_size),
        "csv": (["--data.path", str(t / "d.csv"), "--data.label", "y", "--data.chunk_mb",
                 str(16 / 2**10)], (t / "d.csv").stat().st_size),
        "images": (["--data.path", str(t / "img"), "--data.label", "1"],
                   sum(p.stat().st_size for p in (t / "img").rglob("*.png"))),
    }


@pytest.fixture(scope="module")
def loads(datasets, tmp_path_factory):
    """Every rank's measurements of every load: {name: [rank 0's, ..., rank 3's]}."""
    t = tmp_path_factory.mktemp("locality-run")
    (t / "spec.json").write_text(json.dumps({k: opts for k, (opts, _) in datasets.items()}))
    check_job(RANKS, [str(Path(__file__)), str(t / "spec.json"), str(t)], "mpirun",
              timeout=300)
    ranks = [json.loads((t / f"rank{r}.json").read_text()) for r in range(RANKS)]
    return {name: [r[name] for r in ranks] for name in datasets}


@pytest.mark.parametrize("name", ["npy", "hdf5", "parquet", "images"])
def test_each_rank_reads_about_its_quarter_of_the_file(datasets, loads, name):
    """Test that each of 4 ranks loading its shard reads at most 1.2 × a quarter of the file (plus
    header slack), and a quarter of the rows: a rank that read the whole file would not pass."""
    size = datasets[name][1]
    bound = 1.2 * size / RANKS + SLACK
    assert bound < 0.5 * size  # the whole file is far over it
    rows = ROWS if name != "images" else IMAGES
    for rank, found in enumerate(loads[name]):
        assert found["read"] <= bound, (name, rank, found["read"], size)
        assert found["read"] >= 0.9 * size / RANKS, (name, rank, found["read"], size)
        assert abs(found["rows"] - rows / RANKS) <= 1, (name, rank)


def test_csv_ranks_count_a_quarter_and_read_only_the_splits_holding_their_rows(datasets, loads):
    """Test that each of 4 ranks counts the records of a quarter of a CSV's splits and then reads
    only the splits that hold its rows (each split plus a buffered read at its ends to find line
    starts), well under the whole file."""
    size = datasets["csv"][1]
    for rank, found in enumerate(loads["csv"]):
        counting, reading = found["counting"], found["read"] - found["counting"]
        assert counting <= 1.2 * size / RANKS + LINE_SLACK * found["splits"] / RANKS + SLACK, \
            (rank, counting, size)
        touched = found["touched"]
        bound = 1.2 * sum(touched) + LINE_SLACK * len(touched) + SLACK
        assert bound < 0.75 * size, (rank, len(touched), found["splits"])  # a whole read fails
        assert reading <= bound, (rank, reading, sum(touched), size)
        assert abs(found["rows"] - 16384 / RANKS) <= 1, rank


def test_a_held_shard_is_its_rows_within_the_budget_and_a_larger_one_is_streamed(datasets,
                                                                                  loads):
    """Test the README's memory rule at 4 ranks: a shard within data.budget_mb is held, and holds
    its quarter of the rows and nothing more (float32 features and class indices); one over the
    budget is streamed and holds no rows."""
    for name in ("npy", "hdf5", "parquet", "csv", "images"):
        for rank, found in enumerate(loads[name]):
            assert found["held"], (name, rank)
            data = found["rows"] * (found["features"] * 4 + 8)
            assert found["resident"] == data, (name, rank, found["resident"], data)
            assert found["rows"] * found["features"] * 4 <= found["budget_mb"] * 2**20
    for rank, found in enumerate(loads["npy over budget"]):
        assert found["rows"] * found["features"] * 4 > found["budget_mb"] * 2**20
        assert not found["held"] and found["resident"] == 0, rank
        assert found["read"] <= 1.2 * datasets["npy"][1] / RANKS + SLACK, rank
