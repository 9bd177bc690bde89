"""Write a large NPY dataset for hvdl's scale measurements: MNIST's training images, as float32
pixels in [0, 1], repeated to ROWS rows, with their labels.

    python launch/synthetic-data.py /tmp/big --rows 2100000     # 6.6 GB of features

Writes OUT/x.npy (ROWS, 28, 28) float32 and OUT/y.npy (ROWS,) int64 a block at a time, so it
needs little memory; an existing file of the right size is kept.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from hvdl.data.formats.mnist import load_mnist, resolve_data_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=2_100_000)
    args = parser.parse_args()
    images, labels = load_mnist(resolve_data_dir(), "train")
    pixels = images.astype(np.float32) / 255  # (60000, 28, 28)
    args.out.mkdir(parents=True, exist_ok=True)
    x_path, y_path = args.out / "x.npy", args.out / "y.npy"
    if x_path.is_file() and np.load(x_path, mmap_mode="r").shape[0] == args.rows:
        print(f"{x_path} is there already")
        return 0
    x = np.lib.format.open_memmap(x_path, mode="w+", dtype=np.float32,
                                  shape=(args.rows, 28, 28))
    y = np.lib.format.open_memmap(y_path, mode="w+", dtype=np.int64, shape=(args.rows,))
    for start in range(0, args.rows, len(pixels)):
        stop = min(start + len(pixels), args.rows)
        x[start:stop] = pixels[:stop - start]
        y[start:stop] = labels[:stop - start]
        x.flush()
    print(f"wrote {x_path} ({x_path.stat().st_size / 1e9:.2f} GB) and {y_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
