"""The training jobs of the sources benchmark (python -m hvdl.bench.sources): an RBM epoch on
a source, N ranks launched to their first step, and a Spark DataFrame trained on by
`hvdl.spark.fit`; each a real `hvdl.train` run whose metrics.json gives the figures."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hvdl.data.formats.base import Spec


def train_options(spec: Spec, results: Path, *extra: str) -> list[str]:
    """`hvdl.train`'s options for an RBM (784-500, CD-1) on the source, one epoch."""
    options = ["--data.path", spec.path, "--data.label", spec.label]
    if spec.format == "sql":
        options += ["--data.format", "sql", "--data.table", spec.table]
    return ["-m", "hvdl.train", "--model", "rbm_mnist", "--layers", "0,500",
            "--rbm.pretrain_epochs", "1", "--data.scale", "unit", "--results_dir", str(results),
            *options, *extra]


def run_job(cmd: list[str]) -> None:
    """Run a training job; a failed one ends the benchmark with the end of its output."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n"
                           f"{(proc.stdout + proc.stderr)[-3000:]}")


def run_metrics(results: Path) -> dict[str, Any]:
    """metrics.json of the one run in `results` (or of the run folder itself)."""
    run_dir = results if (results / "metrics.json").is_file() else next(results.iterdir())
    return json.loads((run_dir / "metrics.json").read_text())


def train_epoch(spec: Spec, memory: str, results: Path) -> dict[str, float]:
    """One RBM epoch (one process) on the source, its shard held on the device or streamed:
    samples/s of the epoch and seconds from start to the first step."""
    shutil.rmtree(results, ignore_errors=True)
    run_job([sys.executable, *train_options(spec, results, "--data.memory", memory)])
    metrics = run_metrics(results)
    return {"samples_per_s": metrics["pretrain1"][-1]["samples_per_s"],
            "first_step_s": metrics["first_step_s"]}


def first_step(spec: Spec, ranks: int, results: Path) -> dict[str, float]:
    """N ranks (the torch engine; torchrun for 2 or more) of an RBM run on the source, stopped
    after 5 steps: seconds from the launch to rank 0's first step, and from rank 0's own start
    (its imports, connecting, the snapshot, reading its shard, the model)."""
    shutil.rmtree(results, ignore_errors=True)
    launcher = [sys.executable] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
        str(ranks)]
    started = time.time()
    run_job([*launcher, *train_options(spec, results, "--max_steps", "5", "--dist.backend",
                                       "torch")])
    metrics = run_metrics(results)
    return {"launch_s": metrics["first_step_at"] - started, "rank_s": metrics["first_step_s"]}


def spark_session(workers: int) -> Any:
    """A local-cluster Spark of `workers` worker JVMs, a task slot each, on 127.0.0.1."""
    import os

    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable  # the executors run this environment's hvdl
    return (SparkSession.builder.master(f"local-cluster[{workers},1,2048]")
            .appName("hvdl-bench-sources").config("spark.ui.enabled", "false")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1").getOrCreate())


def spark_fits(session: Any, parquet: Path, features: tuple[str, ...], ranks: list[int],
               repeats: int, folder: Path) -> list[dict[str, Any]]:
    """The table as a Spark DataFrame (read from the local Parquet file): seconds to write it
    as hvdl's Parquet store (`hvdl.spark.write_store`), and from calling `hvdl.spark.fit` with
    N ranks (writing the store, the barrier stage, the ranks' start and reads) to rank 0's
    first step."""
    from hvdl import spark as hs

    df = session.read.parquet(str(parquet))
    mb = df.count() * len(features) * 4 / 2**20  # as float32; the executors started
    found: dict[int, list[dict[str, float]]] = {n: [] for n in ranks}
    for round_ in range(repeats):
        for n in ranks:
            stores = folder / f"spark-{round_}-{n}"
            started = time.time()
            written = hs.write_store(df, "label", list(features), stores / "alone")
            write_s = time.time() - started
            files = sum(f.stat().st_size for f in written.rglob("*.parquet")) / 2**20
            started = time.time()
            result = hs.fit(df, model="rbm_mnist", label="label", features=list(features),
                            num_workers=n, store=stores, layers=[0, 500], max_steps=5,
                            data={"scale": "unit"}, rbm={"pretrain_epochs": 1})
            metrics = run_metrics(result.run_dir)
            found[n].append({"write_s": write_s, "mb": mb, "files_mb": files,
                             "launch_s": metrics["first_step_at"] - started,
                             "rank_s": metrics["first_step_s"]})
            shutil.rmtree(stores, ignore_errors=True)
    keys = ("write_s", "mb", "files_mb", "launch_s", "rank_s")
    return [{"ranks": n, "runs": runs, **{k: statistics.median(r[k] for r in runs) for k in keys}}
            for n, runs in found.items()]
