"""Run configuration: one frozen dataclass, defaults here, a recipe in `models/`, then the CLI.

    python -m hvdl.train --model lenet5 --epochs 5 --lr 0.02 --sae.rho 0.05

A recipe is a TOML file in `models/` whose top-level keys set `Config` fields and whose tables
(`[sae]`, `[rbm]`, `[data]`, `[patches]`, `[perf]`, `[dist]`) set the fields of the matching
section. On the command line `--key value` (or `--key=value`) sets a top-level field and
`--section.key value` a section field; a boolean field given alone (`--zca`) means true.
Unknown keys, wrong types and values out of range raise `ConfigError` naming the key and what
is allowed (hvdl/config_rules.py).

Over 300 lines on purpose: every option's field, default and one-line comment is here, in one
place, and `hvdl train --help` prints them from here.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomllib

from hvdl.config_rules import ConfigError, NonNegative, Positive, coerce, validate


@dataclass(frozen=True)
class SAEConfig:
    """Sparse autoencoder (UFLDL): J = recon + (λ/2)ΣW² + β Σ KL(ρ‖ρ̂)."""

    rho: NonNegative[float] = 0.01  # target mean activation ρ of each hidden unit
    beta: NonNegative[float] = 3.0  # weight β of the sparsity penalty
    lam: NonNegative[float] = 1e-4  # weight decay λ
    # full-batch L-BFGS iterations per layer (optimizer = "lbfgs")
    lbfgs_iterations: Positive[int] = 400
    lbfgs_history: Positive[int] = 100  # L-BFGS memory (pairs kept)
    # weight decay of the softmax classifier on top of a stack
    softmax_lam: NonNegative[float] = 1e-4
    # fine-tuning iterations (L-BFGS) or epochs (minibatch)
    finetune_iterations: NonNegative[int] = 400
    # the fine-tuning optimizer; sgd and adam take lr, schedule and batch_size
    finetune_optimizer: Literal["lbfgs", "sgd", "adam"] = "lbfgs"
    float64: bool = False  # float64 weights and data, as UFLDL's MATLAB: L-BFGS goes further


@dataclass(frozen=True)
class RBMConfig:
    """Restricted Boltzmann machines and their stacks (Hinton & Salakhutdinov 2006)."""

    cd_k: Positive[int] = 1  # Gibbs steps of contrastive divergence CD-k
    persistent: bool = False  # persistent CD: the negative chain carries over between updates
    # the first RBM's visible units: bernoulli (probabilities in [0, 1]), gaussian (unit-variance
    # linear), or auto: bernoulli when the scaled training data lie in [0, 1], else gaussian
    visible: Literal["auto", "bernoulli", "gaussian"] = "auto"
    # the hidden units of the top RBM
    code_units: Literal["bernoulli", "linear"] = "bernoulli"
    pretrain_epochs: NonNegative[int] = 10  # epochs of CD per stacked layer
    pretrain_lr: Positive[float] = 0.1  # CD learning rate for weights and biases
    code_lr: Positive[float] = 0.001  # CD learning rate of an RBM with linear hidden units
    initial_momentum: NonNegative[float] = 0.5  # momentum for the first `momentum_switch` epochs
    final_momentum: NonNegative[float] = 0.9  # momentum afterwards
    momentum_switch: NonNegative[int] = 5  # epoch at which the momentum changes
    weight_cost: NonNegative[float] = 2e-4  # L2 weight decay on W
    # supervised (DBN) or reconstruction (deep AE) fine-tuning epochs
    finetune_epochs: NonNegative[int] = 10
    finetune_lr: Positive[float] = 0.1  # learning rate of backprop fine-tuning
    # examples per rank per fine-tuning step (0: batch_size)
    finetune_batch_size: NonNegative[int] = 0
    # DBN: epochs training the softmax layer alone before the whole net
    top_epochs: NonNegative[int] = 0
    # dbn, deep_ae: a run folder whose stages/pretrain<i>.pt are fine-tuned instead of pretraining
    # anew
    pretrained: str = ""


@dataclass(frozen=True)
class PatchConfig:
    """Natural-image patches (UFLDL sampleIMAGES)."""

    source: str = "skimage"  # skimage | a folder of PNG/JPEG | a .mat file with IMAGES (H, W, n)
    size: Positive[int] = 8  # patch side in pixels
    count: Positive[int] = 10000  # patches over all ranks
    zca: bool = False  # ZCA-whiten after normalising
    zca_epsilon: Positive[float] = 0.1  # regulariser added to the covariance eigenvalues


@dataclass(frozen=True)
class DataConfig:
    """The training data (hvdl/data/): a bundled dataset or the user's own files."""

    # "" means from the files' names (mnist when there is no path)
    format: Literal["", "mnist", "patches", "idx", "npy", "csv", "parquet", "hdf5", "images",
                    "sql"] = ""
    # a file, a folder or a glob (several files are one dataset in sorted order), s3://bucket/...
    # in object storage, or postgresql://user@host:port/db for format sql
    path: str = ""
    test_path: str = ""  # held-out data in the same format and layout
    test_label: str = ""  # test_path's label files (npy, idx); "" means data.label
    # without test_path: this share held out, drawn from the seed
    test_fraction: NonNegative[float] = 0.0
    # the label column, HDF5 key, NPY/IDX file or folder level (1: the image's folder); "" means
    # unlabelled data (for sae, rbm, deep_ae)
    label: str = ""
    # columns or the HDF5 key of the features (default: all but the label)
    features: tuple[str, ...] = ()
    # one example's shape, e.g. [1, 28, 28] for the cnn family (default: the stored shape, else
    # flat)
    shape: tuple[int, ...] = ()
    # unit: x / 255; standardize: the training set's mean and standard deviation; minmax: its
    # range to [0, 1]; per channel for [C, H, W] and [H, W] examples, else per feature
    scale: Literal["none", "unit", "standardize", "minmax"] = "none"
    # device: the shard held on the device; stream: read as it trains; auto: device if it fits
    # data.budget_mb
    memory: Literal["auto", "device", "stream"] = "auto"
    # largest shard held on the device (0: half its free memory / local ranks)
    budget_mb: NonNegative[float] = 0
    # streaming buffer, and the shuffle window in either memory mode
    buffer_mb: Positive[float] = 1024
    chunk_mb: Positive[float] = 4  # rows per chunk: this many MB of float32 features
    cache_dir: str = ""  # where a gzip file is decompressed once per node ("": $TMPDIR/hvdl-cache)
    table: str = ""  # sql: the table or view to read (schema.name)
    query: str = ""  # sql: a query to read instead, in parts by data.key
    key: str = ""  # sql: an integer column to split by ("": the table's pages)


