"""What a configuration may hold: the rules fields carry in their annotations (`Literal["a", "b"]`,
`Positive[int]`, `NonNegative[float]`, next to each field in hvdl/config.py), the rules between
fields, and the conversion of recipe and command-line values to the fields' types. Every
violation raises `ConfigError` naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from hvdl.errors import BadInput

if TYPE_CHECKING:
    from hvdl.config import Config


class ConfigError(BadInput):
    """A recipe or command-line value that is not allowed; the message names key and rule."""


CLASSIFIER_FAMILIES = ("stacked_ae", "dbn")  # layers end with the class count
# Families trained by minibatches alone, which run under Horovod's elastic API (elastic = true).
ELASTIC_FAMILIES = ("cnn", "sae", "rbm", "dbn", "deep_ae")

@dataclass(frozen=True)
class OneOf:
    """A field's allowed values."""

    choices: tuple[Any, ...]

    def check(self, key: str, value: Any) -> None:
        if value not in self.choices:
            raise ConfigError(f"config key {key!r} is {value!r}; allowed: "
                              f"{', '.join(map(str, self.choices))}")


@dataclass(frozen=True)
class AtLeast:
    """A field's lower bound, strict or not."""

    bound: float
    strict: bool

    def check(self, key: str, value: Any) -> None:
        if not (value > self.bound if self.strict else value >= self.bound):
            sign = ">" if self.strict else ">="
            raise ConfigError(f"config key {key!r} must be {sign} {self.bound:g}, got {value!r}")


class Positive:
    """`Positive[int]`: a number field that must be > 0."""

    def __class_getitem__(cls, kind: type) -> Any:
        return Annotated[kind, AtLeast(0, strict=True)]


class NonNegative:
    """`NonNegative[float]`: a number field that must be >= 0."""

    def __class_getitem__(cls, kind: type) -> Any:
        return Annotated[kind, AtLeast(0, strict=False)]


def rules(cls: type) -> dict[str, tuple[Any, ...]]:
    """Each field of the dataclass `cls` and the rules its annotation carries: a `Literal`'s
    values, a `Positive` or `NonNegative` bound."""
    found = {}
    for name, kind in typing.get_type_hints(cls, include_extras=True).items():
        if typing.get_origin(kind) is Literal:
            found[name] = (OneOf(typing.get_args(kind)),)
        else:
            found[name] = getattr(kind, "__metadata__", ())
    return found


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
    if kind is str or typing.get_origin(kind) is Literal:
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
    if typing.get_origin(kind) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(kind)))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]


def get(config: Config, key: str) -> Any:
    section, _, name = key.rpartition(".")
    return getattr(getattr(config, section) if section else config, name)


def validate(config: Config) -> None:
    """Raise ConfigError for the first value its field's rule refuses, then for the first
    broken rule between fields (a list of independent checks, read top to bottom)."""
    sections = [(f"{f.name}.", getattr(config, f.name)) for f in dataclasses.fields(config)
                if dataclasses.is_dataclass(getattr(config, f.name))]
    for prefix, part in [("", config), *sections]:
        for name, found in rules(type(part)).items():
            for rule in found:
                rule.check(prefix + name, getattr(part, name))
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
    if config.elastic and config.optimizer == "lbfgs":
        raise ConfigError("config key 'elastic' is true with optimizer 'lbfgs', whose line "
                          "searches keep the ranks in lockstep outside Horovod's elastic state; "
                          "allowed: elastic training with optimizer sgd or adam")
    if config.elastic:
        check_elastic_perf(config.perf)


# What elastic training synchronises with: Horovod's DistributedOptimizer, every step, on the
# model as it is (the elastic state handlers know its hooks and nothing else).
ELASTIC_PERF = {"sync": "allreduce", "sync_every": 1, "backward_passes_per_step": 1,
                "compile": False}


