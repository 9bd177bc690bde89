"""Run configuration: one frozen dataclass, defaults here, a recipe in `models/`, then the CLI.

    python -m hvdl.train --model lenet5 --epochs 5 --lr 0.02 --sae.rho 0.05

A recipe is a TOML file in `models/` whose top-level keys set `Config` fields and whose tables
(`[sae]`, `[rbm]`, `[data]`, `[patches]`, `[perf]`) set the fields of the matching section. On the command
line `--key value` (or `--key=value`) sets a top-level field and `--section.key value` a section
field; a boolean field given alone (`--zca`) means true. Unknown keys, wrong types and values
out of range raise `ConfigError` naming the key and what is allowed (hvdl/config_rules.py).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hvdl.config_rules import ConfigError, coerce, validate


@dataclass(frozen=True)
class SAEConfig:
    """Sparse autoencoder (UFLDL): J = recon + (λ/2)ΣW² + β Σ KL(ρ‖ρ̂)."""

    rho: float = 0.01  # target mean activation ρ of each hidden unit
    beta: float = 3.0  # weight β of the sparsity penalty
    lam: float = 1e-4  # weight decay λ
    lbfgs_iterations: int = 400  # full-batch L-BFGS iterations per layer (optimizer = "lbfgs")
    lbfgs_history: int = 100  # L-BFGS memory (pairs kept)
    softmax_lam: float = 1e-4  # weight decay of the softmax classifier on top of a stack
    finetune_iterations: int = 400  # fine-tuning iterations (L-BFGS) or epochs (minibatch)
    finetune_optimizer: str = "lbfgs"  # lbfgs | sgd | adam (minibatch: lr, schedule, batch_size)
    float64: bool = False  # float64 weights and data, as UFLDL's MATLAB: L-BFGS goes further


@dataclass(frozen=True)
class RBMConfig:
    """Restricted Boltzmann machines and their stacks (Hinton & Salakhutdinov 2006)."""

    cd_k: int = 1  # Gibbs steps of contrastive divergence CD-k
    persistent: bool = False  # persistent CD: the negative chain carries over between updates
    visible: str = "bernoulli"  # bernoulli | gaussian (unit-variance linear visible units)
    code_units: str = "bernoulli"  # hidden units of the top RBM: bernoulli | linear
    pretrain_epochs: int = 10  # epochs of CD per stacked layer
    pretrain_lr: float = 0.1  # CD learning rate for weights and biases
    code_lr: float = 0.001  # CD learning rate of an RBM with linear hidden units
    initial_momentum: float = 0.5  # momentum for the first `momentum_switch` epochs
    final_momentum: float = 0.9  # momentum afterwards
    momentum_switch: int = 5  # epoch at which the momentum changes
    weight_cost: float = 2e-4  # L2 weight decay on W
    finetune_epochs: int = 10  # supervised (DBN) or reconstruction (deep AE) fine-tuning epochs
    finetune_lr: float = 0.1  # learning rate of backprop fine-tuning
    finetune_batch_size: int = 0  # examples per rank per fine-tuning step (0: batch_size)
    top_epochs: int = 0  # DBN: epochs training the softmax layer alone before the whole net
    pretrained: str = ""  # dbn, deep_ae: a run folder whose stages/pretrain<i>.pt are fine-tuned
                          # instead of pretraining anew


@dataclass(frozen=True)
class PatchConfig:
    """Natural-image patches (UFLDL sampleIMAGES)."""

    source: str = "skimage"  # skimage | a folder of PNG/JPEG | a .mat file with IMAGES (H, W, n)
    size: int = 8  # patch side in pixels
    count: int = 10000  # patches over all ranks
    zca: bool = False  # ZCA-whiten after normalising
    zca_epsilon: float = 0.1  # regulariser added to the covariance eigenvalues


@dataclass(frozen=True)
class DataConfig:
    """The training data (hvdl/data/): a bundled dataset or the user's own files."""

    format: str = ""  # mnist | patches | idx | npy | csv | parquet | hdf5 | images; "" means
                      # from the path (mnist when there is none)
    path: str = ""  # a file, a folder or a glob; several files are one dataset in sorted order
    test_path: str = ""  # held-out data in the same format and layout
    test_label: str = ""  # test_path's label files (npy, idx); "" means data.label
    test_fraction: float = 0.0  # without test_path: this share held out, drawn from the seed
    label: str = ""  # the label column, HDF5 key, NPY/IDX file or folder level (1: the image's
                     # folder); "" means unlabelled data (for sae, rbm, deep_ae)
    features: tuple[str, ...] = ()  # columns or the HDF5 key of the features (default: all but
                                    # the label)
    shape: tuple[int, ...] = ()  # one example's shape, e.g. [1, 28, 28] for the cnn family
                                 # (default: the stored shape, else flat)
    scale: str = "none"  # none | unit (x / 255) | standardize (training-set mean and standard
                         # deviation) | minmax (training-set range to [0, 1]); per channel for
                         # [C, H, W] and [H, W] examples, else per feature
    memory: str = "auto"  # auto | device (the shard on the device) | stream (read as it trains)
    budget_mb: float = 0  # largest shard held on the device (0: half its free memory / local ranks)
    buffer_mb: float = 1024  # streaming buffer, and the shuffle window in either memory mode
    chunk_mb: float = 4  # rows per chunk: this many MB of float32 features
    cache_dir: str = ""  # where a gzip file is decompressed once per node ("": $TMPDIR/hvdl)


