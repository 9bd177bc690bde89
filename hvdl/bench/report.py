"""The benchmark's summary: medians and spreads, the machine, and bench.json, bench.md, bench.png.

Used by hvdl/bench/suite.py. Scaling efficiency of an implementation at N ranks is its total
throughput over N times its own throughput at one rank (weak scaling: the batch per rank is
fixed); `vs plain` is throughput over the single-process PyTorch loop's.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from hvdl.runlog import git_state, versions

FIGURES = ("step_ms", "samples_per_s", "samples_per_s_per_rank", "compute_ms", "allreduce_ms",
           "main_cpu_ms", "peak_memory_mb")
ROOT = Path(__file__).resolve().parent.parent


def progress_line(entry: dict[str, Any]) -> str:
    head = f"{entry['model']:7s} {entry['impl']:20s} ranks {entry['ranks']} " \
           f"repeat {entry['repeat']}:"
    if "error" in entry:
        return f"{head} FAILED\n{entry['error'][-800:]}"
    r = entry["report"]
    return (f"{head} {r['step_ms']:.2f} ms/step, {r['samples_per_s']:.0f} samples/s, "
            f"allreduce {r['allreduce_ms']:.2f} ms, others used "
            f"{100 * entry['interference']:.0f}% of the machine")


def machine() -> dict[str, Any]:
    """Host, CPU model, cores, memory and accelerator of this machine."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(),
                            "platform": platform.platform()}
    if hasattr(os, "sysconf"):
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                                  / 2**30, 1)
    import torch

    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, impl, ranks): each figure's median, min and max over repeats."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["model"], run["impl"], run["ranks"]), []).append(run)
    rows = []
    for (model, impl, ranks), group in groups.items():
        reports = [g["report"] for g in group if "report" in g]
        row: dict[str, Any] = {"model": model, "impl": impl, "ranks": ranks,
                               "threads": group[0]["threads"], "runs": len(reports),
                               "failed": len(group) - len(reports),
                               "interference": max(g.get("interference", 0.0) for g in group)}
        for key in FIGURES if reports else ():
            row[key] = spread([r[key] for r in reports])
        rows.append(row)
    for row in rows:
        add_ratios(row, rows)
    return rows


