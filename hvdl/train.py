"""Train a model from a recipe in `models/`, data-parallel over however many ranks are launched.

    python -m hvdl.train                                   # one process, LeNet-5 on MNIST
    horovodrun -np 4 python -m hvdl.train --model dbn_mnist --epochs 50
    mpirun -np 4 python -m hvdl.train --model sae_patches
    srun --mpi=pmix python -m hvdl.train --model lenet5     # inside a Slurm allocation
    tensorboard --logdir results/runs

`--model NAME` picks `models/NAME.toml` (or a path to a .toml); every other `--key value` overrides
one config field (`--section.key value` for a section; see hvdl/config.py). Bad input ends the run
before any work with one line on rank 0 and exit status 2.
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
from hvdl.checkpoint import CheckpointError
from hvdl.config import Config, ConfigError
from hvdl.data.idx import IdxError
from hvdl.data.mnist import MissingDataError
from hvdl.dist import LaunchError
from hvdl.runlog import RunLog

TRAINERS = {"cnn": "cnn", "sae": "autoencoder", "stacked_ae": "autoencoder",
            "rbm": "rbm", "dbn": "rbm", "deep_ae": "rbm"}
BAD_INPUT = (ConfigError, CheckpointError, IdxError, MissingDataError, LaunchError)
USAGE = """usage: python -m hvdl.train [--model RECIPE] [--KEY VALUE ...]
recipes: {recipes}
keys: see hvdl/config.py (sections as --sae.rho 0.1); a resolved config.toml is in each run folder
"""


class UsageExit(SystemExit):
    """Exit status 2 after a one-line explanation (printed by rank 0 only)."""


def launcher_rank() -> int:
    """This process's rank as the launcher announces it, readable before Horovod starts."""
    for var in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def fail(message: str, is_root: bool) -> UsageExit:
    if is_root:
        print(f"hvdl: error: {message}", file=sys.stderr, flush=True)
    return UsageExit(2)


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
    os.environ.setdefault("HOROVOD_FUSION_THRESHOLD",
                          str(config.perf.fusion_threshold_mb * 1024 * 1024))
    os.environ.setdefault("HOROVOD_CYCLE_TIME", str(config.perf.cycle_time_ms))


def find_resume(config: Config) -> Path | None:
    """The checkpoint `config.resume` points at: a file, or the newest of this recipe's runs."""
    if not config.resume:
        return None
    if config.resume != "auto":
        return Path(config.resume)
    runs = sorted(Path(config.results_dir).glob(f"*-{config.recipe}"))
    for run_dir in reversed(runs):
        found = checkpoint.latest(run_dir)
        if found is not None:
            return found
    return None


def run_training(config: Config, ctx: dist.Context) -> dict[str, Any]:
    """Everything after start-up: run folder, metadata, the family's trainer, final metrics."""
    resume_from = find_resume(config)
    state = checkpoint.load(resume_from, config) if resume_from else None
    run_dir = resume_from.parent.parent if resume_from else None
    run = RunLog(config, is_root=ctx.is_root, run_dir=run_dir)
    try:
        run.write_metadata(world_size=ctx.size, inventory=dist.inventory(ctx),
                           extra={"controller": ctx.controller, "resumed_from":
                                  str(resume_from) if resume_from else None})
        run.print(f"hvdl: {config.recipe} ({config.family}) on {ctx.size} rank(s), "
                  f"device {ctx.device}, run folder {run.dir}")
        trainer = importlib.import_module(f"hvdl.trainers.{TRAINERS[config.family]}")
        final = trainer.train(config, ctx, run, state=state)
        run.record(final=final)
        return final
    except BAD_INPUT:
        if run.dir is not None and run_dir is None:  # a run that never started leaves nothing
            run.close()
            shutil.rmtree(run.dir, ignore_errors=True)
        raise
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
    dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
