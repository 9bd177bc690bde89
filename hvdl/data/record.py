"""What a run records of its data: `data.json` (and its summary in metadata.json, checkpoints)
and the start-up line."""

from __future__ import annotations

from typing import Any

from hvdl.data import chunks
from hvdl.data.formats import data_format
from hvdl.data.formats.base import Source
from hvdl.data.formats.files import fingerprint
from hvdl.data.formats.patches import PatchSource
from hvdl.data.plan import Plan
from hvdl.data.settings import Settings
from hvdl.data.survey import Classes, Scale, Survey
from hvdl.dist import Context


def record(config: Settings, source: Source, p: Plan, *, shape: tuple[int, ...],
           layout: tuple[int, ...], classes: Classes | None, scale: Scale, found: Survey,
           test_found: Survey | None, span: tuple[float, float] | None,
           hold: bool, budget_bytes: int, pieces: list, memory: list,
           seconds: float) -> dict[str, Any]:
    """What data.json records of the dataset and of how it was shared out."""
    spec = config.data
    listing = source.listing

    def counts(s: Survey | None) -> list[int] | None:
        if s is None or classes is None:
            return None
        return [s.labels.get(str(name), 0) for name in classes.names]

    return {
        "format": data_format(config) or source.format, "path": spec.path,
        "test": test_text(config, p),
        "files": [str(f) for f in listing[:1000]], "file_count": len(listing),
        "fingerprint": fingerprint(listing) if listing[0].exists() else None,
        "rows": {"train": chunks.total(p.train), "test": chunks.total(p.test)},
        "features": source.features, "shape": list(shape), "stored_shape": list(layout),
        "picture": picture(source, layout),
        "columns": source.columns()[:1000],
        "label": source.label_name, "classes": list(classes.names) if classes else None,
        "class_counts": {"train": counts(found), "test": counts(test_found)},
        "scale": scale.to_dict(),
        "range": {"stored": found.span(), "scaled": span},  # the training rows' values
        "chunk_rows": p.chunk_rows, "chunks": p.chunks,
        "memory": "device" if hold else "stream", "budget_mb": budget_bytes / 2**20,
        "buffer_mb": spec.buffer_mb, "load_seconds": seconds,
        "rss_mb": [{"rank": r, "before": m[0], "after": m[1]} for r, m in enumerate(memory)],
        "shards": [{"rank": r, "rows": sum(b - a for _, a, b in mine), "pieces": mine}
                   for r, mine in enumerate(pieces)],
    }


def picture(source: Source, layout: tuple[int, ...]) -> list[int] | None:
    """One gray example's (height, width): an (H, W) or (1, H, W) layout, or a patch."""
    if isinstance(source, PatchSource):
        return [source.size, source.size]
    if len(layout) == 3 and layout[0] == 1:
        layout = layout[1:]
    return list(layout) if len(layout) == 2 else None


def test_text(config: Settings, p: Plan) -> str | None:
    """Where the test split comes from, in words."""
    if p.test_source is None or not p.test:
        return None
    if config.data.test_fraction:
        return (f"{config.data.test_fraction} of the rows, held out by the chunk rule from seed "
                f"{config.seed}")
    return ", ".join(str(f) for f in p.test_source.listing[:10])


def scaling(info: dict[str, Any]) -> str:
    """How the values were scaled, in words: "values [0, 255] scaled (unit) to [0, 1]"."""
    kind, stored, scaled = info["scale"]["kind"], info["range"]["stored"], info["range"]["scaled"]
    if stored is None:
        return f"scale {kind}"
    if kind == "none":
        return f"values [{stored[0]:.4g}, {stored[1]:.4g}], not scaled"
    return (f"values [{stored[0]:.4g}, {stored[1]:.4g}] scaled ({kind}) to "
            f"[{scaled[0]:.4g}, {scaled[1]:.4g}]")


def startup_line(info: dict[str, Any], ctx: Context) -> str:
    """The line that says what is trained on and how it is held (`info`: `record`'s)."""
    classes = f", {len(info['classes'])} classes" if info["classes"] else ", unlabelled"
    files = f"{info['file_count']} file{'s' if info['file_count'] > 1 else ''}"
    if info["format"] == "sql":  # a table or query: "<url> table NAME"
        files = info["files"][0].split(" ", 1)[1]
    n_train, n_test = info["rows"]["train"], info["rows"]["test"]
    shard = n_train // ctx.size * info["features"] * 4
    how = (f"held in memory on {ctx.device}" if info["memory"] == "device" else
           f"streamed through a {info['buffer_mb']:g} MB buffer")
    return (f"hvdl: data: {info['format']} {info['path'] or '(bundled)'} ({files}): "
            f"{n_train:,} training rows × {info['features']} features{classes}, {n_test:,} test "
            f"rows; {scaling(info)}; chunks of {info['chunk_rows']:,} rows; "
            f"shard {n_train // ctx.size:,} rows "
            f"({shard / 2**20:,.1f} MB) per rank, budget {info['budget_mb']:,.0f} MB: {how}; "
            f"read in {info['load_seconds']:.1f} s")
