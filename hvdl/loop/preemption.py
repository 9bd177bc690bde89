"""Stop cleanly on SIGTERM or SIGUSR1: every rank ends the same step, rank 0 saves, all exit 0.

    kill -TERM <pid of any rank>          # or Slurm: the time limit, scancel, preemption
    python -m hvdl.train --resume         # later: continue from the checkpoint it wrote

Slurm sends SIGTERM at the time limit, on `scancel` and on preemption, and slurm/train.sh passes
on the SIGUSR1 that `#SBATCH --signal=B:USR1@120` gives it two minutes before the limit, then
requeues the job with `--resume auto`. The handler only notes the signal. The minibatch loop
(hvdl/loop/epochs.py) asks `agreed(step)` after every step. A signal reaches the ranks at different
steps and they must all stop after the same one, so every `stop_check_every` steps each rank
starts a background allreduce (max) of its note, one number on the CPU, and reads the previous
one's result, which every rank reads at the same step. The loop never waits on the network for
it (Horovod's background thread does it during the next steps), and a stop comes at most
2 × `stop_check_every` steps after the signal. One process skips the allreduce.

After the agreed step rank 0 writes a checkpoint and every rank raises `Stopped`; `hvdl.train`
prints where it stopped and exits with status 0: the run did what it was told, and horovodrun,
mpirun and Horovod's elastic driver take any other status for a crash (they kill the remaining
ranks, and the elastic driver blacklists the host). Scripts that must tell a stopped run from a
finished one read `stops` in the run's metrics.json.

The handlers are installed while a run trains (`hvdl.run.run_training` holds a `StopSignal`
around the family's trainer, and each loop holds its own inside it): a signal that comes between
two loops (an evaluation, the next stage's set-up) is noted and honoured at the next loop's first
agreement, which saves a checkpoint in that stage. Before the run starts and after it ends
SIGTERM and SIGUSR1 keep their previous action.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from hvdl import dist

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_received = 0  # the last stop signal while any StopSignal was active; 0 for none


def _note(signum: int, frame: FrameType | None) -> None:
    global _received
    _received = signum


class Stopped(Exception):
    """Every rank raises this after the agreed stop step, once rank 0 has saved."""

    def __init__(self, signal_name: str, step: int) -> None:
        super().__init__(f"stopped by {signal_name} after step {step}")
        self.signal_name, self.step = signal_name, step


class StopSignal:
    """Notes SIGTERM/SIGUSR1 while active; `agreed(step)` says when all ranks must stop."""

    def __init__(self, every: int) -> None:
        self.every = every  # steps between the ranks' agreements
        self._pending: Any = None  # the allreduce started at the last check
        self._previous: dict[int, Any] = {}

    @property
    def received(self) -> int:
        """The number of the last signal this process got while noting, 0 for none."""
        return _received

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():  # Python's rule for handlers
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, _note)
        return self

    def __exit__(self, kind: type | None, *exc: object) -> None:
        global _received
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self._previous and self._previous[SIGNALS[0]] is not _note:  # the outermost one
            _received = 0  # a later run in this process starts unsignalled
        self._previous.clear()
        if kind is None and self._pending is not None:  # all ranks leave the loop together
            dist.finish_max(self._pending)
        self._pending = None  # after an error, other ranks may never finish it: do not wait

    def forget(self) -> None:
        """Drop the allreduce in flight (elastic reset: Horovod restarted underneath it)."""
        self._pending = None

    def agreed(self, step: int) -> str | None:
        """The signal's name on every rank, at the same step, once any rank got one."""
        if step % self.every:
            return None
        if dist.world_size() == 1:
            signum = self.received
        else:
            signum = dist.finish_max(self._pending) if self._pending is not None else 0
            # No new allreduce once stopping: a rank that shut Horovod down would leave the
            # others waiting on it.
            self._pending = None if signum else dist.start_max(self.received, f"stop.{step}")
        return signal.Signals(signum).name if signum else None
