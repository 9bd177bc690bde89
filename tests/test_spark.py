"""hvdl inside Spark, against a real multi-process Spark: pyspark from PyPI with Java from
Debian, as local-cluster[2,2,1024] (a master and two worker JVMs, two task slots each), started
for this module and stopped after it.

`hvdl.spark.fit` trains with two ranks running as a barrier stage and ends with the weights of
the same two-rank run on the Parquet store it wrote, and deals 1, 3 and 4 ranks the shards a
run on the store is dealt; `transform` adds predictions and codes
computed on the executors; a rank's bad input fails the job with hvdl's one-line message.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cluster import cannot_start
from hvdl.errors import BadInput
from procs import check_job

pytestmark = pytest.mark.slow

ROWS, FEATURES = 240, 6


@pytest.fixture(scope="module")
def spark():
    try:
        from pyspark.sql import SparkSession
    except ImportError as err:
        cannot_start("Spark", f"pyspark is not installed ({err}); pip install '.[spark]'")
    if not shutil.which("java") and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install "
                       "-y -qq openjdk-17-jre-headless >/dev/null", shell=True, check=False,
                       timeout=900)
    if not shutil.which("java"):
        cannot_start("Spark", "no java on PATH (apt-get install openjdk-17-jre-headless)")
    os.environ["PYSPARK_PYTHON"] = sys.executable  # the executors run this environment's hvdl
    try:
        session = (SparkSession.builder.master("local-cluster[2,2,1024]")
                   .appName("hvdl-tests").config("spark.ui.enabled", "false")
                   .config("spark.driver.host", "127.0.0.1")
                   .config("spark.driver.bindAddress", "127.0.0.1")
                   .config("spark.executorEnv.HVDL_THREADS", "1").getOrCreate())
    except Exception as err:  # py4j and the JVM raise their own types
        cannot_start("Spark", f"the local cluster did not start: {err}")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def frame(spark):
    """A DataFrame of ROWS rows in 3 partitions: features a..f (0-255 values), a class label."""
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (ROWS, FEATURES)).astype(float)
    y = [["ant", "bee", "cat"][int(v)] for v in (x[:, 0] + x[:, 1]) % 3]
    names = [chr(ord("a") + j) for j in range(FEATURES)]
    rows = [(*map(float, r), label) for r, label in zip(x, y)]
    return spark.createDataFrame(rows, [*names, "kind"]).repartition(3), x, y


TRAINED = {"layers": [0, 5, 0], "batch_size": 8, "data": {"scale": "unit"},
           "rbm": {"pretrain_epochs": 1, "finetune_epochs": 2}}


@pytest.fixture(scope="module")
def trained(frame, tmp_path_factory):
    """One 2-rank fit of dbn_small on the frame, for the tests that read its model."""
    from hvdl import spark as hs

    df, _, _ = frame
    store = tmp_path_factory.mktemp("spark") / "store"
    return store, hs.fit(df, model="dbn_small", label="kind", num_workers=2, store=store,
                         **TRAINED)


def test_fit_trains_two_ranks_inside_spark_to_the_weights_of_the_same_rows_on_disk(
        tmp_path, trained):
    """Test that fit writes the frame once, trains with 2 ranks as a barrier stage, and returns
    the model: the weights, bit for bit, of the same 2-rank torch-engine run on its store."""
    root, result = trained
    assert result.run_dir.is_dir() and result.trained is not None
    assert [e["epoch"] for e in result.metrics["pretrain"]] == [1], result.metrics
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["finetune"]] == [1, 2], metrics
    store = result.trained.config.data.path
    assert store.startswith(str(root))
    check_job(2, ["-m", "hvdl.train", "--model", "dbn_small", "--data.path", store,
                  "--data.label", "kind", "--data.scale", "unit", "--layers", "0,5,0",
                  "--batch_size", "8", "--rbm.pretrain_epochs", "1", "--rbm.finetune_epochs",
                  "2", "--dist.backend", "torch", "--results_dir", str(tmp_path / "disk")],
              launcher="torchrun")
    disk = next((tmp_path / "disk").iterdir())
    mine = torch.load(disk / "stages" / "finetune.pt", weights_only=True)["model"]
    theirs = torch.load(result.run_dir / "stages" / "finetune.pt", weights_only=True)["model"]
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key


@pytest.mark.parametrize("workers", [1, 3, 4])
def test_fit_deals_the_store_to_each_number_of_ranks_as_a_run_on_disk_does(tmp_path, frame,
                                                                           workers):
    """Test that fit with 1, 3 and 4 ranks gives the ranks disjoint shards that cover the rows,
    with the steps of that many ranks: the shards a run of as many ranks on the store is dealt."""
    import pyarrow.parquet as pq

    from hvdl import spark as hs
    from hvdl.data import chunks

    df, _, _ = frame
    result = hs.fit(df, model="rbm_mnist", label="kind", num_workers=workers,
                    store=tmp_path / "store", layers=[0, 4], batch_size=10,
                    data={"scale": "unit", "chunk_mb": 6 * 8 * 4 / 2**20},
                    rbm={"pretrain_epochs": 1})
    record = json.loads((result.run_dir / "data.json").read_text())
    assert record["rows"]["train"] == ROWS and record["format"] == "parquet"
    shards = record["shards"]
    assert [s["rank"] for s in shards] == list(range(workers))
    rows = [(f, i) for s in shards for f, a, b in s["pieces"] for i in range(a, b)]
    assert len(set(rows)) == len(rows) == ROWS  # disjoint (file, row) pairs, every row dealt
    sizes = [s["rows"] for s in shards]
    assert max(sizes) - min(sizes) <= record["chunk_rows"], sizes
    epoch = json.loads((result.run_dir / "metrics.json").read_text())["pretrain1"][-1]
    assert epoch["step"] == (ROWS // workers) // 10 > 0, epoch
    file_rows = [pq.ParquetFile(f).metadata.num_rows for f in record["files"]]
    order = chunks.permute(chunks.cut(file_rows, record["chunk_rows"]), 42)
    assert [s["pieces"] for s in shards] == [
        [[p.file, p.start, p.stop] for p in chunks.deal(order, r, workers)]
        for r in range(workers)]


def test_transform_adds_the_models_predictions_and_codes_on_the_executors(frame, trained):
    """Test that transform's prediction column is the model's class for each row, and its code
    column the first hidden layer's activations, computed as in this process."""
    from hvdl import spark as hs

    df, x, y = frame
    _, result = trained
    trained = result.trained
    scored = hs.transform(df, result.checkpoint).collect()
    coded = hs.transform(df, result.checkpoint, layer=1).collect()
    assert len(scored) == len(coded) == ROWS
    names = [chr(ord("a") + j) for j in range(FEATURES)]
    for rows, column in ((scored, "prediction"), (coded, "code")):
        features = torch.tensor([[r[n] for n in names] for r in rows], dtype=torch.float32)
        with torch.no_grad():
            x01 = features / 255
            if column == "prediction":
                want = [str(trained.data["classes"][int(i)])
                        for i in trained.family.classifier(trained.model)(x01).argmax(1)]
                assert [r[column] for r in rows] == want
            else:
                want = trained.family.encoder(trained.model, 1)(x01).numpy()
                np.testing.assert_allclose(np.array([r[column] for r in rows]), want,
                                           rtol=1e-5, atol=1e-6)


