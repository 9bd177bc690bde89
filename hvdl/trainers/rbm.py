"""Train an RBM, a Deep Belief Net or a deep autoencoder data-parallel (families rbm, dbn, deep_ae).

    python -m hvdl.train --model rbm_mnist                       # one RBM, CD-1
    horovodrun -np 2 python -m hvdl.train --model dbn_mnist      # pretrain 3 RBMs, fine-tune
    horovodrun -np 2 python -m hvdl.train --model deep_ae_mnist --rbm.pretrain_epochs 10
    horovodrun -np 2 python -m hvdl.train --model dbn_mnist --rbm.pretrained results/runs/<run>
    tensorboard --logdir results/runs

Stages, each with its own progress bar, TensorBoard prefix and weights file `stages/<name>.pt`:
`pretrain1` … `pretrainL` train the RBMs greedily by CD-k, each on the hidden probabilities of
the one below; then `dbn` and `deep_ae` are fine-tuned by backprop (hvdl/trainers/finetune.py:
`finetune_top` and `finetune` for the DBN, `finetune` of the unrolled deep autoencoder).
`rbm.pretrained` names an earlier run folder whose saved stack is fine-tuned instead, for
trying fine-tuning settings without pretraining again.

One CD update: every rank computes the positive and negative statistics of its own batch and
writes them as `.grad`; the data-parallel optimizer (`sync.wrap`: a Horovod allreduce) averages
them over ranks, and SGD applies momentum and the weight cost (on W only), so N ranks step as one
process on the global batch.
Monitors per epoch: training reconstruction error (Hinton's, with sampled h), and the mean-field
reconstruction error and mean free energy of a training slice and of the held-out test split.
Reference and measured results: hvdl/models/rbm.py, results/rbm/README.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from hvdl import checkpoint, dist, loop, viz
from hvdl.config import Config
from hvdl.config_rules import fit_data, fit_units
from hvdl.data import dataset
from hvdl.data.record import startup_line
from hvdl.data.settings import Settings
from hvdl.data.shard import Shard, Shards
from hvdl.dist import Context
from hvdl.loop.checkpointer import RankState
from hvdl.models import rbm as rbm_models
from hvdl.models.rbm import RBM
from hvdl.runlog import RunLog
from hvdl.trainers.finetune import finetune_autoencoder, finetune_classifier
from hvdl.trainers.saved_stack import load_stack, stack_sizes

CHUNK = 1000  # examples per forward pass when propagating or monitoring a whole shard
MAX_FILTERS = 256  # filters shown in a stage's picture


@dataclass
class Pretrained:
    """A run's RBM stack after greedy pretraining (or loaded from `rbm.pretrained`)."""

    config: Config  # with the layers the data gave
    data: dataset.Data
    rbms: list[RBM]
    tuning: Shards | None  # the fine-tuning batches
    result: dict[str, Any]  # {"pretrain": each RBM's last epoch, or the files loaded}
    done: dict[str, Any]  # each RBM's weights, which the fine-tuning checkpoints carry


def pretrained(config: Config, ctx: Context, run: RunLog, state: dict[str, Any] | None, *,
               targets: str = "") -> Pretrained:
    """Load the data, then pretrain the stack greedily, or load a saved one. `targets` of the
    fine-tuning after it: "labels" (a DBN) or "input" (a deep autoencoder), whose batches of
    rbm.finetune_batch_size are checked against the data before any pretraining; "": none."""
    data = dataset.load(Settings.of(config), ctx, labels=targets == "labels")
    run.record_data(data.info, startup_line(data.info, ctx))
    config, chosen = fit_data(config, data)
    if chosen:
        run.print(f"hvdl: {chosen}")
    rbms = [rbm.to(ctx.device)
            for rbm in build_stack(config, torch.Generator().manual_seed(config.seed))]
    loaded = load_stack(rbms, config) if config.rbm.pretrained else None
    shards, tuning = data.shards(), None
    if targets:
        size = config.rbm.finetune_batch_size or config.batch_size
        tuning = shards.derived(lambda s: s.rebatched(size, labels=targets == "labels",
                                                      key="rbm.finetune_batch_size"),
                                lambda s: s)
    if loaded is None:
        result = {"pretrain": pretrain(rbms, shards, config, ctx, run, data.picture, state)}
    else:
        run.print(f"pretraining: {len(rbms)} RBMs loaded from {config.rbm.pretrained}")
        for i, rbm in enumerate(rbms, start=1):  # this run's folder keeps every stage it used
            checkpoint.save_stage(run, f"pretrain{i}", rbm, config)
        result = {"pretrain": loaded}
    done = {f"pretrain{i}": rbm.state_dict() for i, rbm in enumerate(rbms, start=1)}
    return Pretrained(config, data, rbms, tuning, result, done)


