"""What the data layer reads of a run's config, and nothing more.

    data = dataset.load(Settings.of(config), ctx, labels=True)

The `[data]` and `[patches]` sections, and the top-level keys that shape a shard: the seed of
the chunk order, train_size, batch_size, data_dir (MNIST's folder), and the family and optimizer,
which two of its messages name (a family that needs labels, a family that trains on the whole
shard at once).
"""

from __future__ import annotations

from dataclasses import dataclass

from hvdl.config import Config, DataConfig, PatchConfig


@dataclass(frozen=True)
class Settings:
    data: DataConfig
    patches: PatchConfig
    seed: int
    train_size: int
    batch_size: int
    data_dir: str
    family: str
    optimizer: str

    @classmethod
    def of(cls, config: Config) -> Settings:
        return cls(config.data, config.patches, config.seed, config.train_size,
                   config.batch_size, config.data_dir, config.family, config.optimizer)
