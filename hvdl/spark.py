"""Train on a Spark DataFrame with hvdl ranks running inside Spark; add codes or predictions to
a DataFrame on the executors.

    from hvdl import spark as hs

    result = hs.fit(df, model="dbn_small", label="species", num_workers=4,
                    store="/shared/hvdl", data={"scale": "minmax"}, rbm={"pretrain_epochs": 20})
    scored = hs.transform(df, result.checkpoint)                 # + "prediction" (the class)
    coded = hs.transform(df, result.checkpoint, layer=1)         # + "code" (array<float>)

`fit` writes the DataFrame's feature and label columns once, as Parquet, to a new folder under
`store` (a path every executor and the driver see; a vector column becomes one column per
element), then runs `num_workers` hvdl ranks as one Spark barrier stage: each task is a rank of
hvdl's torch engine (gloo on CPUs, NCCL where the executors have GPUs), rendezvousing at the
first task's host, and reads its own part of the Parquet store as any hvdl run reads files. The
ranks are `python -m hvdl.train` processes started by the tasks, so a rank's failure fails its
task and the stage: `fit` raises hvdl's one-line message (BadInput for bad input). It returns
what `hvdl.fit` returns (hvdl/api.py): the final figures, the run folder (under
`store`/runs unless `results_dir` is given) and the trained model.

Rows are read in the store's file order (Spark's partitions, in order), so the same DataFrame
written once gives the same weights on every run.

`transform` maps the DataFrame's Arrow batches through the model on the executors (mapInArrow:
no pandas), with the checkpoint's normalisation; the checkpoint must be readable there.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

from hvdl.errors import BadInput

RUN_FOLDER = re.compile(r"run folder (\S+)")


class SparkJobError(RuntimeError):
    """The Spark job of the ranks failed for a reason other than hvdl's bad input."""


def fit(df: Any, *, model: str, label: str = "", features: list[str] | None = None,
        num_workers: int, store: str | os.PathLike | None = None,
        results_dir: str | os.PathLike | None = None, **options: Any) -> Any:
    """Train recipe `model` on `df` (its `features` columns, default all but `label`) with
    `num_workers` ranks inside Spark; `options` as hvdl.fit takes them."""
    from hvdl import api

    if num_workers < 1:
        raise BadInput(f"num_workers is {num_workers}; allowed: 1 or more ranks")
    root = Path(store) if store else Path(os.environ.get("TMPDIR", "/tmp")) / "hvdl-spark"
    data_path = write_store(df, label, features, root / f"data-{uuid.uuid4().hex[:12]}")
    runs = Path(results_dir) if results_dir else root / "runs"
    data = dict(options.pop("data", {}) or {})
    data.update({"path": str(data_path), "format": "parquet"})
    if label:
        data["label"] = label
    argv = ["--model", model, "--results_dir", str(runs), "--dist.backend", "torch",
            *api.overrides({"data": data, **options})]
    try:
        outputs = df.sparkSession.sparkContext.parallelize(range(num_workers), num_workers) \
            .barrier().mapPartitions(lambda _: run_rank(argv)).collect()
    except Exception as err:  # py4j's error, holding the task's message
        raise failure(err) from None
    return api.result(Path(outputs[0]))


