"""`report`: fit the measurements, project every family on every link, write scaling.md,
scaling.json and scaling.png."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from hvdl.bench.scaling.model import (
    FLOOR,
    GPU_STEP_S,
    HOROVOD,
    LINKS,
    RANKS,
    SIZES,
    Family,
    Link,
    efficiency,
    families,
    fit,
    last_gain,
    ring,
)


def fitted_links(measured: list[dict[str, Any]]) -> list[tuple[Link, float, int]]:
    """(link, median relative error, points) fitted to each measured link's files."""
    out = []
    for name in sorted({m["link"] for m in measured}):
        points = [(m["ranks"], r["bytes"], r["median_s"]) for m in measured if m["link"] == name
                  for r in m["rows"]]
        alpha, beta, error = fit(points)
        out.append((Link(f"this machine, {name}", alpha, beta, "fitted to the measurements"),
                    error, len(points)))
    return out


def percent(x: float) -> str:
    return f"{100 * x:.0f}%"


def tables(measured: list[dict[str, Any]], fams: list[Family]) -> tuple[str, list[Link]]:
    """The report's Markdown tables, and every link (fitted, then published)."""
    lines = ["## Measured allreduce times (median of the slowest rank, µs)", "",
             "| link | ranks | hosts | engine | " + " | ".join(size_text(s) for s in SIZES) + " |",
             "|---|---:|---:|---|" + "---:|" * len(SIZES)]
    for m in sorted(measured, key=lambda m: (m["link"], m["ranks"])):
        by = {r["bytes"]: r["median_s"] for r in m["rows"]}
        lines.append(f"| {m['link']} | {m['ranks']} | {len(m['hosts'])} | {m['engine']} | "
                     + " | ".join(f"{1e6 * by[s]:,.0f}" if s in by else "" for s in SIZES)
                     + " |")
    fitted = fitted_links(measured)
    lines += ["", "## The fit: t(n, S) = α·2(n−1) + β·2(n−1)/n·S", "",
              "| link | α (µs a step) | 1/β (GB/s) | median error | points |",
              "|---|---:|---:|---:|---:|"]
    for link, error, count in fitted:
        lines.append(f"| {link.name} | {1e6 * link.alpha:.1f} | {1e-9 / link.beta:.2f} | "
                     f"{percent(error)} | {count} |")
    links = [link for link, _, _ in fitted] + LINKS
    for label, step in (("as measured on this machine's CPU", None),
                        (f"an assumed {1e3 * GPU_STEP_S:g} ms GPU step", GPU_STEP_S)):
        lines += ["", f"## Projected weak-scaling efficiency at 64 / 1024 ranks, and up to how "
                  f"many ranks it stays ≥ 50%; compute {label}", "",
                  "| family (compute, gradient) | " + " | ".join(k.name for k in links) + " |",
                  "|---|" + "---:|" * len(links)]
        for f in fams:
            g = Family(f.name, step or f.compute_s, f.grad_bytes, f.batch)
            cells = [f"{percent(efficiency(g, k, 64))} / {percent(efficiency(g, k, 1024))}, "
                     f"{gain_text(last_gain(g, k))}" for k in links]
            lines.append(f"| {f.name} ({1e3 * g.compute_s:.2f} ms, {size_text(f.grad_bytes)}) | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines), links


def two_ranks(bench: Path, fams: list[Family], links: list[Link]) -> str:
    """The model at 2 ranks over shared memory against the benchmark's measured 2-rank runs
    (mpi engine): how far the model's simplifications go on this machine."""
    shm = next((k for k in links if k.name == "this machine, shm"), None)
    rows = {r["model"]: r for r in json.loads(bench.read_text())["summary"]
            if r["ranks"] == 2 and r["impl"] == "hvdl-mpi"}
    if shm is None or not rows:
        return ""
    lines = ["## The model at 2 ranks here, against the benchmark's measured 2-rank runs", "",
             "| family | allreduce: model | measured wait | efficiency: model | measured |",
             "|---|---:|---:|---:|---:|"]
    for f in fams:
        if f.name in rows:
            r = rows[f.name]
            model_ms = 1e3 * ring(2, f.grad_bytes, shm.alpha, shm.beta)
            lines.append(f"| {f.name} | {model_ms:.2f} ms | {r['allreduce_ms']['median']:.2f} ms | "
                         f"{percent(efficiency(f, shm, 2))} | {percent(r['efficiency'])} |")
    return "\n".join(lines) + "\n\n"


def moves(fams: list[Family], link: Link) -> str:
    """Where each family stops gaining on `link` (a GPU step), and what moves that point."""
    ways = [("as it is", {}), ("per-rank batch ×4", {"batch_x": 4}),
            ("perf.sync average, K = 4", {"every": 4}), ("fp16 compression", {"fp16": True}),
            ("all three", {"batch_x": 4, "every": 4, "fp16": True})]
    lines = [f"## What moves the point: ≥ 50% efficiency up to how many ranks, {link.name}, "
             f"a {1e3 * GPU_STEP_S:g} ms GPU step", "",
             "| family | " + " | ".join(w for w, _ in ways) + " |",
             "|---|" + "---:|" * len(ways)]
    for f in fams:
        g = Family(f.name, GPU_STEP_S, f.grad_bytes, f.batch)
        lines.append(f"| {f.name} | " + " | ".join(gain_text(last_gain(g, link, **how))
                                                   for _, how in ways) + " |")
    return "\n".join(lines)


def size_text(size: float) -> str:
    for unit, scale in (("MB", 2**20), ("KB", 2**10)):
        if size >= scale:
            return f"{size / scale:g} {unit}" if size % scale == 0 else f"{size / scale:.1f} {unit}"
    return f"{size:g} B"


def gain_text(n: int | None) -> str:
    return "never" if n is None else ("1024+" if n == RANKS[-1] else str(n))


def plot(fams: list[Family], links: list[Link], out: Path) -> None:
    """Efficiency against ranks, one panel a family, a line a link (solid: this machine's CPU
    compute; dashed: the assumed GPU step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(fams), figsize=(4 * len(fams), 4.6), sharey=True)
    for ax, f in zip(np.atleast_1d(axes), fams):
        for i, link in enumerate(links):
            color = f"C{i}"
            for step, style in ((f.compute_s, "-"), (GPU_STEP_S, "--")):
                g = Family(f.name, step, f.grad_bytes, f.batch)
                ax.plot(RANKS, [efficiency(g, link, n) for n in RANKS], style, color=color,
                        label=link.name if style == "-" else None)
        ax.axhline(FLOOR, color="grey", lw=0.5)
        ax.set(xscale="log", title=f"{f.name} ({size_text(f.grad_bytes)})", xlabel="ranks",
               ylim=(0, 1.02))
        ax.set_xticks(RANKS[::3], [str(n) for n in RANKS[::3]])
    np.atleast_1d(axes)[0].set_ylabel("weak-scaling efficiency")
    handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False,
               title=f"solid: this machine's CPU step; dashed: an assumed {1e3 * GPU_STEP_S:g} "
                     "ms GPU step", title_fontsize=8)
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def report(args: argparse.Namespace) -> int:
    """Fit and project from measurement files; write scaling.md, scaling.json, scaling.png."""
    measured = [json.loads(Path(p).read_text()) for p in args.measured]
    fams = families(Path(args.bench))
    text, links = tables(measured, fams)
    check = efficiency(HOROVOD, LINKS[0], 512)
    text += "\n\n" + two_ranks(Path(args.bench), fams, links) + moves(fams, LINKS[0])
    text += "\n\n" + "\n".join([
        "## Against Horovod's published figure", "",
        f"{HOROVOD.name}: {size_text(HOROVOD.grad_bytes)} of gradients, at most "
        f"{HOROVOD.compute_s:.3f} s of compute a step; the model gives {percent(check)} at 512 "
        f"ranks on {LINKS[0].name} with nothing overlapped, where Horovod measured 90% "
        "(its allreduces overlap the backward pass)."])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.md").write_text(text + "\n")
    (out / "scaling.json").write_text(json.dumps({
        "links": [vars(link) for link in links], "families": [vars(f) for f in fams],
        "horovod_check": check, "measured": [m["link"] + f"/{m['ranks']}" for m in measured],
    }, indent=1) + "\n")
    plot(fams, links, out / "scaling.png")
    print(f"scaling: {len(measured)} measurement file(s), {len(links)} links: {out}")
    return 0
