"""What a configuration may hold: each key's choices and range, the rules between fields, and
the conversion of recipe and command-line values to the fields' types (hvdl/config.py builds
the `Config` and calls these). Every violation raises `ConfigError` naming the key and what is
allowed.
"""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING, Any

from hvdl.errors import BadInput

if TYPE_CHECKING:
    from hvdl.config import Config


class ConfigError(BadInput):
    """A recipe or command-line value that is not allowed; the message names key and rule."""


FAMILIES = ("cnn", "sae", "stacked_ae", "rbm", "dbn", "deep_ae")
CLASSIFIER_FAMILIES = ("stacked_ae", "dbn")  # layers end with the class count
ELASTIC_FAMILIES = ("cnn",)  # families whose trainer runs hvdl/elastic.py when elastic = true

# Each key's allowed values, then the keys that must be > 0 and those that must be >= 0.
_CHOICES = {
    "family": FAMILIES,
    "data.format": ("", "mnist", "patches", "idx", "npy", "csv", "parquet", "hdf5", "images"),
    "data.scale": ("none", "unit", "standardize", "minmax"),
    "data.memory": ("auto", "device", "stream"),
    "optimizer": ("sgd", "adam", "lbfgs"),
    "lr_scaling": ("linear", "none"),
    "schedule": ("constant", "cosine", "onecycle"),
    "rbm.visible": ("bernoulli", "gaussian"),
    "rbm.code_units": ("bernoulli", "linear"),
    "perf.sync": ("allreduce", "average"),
    "sae.finetune_optimizer": ("lbfgs", "sgd", "adam"),
    "perf.grad_sync": ("fused", "hooks"),
}
_POSITIVE = {"batch_size", "lr", "log_every", "keep_checkpoints", "stop_check_every",
             "commit_every", "lbfgs_batch_iterations", "sae.lbfgs_iterations",
             "sae.lbfgs_history", "rbm.cd_k",
             "rbm.pretrain_lr", "rbm.code_lr", "rbm.finetune_lr", "patches.size", "patches.count",
             "perf.sync_every", "perf.backward_passes_per_step", "perf.fusion_threshold_mb",
             "perf.cycle_time_ms", "patches.zca_epsilon", "data.buffer_mb", "data.chunk_mb"}
_NON_NEGATIVE = {"epochs", "train_size", "warmup_epochs", "momentum", "weight_decay",
                 "label_smoothing", "threads", "checkpoint_every", "filters_every", "max_steps",
                 "sae.rho", "sae.beta", "sae.lam", "sae.softmax_lam", "sae.finetune_iterations",
                 "rbm.pretrain_epochs", "rbm.initial_momentum", "rbm.final_momentum",
                 "rbm.momentum_switch", "rbm.weight_cost", "rbm.finetune_epochs",
                 "rbm.finetune_batch_size", "rbm.top_epochs", "data.test_fraction",
                 "data.budget_mb"}


def coerce(key: str, value: Any, kind: Any) -> Any:
    """Convert a TOML or command-line value to the field's type, or explain why not."""
    def fail() -> ConfigError:
        return ConfigError(f"config key {key!r} must be {describe(kind)}, got {value!r}")

    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise fail()
    if kind is int:
        if isinstance(value, bool):
            raise fail()
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise fail()
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise fail() from None
    if kind is str:
        if isinstance(value, str):
            return value
        raise fail()
    # tuple[int, ...] or tuple[str, ...]
    item_kind = typing.get_args(kind)[0]
    items = value.strip("[]").split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise fail()
    items = [item.strip() if isinstance(item, str) else item for item in items]
    try:
        return tuple(coerce(key, item, item_kind) for item in items if item != "")
    except ConfigError:
        raise fail() from None


def describe(kind: Any) -> str:
    if typing.get_origin(kind) is tuple:
        item = {int: "integers", str: "names"}[typing.get_args(kind)[0]]
        return f"a comma-separated list of {item}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]


def get(config: Config, key: str) -> Any:
    section, _, name = key.rpartition(".")
    return getattr(getattr(config, section) if section else config, name)


def validate(config: Config) -> None:
    """Raise ConfigError for the first value out of its allowed range."""
    for key, allowed in _CHOICES.items():
        if get(config, key) not in allowed:
            raise ConfigError(f"config key {key!r} is {get(config, key)!r}; "
                              f"allowed: {', '.join(allowed)}")
    for key in sorted(_POSITIVE):
        if not get(config, key) > 0:
            raise ConfigError(f"config key {key!r} must be > 0, got {get(config, key)!r}")
    for key in sorted(_NON_NEGATIVE):
        if not get(config, key) >= 0:
            raise ConfigError(f"config key {key!r} must be >= 0, got {get(config, key)!r}")
    # A 0 is taken from the data: the inputs first, and the classes last for the classifiers.
    fixed = config.layers[1:-1] if config.family in CLASSIFIER_FAMILIES else config.layers[1:]
    if any(n < 0 for n in config.layers) or any(n == 0 for n in fixed):
        first_last = "first and last" if config.family in CLASSIFIER_FAMILIES else "first"
        raise ConfigError(f"config key 'layers' needs unit counts > 0 (0 {first_last}: taken "
                          f"from the data), got {config.layers}")
    if not config.data.test_fraction < 1:
        raise ConfigError(f"config key 'data.test_fraction' must be < 1, got "
                          f"{config.data.test_fraction}")
    if config.data.test_path and config.data.test_fraction:
        raise ConfigError("config keys 'data.test_path' and 'data.test_fraction' are both set; "
                          "allowed: one of them")
    if config.data.format == "patches" and (config.data.path or config.data.test_path):
        raise ConfigError("config key 'data.path' is set and data.format is 'patches', whose "
                          "images come from patches.source; allowed: data.format '' (from the "
                          "path) or a file format, or no data.path")
    if any(n <= 0 for n in config.data.shape):
        raise ConfigError(f"config key 'data.shape' needs sizes > 0, got {config.data.shape}")
    if config.family != "cnn" and len(config.layers) < 2:
        raise ConfigError(f"config key 'layers' needs at least input and one hidden size for "
                          f"family {config.family!r}, got {config.layers}")
    if config.rbm.pretrained and config.family not in ("dbn", "deep_ae"):
        raise ConfigError(f"config key 'rbm.pretrained' is set for family {config.family!r}; "
                          "allowed: families dbn and deep_ae, which fine-tune a saved stack")
    if config.elastic and config.family not in ELASTIC_FAMILIES:
        raise ConfigError(f"config key 'elastic' is true for family {config.family!r}; "
                          f"allowed: elastic training for {', '.join(ELASTIC_FAMILIES)} only")