@dataclass(frozen=True)
class PerfConfig:
    """Synchronisation modes and Horovod knobs."""

    sync: str = "allreduce"  # allreduce (gradients every step) | average (parameters every k steps)
    sync_every: int = 1  # k, local steps between parameter averages (sync = "average")
    grad_sync: str = "fused"  # fused (one flat allreduce a step) | hooks (hvd.DistributedOptimizer)
    fp16_compression: bool = False  # compress gradients to fp16 for the allreduce
    backward_passes_per_step: int = 1  # local gradient accumulation before each allreduce
    fusion_threshold_mb: int = 64  # Horovod tensor fusion buffer (HOROVOD_FUSION_THRESHOLD)
    cycle_time_ms: float = 0.02  # Horovod background cycle (HOROVOD_CYCLE_TIME); see results/bench
    timeline: bool = False  # write Horovod's timeline into the run folder
    bf16: bool = False  # bf16 autocast of forward and loss (GPU; also runs on CPU)
    compile: bool = False  # torch.compile the model


@dataclass(frozen=True)
class Config:
    """Everything that decides a run."""

    recipe: str = "lenet5"  # recipe name (file stem in models/), set by the loader
    family: str = "cnn"  # cnn | sae | stacked_ae | rbm | dbn | deep_ae
    data_dir: str = ""  # MNIST's folder; "" means $HVDL_DATA, else the project's data/
    train_size: int = 0  # use the first N training examples (0: all)
    layers: tuple[int, ...] = ()  # unit counts, input first, e.g. (784, 500, 500, 2000, 10); a 0
                                  # first (inputs) or last (classes) is taken from the data
    optimizer: str = "sgd"  # sgd | adam | lbfgs
    lbfgs_batch_iterations: int = 3  # L-BFGS iterations per minibatch (optimizer = "lbfgs")
    epochs: int = 3  # passes over the training data
    batch_size: int = 64  # examples per rank per step
    lr: float = 0.01  # single-rank learning rate
    lr_scaling: str = "linear"  # linear (lr × ranks) | none
    warmup_epochs: float = 0.0  # linear warm-up from lr to lr × ranks
    schedule: str = "constant"  # constant | cosine (to zero over the run) | onecycle
    momentum: float = 0.0  # SGD momentum
    weight_decay: float = 0.0  # L2 penalty on weights
    label_smoothing: float = 0.0  # classification loss label smoothing
    seed: int = 42  # seeds weights, shuffling and sampling
    threads: int = 0  # torch threads per rank on CPU (0: cores / local ranks)
    results_dir: str = "results/runs"  # run folders go here
    log_every: int = 50  # steps between progress and TensorBoard updates
    checkpoint_every: int = 0  # steps between checkpoints (0: end of each epoch only)
    keep_checkpoints: int = 2  # newest checkpoints kept
    filters_every: int = 0  # steps between filter images (0: end of each stage only)
    resume: str = ""  # "" | "auto" (newest checkpoint of the last run of this recipe) | a path
    stop_check_every: int = 10  # steps between the ranks' agreement on a SIGTERM/SIGUSR1 stop
    elastic: bool = False  # Horovod elastic training (horovodrun --min-np/--max-np); family cnn
    commit_every: int = 20  # steps between elastic in-memory state commits (elastic = true)
    max_steps: int = 0  # stop after this many steps (0: no limit); for smoke tests
    sae: SAEConfig = field(default_factory=SAEConfig)
    rbm: RBMConfig = field(default_factory=RBMConfig)
    data: DataConfig = field(default_factory=DataConfig)
    patches: PatchConfig = field(default_factory=PatchConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)