@dataclass(frozen=True)
class PerfConfig:
    """Synchronisation modes and Horovod knobs."""

    # allreduce: gradients every step; average: parameters every sync_every steps
    sync: Literal["allreduce", "average"] = "allreduce"
    sync_every: Positive[int] = 1  # k, local steps between parameter averages (sync = "average")
    # fused: one flat allreduce a step; hooks: hvd.DistributedOptimizer (elastic runs: always)
    grad_sync: Literal["fused", "hooks"] = "fused"
    fp16_compression: bool = False  # compress gradients to fp16 for the allreduce
    backward_passes_per_step: Positive[int] = 1  # local gradient accumulation before each allreduce
    # Horovod tensor fusion buffer (HOROVOD_FUSION_THRESHOLD)
    fusion_threshold_mb: Positive[int] = 64
    # Horovod background cycle (HOROVOD_CYCLE_TIME); see results/bench
    cycle_time_ms: Positive[float] = 0.02
    timeline: bool = False  # write Horovod's timeline into the run folder
    bf16: bool = False  # bf16 autocast of forward and loss (GPU; also runs on CPU)
    compile: bool = False  # torch.compile the model


@dataclass(frozen=True)
class DistConfig:
    """The collective engine (hvdl/dist/)."""

    # auto: the launcher's (horovodrun: horovod, mpirun/srun: mpi, torchrun: torch, none: single)
    backend: Literal["auto", "horovod", "mpi", "torch", "single"] = "auto"


