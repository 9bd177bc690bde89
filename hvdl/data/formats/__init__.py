"""Every format hvdl reads, in one table: what `data.format` names and how its splits open.

    train, test = formats.open_splits(config, local)     # the [data] section's dataset
    source = formats.open_source(Spec(format="csv", path="data/*.csv", label="digit"))

| format | reader | one example | labels |
|---|---|---|---|
| npy | arrays.NpySource | a row of a .npy array (or an N-d slice) | a .npy file of N |
| idx | idx.IdxSource | a row of an IDX file (MNIST's format) | an IDX file of N |
| hdf5 | hdf5.Hdf5Source | a row of a dataset (`data.features`: its key) | a dataset's key |
| csv | delimited.CsvSource | a line of numeric columns | a column |
| parquet | parquet.ParquetSource | a row of numeric columns | a column |
| images | images.ImageSource | an image file | its folder's name (a level) |
| mnist | mnist.open_split | MNIST's IDX pairs, train and t10k | the digits |
| patches | patches.PatchSource | a natural-image patch, drawn, whitened | none |
| sql | sql.TableSource | a row of a PostgreSQL table or query | a column |

The readers import only base.py (Source, Spec, DataError), files.py (finding files, gzip copies),
ranges.py (reading bytes, local or s3://) and store.py (s3:// objects); this module imports
them, and nothing imports it back.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from hvdl.data.formats import arrays, delimited, hdf5, idx, images, mnist, parquet, sql
from hvdl.data.formats.base import FILE_FORMATS, DataError, Local, Source, Spec
from hvdl.data.formats.files import decompress, default_cache, expand, infer_format, of_format
from hvdl.data.formats.patches import PatchSource
from hvdl.data.settings import Settings

READERS: dict[str, Callable[..., Source]] = {
    "npy": arrays.NpySource, "idx": idx.IdxSource, "hdf5": hdf5.Hdf5Source,
    "csv": delimited.CsvSource, "parquet": parquet.ParquetSource, "images": images.ImageSource,
}


def open_source(spec: Spec, *, local: Local | None = None, **options: Any) -> Source:
    """The reader for `spec`; `local` gives gzip files a decompressed copy (default: here)."""
    if spec.format == "sql" or sql.is_database(spec.path):
        if not sql.is_database(spec.path):
            raise DataError(f"data.path {spec.path!r} is not a database URL for format sql; "
                            "allowed: postgresql://user@host:port/db")
        return sql.TableSource(spec, **options)
    local = local or (lambda p: decompress(p, default_cache()))
    files = expand(spec.path)
    fmt = spec.format or infer_format(files, spec.path)
    if fmt not in FILE_FORMATS:
        raise DataError(f"config key 'data.format' is {fmt!r} for files; allowed: "
                        f"{', '.join(FILE_FORMATS)}")
    files = of_format(files, fmt)
    if not files:
        raise DataError(f"data.path {spec.path}: no {fmt} files there; allowed: a folder or glob "
                        f"of {fmt} files")
    return READERS[fmt](files, spec, local=local, **options)


def data_format(config: Settings) -> str:
    """data.format; sql for a database URL, mnist when neither a format nor a path is given,
    else "" (the files tell)."""
    if config.data.format or sql.is_database(config.data.path):
        return config.data.format or "sql"
    return "" if config.data.path else "mnist"


def mnist_splits(config: Settings, local: Local) -> tuple[Source, Source | None]:
    """MNIST's training and t10k files, from data.path or data_dir (hvdl fetch gets them)."""
    folder = mnist.resolve_data_dir(config.data.path or config.data_dir)
    return mnist.open_split(folder, "train", local), mnist.open_split(folder, "test", local)


def patch_splits(config: Settings, local: Local) -> tuple[Source, Source | None]:
    """Natural-image patches drawn from the [patches] section's images; no test split."""
    p = config.patches
    return PatchSource(p.source, count=p.count, size=p.size, seed=config.seed,
                       zca_epsilon=p.zca_epsilon if p.zca else None), None


def file_splits(config: Settings, local: Local) -> tuple[Source, Source | None]:
    """data.path's files, and data.test_path's with the same layout, in their READERS format."""
    spec = config.data
    files = Spec(format=spec.format, path=spec.path, label=spec.label, features=spec.features)
    train = open_source(files, local=local, split_mb=spec.chunk_mb)
    test = None
    if spec.test_path:
        test = open_source(dataclasses.replace(files, path=spec.test_path,
                                               label=spec.test_label or spec.label,
                                               format=spec.format or train.format),
                           local=local, split_mb=spec.chunk_mb)
        if test.features != train.features:
            raise DataError(f"data.test_path {spec.test_path} has {test.features} features per "
                            f"row, the training data {train.features}; allowed: the same layout")
    return train, test


def sql_splits(config: Settings, local: Local) -> tuple[Source, Source | None]:
    """A PostgreSQL table or query (data.path: its server's URL); the test rows are held out by
    data.test_fraction."""
    spec = config.data
    if spec.test_path:
        raise DataError("data.test_path is not read for format sql; allowed: data.test_fraction "
                        "(or a second run on a query of the test rows)")
    return open_source(Spec(format="sql", path=spec.path, label=spec.label,
                            features=spec.features, table=spec.table, query=spec.query,
                            key=spec.key), split_mb=spec.chunk_mb), None


# What opens each data.format's splits ("": the files' format, from their names).
SPLITS: dict[str, Callable[[Settings, Local], tuple[Source, Source | None]]] = {
    "mnist": mnist_splits, "patches": patch_splits, "sql": sql_splits, "": file_splits,
    **{fmt: file_splits for fmt in READERS},
}


def open_splits(config: Settings, local: Local) -> tuple[Source, Source | None]:
    """(training source, test source or None) as the config describes them."""
    return SPLITS[data_format(config)](config, local)
