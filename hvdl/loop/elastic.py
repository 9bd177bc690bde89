"""Elastic training with Horovod's elastic API: workers leave and join while the run goes on.

    HVDL_HOSTS_FILE=hosts horovodrun -np 8 --min-np 4 --max-np 16 \
        --host-discovery-script launch/discover-hosts.sh python -m hvdl.train --elastic
    HVDL_HOSTS_FILE=hosts horovodrun -np 2 --min-np 1 --max-np 2 --network-interface lo \
        --host-discovery-script launch/discover-hosts.sh python -m hvdl.train --elastic

The discovery script prints one `host:slots` line per usable host (launch/discover-hosts.sh
prints the lines of $HVDL_HOSTS_FILE); horovodrun runs it every second and starts or stops
workers to match, between `--min-np` and `--max-np`. On a single host horovodrun also needs
`--network-interface lo` (without it, it waits for a second host). README.md, "Elastic
training", has the walk-through.

Horovod's recipe (docs/elastic.rst), as used here for every family trained by minibatches
alone, stage by stage (cnn, sae with sgd or adam, rbm, dbn and deep_ae: hvdl/config_rules.py,
ELASTIC_FAMILIES); `loop.fit` hands a stage here when `elastic` is true:
- `TorchState` holds the model, the optimizer and the position: `epoch`, `seen` (examples of
  the epoch done, over all ranks) and the global `step`. Every `commit_every` steps and at each
  epoch's end `commit()` copies it in memory and checks whether hosts changed.
- `@hvd.elastic.run` reruns the loop after a reset: from the last commit when a worker failed,
  from where it was when hosts were added or removed. A joining worker gets rank 0's state by
  broadcast before it takes a step.
- The reset callback (`World.refresh`) deals this rank's shards again for its new rank and the
  new world size (`Shards.refresh`: the data layer reads the same dataset with the same
  normalisation; a later stage's shards pass through the stages below it again) and rebuilds
  the learning-rate schedule, so the rate follows the world size (`lr × size` after warm-up
  with linear scaling) and continues at the same point of the run. The stage's closures
  (evaluation, an RBM's monitors) read the shards when they run, so they see the new ones.
- The interrupted epoch goes on from the same fraction of its examples; its order is drawn again
  for the new shards, so a few examples of that epoch are seen twice or not at all. Later epochs
  are whole. Checkpoints, the non-finite guard and SIGTERM/SIGUSR1 work as in static training
  (hvdl/loop/epochs.py); when rank 0 leaves, the new rank 0 takes over the run folder, which must
  then be on a file system every host sees.
- Gradients are averaged every step by Horovod's DistributedOptimizer, whose hooks the state
  handlers know: `perf.sync average`, `perf.sync_every`, `perf.backward_passes_per_step` and
  `perf.compile` are refused for elastic runs (hvdl/config_rules.py, ELASTIC_PERF), and
  `perf.grad_sync` is always `hooks`. Each epoch goes through the static loop's `run_epoch`
  (hvdl/loop/epochs.py); what is here is what is elastic: the world, the commits, the resets.
- No collective may run before the loop, since a joining worker would call it alone; hvdl.dist
  skips its start-up inventory and node-local barriers under the elastic controller.
- Horovod 0.28.1 segfaults re-initialising after a reset when HOROVOD_FUSION_THRESHOLD and
  HOROVOD_CYCLE_TIME are both set, so elastic runs leave `perf.fusion_threshold_mb` and
  `perf.cycle_time_ms` to Horovod's defaults (hvdl/train.py).

Full-batch L-BFGS (sae and stacked_ae with optimizer lbfgs) and minibatch L-BFGS keep the
ranks in lockstep through line searches that Horovod's elastic state cannot capture; they are
not elastic.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from hvdl import dist
from hvdl.config import Config
from hvdl.data.shard import Shard, Shards
from hvdl.dist import Context
from hvdl.loop import epochs, preemption, sync
from hvdl.loop.checkpointer import Checkpointer
from hvdl.loop.schedule import Schedule
from hvdl.runlog import RunLog


@dataclass
class World:
    """What follows the world size: this rank's shards and the learning-rate schedule."""

    shards: Shards
    config: Config
    ctx: Context
    stage: epochs.Stage
    tracked: Any = None  # the TorchState, once made

    @property
    def train(self) -> Shard:
        return self.shards.train

    def refresh(self) -> None:
        """Deal this rank's shards again for its rank and the world size now (reset callback);
        the stage's closures read them from `shards`."""
        self.ctx = dist.current(self.ctx)
        self.shards.refresh(self.ctx)

    def start_batch(self) -> int:
        """The batch of this epoch that comes next, at this world size."""
        return self.tracked.seen // (self.train.batch_size * self.ctx.size)

    def schedule(self) -> Schedule:
        """The schedule of a run at this world size, read where the run has got to."""
        steps = self.train.steps
        position = self.tracked.epoch * steps + self.start_batch()
        return epochs.make_schedule(self.stage, self.config, self.ctx.size, steps,
                                    offset=position - self.tracked.step)


