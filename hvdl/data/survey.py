"""What one pass over the data learns: checks, class vocabulary, normalisation statistics.

Every rank surveys its own pieces (`Survey`); the ranks' surveys are gathered and merged in rank
order (`merge`), so every rank ends with the same vocabulary and the same `Scale`, those of the
whole training set, as one process reading everything would.

- Checks: NaN, infinite and missing (empty CSV cells) feature values are counted, and the first
  is located in the user's words (file, line or row, column).
- Labels: any integer or string values; the vocabulary is their sorted set (numerically when
  every label is an integer), and a label's class index is its place in it.
- `data.scale`: `unit` divides by 255; `standardize` subtracts the mean and divides by the
  standard deviation (population, per channel for (C, H, W) and (H, W) examples, else per
  feature; a constant feature is divided by 1); `minmax` maps each feature's (channel's) range to
  [0, 1]. Moments are merged with Chan et al.'s pairwise update, in float64.

`survey` is that pass over a rank's pieces (copying them into memory when the shard is held);
`decoder` reads a piece as the shards serve it, scaled and with class indices.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hvdl.data import chunks
from hvdl.data.chunks import Piece
from hvdl.data.formats.base import DataError, Source


def groups(shape: tuple[int, ...]) -> tuple[int, int]:
    """(groups, features per group): channels of image-shaped examples, else single features."""
    if len(shape) == 3:
        return shape[0], shape[1] * shape[2]
    if len(shape) == 2:
        return 1, shape[0] * shape[1]
    return int(np.prod(shape)), 1


@dataclass
class Moments:
    """Count, mean, sum of squared deviations, minimum and maximum of each group."""

    n: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def empty(cls, count: int) -> Moments:
        zeros = np.zeros(count)
        return cls(zeros.copy(), zeros.copy(), zeros.copy(), np.full(count, np.inf),
                   np.full(count, -np.inf))

    @classmethod
    def of(cls, x: np.ndarray, shape: tuple[int, ...]) -> Moments:
        g, per = groups(shape)
        v = x.reshape(len(x), g, per).astype(np.float64)  # (k, groups, per group)
        n = np.full(g, float(len(x) * per))
        if not len(x):
            return cls.empty(g)
        mean = v.mean(axis=(0, 2))
        m2 = ((v - mean[None, :, None]) ** 2).sum(axis=(0, 2))
        return cls(n, mean, m2, v.min(axis=(0, 2)), v.max(axis=(0, 2)))

    def merge(self, other: Moments) -> Moments:
        n = self.n + other.n
        safe = np.where(n > 0, n, 1)
        delta = other.mean - self.mean
        mean = self.mean + delta * other.n / safe
        m2 = self.m2 + other.m2 + delta ** 2 * self.n * other.n / safe
        return Moments(n, mean, m2, np.minimum(self.lo, other.lo), np.maximum(self.hi, other.hi))


@dataclass
class Survey:
    """One rank's findings over its pieces of one split (gathered, then merged)."""

    rows: int = 0
    bad_values: int = 0
    first_bad: str | None = None
    labels: Counter = field(default_factory=Counter)
    moments: Moments | None = None
    lo: np.ndarray | None = None  # each group's smallest and largest value, as stored
    hi: np.ndarray | None = None

    def add(self, x: np.ndarray, y: np.ndarray | None, *, shape: tuple[int, ...],
            moments: bool, where: Callable[[int, int], str]) -> None:
        """Check and count one piece's rows (x float32 (k, features), y raw labels)."""
        self.rows += len(x)
        bad = ~np.isfinite(x)
        if bad.any():
            self.bad_values += int(bad.sum())
            if self.first_bad is None:
                row, col = (int(i[0]) for i in np.nonzero(bad))
                self.first_bad = where(row, col)
        if len(x) and not self.bad_values:  # data with bad values are refused by `check`
            v = x.reshape(len(x), *groups(shape))
            self.widen(v.min(axis=(0, 2)), v.max(axis=(0, 2)))
        if y is not None:
            keys, counts = np.unique(label_keys(y), return_counts=True)
            self.labels.update(dict(zip(keys.tolist(), counts.tolist())))
        if moments:
            found = Moments.of(x, shape)
            self.moments = found if self.moments is None else self.moments.merge(found)

    def widen(self, lo: np.ndarray | None, hi: np.ndarray | None) -> None:
        """Take in another part's per-group range."""
        if lo is not None:
            self.lo = lo if self.lo is None else np.minimum(self.lo, lo)
            self.hi = hi if self.hi is None else np.maximum(self.hi, hi)

    def span(self) -> tuple[float, float] | None:
        """(smallest, largest) stored value over every group, None without rows."""
        return None if self.lo is None else (float(self.lo.min()), float(self.hi.max()))


def merge(surveys: list[Survey]) -> Survey:
    """The ranks' surveys as one, in rank order (every rank computes the same)."""
    out = Survey()
    for s in surveys:
        out.rows += s.rows
        out.bad_values += s.bad_values
        out.first_bad = out.first_bad or s.first_bad
        out.labels.update(s.labels)
        out.widen(s.lo, s.hi)
        if s.moments is not None:
            out.moments = s.moments if out.moments is None else out.moments.merge(s.moments)
    return out


def check(survey: Survey, split: str) -> None:
    if survey.bad_values:
        raise DataError(f"{survey.bad_values} NaN, infinite or missing feature values in the "
                        f"{split} data, the first at {survey.first_bad}; allowed: finite numbers "
                        "(drop or fill those rows first)")


