"""What a trained model does to data, for `hvdl eval`, `hvdl encode` and the Python API: its
figures on a test shard, and its hidden representation of a shard written as one part.

Both are collectives (the sums behind the figures are allreduced, each rank writes its own part),
and both read the model's capabilities from the family table (hvdl/families.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hvdl import dist, metrics
from hvdl.data import dataset
from hvdl.data.convert.writers import Layout, open_writer
from hvdl.data.formats import store
from hvdl.data.formats.store import S3Path
from hvdl.data.settings import Settings
from hvdl.data.shard import Shard
from hvdl.errors import BadInput
from hvdl.families import Trained, in_model_type, with_overrides
from hvdl.models.pca import squared_error
from hvdl.runlog import write_atomic


def figures(trained: Trained, test: Shard, classes: tuple[Any, ...] | None) -> dict[str, Any]:
    """The family's figures on this rank's test shard, summed over ranks (a collective)."""
    family, model = trained.family, trained.model
    if family.classifier is not None:
        return metrics.evaluate_classifier(family.classifier(model),
                                           in_model_type(test.scan(), model), classes,
                                           name="eval")
    with torch.no_grad():
        found = {"squared_error": squared_error(family.reconstruction(model),
                                                (x for x, _ in in_model_type(test.scan(),
                                                                             model)),
                                                name="eval.sq")}
        if family.free_energy is not None:
            energy = family.free_energy(model)
            total = torch.zeros(2, dtype=torch.float64)
            for x, _ in in_model_type(test.scan(), model):
                total += torch.tensor([float(energy(x).sum()), float(len(x))],
                                      dtype=torch.float64)
            total = dist.allreduce_sum(total, name="eval.free_energy")
            found["free_energy"] = float(total[0] / total[1].clamp(min=1))
    count = dist.allreduce_sum(torch.tensor([float(len(test))]), name="eval.count")
    return {**found, "count": int(count)}


def format_report(found: dict[str, Any]) -> str:
    if "accuracy" not in found:
        line = (f"average squared reconstruction error per example {found['squared_error']:.4f}"
                f" ({found['count']} examples)")
        if "free_energy" in found:
            line += f", mean free energy {found['free_energy']:.3f}"
        return line
    lines = [f"test cost {found['cost']:.4f}  accuracy {100 * found['accuracy']:.2f}%  "
             f"macro F1 {found['macro_f1']:.4f}  ({found['count']} examples)",
             "class  precision  recall  f1"]
    for c, p, r, f in zip(found["classes"], found["precision"], found["recall"], found["f1"]):
        lines.append(f"{str(c):>5}  {p:9.4f}  {r:6.4f}  {f:.4f}")
    lines.append("confusion (rows: true class, columns: predicted)")
    lines += [" ".join(f"{n:5d}" for n in row) for row in found["confusion"]]
    return "\n".join(lines)


def pick_layer(trained: Trained, layer: int | None) -> int:
    family, depth = trained.family, trained.family.depth(trained.config)
    if family.encoder is None:
        raise BadInput(f"family {family.name!r} has no encoder; allowed: a checkpoint of sae, "
                       "stacked_ae, rbm, dbn or deep_ae")
    layer = depth if layer is None else layer
    if not 1 <= layer <= depth:
        raise BadInput(f"--layer {layer}: the model has {depth} hidden layer(s); allowed: 1 to "
                       f"{depth}")
    return layer


def check_out(out: Path) -> None:
    if isinstance(out, S3Path):
        if not store.empty(out):
            raise BadInput(f"{out} holds objects already; allowed: a new or empty prefix "
                           "(nothing is written over)")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInput(f"{out} exists and is not an empty folder; allowed: a new or empty folder "
                       "(nothing is written over)")


def codes_of(trained: Trained, layer: int, data: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """This rank's rows through hidden layer `layer` (float32), and their label values."""
    encoder = trained.family.encoder(trained.model, layer)
    dtype = next(trained.model.parameters()).dtype
    with torch.no_grad():  # the code's width, even for a rank without rows
        width = encoder(torch.zeros((1, *data.shape), dtype=dtype,
                                    device=next(trained.model.parameters()).device)).shape[1]
        codes, labels = [], []
        for x, y in in_model_type(data.train.scan(), trained.model):
            codes.append(encoder(x).float().cpu().numpy())
            if y is not None and data.classes is not None:
                labels.append(np.asarray(data.classes, dtype=object)[y.cpu().numpy()])
    x = np.concatenate(codes) if codes else np.zeros((0, width), dtype=np.float32)
    return x, (label_values(labels) if data.classes is not None else None)


def check_table(url: str, table: str) -> None:
    """BadInput unless `table` is a new table's name in the database at `url`."""
    from hvdl.data.formats import sql

    if not table:
        raise BadInput(f"--out {url} is a database; allowed: --table NAME, the new table to "
                       "write the codes to")
    with sql.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass($1)::text", (table,))
        if cur.fetchone()[0] is not None:
            raise BadInput(f"table {table} exists in {url}; allowed: a new table (nothing is "
                           "written over)")


def encode_part(trained: Trained, layer: int, data: Any, out: Path, rank: int,
                fmt: str) -> dict[str, Any]:
    """Encode this rank's shard into its part; what the manifest says of it."""
    x, y = codes_of(trained, layer, data)
    width = x.shape[1]
    layout = Layout(rows=len(x), shape=(width,), dtype=np.dtype(np.float32),
                    names=[f"f{j}" for j in range(width)],
                    label_dtype=None if y is None else y.dtype)
    writer = open_writer(out / f"part-{rank:05d}.{fmt}", fmt, layout)
    try:
        if len(x):
            writer.write(x, y)
    except BaseException:
        writer.abort()
        raise
    files = writer.commit()
    return {"rank": rank, "rows": len(x), "features": width, "files": [f.name for f in files]}


