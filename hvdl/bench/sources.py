"""Reading data where it lives: a rank's read throughput and time to its first rows, from local
Parquet, S3 (Parquet objects) and PostgreSQL (ADBC's Arrow batches, and psycopg's binary COPY).

    python -m hvdl.bench.sources --rows 60000 --s3 s3://bench/data --postgres postgresql://u@h/db
    bash launch/sources.sh          # starts an S3 server and PostgreSQL on 127.0.0.1, runs this

One table of `--rows` rows × `--features` float32 features (MNIST's shape by default, values
0-255) and an integer label is written to each source once. Then, in rounds that interleave the
sources (the machine is shared: medians of `--repeats`), the rows of rank 0 of N (N = 1, 2) are
read through hvdl's reader for that source exactly as training deals them (chunks of
`--chunk-mb`, the chunk rule's permuted order), timing the open (connecting, the snapshot,
counting) to the first piece, and the whole. `copy` is the same splits read by psycopg's binary
COPY, parsed by NumPy, against which ADBC (the reader hvdl uses) is kept or replaced.
`--train` adds an RBM epoch from each source, held and streamed; `--first-step` the time from
launching N ranks on each source to their first step; `--spark` the same table as a Spark
DataFrame, written as hvdl's store and trained on by `hvdl.spark.fit`. Writes JSON and a
Markdown table to `--out`.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hvdl.data import chunks
from hvdl.data.formats import open_source, store
from hvdl.data.formats.base import Source, Spec


def make_table(rows: int, features: int, seed: int = 0) -> Any:
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (rows, features)).astype(np.float32)
    return pa.table({**{f"f{j}": x[:, j] for j in range(features)},
                     "label": rng.integers(0, 10, rows).astype(np.int32)})


def write_sources(table: Any, folder: Path, s3: str, postgres: str) -> dict[str, Spec]:
    """The table in each source; the Spec that reads each."""
    import pyarrow.parquet as pq

    features = tuple(n for n in table.column_names if n != "label")
    local = folder / "bench.parquet"
    pq.write_table(table, local, row_group_size=8192)
    specs = {"parquet": Spec(path=str(local), label="label", features=features)}
    if s3:
        target = store.s3_path(f"{s3.rstrip('/')}/bench.parquet")
        store.upload(local, target)
        specs["s3"] = Spec(path=str(target), label="label", features=features)
    if postgres:
        import adbc_driver_postgresql.dbapi as pg

        with pg.connect(postgres, autocommit=True) as conn, conn.cursor() as cur:
            cur.adbc_ingest("hvdl_bench", table, mode="replace")
            cur.execute("VACUUM ANALYZE hvdl_bench")
        specs["postgres"] = Spec(format="sql", path=postgres, table="hvdl_bench",
                                 label="label", features=features)
    return specs


def rank_pieces(source: Source, ranks: int, chunk_mb: float, seed: int = 42,
                rank: int = 0) -> list:
    """A rank's pieces of N, as training deals them."""
    order = chunks.permute(chunks.cut(source.file_rows,
                                      chunks.chunk_rows(source.features, chunk_mb, source.rows)),
                           seed)
    return chunks.deal(order, rank, ranks)


def read_with_hvdl(spec: Spec, ranks: int, chunk_mb: float, rank: int = 0,
                   at: float = 0.0) -> dict[str, float]:
    """Open the source as a rank does, read the rank's pieces: seconds to the first, in all
    (from the wall-clock time `at`, waited for, where given)."""
    time.sleep(max(0.0, at - time.time()))
    started = time.perf_counter()
    source = open_source(spec, split_mb=chunk_mb)
    source.import_state(source.export_state())
    if source.splits:
        source.set_counts([source.count(i) for i in range(len(source.splits))])
    mine = rank_pieces(source, ranks, chunk_mb, rank=rank)
    first = None
    nbytes = 0
    for piece in chunks.in_file_order(mine):
        x, _ = source.read(piece[1])
        nbytes += x.shape[0] * x.shape[1] * 4  # as float32 on the device
        first = first or time.perf_counter() - started
    total = time.perf_counter() - started
    source.close()
    return {"first_s": first, "total_s": total, "rows": chunks.total(mine), "mb": nbytes / 2**20}


