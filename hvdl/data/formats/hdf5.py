"""HDF5 files: a dataset's rows, read by h5py slices.

    --data.path run.h5 --data.features images --data.label digits

`data.features` names the dataset of examples (by default the one dataset that is not the
label), `data.label` the dataset of labels; rows are the first axis.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from hvdl.data.chunks import Piece
from hvdl.data.formats import ranges
from hvdl.data.formats.arrays import check_lengths, check_numeric, same_schema
from hvdl.data.formats.base import DataError, Source, Spec
from hvdl.data.formats.files import check_readable
from hvdl.data.formats.store import S3Path


def datasets(handle: Any) -> dict[str, Any]:
    """Every dataset in an open HDF5 file, by its path ("group/name")."""
    import h5py

    found: dict[str, Any] = {}

    def visit(name: str, obj: Any) -> None:  # a value returned would end the visit
        if isinstance(obj, h5py.Dataset):
            found[name] = obj

    handle.visititems(visit)
    return found


def open_hdf5(path: Path) -> Any:
    """`path` opened for reading without HDF5's data sieve, which reads 64 KiB from the start
    of any smaller read: a rank's pieces, a chunk apart, would each cost 64 KiB (more than the
    whole file over all pieces of a small one)."""
    import h5py

    if isinstance(path, S3Path):  # through ranged GETs, a buffer's worth at a time
        return h5py.File(ranges.open_file(path, buffering=1024 * 1024), "r")
    access = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    access.set_fclose_degree(h5py.h5f.CLOSE_STRONG)
    access.set_sieve_buf_size(0)
    return h5py.File(h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY, fapl=access))


class Hdf5Source(Source):
    format = "hdf5"

    def __init__(self, files: list[Path], spec: Spec, **_: Any) -> None:
        self.files, self.handles = files, []
        for f in files:
            check_readable(f)
            try:
                self.handles.append(open_hdf5(f))
            except OSError as err:
                raise DataError(f"{f}: not a complete HDF5 file ({err}); allowed: a file written "
                                "by h5py or the HDF5 library") from None
        self.key = self.features_key(spec)
        self.label_name = spec.label or None
        schemas = []
        for f, h in zip(files, self.handles):
            found = datasets(h)
            for key, what in ((self.key, "data.features"), (spec.label, "data.label")):
                if key and key not in found:
                    raise DataError(f"{what}: {f} has no dataset {key!r} (it holds "
                                    f"{', '.join(found) or 'none'}); allowed: one of those")
            schemas.append((found[self.key].shape[1:], str(found[self.key].dtype)))
        same_schema(schemas, files, "examples of")
        first = self.handles[0][self.key]
        self.dtype, self.shape = first.dtype, first.shape[1:] or (1,)
        check_numeric(self.dtype, f"{files[0]}:{self.key}")
        self.file_rows = [h[self.key].shape[0] for h in self.handles]
        if self.label_name:
            check_lengths(self.file_rows, [h[spec.label].shape[0] for h in self.handles],
                          [Path(f"{f}:{self.key}") for f in files],
                          [Path(f"{f}:{spec.label}") for f in files])

    def features_key(self, spec: Spec) -> str:
        """data.features (one key), else the one dataset of the first file that is not the label."""
        if len(spec.features) > 1:
            raise DataError(f"config key 'data.features' names {len(spec.features)} keys for "
                            "HDF5; allowed: one dataset key")
        if spec.features:
            return spec.features[0]
        found = [k for k in datasets(self.handles[0]) if k != spec.label]
        if len(found) != 1:
            raise DataError(f"{self.files[0]} holds {len(found)} datasets besides the label "
                            f"({', '.join(found) or 'none'}); allowed: data.features naming one")
        return found[0]

    def read(self, piece: Piece) -> tuple[np.ndarray, np.ndarray | None]:
        h = self.handles[piece.file]
        x = np.asarray(h[self.key][piece.start:piece.stop]).reshape(piece.rows, -1)
        return x, self.labels(piece)

    def labels(self, piece: Piece) -> np.ndarray | None:
        if not self.label_name:
            return None
        y = np.asarray(self.handles[piece.file][self.label_name][piece.start:piece.stop])
        y = y.reshape(-1)
        if y.dtype.kind in "SO":
            y = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in y])
        return y

    def position(self, piece: Piece, row: int) -> str:
        return f"{self.files[piece.file]}:{self.key} row {piece.start + row}"

    def close(self) -> None:
        for h in self.handles:
            h.close()
        self.handles = []