def encode_table(trained: Trained, layer: int, data: Any, url: str, table: str,
                  ctx: Any) -> int:
    """This rank's codes inserted in bulk into the new database table `table`, each row with
    what identifies its source row (a key, a ctid, or its place in the files): rank 0 creates
    the table with its rows, then the others append theirs. Returns this rank's rows."""
    import pyarrow as pa

    from hvdl.data.chunks import Piece
    from hvdl.data.formats import sql

    x, y = codes_of(trained, layer, data)
    found = [data.source.row_ids(Piece(*p)) for p in data.info["shards"][ctx.rank]["pieces"]]
    name = found[0][0] if found else "row"
    ids = np.concatenate([v for _, v in found]) if found else np.zeros(0, dtype=np.int64)
    columns = {name: ids, **{f"f{j}": x[:, j] for j in range(x.shape[1])}}
    if y is not None:
        columns["label"] = y.astype(str) if y.dtype.kind in "UO" else y
    rows = pa.table(columns)
    with sql.connect(url) as conn, conn.cursor() as cur:
        problem = None
        if ctx.is_root:
            try:
                cur.adbc_ingest(table, rows, mode="create")
            except Exception as err:  # the driver's errors: bad input on every rank below
                problem = str(sql.failure(url, err))
        problem = dist.allgather_object(problem, name="encode.create")[0]
        if problem:
            raise BadInput(problem)
        if not ctx.is_root and rows.num_rows:
            try:
                cur.adbc_ingest(table, rows, mode="append")
            except Exception as err:
                raise sql.failure(url, err) from None
    return rows.num_rows


def label_values(parts: list[np.ndarray]) -> np.ndarray:
    """The original label values (integers or strings) of the encoded rows."""
    values = np.concatenate(parts) if parts else np.zeros(0, dtype=object)
    if all(isinstance(v, (int, np.integer)) for v in values):
        return values.astype(np.int64)
    return values.astype(str)


def write_manifest(out: Path, trained: Trained, layer: int, fmt: str, parts: list[dict],
                   data: Any) -> None:
    first = 0
    for part in parts:
        part["first_row"], first = first, first + part["rows"]
    manifest = {"checkpoint": str(trained.path), "family": trained.family.name, "layer": layer,
                "format": fmt, "rows": first, "parts": parts,
                "label": "label" if data.classes else None, "data": data.info}
    text = json.dumps(manifest, indent=2, default=str) + "\n"
    if isinstance(out, S3Path):  # an object appears whole when its upload completes
        local = store.staging(out / "manifest.json")
        local.write_text(text)
        try:
            store.upload(local, out / "manifest.json")
        finally:
            local.unlink()
    else:
        write_atomic(out / "manifest.json", text)


# --- the whole of `hvdl eval` and `hvdl encode` (the commands and the Python API alike) -------

def evaluation(trained: Trained, argv: list[str], data_dir: str = "") -> dict[str, Any]:
    """The checkpoint's figures on its test split, or on the data the `--KEY VALUE` overrides
    `argv` name (a collective: the same on every rank)."""
    config = with_overrides(trained, argv, data_dir)
    ctx = dist.start(config, training=False)
    family = trained.family
    data = dataset.load(Settings.of(config), ctx, labels=family.classifier is not None,
                        images=family.images,
                        given=trained.data, splits=("test",))
    if data.test is None:
        raise BadInput(f"the checkpoint's data ({config.data.path or config.data.format}) has "
                       "no test split; allowed: data.test_path (--data.test_path FILE, with "
                       "--data.label) or data.test_fraction")
    trained.model.to(ctx.device)
    return figures(trained, data.test, data.classes)


def encoding(trained: Trained, out: Path | str, layer: int | None, fmt: str, argv: list[str],
             data_dir: str = "", table: str = "") -> dict[str, Any]:
    """Every row of the checkpoint's data (or the data `argv` names) through hidden layer
    `layer` into parts in the new or empty folder `out`, with its manifest.json, or into the
    new table `table` of the database at `out` (postgresql://...); a collective. What was
    written: rows, parts, layer, the data's name and whether it has labels."""
    layer = pick_layer(trained, layer)
    config = with_overrides(trained, argv, data_dir)
    into_table = isinstance(out, str)
    check_table(out, table) if into_table else check_out(out)
    ctx = dist.start(config, training=False)
    data = dataset.load(Settings.of(config), ctx, images=trained.family.images, given=trained.data,
                        splits=("all",))
    if into_table:
        trained.model.to(ctx.device)
        rows = dist.allgather_object(encode_table(trained, layer, data, out, table, ctx),
                                     name="encode.rows")
        return {"rows": sum(rows), "parts": len(rows), "layer": layer,
                "source": config.data.path or data.info["format"], "labels": bool(data.classes)}
    if ctx.is_root and not isinstance(out, S3Path):
        out.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    trained.model.to(ctx.device)
    parts = dist.allgather_object(encode_part(trained, layer, data, out, ctx.rank, fmt),
                                  name="encode.parts")
    if ctx.is_root:
        write_manifest(out, trained, layer, fmt, parts, data)
    dist.barrier()
    return {"rows": sum(p["rows"] for p in parts), "parts": len(parts), "layer": layer,
            "source": config.data.path or data.info["format"], "labels": bool(data.classes)}