@dataclass(frozen=True)
class Config:
    """Everything that decides a run."""

    recipe: str = "lenet5"  # recipe name (file stem in models/), set by the loader
    # what is trained (hvdl/families.py)
    family: Literal["cnn", "sae", "stacked_ae", "rbm", "dbn", "deep_ae"] = "cnn"
    data_dir: str = ""  # MNIST's folder; "" means $HVDL_DATA, else the project's data/
    train_size: NonNegative[int] = 0  # use the first N training examples (0: all)
    # unit counts, input first, e.g. (784, 500, 500, 2000, 10); a 0 first (inputs) or last (classes)
    # is taken from the data
    layers: tuple[int, ...] = ()
    # lbfgs: full-batch L-BFGS for sae and stacked_ae (UFLDL), else lbfgs_batch_iterations a batch
    optimizer: Literal["sgd", "adam", "lbfgs"] = "sgd"
    # L-BFGS iterations per minibatch (optimizer = "lbfgs")
    lbfgs_batch_iterations: Positive[int] = 3
    epochs: NonNegative[int] = 3  # passes over the training data
    batch_size: Positive[int] = 64  # examples per rank per step
    lr: Positive[float] = 0.01  # single-rank learning rate
    lr_scaling: Literal["linear", "none"] = "linear"  # linear: lr × ranks
    warmup_epochs: NonNegative[float] = 0.0  # linear warm-up from lr to lr × ranks
    # cosine: to zero over the run; onecycle: the warm-up rises, then linear to zero
    schedule: Literal["constant", "cosine", "onecycle"] = "constant"
    momentum: NonNegative[float] = 0.0  # SGD momentum
    weight_decay: NonNegative[float] = 0.0  # L2 penalty on weights
    label_smoothing: NonNegative[float] = 0.0  # classification loss label smoothing
    seed: int = 42  # seeds weights, shuffling and sampling
    threads: NonNegative[int] = 0  # torch threads per rank on CPU (0: cores / local ranks)
    results_dir: str = "results/runs"  # run folders go here
    log_every: Positive[int] = 50  # steps between progress and TensorBoard updates
    # bar (a live bar) | lines (whole lines, at most one per 10 s) | none; auto: a bar on a
    # terminal, lines otherwise (launchers, sbatch logs)
    progress: Literal["auto", "bar", "lines", "none"] = "auto"
    checkpoint_every: NonNegative[int] = 0  # steps between checkpoints (0: end of each epoch only)
    keep_checkpoints: Positive[int] = 2  # newest checkpoints kept
    filters_every: NonNegative[int] = 0  # steps between filter images (0: end of each stage only)
    resume: str = ""  # "" | "auto" (newest checkpoint of the last run of this recipe) | a path
    # steps between the ranks' agreement on a SIGTERM/SIGUSR1 stop
    stop_check_every: Positive[int] = 10
    # Horovod elastic training (horovodrun --min-np/--max-np); the minibatch families
    elastic: bool = False
    # steps between elastic in-memory state commits (elastic = true)
    commit_every: Positive[int] = 20
    max_steps: NonNegative[int] = 0  # stop after this many steps (0: no limit); for smoke tests
    sae: SAEConfig = field(default_factory=SAEConfig)
    rbm: RBMConfig = field(default_factory=RBMConfig)
    data: DataConfig = field(default_factory=DataConfig)
    patches: PatchConfig = field(default_factory=PatchConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    dist: DistConfig = field(default_factory=DistConfig)


SECTIONS = {"sae": SAEConfig, "rbm": RBMConfig, "data": DataConfig, "patches": PatchConfig,
            "perf": PerfConfig, "dist": DistConfig}


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
    hints = typing.get_type_hints(cls) if cls else {}
    if cls is None or name not in hints or (not section and name in SECTIONS):
        raise ConfigError(f"unknown config key {key!r}{_nearest(key)}; `hvdl train --help` "
                          "lists every key")
    return hints[name]


def _nearest(key: str) -> str:
    """" (did you mean 'K'?)" naming the known key closest to `key`, or "" if none is."""
    known = [f.name for f in dataclasses.fields(Config) if f.name not in SECTIONS]
    known += [f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    bare = {k.rpartition(".")[2]: k for k in known}  # a section's key given without its section
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.75)
    close = close or [bare[k] for k in difflib.get_close_matches(key, list(bare), n=3, cutoff=0.75)]
    # the fewest edits, then the same letters: "lable" is "label" with two swapped
    close.sort(key=lambda k: (edits(key, k), sorted(key) != sorted(k)))
    return f" (did you mean {close[0]!r}?)" if close else ""


def edits(a: str, b: str) -> int:
    """The edits from `a` to `b`: insertions, deletions, substitutions and swaps of neighbours
    (optimal string alignment distance)."""
    d = [[i + j if not i * j else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1,
                          d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


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