def add_ratios(row: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Scaling efficiency against the same implementation at one rank, and ratio to plain."""
    def median(model: str, impl: str, ranks: int) -> float | None:
        for r in rows:
            if (r["model"], r["impl"], r["ranks"]) == (model, impl, ranks) and "step_ms" in r:
                return r["samples_per_s"]["median"]
        return None

    if "step_ms" not in row:
        return
    mine = row["samples_per_s"]["median"]
    one = median(row["model"], row["impl"], 1)
    plain = median(row["model"], "plain", 1)
    row["efficiency"] = mine / (row["ranks"] * one) if one else None
    row["vs_plain"] = mine / plain if plain else None


# The goals on a 2-core machine, checked for every engine variant of hvdl.
ENGINE_IMPLS = ("hvdl", "hvdl-mpi", "hvdl-torch", "hvdl-single")
VS_PLAIN, VS_DDP, SCALING = 0.97, 1.3, 0.95


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The goals, for every model and hvdl engine that has the runs they need: at 1 rank at
    least 0.97x the plain loop; at N ranks at least 1.3x DDP and 95% weak scaling."""
    found = {(r["model"], r["impl"], r["ranks"]): r for r in rows if "step_ms" in r}
    checks = []
    for (model, impl, ranks), row in found.items():
        if impl not in ENGINE_IMPLS:
            continue
        if ranks == 1 and row.get("vs_plain"):
            checks.append({"model": model, "target": f"{impl} at 1 rank >= {VS_PLAIN}x plain",
                           "value": row["vs_plain"], "met": row["vs_plain"] >= VS_PLAIN})
        if ranks == 1:
            continue
        ddp = found.get((model, "ddp", ranks))
        if ddp:
            ratio = row["samples_per_s"]["median"] / ddp["samples_per_s"]["median"]
            checks.append({"model": model, "target": f"{impl} at {ranks} ranks >= {VS_DDP}x DDP",
                           "value": ratio, "met": ratio >= VS_DDP})
        if row.get("efficiency"):
            checks.append({"model": model,
                           "target": f"{impl} scaling 1 -> {ranks} >= {SCALING:.0%}",
                           "value": row["efficiency"], "met": row["efficiency"] >= SCALING})
    return checks


def timeline_phases(path: Path) -> dict[str, dict[str, float]]:
    """Median and count of each phase's duration (ms) per tensor in a Horovod timeline.

    NEGOTIATE_ALLREDUCE runs from the first rank's request to the last one's, as rank 0's
    background thread sees them at its cycles: rank skew plus cycle waits. The processing
    phases (ALLREDUCE, with MPI_ALLREDUCE or GLOO_ALLREDUCE inside) are the collective itself.
    """
    text = path.read_text().rstrip().rstrip(",")
    events = json.loads(text if text.endswith("]") else text + "]")  # a live file is open
    names = {e["pid"]: e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name" and "name" in e["args"]}
    stacks: dict[int, list[tuple[str, float]]] = {}
    spans: dict[str, list[float]] = {}
    for e in events:
        if e.get("ph") == "B":
            stacks.setdefault(e["pid"], []).append((e["name"], e["ts"]))
        elif e.get("ph") == "E" and stacks.get(e["pid"]):
            name, start = stacks[e["pid"]].pop()
            key = f"{names.get(e['pid'], e['pid'])} {name}"
            spans.setdefault(key, []).append((e["ts"] - start) / 1e3)
    return {k: {"median_ms": statistics.median(v), "count": len(v)} for k, v in spans.items()}


def assemble(options: dict[str, Any], runs: list[dict[str, Any]], conditions: dict[str, Any],
             argv: list[str] | None, out: Path | None = None) -> dict[str, Any]:
    rows = summarise(runs)
    timelines = {path.name: timeline_phases(path)
                 for path in sorted(out.glob("timeline-*.json"))} if out else {}
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": "python -m hvdl.bench " + " ".join(sys.argv[1:] if argv is None else argv),
            "options": options, "machine": machine(), "versions": versions(),
            "git": git_state(ROOT), "conditions": conditions, "summary": rows,
            "targets": targets(rows), "timelines": timelines, "runs": runs}


def fmt(figure: dict[str, float] | None, digits: int = 0) -> str:
    if not figure:
        return "–"
    return (f"{figure['median']:.{digits}f} "
            f"({figure['min']:.{digits}f}–{figure['max']:.{digits}f})")


def markdown(result: dict[str, Any]) -> str:
    m, v = result["machine"], result["versions"]
    lines = [f"# hvdl benchmark, {result['date']}", "",
             f"`{result['command']}`", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m.get('memory_gb')} GB, GPU: {m['gpu']}."
             f" Versions: Python {v['python']}, torch {v['torch']}, Horovod {v['horovod']}."
             f" Load average before/after: {result['conditions']['load_before'][0]:.2f} / "
             f"{result['conditions']['load_after'][0]:.2f}. Commit {result['git']['commit']}"
             f"{' (dirty)' if result['git']['dirty'] else ''}.", "",
             "Median (min–max) over repeats. Scaling efficiency: throughput / (ranks × the same "
             "implementation's throughput at 1 rank). Allreduce: time a step waits for gradient "
             "averaging; compute: a step without it, all ranks running; CPU: the training "
             "thread's CPU time per step; peak MB: peak resident memory per rank (GPU: peak "
             "allocated); others: the most of the machine other processes used during one of "
             "the row's runs.", "",
             "| model | impl | ranks | threads/rank | step ms | samples/s per rank | samples/s "
             "total | vs plain | scaling eff. | allreduce ms | compute ms | CPU ms | peak MB | "
             "others |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["summary"]:
        if "step_ms" not in r:
            lines.append(f"| {r['model']} | {r['impl']} | {r['ranks']} | {r['threads']} | "
                         "failed | | | | | | | | | |")
            continue
        ratio = lambda key: f"{r[key]:.3f}" if r.get(key) else "–"  # noqa: E731
        lines.append(
            f"| {r['model']} | {r['impl']} | {r['ranks']} | {r['threads']} | "
            f"{fmt(r['step_ms'], 2)} | {r['samples_per_s_per_rank']['median']:.0f} | "
            f"{fmt(r['samples_per_s'])} | {ratio('vs_plain')} | {ratio('efficiency')} | "
            f"{r['allreduce_ms']['median']:.2f} | {r['compute_ms']['median']:.2f} | "
            f"{r['main_cpu_ms']['median']:.2f} | {r['peak_memory_mb']['median']:.0f} | "
            f"{100 * r['interference']:.0f}% |")
    if result["targets"]:
        lines += ["", "| model | target | value | met |", "|---|---|---|---|"]
        lines += [f"| {t['model']} | {t['target']} | {t['value']:.3f} | "
                  f"{'yes' if t['met'] else 'no'} |" for t in result["targets"]]
    for name, phases in result.get("timelines", {}).items():
        lines += ["", f"Horovod timeline `{name}` (rank 0's view of the timed steps):", "",
                  "| tensor and phase | median ms | count |", "|---|---|---|"]
        lines += [f"| {k} | {v['median_ms']:.3f} | {v['count']} |" for k, v in phases.items()]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Total throughput and scaling efficiency against ranks, one column per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["summary"] if "step_ms" in r]
    models = list(dict.fromkeys(r["model"] for r in rows)) or ["none"]
    fig, axes = plt.subplots(2, len(models), figsize=(4 * len(models), 6.5), squeeze=False)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = {impl: palette[i % len(palette)]
               for i, impl in enumerate(dict.fromkeys(r["impl"] for r in rows))}
    for col, model in enumerate(models):
        for impl in dict.fromkeys(r["impl"] for r in rows if r["model"] == model):
            mine = sorted((r for r in rows if r["model"] == model and r["impl"] == impl),
                          key=lambda r: r["ranks"])
            ranks = [r["ranks"] for r in mine]
            style = "s" if impl == "plain" else "o-"
            axes[0][col].plot(ranks, [r["samples_per_s"]["median"] for r in mine], style,
                              color=colours[impl], label=impl)
            eff = [(r["ranks"], r["efficiency"]) for r in mine if r.get("efficiency")]
            if impl != "plain" and eff:
                axes[1][col].plot(*zip(*eff), style, color=colours[impl], label=impl)
        axes[0][col].set_title(model)
        axes[0][col].set_ylabel("samples/s (all ranks)")
        axes[1][col].set_ylabel("scaling efficiency")
        axes[1][col].set_xlabel("ranks")
        axes[1][col].axhline(0.9, color="grey", linestyle=":", linewidth=1)
        for ax in axes[:, col]:
            ax.set_xticks(sorted({r["ranks"] for r in rows}))
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.suptitle(f"hvdl benchmark {result['date'][:10]} on {result['machine']['cpu']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(result: dict[str, Any], out: Path) -> None:
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(result))
    plot(result, out / "bench.png")
