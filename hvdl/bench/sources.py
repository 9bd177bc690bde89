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
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hvdl.bench import source_jobs as jobs
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


def in_rounds(specs: dict[str, Any], settings: list, measure: Callable[..., dict],
              repeats: int, setting: str, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """`measure(spec, value)` for every source and value of a setting, in `repeats` rounds
    (every source once, then again: the machine is shared); per (source, value), its runs and
    the medians of `keys`."""
    runs: dict[tuple[str, Any], list[dict]] = {(n, v): [] for n in specs for v in settings}
    for _ in range(repeats):
        for name, spec in specs.items():
            for value in settings:
                runs[name, value].append(measure(spec, value))
    return [{"source": name, setting: value, "runs": found,
             **{k: statistics.median(r[k] for r in found) for k in keys}}
            for (name, value), found in runs.items()]


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
    summary = in_rounds(readers, args.ranks,  # a reader is (its spec, its read function)
                        lambda reader, n: reader[1](reader[0], n, args.chunk_mb),
                        args.repeats, "ranks", ("first_s", "total_s"))
    for r in summary:
        r.update(rows=r["runs"][0]["rows"], mb=r["runs"][0]["mb"],
                 mb_per_s=r["runs"][0]["mb"] / r["total_s"])
    runs = args.folder / "runs"
    epochs = in_rounds(specs, ["device", "stream"], lambda spec, m: jobs.train_epoch(
        spec, m, runs), args.repeats, "memory", ("samples_per_s", "first_step_s")) \
        if args.train else []
    together = in_rounds(specs, [n for n in args.ranks if n > 1], lambda spec, n: read_together(
        spec, n, args.chunk_mb), args.repeats, "ranks", ("total_s", "mb_per_s")) \
        if args.together else []
    for e in together:  # each rank's rate, over the ranks of every round
        e["rank_mb_per_s"] = statistics.median(v for x in e["runs"] for v in x["ranks_mb_per_s"])
    starts = in_rounds(specs, args.ranks, lambda spec, n: jobs.first_step(spec, n, runs),
                       args.repeats, "ranks", ("launch_s", "rank_s")) if args.first_step else []
    fits = []
    if args.spark:
        session = jobs.spark_session(max(args.ranks))
        try:
            parquet = specs["parquet"]
            fits = jobs.spark_fits(session, Path(parquet.path), parquet.features, args.ranks,
                                   args.repeats, args.folder)
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
