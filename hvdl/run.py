"""A training run from its config to its trained model: the run folder and metadata, the resume
point, the family's trainer, the final record. `hvdl.train` (the command line) and `hvdl.fit`
(the Python API, hvdl/api.py) both call `run_training` after `dist.init`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from hvdl import checkpoint, dist
from hvdl.config import Config, ConfigError
from hvdl.errors import BadInput
from hvdl.families import FAMILIES
from hvdl.host import peak_rss_mb
from hvdl.loop import NonFiniteLoss, preemption
from hvdl.runlog import RunLog


def find_resume(config: Config) -> Path | None:
    """The checkpoint `config.resume` points at: a file, or the newest of the newest run.

    With "auto" only the newest run folder of the recipe counts: a job requeued before its first
    checkpoint starts afresh rather than from an older, finished run.
    """
    if not config.resume:
        return None
    if config.resume != "auto":
        return Path(config.resume)
    runs = sorted(p for p in Path(config.results_dir).glob(f"*-{config.recipe}") if p.is_dir())
    return checkpoint.latest(runs[-1]) if runs else None


def resume_dir(resume_from: Path | None) -> Path | None:
    """The run folder a checkpoint belongs to (`<run>/checkpoints/step-N.pt`), else None."""
    if resume_from is None or resume_from.parent.name != "checkpoints":
        return None
    run_dir = resume_from.parent.parent
    return run_dir if (run_dir / "config.toml").is_file() else None


def open_run(config: Config, ctx: dist.Context, run_dir: Path | None) -> RunLog:
    """Rank 0's run folder; every rank learns whether rank 0 could write it (a collective)."""
    problem = None
    try:
        run = RunLog(config, is_root=ctx.is_root, run_dir=run_dir)
    except ConfigError as err:
        problem = str(err)
    if ctx.collective:
        problem = dist.broadcast_object(problem, name="run.open")
    if problem:
        raise ConfigError(problem)
    return run


def check_launcher(config: Config, ctx: dist.Context) -> None:
    """`elastic = true` needs an elastic horovodrun, and an elastic horovodrun needs it."""
    if config.elastic != (ctx.controller == "elastic"):
        raise ConfigError(
            f"config key 'elastic' is {str(config.elastic).lower()} but the job was started "
            f"{'by' if ctx.controller == 'elastic' else 'without'} an elastic horovodrun; "
            "allowed: --elastic with horovodrun --min-np N --max-np M --host-discovery-script "
            "S, and elastic = false (the default) with any other launcher")


def peak_memory(ctx: dist.Context) -> list[float]:
    """Every rank's peak resident memory in MiB, in rank order (a collective)."""
    if not ctx.collective:
        return [peak_rss_mb()]
    return dist.allgather_object(peak_rss_mb(), name="memory.peak")


def announce(config: Config, ctx: dist.Context, run: RunLog,
             resume_from: Path | None) -> list[dict[str, Any]]:
    """The run's first lines and its metadata.json; every rank's host and device (a
    collective), which also name the ranks a failed collective lost."""
    run.print(f"hvdl: engine {ctx.engine} ({ctx.reason})")
    inventory = dist.inventory(ctx)
    run.write_metadata(world_size=ctx.size, inventory=inventory,
                       extra={"engine": ctx.engine, "engine_reason": ctx.reason,
                              "controller": ctx.controller,
                              "horovod": dist.knobs() if ctx.engine == "horovod" else None,
                              "resumed_from": str(resume_from) if resume_from else None})
    run.print(f"hvdl: {config.recipe} ({config.family}) on {ctx.size} rank(s), "
              f"device {ctx.device}, run folder {run.dir}"
              + (f", resumed from {resume_from}" if resume_from else "")
              + (", no checkpoint to resume" if config.resume and not resume_from else ""))
    return inventory


def run_training(config: Config, ctx: dist.Context) -> tuple[dict[str, Any], Path | None]:
    """Everything after start-up: run folder, metadata, the family's trainer, final metrics.
    Returns (the final figures, the run folder), the folder on every rank."""
    check_launcher(config, ctx)
    family = FAMILIES[config.family]
    resume_from = find_resume(config)
    state = checkpoint.load(resume_from, config) if resume_from else None
    family.check(config)  # what needs no data (a saved stack to reuse), before any is loaded
    run_dir = resume_dir(resume_from)
    run = open_run(config, ctx, run_dir)
    try:
        inventory = announce(config, ctx, run, resume_from)
        if config.perf.timeline:
            dist.start_timeline(run.dir / "horovod_timeline.json" if run.dir else None)
        with preemption.StopSignal(config.stop_check_every):  # notes a signal between loops
            try:
                final = family.train(config, ctx, run, state=state)
            except (BadInput, NonFiniteLoss, preemption.Stopped):
                raise
            except Exception as err:  # a rank or host gone: say which, not a traceback
                dist.check_peers(err, ctx, inventory)
                raise
        if config.perf.timeline:
            dist.stop_timeline()
        run.record(final=final, peak_rss_mb=peak_memory(ctx))
        folder = str(run.dir) if run.dir else None
        if ctx.collective:
            folder = dist.broadcast_object(folder, name="run.folder")
        return final, Path(folder) if folder else None
    except BadInput:
        fresh = run_dir is None and run.dir is not None and checkpoint.latest(run.dir) is None
        if fresh:  # a run that never started leaves nothing
            run.close()
            shutil.rmtree(run.dir, ignore_errors=True)
        raise
    except NonFiniteLoss as err:
        last = checkpoint.latest(run.dir) if run.dir is not None else None
        raise NonFiniteLoss(f"{err}; last good checkpoint: {last or 'none written'}") from None
    finally:
        run.close()