def train_rbm(config: Config, ctx: Context, run: RunLog,
              state: dict[str, Any] | None = None) -> dict[str, Any]:
    """One RBM (family rbm): its pretraining is the run."""
    return pretrained(config, ctx, run, state).result


def train_dbn(config: Config, ctx: Context, run: RunLog,
              state: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Deep Belief Net: pretrain the stack (or load one), then fine-tune it as a classifier;
    `state` resumes in the stage it was written in, the stages before it from its weights."""
    p = pretrained(config, ctx, run, state, targets="labels")
    return {**p.result, **finetune_classifier(p.rbms, p.tuning, p.config, ctx, run, state,
                                              p.data.classes, p.done)}


def train_deep_ae(config: Config, ctx: Context, run: RunLog,
                  state: dict[str, Any] | None = None) -> dict[str, Any]:
    """A deep autoencoder: pretrain the stack (or load one), unroll it and fine-tune it."""
    p = pretrained(config, ctx, run, state, targets="input")
    return {**p.result, **finetune_autoencoder(p.rbms, p.tuning, p.config, ctx, run, state,
                                               p.done)}


def build_stack(config: Config, generator: torch.Generator | None = None, *,
                data: dict[str, Any] | None = None) -> list[RBM]:
    """The RBMs, the same on every rank (from `generator`), as training starts them and as a
    checkpoint's stack is loaded into (hvdl/families.py); visible units "auto" are chosen from
    `data`, a data record's range (training resolves them from the data it loaded first)."""
    if config.rbm.visible == "auto":
        config = fit_units(config, ((data or {}).get("range") or {}).get("scaled"))[0]
    return rbm_models.make_stack(stack_sizes(config.family, config.layers),
                                 visible=config.rbm.visible, top_hidden=config.rbm.code_units,
                                 generator=generator)


# --- greedy pretraining ----------------------------------------------------------------------

def pretrain(rbms: list[RBM], shards: Shards, config: Config, ctx: Context, run: RunLog,
             picture: tuple[int, int] | None,
             state: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Train each RBM on the hidden probabilities of the one below; returns each last epoch.
    The test shard is the held-out data of the monitors; `picture` is the (height, width)
    filters are drawn in (None: data that are not images); `state` resumes the stage it belongs
    to, and the RBMs before it come from its weights."""
    finals = []
    for i, rbm in enumerate(rbms, start=1):
        name = f"pretrain{i}"

        def train() -> dict[str, Any]:  # called at once, by loop.once
            run.print(f"{name}: RBM {rbm.n_vis}-{rbm.n_hid} ({rbm.visible} visible, "
                      f"{rbm.hidden} hidden), CD-{config.rbm.cd_k}"
                      f"{' persistent' if config.rbm.persistent else ''}")
            before = {f"pretrain{j}": r.state_dict() for j, r in enumerate(rbms[:i - 1], 1)}
            stage = rbm_stage(rbms[:i], shards, name, config, ctx, run, picture,
                              carry=lambda: before)
            final = loop.fit(stage, shards, config, ctx, run, state=state)
            draw(run, name, rbms[:i], picture, final.get("epoch", 0))
            return final

        finals.append(loop.once(name, rbm, state, run, config, train,
                                kept=lambda: run.metrics.get(name, [{}])[-1]))
        if i < len(rbms):  # the next RBM's data: this one's hidden probabilities E[h | v]
            shards = shards.mapped(rbm.hidden_mean)
    return finals


def rbm_optimizer(rbm: RBM, lr: float, config: Config) -> torch.optim.Optimizer:
    """SGD with momentum; the weight cost applies to W only, as in Hinton's code (the loop
    synchronises it over ranks: it averages the CD statistics, or the parameters)."""
    groups = [{"params": [rbm.W], "weight_decay": config.rbm.weight_cost},
              {"params": [rbm.b_vis, rbm.b_hid], "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=config.rbm.initial_momentum)


def rbm_stage(stack: list[RBM], shards: Shards | None, name: str, config: Config,
              ctx: Context, run: RunLog, picture: tuple[int, int] | None,
              carry: Callable[[], dict[str, Any]] | None = None) -> loop.Stage:
    """CD-k for the top RBM of `stack` as a stage of the loop (the ones below only draw its
    filters): the update writes the CD statistics into `.grad` and steps; each rank's sampling
    noise and persistent chain are its own, and checkpoints carry them. (Long because its
    closures share the noise generator and the chain: here they are read together.)"""
    rbm = stack[-1]
    lr = config.rbm.code_lr if rbm.hidden == "linear" else config.rbm.pretrain_lr
    generator = torch.Generator(device=ctx.device).manual_seed(
        config.seed + 1000 * ctx.rank + len(stack))  # each rank its own sampling noise
    chain: dict[str, torch.Tensor | None] = {"v": None}  # the persistent chain (rbm.persistent)

    def update(optimizer: torch.optim.Optimizer, v0: torch.Tensor, _: Any) -> torch.Tensor:
        noise = rbm.draw_noise(config.rbm.cd_k, len(v0), generator)  # (k + 1, B, n_hid)
        out = rbm_models.contrastive_divergence(rbm, v0, noise, chain["v"])
        optimizer.step()  # the loop's optimizer averages the CD statistics, then SGD
        chain["v"] = out.chain if config.rbm.persistent else None
        return (v0 - out.reconstruction).pow(2).sum(1).mean()  # per example, summed over v

    def on_epoch(epoch: int, optimizer: torch.optim.Optimizer) -> None:
        momentum = (config.rbm.initial_momentum if epoch < config.rbm.momentum_switch
                    else config.rbm.final_momentum)
        for group in optimizer.param_groups:
            group["momentum"] = momentum

    def get() -> dict[str, Any]:  # on the CPU: every rank unpickles every rank's state
        return {"noise": generator.get_state(),
                "chain": None if chain["v"] is None else chain["v"].cpu()}

    def put(saved: dict[str, Any]) -> None:
        # A CPU generator's state (Mersenne Twister, 5,056 bytes) and a CUDA one's (Philox, 16)
        # cannot stand in for each other, so the noise resumes only on the kind that drew it.
        if len(saved["noise"]) != len(generator.get_state()):
            was = "cuda" if len(saved["noise"]) == 16 else "cpu"
            raise checkpoint.CheckpointError(
                f"{name}'s sampling noise was drawn on {was.upper()} and this run samples on "
                f"{ctx.device.type.upper()}; allowed: resume an RBM stage on the kind of device "
                "that wrote its checkpoint (or finish the stage there and resume after it)")
        generator.set_state(saved["noise"])
        chain["v"] = None if saved["chain"] is None else saved["chain"].to(ctx.device)

    def after_step(step: int) -> None:
        if config.filters_every and step % config.filters_every == 0:
            draw(run, name, stack, picture, step)

    return loop.Stage(
        name=name, model=rbm, epochs=config.rbm.pretrain_epochs, lr=lr, update=update,
        optimizer=lambda: rbm_optimizer(rbm, lr, config),
        evaluate=None if shards is None else
        lambda: monitor(rbm, shards.train, shards.test, name), evaluate_as="",
        cost_name="recon", schedule="constant", on_epoch=on_epoch, after_step=after_step,
        rank_state=RankState(get, put), carry=carry)


def draw(run: RunLog, name: str, stack: list[RBM], picture: tuple[int, int] | None,
         step: int) -> None:
    if picture is not None:  # filters are drawn for image data only
        run.image(f"{name}/filters", filter_picture(stack, picture), step)


@torch.no_grad()
def monitor(rbm: RBM, shard: Shard, held_out: Shard | None, name: str) -> dict[str, float]:
    """Mean-field reconstruction error and mean free energy of a training slice (as large as
    the held-out shard) and of held-out data; a growing free-energy gap signals overfitting
    (Hinton's practical guide). Sums and counts are allreduced: one process's figures. Without
    held-out data the training slice is as large as a held-out tenth would be."""
    rows = len(held_out) if held_out is not None else max(1, len(shard) // 10)
    parts = [[shard.head(rows)], [x for x, _ in held_out.scan()] if held_out is not None else []]
    sums = []
    for batches in parts:
        recon = torch.zeros((), dtype=torch.float64, device=shard.device)
        free = torch.zeros_like(recon)
        count = 0
        for data in batches:
            for v in data.split(CHUNK):
                v_hat = rbm.visible_mean(rbm.hidden_mean(v))  # (B, n_vis)
                recon += (v - v_hat).pow(2).sum()
                free += rbm.free_energy(v).sum()
                count += len(v)
        sums += [recon.cpu(), free.cpu(), torch.tensor(float(count), dtype=torch.float64)]
    totals = dist.allreduce_sum(torch.stack(sums), name=f"{name}.monitor").tolist()
    n_train, n_held = max(totals[2], 1.0), max(totals[5], 1.0)
    found = {"train_slice_recon": totals[0] / n_train, "train_free_energy": totals[1] / n_train}
    if held_out is not None:
        found.update(heldout_recon=totals[3] / n_held, heldout_free_energy=totals[4] / n_held,
                     free_energy_gap=totals[4] / n_held - totals[1] / n_train)
    return found


@torch.no_grad()
def filter_picture(stack: list[RBM], picture: tuple[int, int]) -> Any:
    """The top RBM's filters in input space (W₁ W₂ … W_l, a linear projection) as a grid of
    `picture`-shaped tiles."""
    weights = stack[0].W
    for rbm in stack[1:]:
        weights = weights @ rbm.W  # (n_vis, n_hid of this layer)
    filters = weights.T[:MAX_FILTERS].cpu().numpy()  # (n_filters, n_vis)
    side = viz.filter_grid(filters, picture).shape[1]
    return viz.filter_grid(filters, picture, scale=viz.display_scale(side))  # small ones larger
