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

Horovod's recipe (docs/elastic.rst), as used here for the cnn family
(hvdl/config_rules.py, ELASTIC_FAMILIES):
- `TorchState` holds the model, the optimizer and the position: `epoch`, `seen` (examples of
  the epoch done, over all ranks) and the global `step`. Every `commit_every` steps and at each
  epoch's end `commit()` copies it in memory and checks whether hosts changed.
- `@hvd.elastic.run` reruns the loop after a reset: from the last commit when a worker failed,
  from where it was when hosts were added or removed. A joining worker gets rank 0's state by
  broadcast before it takes a step.
- The reset callback (`World.refresh`) cuts this rank's shards again for its new rank and the
  new world size and rebuilds the learning-rate schedule, so the rate follows the world size
  (`lr × size` after warm-up with linear scaling) and continues at the same point of the run.
- The interrupted epoch goes on from the same fraction of its examples; its order is drawn again
  for the new shards, so a few examples of that epoch are seen twice or not at all. Later epochs
  are whole. Checkpoints, the non-finite guard and SIGTERM/SIGUSR1 work as in static training
  (hvdl/engine.py); when rank 0 leaves, the new rank 0 takes over the run folder, which must
  then be on a file system every host sees.
- No collective may run before the loop, since a joining worker would call it alone; hvdl.dist
  skips its start-up inventory and node-local barriers under the elastic controller.
- Horovod 0.28.1 segfaults re-initialising after a reset when HOROVOD_FUSION_THRESHOLD and
  HOROVOD_CYCLE_TIME are both set, so elastic runs leave `perf.fusion_threshold_mb` and
  `perf.cycle_time_ms` to Horovod's defaults (hvdl/train.py).

The other families train in stages whose state lives outside one minibatch loop (greedy RBM and
autoencoder pretraining, full-batch L-BFGS); they are not elastic.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

from hvdl import dist, engine, preemption
from hvdl.config import Config
from hvdl.data.shard import Shard
from hvdl.dist import Context
from hvdl.runlog import RunLog

ShardsFn = Callable[[Context], tuple[Shard, Shard]]  # (train, test) of a rank


@dataclass(frozen=True)
class Shifted:
    """A schedule read at `step + offset`: global steps mapped to this world size's position."""

    inner: engine.Schedule
    offset: int

    @property
    def size(self) -> int:
        return self.inner.size

    def __call__(self, step: int) -> float:
        return self.inner(step + self.offset)


@dataclass
class World:
    """What follows the world size: this rank's shards and the learning-rate schedule."""

    shards: ShardsFn
    config: Config
    ctx: Context
    epochs: int
    lr: float
    train: Shard | None = None
    test: Shard | None = None
    tracked: Any = None  # the TorchState, once made

    def refresh(self) -> None:
        """Re-cut this rank's shards for its rank and the world size now (reset callback)."""
        self.ctx = dist.current(self.ctx)
        self.train, self.test = self.shards(self.ctx)

    def start_batch(self) -> int:
        """The batch of this epoch that comes next, at this world size."""
        return self.tracked.seen // (self.train.batch_size * self.ctx.size)

    def schedule(self) -> Shifted:
        """The schedule of a run at this world size, read where the run has got to."""
        steps = self.train.steps
        inner = engine.Schedule(self.lr, self.ctx.size, self.epochs * steps,
                                int(self.config.warmup_epochs * steps), self.config.schedule,
                                self.config.lr_scaling)
        position = self.tracked.epoch * steps + self.start_batch()
        return Shifted(inner, position - self.tracked.step)


def fit(stage: engine.Stage, shards: ShardsFn, evaluate: Callable[[Shard], dict[str, Any]],
        config: Config, ctx: Context, run: RunLog,
        state: dict[str, Any] | None = None) -> dict[str, Any]:
    """engine.fit's elastic twin: `shards(ctx)` and `evaluate(test)` are redone after resets."""
    base = engine.make_optimizer(stage.model.parameters(), config, stage.lr)
    # Horovod's own optimizer: its hooks are what the elastic state handlers know how to sync.
    optimizer = dist.distributed_optimizer(base, stage.model,
                                           fp16_compression=config.perf.fp16_compression)
    epoch, batch, step = engine.restore(stage, optimizer, state, ctx)
    world = World(shards, config, ctx, stage.epochs, stage.lr)
    world.refresh()
    world.tracked = dist.elastic_state(
        stage.model, optimizer, epoch=epoch, seen=batch * config.batch_size * ctx.size,
        step=step, run_dir=str(run.dir or ""))
    stage = dataclasses.replace(stage, evaluate=lambda: evaluate(world.test))
    with preemption.StopSignal(config.stop_check_every) as stop:
        world.tracked.register_reset_callbacks([world.refresh, stop.forget])
        saver = engine.Checkpointer(stage, optimizer, config, run, stop, steps=0)
        return dist.elastic_run(train_epochs)(world.tracked, world, saver)


def train_epochs(tracked: Any, world: World, saver: engine.Checkpointer) -> dict[str, Any]:
    """The epochs from the committed position on; Horovod reruns this after every reset."""
    stage, run = saver.stage, saver.run
    run.hand_over(world.ctx.is_root, Path(tracked.run_dir))
    run.print(f"hvdl: elastic: {world.ctx.size} rank(s), epoch {tracked.epoch + 1}, "
              f"step {tracked.step}, lr x{world.schedule()(tracked.step) / stage.lr:g}")
    final: dict[str, Any] = {}
    while tracked.epoch < stage.epochs:
        saver.epoch, saver.steps = tracked.epoch, world.train.steps
        start, first, started = world.start_batch(), tracked.step, time.perf_counter()
        cost, step = engine.train_epoch(stage, saver.optimizer, world.train, world.schedule(),
                                        epoch=tracked.epoch, step=tracked.step, run=run,
                                        config=saver.config, start=start,
                                        after_step=partial(after_step, tracked, world, saver))
        seconds = time.perf_counter() - started
        rate = (step - first) * world.train.batch_size * world.ctx.size / seconds
        entry = {"epoch": tracked.epoch + 1, "train_cost": cost, "seconds": seconds,
                 "samples_per_s": rate, "ranks": world.ctx.size}
        batch = start + step - first
        final = engine.end_epoch(stage, saver, entry, batch=batch, step=step)
        whole = saver.epoch > tracked.epoch  # end_epoch moved on to the next epoch
        tracked.epoch, tracked.step = saver.epoch, step
        tracked.seen = 0 if whole else batch * world.train.batch_size * world.ctx.size
        tracked.commit()
        if saver.config.max_steps and step >= saver.config.max_steps:
            break
    return final


def after_step(tracked: Any, world: World, saver: engine.Checkpointer, batch: int,
               step: int) -> None:
    """Track the position, checkpoint or stop as in static training, commit every few steps."""
    tracked.seen, tracked.step = batch * world.train.batch_size * world.ctx.size, step
    saver.after_step(batch, step)
    if step % saver.config.commit_every == 0:
        tracked.commit()  # raises HostsUpdatedInterrupt on every rank when the hosts change
