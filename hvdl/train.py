"""Train a model from a recipe in `models/`, data-parallel over however many ranks are launched.

    python -m hvdl.train                                   # one process, LeNet-5 on MNIST
    horovodrun -np 4 python -m hvdl.train --model dbn_mnist --epochs 50
    mpirun -np 4 python -m hvdl.train --model sae_patches
    torchrun --nproc_per_node 4 -m hvdl.train --model lenet5
    srun --mpi=pmix python -m hvdl.train --model lenet5     # inside a Slurm allocation
    tensorboard --logdir results/runs

`--model NAME` picks `models/NAME.toml` (or a path to a .toml); every other `--key value` overrides
one config field (`--section.key value` for a section; see hvdl/config.py). `--resume` alone means
`--resume auto`: the newest checkpoint of the newest run of this recipe under `results_dir`
(slurm/train.sh adds it when Slurm requeues the job); `--resume PATH` names a checkpoint.

Exit status, the same on every rank:
    0  training finished, or SIGTERM/SIGUSR1 stopped it after a checkpoint (hvdl/loop/preemption.py)
    1  the loss or the weights became NaN or infinite; the last good checkpoint is kept
    2  bad input, found before any work: one line on rank 0, no files left behind (the cases
       and their messages: results/bad_input.md)
A rank that dies makes the launcher end the job with its own non-zero status
(tests/test_engines.py); a rank whose collective fails because a peer is gone exits 1 with one
line naming the ranks and hosts that stopped answering (hvdl/dist/peers.py,
tests/test_multihost.py).
"""

from __future__ import annotations

import sys

from hvdl import config as configlib
from hvdl.cli import options_help
from hvdl.config import Config, ConfigError
from hvdl.errors import BadInput, fail
from hvdl.host import launcher_rank

USAGE = """usage: hvdl train [--model RECIPE] [--KEY VALUE ...] [--print-config]
       (or python -m hvdl.train ...; under horovodrun, mpirun, torchrun or srun alike)

--model RECIPE   a recipe in models/ ({recipes}) or a .toml file
--print-config   print the resolved config (the recipe, then the options) as TOML and exit
--KEY VALUE      set a field (--KEY=VALUE too; a true/false field alone means true); a section's
                 field as --SECTION.KEY VALUE. Every field follows, with its default (and the
                 recipe's value where it differs), what it allows and what it means.
"""


def parse_args(argv: list[str]) -> tuple[str, list[str]]:
    """Split argv into the recipe name and the config overrides (`--help` and `--print-config`
    are answered by `main`)."""
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


def print_help(model: str) -> None:
    """The usage and every option, with `model`'s values beside the defaults."""
    try:
        recipe = configlib.load(model)
    except ConfigError:
        recipe = None
    print(USAGE.format(recipes=", ".join(configlib.recipe_names())))
    print(options_help(["", *configlib.SECTIONS], recipe, model))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    is_root = launcher_rank() == 0
    model, overrides = parse_args(argv)
    if any(a in ("-h", "--help") for a in overrides):
        print_help(model)
        return 0
    try:
        config = configlib.load(model, [a for a in overrides if a != "--print-config"])
    except ConfigError as err:
        raise fail(str(err), is_root) from None
    if "--print-config" in overrides:
        if is_root:
            print(configlib.to_toml(config), end="")
        return 0
    return train(config, is_root)


def train(config: Config, is_root: bool) -> int:
    """Start the engine and run `config` to its end, or to the one-line error that stops it."""
    # torch and the engines load only now, once the options are known good: a mistyped option,
    # --help and --print-config are answered in a fraction of a second instead of two.
    from hvdl import dist
    from hvdl.loop import NonFiniteLoss
    from hvdl.loop.preemption import Stopped
    from hvdl.run import run_training

    try:
        ctx = dist.start(config)
    except BadInput as err:  # the launcher and the engine, or the engine and the config
        raise fail(str(err), is_root) from None
    try:
        run_training(config, ctx)
    except BadInput as err:
        raise fail(str(err), ctx.is_root) from None
    except NonFiniteLoss as err:  # every rank raises it at the same step, so every rank can
        # take the engine down (left up, torch's process group could be torn down mid-call by
        # the interpreter's exit, which aborts the process instead of exiting with status 1)
        dist.shutdown()
        raise fail(str(err), ctx.is_root, status=1) from None
    except Stopped:  # every rank stops after the same step; rank 0 has saved and said so
        pass
    except dist.PeersLost as err:  # every rank left says what it sees
        raise fail(str(err), True, status=1) from None
    dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