def check_elastic_perf(perf: Any) -> None:
    """Refuse the perf keys an elastic run cannot honour, rather than ignore them."""
    for key, allowed in ELASTIC_PERF.items():
        found = getattr(perf, key)
        if found != allowed:
            shown = str(found).lower() if isinstance(found, bool) else repr(found)
            raise ConfigError(
                f"config key 'perf.{key}' is {shown} with elastic true; elastic runs average "
                "gradients every step through Horovod's DistributedOptimizer; allowed: "
                + ", ".join(f"perf.{k} {str(v).lower()}" for k, v in ELASTIC_PERF.items()))


def fit_data(config: Config, data: Any) -> tuple[Config, str | None]:
    """`config` fitted to the data it trains on (`data`: hvdl.data.dataset's Data, its
    `features`, `classes` and `info["range"]`): the layers' 0s taken from the data, the other
    counts checked, `rbm.visible = "auto"` made bernoulli or gaussian; and a line saying what
    auto chose (None when nothing was chosen). Units that model values in [0, 1] are refused on
    data outside it, with the setting that fits."""
    config = fit_layers(config, data)
    return fit_units(config, data.info.get("range", {}).get("scaled"))


# Families whose reconstruction of the input is a sigmoid (or a logistic cross-entropy): they
# can only model inputs in [0, 1].
SIGMOID_INPUT_FAMILIES = ("sae", "stacked_ae", "deep_ae")


def fit_units(config: Config, span: tuple[float, float] | None) -> tuple[Config, str | None]:
    """rbm.visible resolved against the scaled training values' range `span`, checked."""
    inside = span is None or (span[0] >= 0 and span[1] <= 1)
    where = "" if span is None else f"[{span[0]:.4g}, {span[1]:.4g}]"
    if not inside and config.family in SIGMOID_INPUT_FAMILIES:
        raise ConfigError(f"family {config.family} reconstructs its input with sigmoid units, "
                          f"in [0, 1], but the scaled training values span {where}; allowed: "
                          "--data.scale minmax (or unit for 0-255 pixels)")
    visible = config.rbm.visible
    if config.family not in ("rbm", "dbn", "deep_ae"):
        return config, None
    if visible == "bernoulli" and not inside:
        raise ConfigError(f"rbm.visible is bernoulli (probabilities in [0, 1]), but the scaled "
                          f"training values span {where}; allowed: --rbm.visible gaussian (or "
                          "auto), or --data.scale minmax")
    if visible != "auto":
        return config, None
    chosen = "bernoulli" if inside else "gaussian"
    rbm = dataclasses.replace(config.rbm, visible=chosen)
    said = (f"rbm.visible auto: {chosen} (the scaled training values span {where}, "
            f"{'within' if inside else 'outside'} [0, 1])")
    if chosen == "gaussian":
        said += ("; Gaussian units assume unit variance (--data.scale standardize) and usually "
                 "need an rbm.pretrain_lr 10-100 times smaller")
    return dataclasses.replace(config, rbm=rbm), said


def fit_layers(config: Config, data: Any) -> Config:
    """`config` with layers' 0s taken from the data (inputs, and a classifier's classes), the
    other counts checked against it (`data`: its `features` and `classes`, hvdl.data.dataset's
    Data)."""
    layers = list(config.layers)
    if not layers:
        return config
    if layers[0] == 0:
        layers[0] = data.features
    elif layers[0] != data.features:
        raise ConfigError(f"config key 'layers' starts with {layers[0]} inputs, the data has "
                          f"{data.features} features; allowed: {data.features}, or 0 to take it "
                          "from the data")
    if config.family in CLASSIFIER_FAMILIES:
        n = len(data.classes or ())
        if layers[-1] == 0:
            layers[-1] = n
        elif layers[-1] != n:
            raise ConfigError(f"config key 'layers' ends with {layers[-1]} classes, the data has "
                              f"{n}; allowed: {n}, or 0 to take it from the data")
    return dataclasses.replace(config, layers=tuple(layers))