def write_store(df: Any, label: str, features: list[str] | None, path: Path) -> Path:
    """The label and feature columns of `df` as Parquet in `path` (vectors as columns)."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import functions as F

    names = features or [c for c in df.columns if c != label]
    missing = [c for c in names + ([label] if label else []) if c not in df.columns]
    if missing:
        raise BadInput(f"column {missing[0]!r} is not in the DataFrame (its columns: "
                       f"{', '.join(df.columns[:20])}); allowed: one of those")
    columns = []
    for name in names:
        if isinstance(df.schema[name].dataType, VectorUDT):
            size = len(df.select(name).first()[0])
            array = vector_to_array(F.col(name))
            columns += [array[j].alias(f"{name}_{j}") for j in range(size)]
        else:
            columns.append(F.col(name))
    if label:
        columns.append(F.col(label))
    df.select(*columns).write.mode("errorifexists").parquet(str(path))
    return path


def run_rank(argv: list[str]) -> Iterator[str]:
    """One barrier task: rank `partitionId` of hvdl's torch engine, as a child process."""
    from pyspark import BarrierTaskContext

    context = BarrierTaskContext.get()
    rank = context.partitionId()
    hosts = [info.address.rsplit(":", 1)[0] for info in context.getTaskInfos()]
    port = ""
    if rank == 0:
        with socket.socket() as s:
            s.bind(("", 0))
            port = str(s.getsockname()[1])
    port = context.allGather(port)[0]
    local = [r for r, h in enumerate(hosts) if h == hosts[rank]]
    cores = os.cpu_count() or 1
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(len(hosts)),
           "LOCAL_RANK": str(local.index(rank)), "LOCAL_WORLD_SIZE": str(len(local)),
           "MASTER_ADDR": hosts[0], "MASTER_PORT": port,
           "HVDL_THREADS": os.environ.get("HVDL_THREADS", str(max(1, cores // len(local))))}
    proc = subprocess.run([sys.executable, "-m", "hvdl.train", *argv], env=env,
                          capture_output=True, text=True)
    said = [ln for ln in proc.stderr.splitlines() if ln.startswith("hvdl: error: ")]
    tail = " ".join(proc.stderr.strip().splitlines()[-3:])
    # Every task learns every rank's outcome, so whichever task Spark reports first carries
    # the line rank 0 printed (the other ranks exit without a word on bad input)
    outcomes = [json.loads(o) for o in context.allGather(json.dumps(
        [proc.returncode, said[-1] if said else f"rank {rank} failed ({proc.returncode}): {tail}"
         if proc.returncode else ""]))]
    if any(code for code, _ in outcomes):
        lines = [line for _, line in outcomes if line.startswith("hvdl: error: ")]
        raise RuntimeError(lines[0] if lines else next(line for _, line in outcomes if line))
    found = RUN_FOLDER.search(proc.stdout)
    yield found.group(1) if found else ""


def failure(err: BaseException) -> BaseException:
    """A failed Spark job as hvdl's own error: the one line a rank said, when it said one."""
    found = re.search(r"hvdl: error: ([^\n]*)", str(err))
    if found:
        return BadInput(found.group(1).strip())
    return SparkJobError(" ".join(str(err).split())[:500])


def transform(df: Any, checkpoint: str | os.PathLike, *, layer: int | None = None,
              column: str | None = None, batch_size: int = 1024) -> Any:
    """`df` with the model's output as a new column: the class predicted (a classifier,
    `layer` None), else hidden layer `layer`'s codes (default: the code layer or the last)."""
    from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

    from hvdl.families import load_trained
    from hvdl.inference import pick_layer

    trained = load_trained(Path(checkpoint))
    classify = layer is None and trained.family.classifier is not None
    if not classify:
        layer = pick_layer(trained, layer)
    name = column or ("prediction" if classify else "code")
    kind = StringType() if classify else ArrayType(FloatType())
    schema = StructType(df.schema.fields + [StructField(name, kind)])
    if not trained.data.get("columns"):
        raise BadInput(f"checkpoint {checkpoint} holds no column names; allowed: a checkpoint "
                       "written by this version of hvdl")
    features = [c for c, _ in trained.data["columns"] if c != trained.data["label"]]
    missing = [c for c in features if c not in df.columns]
    if missing:
        raise BadInput(f"column {missing[0]!r} of the checkpoint's data is not in the DataFrame; "
                       f"allowed: a DataFrame with the columns {', '.join(features[:20])}")
    path = str(checkpoint)

    def apply(batches: Iterator[Any]) -> Iterator[Any]:
        import numpy as np
        import pyarrow as pa
        import torch

        from hvdl.data.survey import Scale
        from hvdl.families import load_trained

        model = load_trained(Path(path))
        scale = Scale.from_dict(model.data["scale"])
        net = (model.family.classifier(model.model) if classify
               else model.family.encoder(model.model, layer))
        dtype = next(model.model.parameters()).dtype
        shape = tuple(model.data["shape"])
        for batch in batches:
            x = np.column_stack([batch.column(c).to_numpy(zero_copy_only=False).astype(np.float32)
                                 for c in features]) if batch.num_rows else \
                np.zeros((0, len(features)), np.float32)
            with torch.no_grad():
                t = scale.apply_(torch.from_numpy(np.ascontiguousarray(x)))
                out = [net(t[i:i + batch_size].reshape(-1, *shape).to(dtype))
                       for i in range(0, len(t), batch_size)] or [torch.zeros(0, 1)]
                y = torch.cat(out)
            if classify:
                names = np.asarray([str(c) for c in model.data["classes"]], dtype=object)
                value = pa.array(names[y.argmax(1).numpy()] if len(y) else [], pa.string())
            else:
                value = pa.array(list(y.float().numpy()), pa.list_(pa.float32()))
            yield pa.RecordBatch.from_arrays([*batch.columns, value],
                                             names=[*batch.schema.names, name])

    return df.mapInArrow(apply, schema)
