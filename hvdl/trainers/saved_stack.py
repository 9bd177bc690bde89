"""A saved RBM stack (`rbm.pretrained`): fine-tune the stack an earlier run pretrained.

    horovodrun -np 2 python -m hvdl.train --model dbn_mnist --rbm.pretrained results/runs/<run>

The folder's stages/pretrain<i>.pt must hold this run's stack: the same layer sizes (a 0 in this
run's layers, taken from the data, matches any) and unit types. A wrong or damaged folder is bad
input (status 2), found before any data is read (`check_pretrained`, from the family table).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hvdl import checkpoint
from hvdl import config as configlib
from hvdl.config import Config
from hvdl.models.rbm import RBM


def stack_sizes(family: str, layers: tuple[int, ...] | list[int]) -> list[int]:
    """The RBMs' layer sizes of a family's `layers`: a DBN's last layer is its softmax."""
    return list(layers[:-1] if family == "dbn" else layers)


def stack_of(config: dict[str, Any]) -> str:
    """A saved or current config's RBM stack in words, e.g. "784-500-2000 (bernoulli visible,
    bernoulli top hidden units)"."""
    layers = stack_sizes(config["family"], config["layers"])
    rbm = config["rbm"]
    return (f"{'-'.join(map(str, layers))} ({rbm['visible']} visible, {rbm['code_units']} top "
            "hidden units)")


def same_stack(saved: dict[str, Any], mine: dict[str, Any]) -> bool:
    """Whether a saved config's RBM stack is this config's; a 0 in this config's layers (a size
    taken from the data) matches any size, and visible units "auto" (chosen from the data) any
    type."""
    def sizes(config: dict[str, Any]) -> list[int]:
        return stack_sizes(config["family"], config["layers"])
    units = ("visible", "code_units")
    return (len(sizes(saved)) == len(sizes(mine))
            and all(m in (0, s) for s, m in zip(sizes(saved), sizes(mine)))
            and all(saved["rbm"][u] == mine["rbm"][u] or mine["rbm"][u] == "auto"
                    for u in units))


def read_stack(config: Config) -> list[dict[str, Any]]:
    """The payloads of `rbm.pretrained`'s stages/pretrain<i>.pt, checked against this config's
    stack: the same layer sizes and unit types; otherwise, or if the folder or a file is missing
    or damaged, a CheckpointError (bad input, status 2). Needs no data, so a run calls it before
    it loads any or opens its run folder (`check_pretrained`), and again once the data have
    given its 0 sizes (`load_stack`)."""
    folder = Path(config.rbm.pretrained)
    mine = configlib.to_dict(config)
    count = len(stack_sizes(config.family, config.layers)) - 1  # one RBM a pair of sizes
    names = [f"pretrain{i}" for i in range(1, count + 1)]
    allowed = f"a run folder whose stages/ hold {', '.join(n + '.pt' for n in names)}"
    payloads = []
    for name in names:  # the first file's stack already tells a wrong folder
        payloads.append(checkpoint.read(folder / "stages" / f"{name}.pt", allowed))
        if not same_stack(payloads[-1]["config"], mine):
            raise checkpoint.CheckpointError(
                f"rbm.pretrained: {folder}/stages/{name}.pt belongs to the stack "
                f"{stack_of(payloads[-1]['config'])}; allowed: this run's stack, "
                f"{stack_of(mine)}")
    return payloads


def check_pretrained(config: Config) -> None:
    """Before any data is loaded: `rbm.pretrained`, if set, holds this run's stack."""
    if config.rbm.pretrained:
        read_stack(config)


def load_stack(rbms: list[RBM], config: Config) -> list[dict[str, Any]]:
    """Load the stack from `rbm.pretrained`'s stages/pretrain<i>.pt instead of pretraining it.

    Every rank reads the files (a run folder on storage all ranks see, as for `--resume`). The
    stack was checked before the data were loaded (`check_pretrained`); this checks it again
    with the sizes the data gave.
    """
    payloads = read_stack(config)
    for rbm, payload in zip(rbms, payloads, strict=True):
        rbm.load_state_dict(payload["model"])
    folder = Path(config.rbm.pretrained)
    return [{"loaded": str(folder / "stages" / f"pretrain{i}.pt")}
            for i in range(1, len(rbms) + 1)]
