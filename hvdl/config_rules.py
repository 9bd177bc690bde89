"""What a configuration may hold: each key's choices and range, the rules between fields, and
the conversion of recipe and command-line values to the fields' types (hvdl/config.py builds
the `Config` and calls these). Every violation raises `ConfigError` naming the key and what is
allowed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hvdl.config import Config


class ConfigError(ValueError):
    """A recipe or command-line value that is not allowed; the message names key and rule."""


FAMILIES = ("cnn", "sae", "stacked_ae", "rbm", "dbn", "deep_ae")
ELASTIC_FAMILIES = ("cnn",)  # families whose trainer runs hvdl/elastic.py when elastic = true

# Each key's allowed values, then the keys that must be > 0 and those that must be >= 0.
_CHOICES = {
    "family": FAMILIES,
    "dataset": ("mnist", "patches"),
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
             "perf.cycle_time_ms", "patches.zca_epsilon"}
_NON_NEGATIVE = {"epochs", "train_size", "warmup_epochs", "momentum", "weight_decay",
                 "label_smoothing", "threads", "checkpoint_every", "filters_every", "max_steps",
                 "sae.rho", "sae.beta", "sae.lam", "sae.softmax_lam", "sae.finetune_iterations",
                 "rbm.pretrain_epochs", "rbm.initial_momentum", "rbm.final_momentum",
                 "rbm.momentum_switch", "rbm.weight_cost", "rbm.finetune_epochs",
                 "rbm.finetune_batch_size", "rbm.top_epochs"}


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
    # tuple[int, ...]
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise fail()
    try:
        return tuple(coerce(key, item, int) for item in items if item != "")
    except ConfigError:
        raise fail() from None


def describe(kind: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number",
            str: "a string"}.get(kind, "a comma-separated list of integers")


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
    if any(n <= 0 for n in config.layers):
        raise ConfigError(f"config key 'layers' needs unit counts > 0, got {config.layers}")
    if config.family != "cnn" and len(config.layers) < 2:
        raise ConfigError(f"config key 'layers' needs at least input and one hidden size for "
                          f"family {config.family!r}, got {config.layers}")
    if config.rbm.pretrained and config.family not in ("dbn", "deep_ae"):
        raise ConfigError(f"config key 'rbm.pretrained' is set for family {config.family!r}; "
                          "allowed: families dbn and deep_ae, which fine-tune a saved stack")
    if config.elastic and config.family not in ELASTIC_FAMILIES:
        raise ConfigError(f"config key 'elastic' is true for family {config.family!r}; "
                          f"allowed: elastic training for {', '.join(ELASTIC_FAMILIES)} only")