SECTIONS = {"sae": SAEConfig, "rbm": RBMConfig, "data": DataConfig, "patches": PatchConfig,
            "perf": PerfConfig}


def models_dir() -> Path:
    """The recipe folder: $HVDL_MODELS, else `models/` beside the package."""
    env = os.environ.get("HVDL_MODELS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "models"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in models_dir().glob("*.toml"))


def load(model: str = "lenet5", overrides: list[str] | None = None) -> Config:
    """Resolve a run's config: defaults, then the recipe `model`, then `overrides` (argv)."""
    path = Path(model) if model.endswith(".toml") else models_dir() / f"{model}.toml"
    if not path.is_file():
        raise ConfigError(f"unknown recipe {model!r}; available: {', '.join(recipe_names())}")
    try:
        recipe = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"recipe {path} is not valid TOML: {err}") from None
    values = flatten(recipe, str(path))
    values.update(parse_overrides(overrides or []))
    values.setdefault("recipe", path.stem)
    return build(values)


def flatten(table: dict[str, Any], where: str) -> dict[str, Any]:
    flat = {}
    for key, value in table.items():
        if isinstance(value, dict):
            if key not in SECTIONS:
                raise ConfigError(f"unknown section [{key}] in {where}; "
                                  f"allowed: {', '.join(SECTIONS)}")
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def parse_overrides(argv: list[str]) -> dict[str, Any]:
    """Turn `--key value`, `--key=value` and bare boolean `--key` into {key: raw value}."""
    values: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or token == "--":
            raise ConfigError(f"unexpected argument {token!r}; options look like --key value")
        key, eq, value = token[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value = argv[i + 1]
                i += 1
            elif _field_type(key) is bool:
                value = "true"
            elif key == "resume":
                value = "auto"
            else:
                raise ConfigError(f"option --{key} needs a value")
        values[key] = value
        i += 1
    return values


def _field_type(key: str) -> Any:
    section, _, name = key.rpartition(".")
    cls = SECTIONS.get(section) if section else Config
    if cls is None:
        raise ConfigError(f"unknown config key {key!r}; sections: {', '.join(SECTIONS)}")
    hints = typing.get_type_hints(cls)
    if name not in hints or (not section and name in SECTIONS):
        allowed = ", ".join(f.name for f in dataclasses.fields(cls) if f.name not in SECTIONS)
        raise ConfigError(f"unknown config key {key!r}; allowed: {allowed}")
    return hints[name]


def build(values: dict[str, Any]) -> Config:
    """Build and validate a Config from flat {key or section.key: value}."""
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key, value in values.items():
        typed = coerce(key, value, _field_type(key))
        section, _, name = key.rpartition(".")
        (sections[section] if section else top)[name] = typed
    config = Config(**top, **{name: SECTIONS[name](**kv) for name, kv in sections.items()})
    validate(config)
    return config


def to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dict (lists for tuples): what run folders and checkpoints store."""
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return list(value) if isinstance(value, tuple) else value
    return plain(dataclasses.asdict(config))


def from_dict(data: dict[str, Any]) -> Config:
    """Inverse of `to_dict` (for checkpoints and resolved configs)."""
    data = dict(data)
    if "dataset" in data:  # configs saved before the [data] section named the dataset so
        data["data"] = {"format": data.pop("dataset"), **data.get("data", {})}
    return build(flatten(data, "saved config"))


def to_toml(config: Config) -> str:
    """The resolved config as TOML, loadable again with `--model <file>`."""
    def fmt(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(value, list):
            return "[" + ", ".join(fmt(v) for v in value) + "]"
        return repr(value)

    data = to_dict(config)
    lines = [f"{k} = {fmt(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for name in SECTIONS:
        lines += ["", f"[{name}]"] + [f"{k} = {fmt(v)}" for k, v in data[name].items()]
    return "\n".join(lines) + "\n"
