"""The one training loop: every minibatch stage of every family runs through `fit`.

    stage = Stage(name="train", model=model, epochs=3, lr=0.002, loss=F.cross_entropy)
    final = loop.fit(stage, data.train, config, ctx, run, state=checkpoint_or_None)

What differs between stages is handed to the loop: a loss for a backward step (classifiers,
fine-tuning, the minibatch sparse autoencoder), minibatch L-BFGS, which asks for the batch's
loss as a closure, or an `update` of the stage's own (CD-k writes its statistics into `.grad`
and steps). Everything else lives here once: the Horovod recipe in order (the optimizer
synchronised across ranks by sync.wrap, parameters and optimizer state broadcast from rank 0,
the rate scaled by the world size after warm-up), the per-step rate, progress, TensorBoard,
the NaN guard, checkpoints every `checkpoint_every` steps and after each epoch, the stop on
SIGTERM/SIGUSR1, `max_steps`, resuming mid-epoch bit for bit, and evaluation after each epoch.
`fit_full_batch` gives full-batch L-BFGS the same checkpoints, stop and NaN guard.

The files: epochs.py (a stage's epochs, static and elastic alike), elastic.py (Horovod's
elastic API: the world, commits, resets), full_batch.py, checkpointer.py (a stage's checkpoints
and the agreed stop), preemption.py (SIGTERM/SIGUSR1), schedule.py (optimizers and rates),
sync.py (how the ranks' optimizers stay in step), lbfgs.py (minibatch and full-batch L-BFGS).

The per-step loss stays on the device and is read every `log_every` steps, averaged over ranks:
a non-finite loss on any rank, or non-finite weights at a checkpoint, stops every rank at the
same step with NonFiniteLoss, and the last good checkpoint is never written over.
"""

from __future__ import annotations

from typing import Any

from hvdl.config import Config
from hvdl.data.shard import Shard, Shards
from hvdl.dist import Context
from hvdl.loop.checkpointer import NonFiniteLoss, resume_point
from hvdl.loop.epochs import Stage, once, run_stage, stage_state, train_epoch
from hvdl.loop.full_batch import fit_full_batch
from hvdl.runlog import RunLog

__all__ = ["NonFiniteLoss", "Stage", "fit", "fit_full_batch", "once", "train_epoch"]


def fit(stage: Stage, shards: Shards | Shard, config: Config, ctx: Context, run: RunLog,
        state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `stage` for its epochs data-parallel; evaluate and checkpoint after each epoch.

    `state` (a checkpoint of this stage) resumes at its epoch and batch with its RNG and rank
    states: the resumed run ends with the weights of an uninterrupted one. With `elastic` the
    loop runs under Horovod's elastic API (hvdl/loop/elastic.py), dealing `shards` again as workers
    come and go. Returns the last epoch's record.
    """
    shards = shards if isinstance(shards, Shards) else Shards(shards)
    state = stage_state(stage.name, state)
    if config.elastic:
        from hvdl.loop import elastic  # Horovod's elastic API, only for elastic runs

        return elastic.fit(stage, shards, config, ctx, run, state=state)
    shard = shards.train
    epoch, batch = resume_point(state)
    if epoch < stage.epochs:
        shard.prefetch(epoch, batch)  # a streamed shard reads while the rest is set up
    try:
        return run_stage(stage, shard, state, config, ctx, run)
    finally:
        shard.close()  # its reader stops reading ahead: the next stage reads its own shard
