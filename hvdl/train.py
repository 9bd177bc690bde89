"""Train a model from a recipe in `models/`, data-parallel over however many ranks are launched.

    python -m hvdl.train                                   # one process, LeNet-5 on MNIST
    horovodrun -np 4 python -m hvdl.train --model dbn_mnist --epochs 50
    mpirun -np 4 python -m hvdl.train --model sae_patches
    srun --mpi=pmix python -m hvdl.train --model lenet5     # inside a Slurm allocation
    tensorboard --logdir results/runs

`--model NAME` picks `models/NAME.toml` (or a path to a .toml); every other `--key value` overrides
one config field (`--section.key value` for a section; see hvdl/config.py). `--resume` alone means
`--resume auto`: the newest checkpoint of the newest run of this recipe under `results_dir`
(slurm/train.sh adds it when Slurm requeues the job); `--resume PATH` names a checkpoint.

Exit status, the same on every rank:
    0  training finished, or SIGTERM/SIGUSR1 stopped it after a checkpoint (hvdl/preemption.py)
    1  the loss or the weights became NaN or infinite; the last good checkpoint is kept
    2  bad input, found before any work: one line on rank 0, no files left behind (the cases
       and their messages: results/bad_input.md)
A rank that dies makes the launcher end the job with its own non-zero status (tests/test_faults.py).
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from hvdl import checkpoint, dist
from hvdl import config as configlib
from hvdl.config import Config, ConfigError
from hvdl.dist import LaunchError
from hvdl.engine import NonFiniteLoss
from hvdl.errors import BadInput
from hvdl.host import peak_rss_mb
from hvdl.preemption import Stopped
from hvdl.runlog import RunLog

TRAINERS = {"cnn": "cnn", "sae": "autoencoder", "stacked_ae": "autoencoder",
            "rbm": "rbm", "dbn": "rbm", "deep_ae": "rbm"}
BAD_INPUT = BadInput
USAGE = """usage: python -m hvdl.train [--model RECIPE] [--KEY VALUE ...]
recipes: {recipes}
keys: see hvdl/config.py (sections as --sae.rho 0.1); a resolved config.toml is in each run folder
"""


class UsageExit(SystemExit):
    """Exit after a one-line explanation (printed by rank 0 only): 2 bad input, 1 failed run."""


def launcher_rank() -> int:
    """This process's rank as the launcher announces it, readable before Horovod starts."""
    for var in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def fail(message: str, is_root: bool, status: int = 2) -> UsageExit:
    """One line on rank 0's stderr and the exit to raise: 2 for bad input, 1 for a failed run."""
    if is_root:
        print(f"hvdl: error: {message}", file=sys.stderr, flush=True)
    return UsageExit(status)


def parse_args(argv: list[str]) -> tuple[str, list[str]]:
    """Split argv into the recipe name and the config overrides."""
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE.format(recipes=", ".join(configlib.recipe_names())), end="")
        raise SystemExit(0)
    model, rest, i = "lenet5", [], 0
    while i < len(argv):
        if argv[i] == "--model" and i + 1 < len(argv):
            model, i = argv[i + 1], i + 2
        elif argv[i].startswith("--model="):
            model, i = argv[i].split("=", 1)[1], i + 1
        else:
            rest.append(argv[i])
            i += 1
    return model, rest


def set_horovod_knobs(config: Config) -> None:
    """Horovod reads these when it starts, so they are set before `dist.init`."""
    if not config.elastic:  # Horovod 0.28.1 segfaults re-initialising after an elastic reset
        # with both set (tests/test_elastic.py); elastic runs keep Horovod's defaults.
        os.environ.setdefault("HOROVOD_FUSION_THRESHOLD",
                              str(config.perf.fusion_threshold_mb * 1024 * 1024))
        os.environ.setdefault("HOROVOD_CYCLE_TIME", str(config.perf.cycle_time_ms))
    if config.perf.timeline:  # lets `dist.start_timeline` begin one once the run folder exists
        os.environ.setdefault("HOROVOD_TIMELINE", "DYNAMIC")


def find_resume(config: Config, resumes: bool = True) -> Path | None:
    """The checkpoint `config.resume` points at: a file, or the newest of the newest run.

    With "auto" only the newest run folder of the recipe counts: a job requeued before its first
    checkpoint starts afresh rather than from an older, finished run. A trainer that cannot
    resume (`resumes` false) also starts afresh.
    """
    if not config.resume:
        return None
    if config.resume != "auto":
        return Path(config.resume)
    runs = sorted(p for p in Path(config.results_dir).glob(f"*-{config.recipe}") if p.is_dir())
    return checkpoint.latest(runs[-1]) if runs and resumes else None


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
    if ctx.size > 1 and ctx.controller != "elastic":  # elastic: no collective before its loop
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
    if ctx.size == 1 or ctx.controller == "elastic":  # elastic: no collective outside its loop
        return [peak_rss_mb()]
    return dist.allgather_object(peak_rss_mb(), name="memory.peak")


def run_training(config: Config, ctx: dist.Context) -> dict[str, Any]:
    """Everything after start-up: run folder, metadata, the family's trainer, final metrics."""
    check_launcher(config, ctx)
    trainer = importlib.import_module(f"hvdl.trainers.{TRAINERS[config.family]}")
    resume_from = find_resume(config, resumes=getattr(trainer, "RESUMES", True))
    state = checkpoint.load(resume_from, config) if resume_from else None
    run_dir = resume_dir(resume_from)
    run = open_run(config, ctx, run_dir)
    try:
        run.write_metadata(world_size=ctx.size, inventory=dist.inventory(ctx),
                           extra={"controller": ctx.controller, "resumed_from":
                                  str(resume_from) if resume_from else None})
        run.print(f"hvdl: {config.recipe} ({config.family}) on {ctx.size} rank(s), "
                  f"device {ctx.device}, run folder {run.dir}"
                  + (f", resumed from {resume_from}" if resume_from else "")
                  + (", no checkpoint to resume" if config.resume and not resume_from else ""))
        if config.perf.timeline:
            dist.start_timeline(run.dir / "horovod_timeline.json" if run.dir else None)
        final = trainer.train(config, ctx, run, state=state)
        if config.perf.timeline:
            dist.stop_timeline()
        run.record(final=final, peak_rss_mb=peak_memory(ctx))
        return final
    except BAD_INPUT:
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    is_root = launcher_rank() == 0
    try:
        model, overrides = parse_args(argv)
        config = configlib.load(model, overrides)
    except ConfigError as err:
        raise fail(str(err), is_root) from None
    set_horovod_knobs(config)
    try:
        ctx = dist.init(threads=config.threads or None)
    except LaunchError as err:
        raise fail(str(err), is_root) from None
    try:
        run_training(config, ctx)
    except BAD_INPUT as err:
        raise fail(str(err), ctx.is_root) from None
    except NonFiniteLoss as err:  # every rank raises it at the same step
        raise fail(str(err), ctx.is_root, status=1) from None
    except Stopped:  # every rank stops after the same step; rank 0 has saved and said so
        pass
    dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