def test_a_ranks_bad_input_fails_the_spark_job_with_hvdls_one_line(tmp_path, frame):
    """Test that a run the ranks refuse (layers that do not fit the data) raises BadInput with
    the line hvdl prints, not a Java stack trace."""
    from hvdl import spark as hs

    df, _, _ = frame
    with pytest.raises(BadInput, match="config key 'layers' starts with 9 inputs, the data has 6 "
                                       "features"):
        hs.fit(df, model="dbn_small", label="kind", num_workers=2, store=tmp_path / "store",
               layers=[9, 5, 0], data={"scale": "unit"})
    with pytest.raises(BadInput, match="column 'nope' is not in the DataFrame"):
        hs.fit(df, model="dbn_small", label="nope", num_workers=2, store=tmp_path / "store")


def test_the_store_holds_a_vector_column_as_one_column_per_element(tmp_path, spark):
    """Test that write_store turns an ML vector column into columns v_0, v_1, ... in order."""
    import pyarrow.parquet as pq
    from pyspark.ml.linalg import Vectors

    from hvdl import spark as hs

    df = spark.createDataFrame([(Vectors.dense([1.0, 2.0, 3.0]), "a"),
                                (Vectors.sparse(3, {1: 5.0}), "b")], ["v", "kind"])
    path = hs.write_store(df.coalesce(1), "kind", None, tmp_path / "store")
    table = pq.read_table(path)
    assert table.column_names == ["v_0", "v_1", "v_2", "kind"]
    assert sorted(zip(*[table.column(c).to_pylist() for c in table.column_names])) == [
        (0.0, 5.0, 0.0, "b"), (1.0, 2.0, 3.0, "a")]


def test_the_sources_benchmark_times_spark_writing_the_store_and_fit(tmp_path, spark):
    """Test that the sources benchmark's Spark phase writes the DataFrame as the store and
    times hvdl.spark.fit from its call to rank 0's first step (5 steps of one rank)."""
    from hvdl.bench import source_jobs, sources

    table = sources.make_table(200, 6)
    specs = sources.write_sources(table, tmp_path, "", "")
    parquet = specs["parquet"]
    (fit,) = source_jobs.spark_fits(spark, Path(parquet.path), parquet.features, [1], 1, tmp_path)
    assert fit["ranks"] == 1 and fit["mb"] == 200 * 6 * 4 / 2**20 and fit["files_mb"] > 0
    assert 0 < fit["write_s"] and 0 < fit["rank_s"] < fit["launch_s"] < 120, fit
    assert not list(tmp_path.glob("spark-*"))  # each fit's store removed after it
