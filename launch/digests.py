"""The regression check for a restructuring: every recipe trained briefly, its final weights and
metrics reduced to one digest, on one process and on 2 ranks under mpirun.

    .venv/bin/python launch/digests.py --out digests.json           # record (before a change)
    .venv/bin/python launch/digests.py --check digests.json         # compare (after it)
    .venv/bin/python launch/digests.py --recipes lenet5,rbm_mnist --np 1 --out d.json

Each run is a few tens of steps per stage (600 MNIST examples or patches, one epoch or 20
L-BFGS iterations a stage), one torch thread per rank, on the CPU: training is then deterministic,
so a change that alters no behaviour leaves every digest identical, bit for bit. A digest covers
the final checkpoint's stage, step, epoch, batch, model tensors and optimizer state (names,
dtypes, shapes and bytes), the weights of every finished stage in the run's `stages/`, and
metrics.json less its clock and memory readings (times, rates, resident memory). `--check`
prints one line per run and exits 1 if any differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
# Short enough for tens of steps in every stage of every family, long enough to move the weights.
SHORT = ["--train_size", "600", "--batch_size", "30", "--epochs", "1", "--log_every", "5",
         "--rbm.pretrain_epochs", "1", "--rbm.finetune_epochs", "1",
         "--rbm.finetune_batch_size", "30",
         "--sae.lbfgs_iterations", "20", "--sae.finetune_iterations", "5",
         "--patches.count", "600", "--keep_checkpoints", "1"]
# What metrics.json holds that no restructuring should be held to: clock readings and memory.
CLOCK_WORDS = ("time", "seconds", "samples_per", "per_s", "elapsed", "eta", "rss")


def recipes() -> list[str]:
    return sorted(p.stem for p in (ROOT / "models").glob("*.toml"))


def command(recipe: str, np_: int, results: Path) -> list[str]:
    python = [sys.executable, "-m", "hvdl.train", "--model", recipe, *SHORT,
              "--results_dir", str(results)]
    if np_ == 1:
        return python
    return ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
            "-np", str(np_), *python]


def without_clock(value):
    """`value` (parsed JSON) less every entry whose key names a clock reading."""
    if isinstance(value, dict):
        return {k: without_clock(v) for k, v in value.items()
                if not (k.endswith(("_s", "_mb")) or any(w in k.lower() for w in CLOCK_WORDS))}
    if isinstance(value, list):
        return [without_clock(v) for v in value]
    return value


def tensors_digest(hasher, state: dict) -> None:
    for name in sorted(state):
        tensor = state[name]
        if isinstance(tensor, torch.Tensor):
            tensor = tensor.detach().cpu().reshape(-1).contiguous()
            hasher.update(f"{name}:{tensor.dtype}:{tuple(state[name].shape)}".encode())
            hasher.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        elif isinstance(tensor, dict):
            hasher.update(f"{name}:{{".encode())
            tensors_digest(hasher, tensor)
            hasher.update(b"}")


def digest(run_dir: Path) -> str:
    """One hex digest of a finished run folder's final weights, stages and metrics."""
    hasher = hashlib.sha256()
    final = sorted((run_dir / "checkpoints").glob("step-*.pt"))[-1]
    state = torch.load(final, weights_only=True)
    for key in ("stage", "step", "epoch", "batch"):
        hasher.update(f"{key}={state.get(key)!r};".encode())
    tensors_digest(hasher, state["model"])
    tensors_digest(hasher, state.get("optimizer", {}).get("state", {}))
    for stage in sorted((run_dir / "stages").glob("*.pt")):
        hasher.update(stage.name.encode())
        saved = torch.load(stage, weights_only=True)
        tensors_digest(hasher, saved.get("model", saved))
    metrics = without_clock(json.loads((run_dir / "metrics.json").read_text()))
    hasher.update(json.dumps(metrics, sort_keys=True).encode())
    return hasher.hexdigest()[:16]


def run(recipe: str, np_: int) -> str:
    """Train `recipe` briefly on `np_` ranks and return its digest (or 'failed: ...')."""
    env = dict(os.environ, HVDL_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
    with tempfile.TemporaryDirectory(prefix="hvdl-digest-") as tmp:
        proc = subprocess.run(command(recipe, np_, Path(tmp)), cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            lines = (proc.stderr + proc.stdout).strip().splitlines()
            said = [line for line in lines if line.startswith("hvdl: error:")] or lines[-1:]
            return f"failed ({proc.returncode}): {said[0] if said else 'no output'}"
        (run_dir,) = [p for p in Path(tmp).iterdir() if p.is_dir()]
        return digest(run_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the digests here (JSON)")
    parser.add_argument("--check", type=Path, help="compare with digests recorded earlier")
    parser.add_argument("--recipes", default="", help="comma-separated (default: every recipe)")
    parser.add_argument("--np", default="1,2", help="rank counts (default: 1,2)")
    args = parser.parse_args(argv)
    names = args.recipes.split(",") if args.recipes else recipes()
    sizes = [int(n) for n in args.np.split(",")]
    expected = json.loads(args.check.read_text()) if args.check else {}
    found, differ = {}, 0
    for name in names:
        for np_ in sizes:
            key = f"{name} np{np_}"
            found[key] = run(name, np_)
            verdict = ""
            if args.check:
                same = expected.get(key) == found[key]
                differ += not same
                verdict = "  same" if same else f"  DIFFERS (was {expected.get(key)})"
            print(f"{key:24s} {found[key]}{verdict}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(found, indent=1) + "\n")
    if args.check:
        print(f"{len(found) - differ} of {len(found)} digests identical")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