def label_keys(y: np.ndarray) -> np.ndarray:
    """Raw labels as the strings that name their classes ("3", "cat"); integral floats as ints."""
    if y.dtype.kind in "biu":
        return y.astype(np.int64).astype(str)
    if y.dtype.kind == "f":
        integral = np.all(np.isfinite(y)) and np.all(y == np.round(y))
        return (y.astype(np.int64) if integral else y).astype(str)
    return np.asarray([str(v) for v in y]) if y.dtype.kind == "O" else y.astype(str)


def vocabulary(keys: Any) -> list[Any]:
    """The sorted classes: integers when every key is one, else strings."""
    keys = list(keys)
    try:
        return sorted(int(k) for k in keys)
    except ValueError:
        return sorted(str(k) for k in keys)


@dataclass(frozen=True)
class Classes:
    """Label values -> class indices, through the vocabulary every rank agreed on."""

    names: tuple[Any, ...]

    def index(self, y: np.ndarray, where: Callable[[int], str]) -> np.ndarray:
        keys, inverse = np.unique(label_keys(y), return_inverse=True)
        table = {str(name): i for i, name in enumerate(self.names)}
        missing = [k for k in keys.tolist() if k not in table]
        if missing:
            row = int(np.flatnonzero(label_keys(y) == missing[0])[0])
            shown = ", ".join(map(str, self.names[:20])) + (", ..." if len(self.names) > 20
                                                            else "")
            raise DataError(f"label {missing[0]!r} at {where(row)} is not a class of the training "
                            f"data; allowed: {shown}")
        return np.array([table[k] for k in keys.tolist()], dtype=np.int64)[inverse]


@dataclass(frozen=True)
class Scale:
    """x ↦ (x − shift) / div for each feature (data.scale); identity for `none`."""

    kind: str
    shift: np.ndarray  # (features,) float32
    div: np.ndarray  # (features,) float32

    @classmethod
    def fit(cls, kind: str, moments: Moments | None, shape: tuple[int, ...]) -> Scale:
        g, per = groups(shape)
        if kind in ("none", "unit"):
            shift, div = np.zeros(g), np.full(g, 255.0 if kind == "unit" else 1.0)
        elif kind == "standardize":
            std = np.sqrt(moments.m2 / np.maximum(moments.n, 1))
            shift, div = moments.mean, np.where(std > 0, std, 1.0)
        else:  # minmax
            span = moments.hi - moments.lo
            shift, div = moments.lo, np.where(span > 0, span, 1.0)
        return cls(kind, np.repeat(shift, per).astype(np.float32),
                   np.repeat(div, per).astype(np.float32))

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> Scale:
        return cls(saved["kind"], np.asarray(saved["shift"], dtype=np.float32),
                   np.asarray(saved["div"], dtype=np.float32))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "shift": self.shift.tolist(), "div": self.div.tolist()}

    def span(self, found: Survey, shape: tuple[int, ...]) -> tuple[float, float] | None:
        """(smallest, largest) scaled value of the surveyed data (each group's range mapped
        through its own shift and divisor), None without rows."""
        if found.lo is None:
            return None
        per = groups(shape)[1]
        shift, div = self.shift[::per], self.div[::per]
        return (float(((found.lo - shift) / div).min()), float(((found.hi - shift) / div).max()))

    def apply_(self, x: torch.Tensor) -> torch.Tensor:
        """Scale rows (k, features) in place on their device (held and streamed shards alike)."""
        if self.kind != "none":
            x.sub_(torch.from_numpy(self.shift).to(x.device)).div_(
                torch.from_numpy(self.div).to(x.device))
        return x


# --- one pass over a rank's pieces -----------------------------------------------------------

def survey(source: Source, pieces: list[Piece], shape: tuple[int, ...], *, moments: bool,
           into: torch.Tensor | None = None) -> tuple[Survey, list[np.ndarray | None]]:
    """Check and count the pieces; copy them into `into` (rows, features) when given.

    The pieces are read in file order and their findings merged in the pieces' own order, so the
    figures do not depend on how a format groups its rows."""
    parts, names = {}, []
    for offset, piece in chunks.in_file_order(pieces):
        raw, y = source.read(piece)
        x = raw.astype(np.float32, copy=False)

        def where(row: int, col: int, piece: Piece = piece) -> str:
            names[:] = names or source.feature_names()
            return f"{source.position(piece, row)} column {names[col]!r}"

        part = Survey()
        part.add(x, y, shape=shape, moments=moments, where=where)
        parts[offset] = (part, y)
        if into is not None:
            into[offset:offset + len(x)] = torch.from_numpy(x).to(into.device)
    found = merge([parts[o][0] for o in sorted(parts)])
    return found, [parts[o][1] for o in sorted(parts)]


def class_index(classes: Classes, source: Source, pieces: list[Piece],
                labels: list[np.ndarray]) -> np.ndarray:
    parts = [classes.index(y, lambda row, p=p: source.position(p, row))
             for p, y in zip(pieces, labels)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def decoder(source: Source, classes: Classes | None) -> Callable:
    """A piece's rows as a streamed shard stores them: float32, unscaled (the shard scales a
    whole window in place, with a held shard's arithmetic); labels as class indices."""
    def decode(piece: Piece) -> tuple[np.ndarray, np.ndarray | None]:
        raw, y = source.read(piece)
        x = np.require(raw, np.float32, ["C", "W"])  # a copy only where the source gave none
        if classes is None or y is None:
            return x, None
        return x, classes.index(y, lambda row: source.position(piece, row))
    return decode
