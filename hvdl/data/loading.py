"""Load this rank's shard of a dataset onto its device.

Only the rank's own examples are converted and moved to the device; the file itself is read by
every rank (MNIST is 47 MB raw), with local rank 0 of each node going first so that a shared
file system sees one reader per node while the page cache warms.
"""

from __future__ import annotations

import numpy as np
import torch

from hvdl import dist
from hvdl.config import Config, ConfigError
from hvdl.data import mnist
from hvdl.data.shard import DeviceShard, shard_indices, steps_per_epoch
from hvdl.dist import Context

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # over the 60,000 training images, pixels in [0, 1]


def mnist_arrays(config: Config, ctx: Context, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The split's images (N, 28, 28) uint8 and labels (N,), cut to `train_size` for training."""
    with dist.local_root_first(ctx):
        images, labels = mnist.load_mnist(mnist.resolve_data_dir(config.data_dir), split)
    if split == "train" and config.train_size:
        if config.train_size > len(images):
            raise ConfigError(f"config key 'train_size' is {config.train_size}, the training "
                              f"set has {len(images)}; allowed: 0 (all) to {len(images)}")
        images, labels = images[:config.train_size], labels[:config.train_size]
    return images, labels


def device_shard(x: np.ndarray, y: np.ndarray | None, config: Config, ctx: Context, *,
                 train: bool, batch_size: int | None = None) -> DeviceShard:
    """This rank's shard of (x, y) as device tensors (x float32, y int64)."""
    batch = batch_size or config.batch_size
    if len(x) < ctx.size:
        raise ConfigError(f"{len(x)} examples cannot be shared by {ctx.size} ranks; "
                          f"allowed: at most {len(x)} ranks")
    idx = shard_indices(len(x), ctx.rank, ctx.size, config.seed)
    xs = torch.as_tensor(x[idx], dtype=torch.float32).to(ctx.device)
    ys = None if y is None else torch.as_tensor(y[idx].astype(np.int64)).to(ctx.device)
    if not train:
        return DeviceShard(xs, ys, batch_size=batch, shuffle=False)
    steps = steps_per_epoch(len(x), ctx.size, batch)
    if steps == 0:
        raise ConfigError(f"config key 'batch_size' is {batch}, larger than a shard of "
                          f"{len(x) // ctx.size} examples ({len(x)} over {ctx.size} ranks); "
                          f"allowed: 1 to {len(x) // ctx.size}")
    return DeviceShard(xs, ys, batch_size=batch, steps=steps, seed=config.seed + 1000 * ctx.rank)


def mnist_pixels(images: np.ndarray, *, flatten: bool, standardize: bool) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 in [0, 1] (or standardized), as (N, 784) or (N, 1, 28, 28)."""
    x = images.astype(np.float32) / 255.0
    if standardize:
        x = (x - MNIST_MEAN) / MNIST_STD
    return x.reshape(len(x), -1) if flatten else x[:, None]


def mnist_shards(config: Config, ctx: Context, *, flatten: bool,
                 standardize: bool) -> tuple[DeviceShard, DeviceShard]:
    """(train, test) shards of MNIST for this rank, on its device."""
    shards = []
    for split in ("train", "test"):
        images, labels = mnist_arrays(config, ctx, split)
        x = mnist_pixels(images, flatten=flatten, standardize=standardize)
        shards.append(device_shard(x, labels, config, ctx, train=split == "train",
                                   batch_size=None if split == "train" else 1000))
    return shards[0], shards[1]
