"""Seconds per LeNet-5 epoch, 2 ranks on one host against 1 rank on each of two hosts.

    sudo launch/local-cluster.sh start 2
    .venv/bin/python launch/multihost-epochs.py --pairs 5 --out /var/tmp/epoch-times
    sudo launch/local-cluster.sh stop

The two layouts alternate (one host, two hosts, one host, ...) so that whatever else runs on the
machine weighs on both alike, and `--max_load` waits for a quiet machine before each run. Every
run trains `--epochs` epochs of `--train_size` examples with one torch thread per rank; its first
epoch (warm-up) is left out. Prints one line per run and the medians, as README.md shows them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = {"one host": "node1:2", "two hosts": "node1:1,node2:1"}


def command(launcher: str, hosts: str, args: list[str]) -> list[str]:
    python = [sys.executable, "-m", "hvdl.train", *args]
    if launcher == "gloo":  # on one host Gloo talks over lo, and horovodrun refuses eth0
        nic = ["--network-interface", "eth0"] if "," in hosts else []
        return [str(Path(sys.executable).parent / "horovodrun"), "--gloo", "-np", "2", "-H",
                hosts, *nic, *python]
    return ["mpirun", "--allow-run-as-root", "--bind-to", "none", "-np", "2", "-H", hosts,
            "--mca", "btl_tcp_if_include", "eth0", "--mca", "oob_tcp_if_include", "eth0",
            "-x", "PATH", "-x", "HVDL_THREADS", *python]


def epoch_seconds(launcher: str, hosts: str, out: Path, train: list[str]) -> list[float]:
    env = dict(os.environ, HVDL_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd = command(launcher, hosts, [*train, "--results_dir", str(out)])
    subprocess.run([str(ROOT / "launch" / "local-cluster.sh"), "exec", "node1", "--", *cmd],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    run_dir = sorted(out.glob("*-lenet5"))[-1]  # this run: the newest under `out`
    history = json.loads((run_dir / "metrics.json").read_text())["train"]
    return [entry["seconds"] for entry in history[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train_size", type=int, default=20000)
    parser.add_argument("--launchers", nargs="+", default=["mpirun", "gloo"])
    parser.add_argument("--out", type=Path, default=Path("/var/tmp/epoch-times"))
    parser.add_argument("--max_load", type=float, default=None,
                        help="before each run, wait until the 1-minute load is below this")
    args = parser.parse_args()
    train = ["--model", "lenet5", "--epochs", str(args.epochs),
             "--train_size", str(args.train_size)]
    times: dict[tuple[str, str], list[float]] = {}
    for launcher in args.launchers:
        for pair in range(args.pairs):
            for layout, hosts in LAYOUTS.items():
                while args.max_load is not None and os.getloadavg()[0] >= args.max_load:
                    time.sleep(5)  # another job on the machine: let it finish
                out = args.out / f"{launcher}-{layout.replace(' ', '-')}-{pair}"
                seconds = epoch_seconds(launcher, hosts, out, train)
                times.setdefault((launcher, layout), []).extend(seconds)
                print(f"{launcher:7} {layout:9} run {pair}: "
                      + " ".join(f"{s:.2f}" for s in seconds) + f" (load {os.getloadavg()[0]:.1f})",
                      flush=True)
    for (launcher, layout), seconds in times.items():
        print(f"{launcher:7} {layout:9} median {statistics.median(seconds):.2f} s per epoch "
              f"(min {min(seconds):.2f}, max {max(seconds):.2f}, {len(seconds)} epochs)")


if __name__ == "__main__":
    main()