def read_together(spec: Spec, ranks: int, chunk_mb: float) -> dict[str, Any]:
    """All N ranks reading their pieces at once, each a process started from the same moment:
    each rank's MB/s, and all of them together over the slowest rank's time."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(ranks, mp_context=multiprocessing.get_context("spawn")) as pool:
        at = time.time() + 5  # the processes started and their imports done
        found = list(pool.map(read_with_hvdl, [spec] * ranks, [ranks] * ranks,
                              [chunk_mb] * ranks, range(ranks), [at] * ranks))
    wall = max(r["total_s"] for r in found)
    return {"ranks_mb_per_s": [r["mb"] / r["total_s"] for r in found], "total_s": wall,
            "mb_per_s": sum(r["mb"] for r in found) / wall}


def read_with_copy(spec: Spec, ranks: int, chunk_mb: float) -> dict[str, float]:
    """The same splits of the table by psycopg's binary COPY, each parsed by NumPy in one go
    (float4 columns without NULLs: fixed-width rows)."""
    import psycopg

    started = time.perf_counter()
    source = open_source(spec, split_mb=chunk_mb)  # the splits, and the order of the rows
    source.import_state(source.export_state())
    source.set_counts([source.count(i) for i in range(len(source.splits))])
    mine = rank_pieces(source, ranks, chunk_mb)
    n = len(spec.features)
    row = np.dtype([("count", ">i2")] + [(f"{k}{j}", ">i4" if k == "l" else ">f4")
                                          for j in range(n) for k in ("l", "v")])
    columns = ", ".join(f'"{c}"' for c in spec.features)
    needed = sorted({i for _, p in chunks.in_file_order(mine)
                     for i, (a, c) in enumerate(zip(source.first_row, source.counts))
                     if a < p.stop and p.start < a + c})
    first, nbytes = None, 0
    with psycopg.connect(spec.path) as conn:
        for i in needed:
            buffer = io.BytesIO()
            with conn.cursor().copy(f"COPY (SELECT {columns} FROM {source.source} WHERE "
                                    f"{source.where(i)} ORDER BY ctid) TO STDOUT (FORMAT "
                                    "BINARY)") as copy:
                for block in copy:
                    buffer.write(block)
            data = buffer.getbuffer()[19:-2]  # the header, and the trailer's -1
            values = np.frombuffer(data, dtype=row)
            x = np.stack([values[f"v{j}"] for j in range(n)], axis=1).astype(np.float32)
            nbytes += x.nbytes
            first = first or time.perf_counter() - started
    source.close()
    return {"first_s": first, "total_s": time.perf_counter() - started,
            "rows": chunks.total(mine), "mb": nbytes / 2**20}


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
    return json.loads(next(results.iterdir()).joinpath("metrics.json").read_text())


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
            metrics = json.loads((result.run_dir / "metrics.json").read_text())
            found[n].append({"write_s": write_s, "mb": mb, "files_mb": files,
                             "launch_s": metrics["first_step_at"] - started,
                             "rank_s": metrics["first_step_s"]})
            shutil.rmtree(stores, ignore_errors=True)
    keys = ("write_s", "mb", "files_mb", "launch_s", "rank_s")
    return [{"ranks": n, "runs": runs, **{k: statistics.median(r[k] for r in runs) for k in keys}}
            for n, runs in found.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hvdl.bench.sources",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60000)
    parser.add_argument("--features", type=int, default=784)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-mb", type=float, default=4)
    parser.add_argument("--s3", default="", help="s3://bucket/prefix to write the data under")
    parser.add_argument("--postgres", default="", help="postgresql://user@host:port/db")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/hvdl-bench-sources"))
    parser.add_argument("--out", type=Path, default=Path("results/sources"))
    parser.add_argument("--name", default="", help="the result files' name (default: by rows)")
    parser.add_argument("--train", action="store_true", help="also an RBM epoch from each "
                        "source, held and streamed")
    parser.add_argument("--together", action="store_true", help="also every rank of N > 1 "
                        "reading its part at the same time, each a process")
    parser.add_argument("--first-step", action="store_true", help="also the time from "
                        "launching --ranks ranks on each source to their first step")
    parser.add_argument("--spark", action="store_true", help="also the table as a Spark "
                        "DataFrame: writing hvdl's store, and hvdl.spark.fit to its first step")
    args = parser.parse_args(argv)
    args.folder.mkdir(parents=True, exist_ok=True)
    table = make_table(args.rows, args.features)
    specs = write_sources(table, args.folder, args.s3, args.postgres)
    readers: dict[str, tuple[Spec, Callable[..., dict]]] = {
        name: (spec, read_with_hvdl) for name, spec in specs.items()}
    if "postgres" in specs:
        readers["postgres-copy"] = (specs["postgres"], read_with_copy)
    runs: dict[str, list[dict]] = {f"{name}@{n}": [] for name in readers for n in args.ranks}
    for _ in range(args.repeats):  # rounds: every source once, then again
        for name, (spec, read) in readers.items():
            for n in args.ranks:
                runs[f"{name}@{n}"].append(read(spec, n, args.chunk_mb))
    summary = []
    for key, found in runs.items():
        name, n = key.split("@")
        total = statistics.median(r["total_s"] for r in found)
        summary.append({"source": name, "ranks": int(n), "rows": found[0]["rows"],
                        "mb": found[0]["mb"], "first_s": statistics.median(
                            r["first_s"] for r in found), "total_s": total,
                        "mb_per_s": found[0]["mb"] / total, "runs": found})
    epochs = []
    if args.train:
        found: dict[str, list[dict]] = {f"{n}@{m}": [] for n in specs
                                        for m in ("device", "stream")}
        for _ in range(args.repeats):
            for source, spec in specs.items():
                for memory in ("device", "stream"):
                    found[f"{source}@{memory}"].append(
                        train_epoch(spec, memory, args.folder / "runs"))
        for key, runs_of in found.items():
            source, memory = key.split("@")
            epochs.append({"source": source, "memory": memory, "runs": runs_of,
                           "samples_per_s": statistics.median(r["samples_per_s"]
                                                              for r in runs_of),
                           "first_step_s": statistics.median(r["first_step_s"]
                                                             for r in runs_of)})
    together = []
    if args.together:
        found = {f"{n}@{r}": [] for n in specs for r in args.ranks if r > 1}
        for _ in range(args.repeats):
            for source, spec in specs.items():
                for r in (r for r in args.ranks if r > 1):
                    found[f"{source}@{r}"].append(read_together(spec, r, args.chunk_mb))
        for key, runs_of in found.items():
            source, r = key.split("@")
            together.append({"source": source, "ranks": int(r), "runs": runs_of,
                             "rank_mb_per_s": statistics.median(
                                 v for x in runs_of for v in x["ranks_mb_per_s"]),
                             **{k: statistics.median(x[k] for x in runs_of)
                                for k in ("total_s", "mb_per_s")}})
    starts = []
    if args.first_step:
        found = {f"{n}@{r}": [] for n in specs for r in args.ranks}
        for _ in range(args.repeats):
            for source, spec in specs.items():
                for r in args.ranks:
                    found[f"{source}@{r}"].append(first_step(spec, r, args.folder / "runs"))
        for key, runs_of in found.items():
            source, r = key.split("@")
            starts.append({"source": source, "ranks": int(r), "runs": runs_of,
                           **{k: statistics.median(x[k] for x in runs_of)
                              for k in ("launch_s", "rank_s")}})
    fits = []
    if args.spark:
        session = spark_session(max(args.ranks))
        try:
            fits = spark_fits(session, Path(specs["parquet"].path), specs["parquet"].features,
                              args.ranks, args.repeats, args.folder)
        finally:
            session.stop()
    name = args.name or f"rows{args.rows}"
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} ({platform.machine()}, {platform.processor() or ''})",
            "rows": args.rows, "features": args.features, "chunk_mb": args.chunk_mb,
            "repeats": args.repeats}
    (args.out / f"{name}.json").write_text(json.dumps(
        {**meta, "results": summary, "together": together, "epochs": epochs,
         "first_steps": starts, "spark": fits},
        indent=2))
    lines = ["| source | ranks | rank 0's rows | MB (float32) | time to first rows, s | "
             "all its rows, s | MB/s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in summary:
        lines.append(f"| {r['source']} | {r['ranks']} | {r['rows']:,} | {r['mb']:.1f} | "
                     f"{r['first_s']:.3f} | {r['total_s']:.3f} | {r['mb_per_s']:.1f} |")
    if epochs:
        held = {e["source"]: e["samples_per_s"] for e in epochs if e["memory"] == "device"}
        lines += ["", "| source | memory | RBM epoch samples/s | streamed / held | first step, s |",
                  "|---|---|---:|---:|---:|"]
        for e in epochs:
            lines.append(f"| {e['source']} | {e['memory']} | {e['samples_per_s']:,.0f} | "
                         f"{e['samples_per_s'] / held[e['source']]:.3f} | "
                         f"{e['first_step_s']:.2f} |")
    if together:
        lines += ["", "| source | ranks reading at once | each rank's MB/s (median) | all "
                  "ranks' MB/s | slowest rank, s |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {e['source']} | {e['ranks']} | {e['rank_mb_per_s']:.1f} | "
                  f"{e['mb_per_s']:.1f} | {e['total_s']:.3f} |" for e in together]
    if starts:
        lines += ["", "| source | ranks | launch to first step, s | rank 0's start to it, s |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {e['source']} | {e['ranks']} | {e['launch_s']:.2f} | {e['rank_s']:.2f} |"
                  for e in starts]
    if fits:
        lines += ["", "| Spark DataFrame | ranks | MB (float32) | store written, s | MB/s | "
                  "files, MB | fit to first step, s | rank 0's start to it, s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| spark | {f['ranks']} | {f['mb']:.1f} | {f['write_s']:.2f} | "
                  f"{f['mb'] / f['write_s']:.1f} | {f['files_mb']:.1f} | {f['launch_s']:.2f} | "
                  f"{f['rank_s']:.2f} |" for f in fits]
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