def fit(stage: epochs.Stage, shards: Shards, config: Config, ctx: Context, run: RunLog,
        state: dict[str, Any] | None = None) -> dict[str, Any]:
    """loop.fit under Horovod's elastic API: `shards` are dealt again after every reset."""
    optimizer, at = epochs.setup(stage, config, ctx, run, state, elastic=True)
    ctx = dist.current(ctx)  # an earlier stage's workers may have come and gone
    shards.refresh(ctx)
    world = World(shards, config, ctx, stage)
    world.tracked = dist.elastic_state(
        stage.model, optimizer, epoch=at.epoch, seen=at.batch * config.batch_size * ctx.size,
        step=at.step, run_dir=str(run.dir or ""))
    with preemption.StopSignal(config.stop_check_every) as stop:
        world.tracked.register_reset_callbacks([world.refresh, stop.forget])
        saver = Checkpointer(stage.name, stage.model, optimizer, config, run, stop, steps=0,
                             rank_state=stage.rank_state)
        final = dist.elastic_run(train_epochs)(world.tracked, world, saver)
    run.steps_before += world.tracked.step  # the next stage's checkpoints number on
    return final


def train_epochs(tracked: Any, world: World, saver: Checkpointer) -> dict[str, Any]:
    """The epochs from the committed position on; Horovod reruns this after every reset."""
    stage, run, config = world.stage, saver.run, saver.config
    run.hand_over(world.ctx.is_root, Path(tracked.run_dir))
    run.print(f"hvdl: elastic: {world.ctx.size} rank(s), {stage.name} epoch "
              f"{tracked.epoch + 1}, step {tracked.step}, {world.train.steps} steps an epoch, "
              f"lr x{world.schedule()(tracked.step) / stage.lr:g}")
    final: dict[str, Any] = {}
    while tracked.epoch < stage.epochs:
        # The new world's shards may have served this epoch's examples already: then it ends.
        start = min(world.start_batch(), world.train.steps)
        final, at = epochs.run_epoch(
            stage, saver, world.train, world.schedule(),
            epochs.Position(tracked.epoch, start, tracked.step), size=world.ctx.size,
            after_step=partial(after_step, tracked, world, saver),
            more=lambda: {"ranks": world.ctx.size, "steps_an_epoch": world.train.steps,
                          # a worker that joined holds rank 0's model, not its own start
                          "parameters_identical": sync.agreement(
                              stage.model, "elastic.agree")["identical"]})
        tracked.epoch, tracked.step = at.epoch, at.step
        tracked.seen = at.batch * world.train.batch_size * world.ctx.size
        tracked.commit()
        if config.max_steps and at.step >= config.max_steps:
            break
    return final


def after_step(tracked: Any, world: World, saver: Checkpointer, batch: int,
               step: int) -> None:
    """Track the position, checkpoint or stop as in static training, commit every few steps."""
    tracked.seen, tracked.step = batch * world.train.batch_size * world.ctx.size, step
    saver.after_step(batch, step)
    if step % saver.config.commit_every == 0:
        tracked.commit()  # raises HostsUpdatedInterrupt on every rank when the hosts change
