"""The run folder, console output and TensorBoard: rank 0 writes, every other rank is silent.

Call sites never ask for the rank: every method here does nothing off rank 0. A run folder is
`<results_dir>/<YYYYmmdd-HHMMSS>-<recipe>/` and holds `config.toml`, `metadata.json`,
`metrics.json`, TensorBoard event files, PNG pictures and `checkpoints/`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from hvdl import config as configlib
from hvdl.config import Config

LIBRARIES = ("torch", "horovod", "mpi4py", "numpy", "tensorboard", "hvdl")


def git_state(repo: Path) -> dict[str, Any]:
    """Commit and dirty flag of `repo`, or None for each where git or the repo is missing."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True,
                                 text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            found[name] = None
    return found


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file, so a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunLog:
    """Rank 0's view of a run: folder, console, progress bars and TensorBoard."""

    def __init__(self, config: Config, *, is_root: bool, run_dir: Path | None = None) -> None:
        self.is_root = is_root
        self.mode = progress_mode(config.progress)
        self.last_line = 0.0
        self.dir: Path | None = None
        self.metrics: dict[str, Any] = {}
        self.dataset: dict[str, Any] | None = None  # what data.json records; checkpoints too
        self.steps_before = 0  # steps of the stages before this one: checkpoints are numbered
        # by the run's step, so their names sort in the order they were written
        self._writer = None
        if not is_root:
            return
        if run_dir is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_dir = Path(config.results_dir) / f"{stamp}-{config.recipe}"
        existed = run_dir.is_dir()
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(run_dir / "config.toml", configlib.to_toml(config))
        except OSError as err:
            if not existed and run_dir.is_dir():
                shutil.rmtree(run_dir, ignore_errors=True)
            raise configlib.ConfigError(
                f"results folder {config.results_dir} is not writable ({err.strerror}); allowed: "
                "a folder this user can create and write (--results_dir)") from None
        self.dir = run_dir
        self.metrics = self._read_metrics()

    def _read_metrics(self) -> dict[str, Any]:
        """metrics.json of a resumed run, so that its history goes on; {} for a new run."""
        path = self.dir / "metrics.json" if self.dir is not None else None
        if path is None or not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except ValueError:
            return {}

    def hand_over(self, is_root: bool, run_dir: Path) -> None:
        """Elastic training: the process that is rank 0 now writes `run_dir`, the others stop."""
        if is_root and not self.is_root:
            self.is_root, self.dir = True, run_dir
            self.metrics = self._read_metrics()
        elif self.is_root and not is_root:
            self.close()
            self.is_root, self.dir = False, None

    @property
    def writer(self) -> Any:
        """The TensorBoard writer, opened on first use (rank 0 only)."""
        if self._writer is None and self.dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.dir))
        return self._writer

    def print(self, *args: Any) -> None:
        if not self.is_root:
            return
        text = " ".join(str(a) for a in args)
        if self.mode == "bar":
            tqdm.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def progress(self, iterable: Iterable, total: int, desc: str) -> Iterator:
        """A tqdm bar on rank 0 (on stderr) in bar mode, the bare iterable otherwise."""
        if not self.is_root or self.mode != "bar":
            return iter(iterable)
        return iter(tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, leave=False,
                         mininterval=1.0, file=sys.stderr))

    def progress_line(self, desc: str, done: int, total: int, rate: float, left_s: float,
                      cost: float, cost_name: str = "cost") -> None:
        """In lines mode, one whole line on rank 0's stdout, at most every LINE_SECONDS."""
        if not self.is_root or self.mode != "lines":
            return
        now = time.monotonic()
        if now - self.last_line < LINE_SECONDS and done < total:
            return
        self.last_line = now
        print(f"{desc}: step {done}/{total} ({100 * done / max(total, 1):.0f}%), {rate:,.0f} "
              f"samples/s, {clock(left_s)} left, {cost_name} {cost:.4f}", flush=True)

    def scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        if self.is_root:
            for tag, value in values.items():
                self.writer.add_scalar(f"{prefix}{tag}", value, step)

    def image(self, tag: str, picture: np.ndarray, step: int) -> None:
        """Log an (H, W) or (H, W, 3) picture with values in [0, 1] and save it as PNG."""
        if not self.is_root:
            return
        dataformats = "HW" if picture.ndim == 2 else "HWC"
        self.writer.add_image(tag, picture, step, dataformats=dataformats)
        import matplotlib.image

        name = tag.replace("/", "-") + ".png"
        matplotlib.image.imsave(self.dir / name, picture, cmap="gray", vmin=0.0, vmax=1.0)

    def write_json(self, name: str, data: Any) -> None:
        if self.is_root:
            write_atomic(self.dir / name, json.dumps(data, indent=2, default=_plain) + "\n")

    def record(self, **metrics: Any) -> None:
        """Merge `metrics` into metrics.json, rewritten at once so it is always complete."""
        if self.is_root:
            self.metrics.update(metrics)
            self.write_json("metrics.json", self.metrics)

    def record_data(self, info: dict[str, Any], line: str) -> None:
        """The dataset's record (hvdl/data/dataset.py's `Data.info`): `line` on the console,
        data.json, and its summary in metadata.json."""
        self.print(line)
        self.dataset = info
        if not self.is_root:
            return
        self.write_json("data.json", info)
        path = self.dir / "metadata.json"
        meta = json.loads(path.read_text()) if path.is_file() else {}
        meta["data"] = {k: info[k] for k in ("format", "path", "test", "file_count",
                                             "fingerprint", "rows", "features", "label",
                                             "classes", "memory")}
        self.write_json("metadata.json", meta)

    def write_metadata(self, *, world_size: int, inventory: list[dict[str, Any]],
                       extra: dict[str, Any] | None = None) -> None:
        repo = Path(__file__).resolve().parent.parent
        meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv,
                "git": git_state(repo), "versions": versions(), "world_size": world_size,
                "hosts": sorted({r["host"] for r in inventory}), "inventory": inventory,
                "platform": platform.platform(), **(extra or {})}
        self.write_json("metadata.json", meta)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


LINE_SECONDS = 10.0  # at most one progress line this often (lines mode)


def progress_mode(mode: str) -> str:
    """bar, lines or none: `auto` is a bar on a terminal, whole lines in logs and pipes."""
    if mode == "auto":
        return "bar" if sys.stderr.isatty() else "lines"
    return mode


def clock(seconds: float) -> str:
    """Seconds as 1:02:03, 2:03 or 3 s."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}" if minutes else f"{secs} s"


def _plain(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
