"""What README.md and slurm/README.md say, held to the code: the paths they name exist, every
`hvdl.train` command line they show is a valid config, their tables of recipes, `perf` and
`data` keys are the config's, `hvdl <command>` runs the module they name, the data layer's
memory choice and start-up line, the defaults they state, and the requests slurm/train.sh makes.
All in one process, in seconds; what needs real ranks is tested beside the feature (README
claim by claim: the module docstrings of the tests it names)."""

import re
import shlex
import tempfile

import numpy as np
import pytest
import torch

from hvdl import cli, host
from hvdl import config as configlib
from hvdl import train as train_command
from hvdl.data import dataset
from hvdl.data.formats.files import default_cache
from hvdl.data.record import startup_line
from hvdl.data.settings import Settings
from hvdl.dist import Context
from procs import ROOT

README = (ROOT / "README.md").read_text()
SLURM_README = (ROOT / "slurm" / "README.md").read_text()
SLURM_SCRIPT = (ROOT / "slurm" / "train.sh").read_text()
TOP = ("hvdl/", "launch/", "slurm/", "tests/", "results/", "models/", "data/", ".ci/")


def code_blocks(text):
    return re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)


def table(text, header):
    """The rows of the markdown table whose header line starts with `header`, as cell lists."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def ticked(cell):
    return re.findall(r"`([^`]+)`", cell)


def test_every_repository_path_the_readmes_name_exists():
    """Test that each file or folder of the repository the READMEs name (outside run-time
    folders and placeholders) exists, and so does each module the Layout table lists."""
    named = set()
    for text in (README, SLURM_README):
        for token in re.findall(r"[\w./-]+", text):
            token = token.rstrip(".,:;)")
            if token.startswith(TOP) and not token.startswith(("results/runs", "results/slurm",
                                                               "results/gpu/")):
                named.add(token)
    assert len(named) > 30, sorted(named)
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, missing
    for path, what in table(README, "| path | what |"):
        folder = ROOT / path.strip("`")
        for name in ticked(what):
            if re.fullmatch(r"[\w-]+(\.(py|sh)|/)", name):
                assert (folder / name).exists(), f"{path}: {name}"
    tree = README.split("## Layout", 1)[1].split("```")[1]  # the package, module by module
    listed, folders = [], {}
    for line in tree.splitlines()[2:]:
        depth = (len(line) - len(line.lstrip())) // 2  # 1: in hvdl/, 2: in a folder of it
        if not line[:35].strip():
            continue  # a description going on
        if depth == 1:
            folders.clear()
        for name in line[:35].split():
            listed.append(folders.get(depth - 1, "") + name)
            if name.endswith("/"):
                folders[depth] = listed[-1]
    assert len(listed) > 20, listed
    for name in listed:
        assert (ROOT / "hvdl" / name).exists(), f"README's Layout: hvdl/{name}"
    modules = {p.relative_to(ROOT / "hvdl").as_posix() for p in (ROOT / "hvdl").glob("*.py")}
    assert modules - {"__init__.py", "__main__.py"} <= set(listed), "a module the Layout omits"


def train_command_lines(text):
    """The argument lists the READMEs' code blocks give `hvdl.train` (directly, through
    slurm/train.sh or `hvdl train`), continuation lines joined and comments dropped."""
    found = []
    for block in code_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            if not re.search(r"hvdl\.train|slurm/train\.sh|hvdl train", line):
                continue  # prose, such as the Layout tree
            words = shlex.split(line, comments=True)
            for i, word in enumerate(words):
                if word in ("hvdl.train", "slurm/train.sh") or (
                        word == "train" and i and words[i - 1] == "hvdl"):
                    found.append(words[i + 1:])
                    break
    return found


def test_every_train_command_in_the_readmes_is_a_valid_config():
    """Test that every `hvdl.train` command line of the READMEs resolves to a config (each key
    known, each value allowed), so the examples run as written."""
    lines = train_command_lines(README) + train_command_lines(SLURM_README)
    assert len(lines) >= 30, lines
    for argv in lines:
        model, overrides = train_command.parse_args(argv)
        configlib.load(model, overrides)


def test_a_boolean_alone_means_true_and_resume_alone_means_auto():
    """Test that `--perf.bf16` alone sets it true even before another key, and `--resume` alone
    is `--resume auto` (README: Configuration; Stopping, resuming)."""
    config = configlib.load("lenet5", ["--perf.bf16", "--epochs", "2"])
    assert config.perf.bf16 is True and config.epochs == 2
    assert configlib.load("lenet5", []).perf.bf16 is False
    assert configlib.load("lenet5", ["--resume"]).resume == "auto"
    assert configlib.load("lenet5", ["--resume", "--epochs", "2"]).resume == "auto"


def test_models_table_is_every_recipe_with_its_family_and_layers():
    """Test that the Models table lists each recipe in models/ once, with its family, its layer
    sizes (a 0 in a recipe is taken from the data) and lenet5_fast's batch, schedule, bf16 and
    epochs."""
    rows = table(README, "| recipe (`--model`)")
    assert sorted(ticked(r[0])[0] for r in rows) == sorted(configlib.recipe_names())
    for cells in rows:
        name, family, what = ticked(cells[0])[0], cells[1], cells[2]
        config = configlib.load(name, [])
        assert config.family == family, name
        sizes = re.search(r"\b(\d+(?:-\d+)+)\b", what)
        if sizes:
            given = [int(s) for s in sizes.group(1).split("-")]
            layers = list(config.layers)
            if family == "sae" and len(given) == 3:  # written visible-hidden-visible
                layers.append(layers[0])
            assert len(given) == len(layers) and all(
                want in (0, got) for got, want in zip(given, layers)), (name, given, layers)
    fast = configlib.load("lenet5_fast", [])
    assert (fast.batch_size, fast.schedule, fast.perf.bf16, fast.epochs,
            fast.data.memory) == (512, "onecycle", True, 5, "device")
    small = configlib.load("dbn_small", [])
    assert (small.rbm.pretrain_lr, small.rbm.finetune_lr, small.momentum,
            small.rbm.initial_momentum, small.batch_size) == (0.015, 0.015, 0.8, 0.8, 64)


def test_perf_table_gives_the_config_defaults():
    """Test that every row of the `perf` table names a perf key and its default value."""
    rows = table(README, "| key | default | what |")
    defaults = configlib.to_dict(configlib.Config())["perf"]
    assert {ticked(r[0])[0] for r in rows} == {f"perf.{k}" for k in defaults}
    for cells in rows:
        key = ticked(cells[0])[0].split(".", 1)[1]
        assert cells[1].strip("`") == str(defaults[key]).lower(), key


def test_data_table_names_the_data_keys_and_their_choices():
    """Test that the `data` table's keys exist and its format, scale and memory choices (auto
    the default) are the config's."""
    rows = table(README, "| key | what |")
    data = configlib.to_dict(configlib.Config())["data"]
    for cells in rows:
        for key in ticked(cells[0]):
            assert key.startswith("data.") and key[5:] in data, key
    choices = {ticked(r[0])[0]: ticked(r[1]) for r in rows}
    hints = configlib.typing.get_type_hints(configlib.DataConfig)
    allowed = {k: set(configlib.typing.get_args(hints[k])) - {""}
               for k in ("format", "scale", "memory")}
    assert set(choices["data.format"]) == allowed["format"]
    assert set(choices["data.scale"][:4]) == allowed["scale"]
    assert set(choices["data.memory"][:3]) == allowed["memory"] and data["memory"] == "auto"
    assert "data.budget_mb" in choices["data.memory"] and "data.buffer_mb" in choices[
        "data.memory"]


def test_hvdl_command_runs_the_module_the_readme_names(monkeypatch):
    """Test that `hvdl X args` hands args to the main of the module `python -m hvdl.<X>` runs,
    for each X of README's `hvdl train|eval|...` list, and returns its status."""
    said = re.search(r"`hvdl ([a-z|]+)` is the same as `python -m\s+hvdl\.<([a-z|]+)>`", README)
    commands, modules = said.group(1).split("|"), said.group(2).split("|")
    assert sorted(commands) == sorted(cli.COMMANDS)
    for command, module in zip(commands, modules, strict=True):
        target = cli.COMMANDS[command][0]  # (module, what it does)
        main_file = ROOT / "hvdl" / module / "__main__.py"
        if main_file.exists():  # a package: its __main__ imports the command's main
            assert f"from {target} import main" in main_file.read_text(), module
        else:
            assert target == f"hvdl.{module}", command
        mod = __import__(target, fromlist=["main"])
        calls = []
        monkeypatch.setattr(mod, "main", lambda argv, c=command: calls.append(argv) or 7)
        assert cli.main([command, "--x", "1"]) == 7 and calls == [["--x", "1"]], command


def npy(tmp_path, rows=1000, features=16):
    x = np.random.default_rng(0).normal(size=(rows, features)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    return ["--data.path", str(tmp_path / "x.npy"), "--layers", "0,20"]


def cpu(local_size=1):
    return Context(rank=0, size=1, local_rank=0, local_size=local_size,
                   device=torch.device("cpu"), threads=1, controller="single")


@pytest.mark.parametrize("budget_mb, held", [("0.01", False), ("1", True)])
def test_auto_memory_holds_a_shard_within_the_budget_and_says_so(tmp_path, budget_mb, held):
    """Test that `data.memory auto` holds a shard within `data.budget_mb` and streams a larger
    one, and that the start-up line names the mode, the shard's size and the budget."""
    config = configlib.load("rbm_mnist", [*npy(tmp_path), "--data.budget_mb", budget_mb])
    data = dataset.load(Settings.of(config), cpu())
    try:
        assert data.train.held is held
    finally:
        data.train.close()
    line = startup_line(data.info, cpu())
    assert "shard 1,000 rows (0.1 MB) per rank" in line, line
    assert f"budget {float(budget_mb):,.0f} MB" in line, line
    assert ("held in memory on cpu" if held else "streamed through a 1024 MB buffer") in line


def test_default_budget_is_half_the_free_memory_per_local_rank(monkeypatch):
    """Test that without `data.budget_mb` a CPU rank's budget is half the free memory shared
    by the node's local ranks."""
    monkeypatch.setattr(host, "available_bytes", lambda: 8 * 2**30)
    config = configlib.load("lenet5", [])
    assert dataset.budget(config, cpu(local_size=1)) == 4 * 2**30
    assert dataset.budget(config, cpu(local_size=4)) == 2**30
    assert dataset.budget(configlib.load("lenet5", ["--data.budget_mb", "3"]), cpu(4)) == 3 * 2**20


def test_gzip_cache_defaults_to_tmpdir(monkeypatch, tmp_path):
    """Test that gzip files are decompressed into $TMPDIR/hvdl-cache unless data.cache_dir."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert default_cache() == tmp_path / "hvdl-cache"
    assert configlib.Config().data.cache_dir == ""


def sbatch_options(script):
    return dict(re.findall(r"^#SBATCH (--[\w-]+)(?:=(\S+))?", script, flags=re.M))


def test_slurm_script_asks_for_what_slurm_readme_says():
    """Test that slurm/train.sh asks for 1 node, 4 tasks of 8 CPUs, USR1 two minutes before the
    limit, requeue and appended output in results/slurm/, keeps the GPU line commented out,
    exports the thread counts, and starts hvdl.train with srun's pmix (HVDL_SRUN_MPI)."""
    options = sbatch_options(SLURM_SCRIPT)
    assert options["--nodes"] == "1" and options["--ntasks-per-node"] == "4"
    assert options["--cpus-per-task"] == "8"
    assert options["--signal"] == "B:USR1@120" and "--requeue" in options
    assert options["--open-mode"] == "append"
    assert options["--output"].startswith("results/slurm/") and "%j" in options["--output"]
    assert "--gpus-per-node" not in options
    assert re.search(r"^##SBATCH --gpus-per-node=4$", SLURM_SCRIPT, flags=re.M)
    for name in ("OMP_NUM_THREADS", "SRUN_CPUS_PER_TASK"):
        assert f"export {name}=${{SLURM_CPUS_PER_TASK" in SLURM_SCRIPT, name
    assert re.search(r'^srun --mpi="\$\{HVDL_SRUN_MPI:-pmix\}" python -m hvdl.train '
                     r'"\$\{resume\[@\]\}" "\$@" &$', SLURM_SCRIPT, flags=re.M)
    assert 'source "$HVDL_ENV"' in SLURM_SCRIPT and '${HVDL_VENV:-.venv}/bin/activate' in \
        SLURM_SCRIPT and 'cd "$SLURM_SUBMIT_DIR"' in SLURM_SCRIPT
    assert "resume=(--resume auto)" in SLURM_SCRIPT and "SLURM_RESTART_COUNT" in SLURM_SCRIPT
    assert 'scontrol requeue "$SLURM_JOB_ID"' in SLURM_SCRIPT


@pytest.mark.parametrize("given, seconds", [(None, 1800), ("7.5", 7.5)])
def test_torch_engine_waits_hvdl_dist_timeout_s_for_its_peers(monkeypatch, given, seconds):
    """Test that the torch engine hands torch.distributed a timeout of HVDL_DIST_TIMEOUT_S
    seconds, 1800 when it is not set (README: Engines)."""
    import torch.distributed as tdist

    from hvdl.dist.torch_engine import TorchEngine
    calls = []
    monkeypatch.setattr(tdist, "init_process_group", lambda *a, **kw: calls.append(kw))
    environ = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    if given is not None:
        environ["HVDL_DIST_TIMEOUT_S"] = given
    TorchEngine(environ)
    (kw,) = calls
    assert kw["timeout"].total_seconds() == seconds


def test_eval_and_encode_take_the_checkpoints_engine_unless_told(tmp_path):
    """Test that `hvdl eval`/`hvdl encode` read the engine from the checkpoint's config, and
    `--dist.backend` given to them wins (README: Engines)."""
    from hvdl.families import FAMILIES, Trained, with_overrides
    config = configlib.load("lenet5", ["--dist.backend", "mpi"])
    trained = Trained(FAMILIES["cnn"], config, torch.nn.Linear(1, 1), {}, tmp_path / "c.pt")
    assert with_overrides(trained, []).dist.backend == "mpi"
    assert with_overrides(trained, ["--dist.backend", "torch"]).dist.backend == "torch"


def test_setup_and_demo_scripts_do_what_two_commands_says():
    """Test that launch/setup.sh installs torch 2.13.0 and Horovod 0.28.1 with the README's
    packages, returns before installing anything when its stamp matches (a second call), keys
    the cached Horovod wheel in ~/.cache/hvdl/wheels by Horovod, torch, Python and GPU ops and
    honours the GPU variables; and that launch/demo.sh sets up, then trains LeNet-5 on 2 ranks."""
    setup = (ROOT / "launch" / "setup.sh").read_text()
    project = (ROOT / "pyproject.toml").read_text().lower()
    assert "torch_spec=${HVDL_TORCH:-torch==2.13.0}" in setup
    assert "horovod_version=0.28.1" in setup
    for package in ("mpi4py", "tensorboard", "tqdm", "scipy", "scikit-image", "matplotlib",
                    "pyarrow", "h5py", "pillow", "pytest"):
        assert f'"{package}>=' in project, package
    early_exit = setup.index('== "$stamp" ]]; then\n    exit 0')
    assert early_exit < setup.index('"${pip[@]}" install') < setup.index("build-horovod.sh")
    assert "torch=$torch_spec gpu=${HOROVOD_GPU_OPERATIONS:-none}" in setup  # in the stamp
    assert "cache=${HVDL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hvdl}" in setup
    assert ("wheel_dir=$cache/wheels/horovod-$horovod_version-torch$torch_version-$py_tag-$ops"
            in setup)
    assert "if [[ $torch_spec != keep ]]" in setup and '--extra-index-url "$HVDL_TORCH_INDEX"' in \
        setup and "HVDL_SYSTEM_SITE_PACKAGES:-0} == 1 ]] && flags+=(--system-site-packages)" in \
        setup
    demo = (ROOT / "launch" / "demo.sh").read_text()
    assert demo.index('bash "$root/launch/setup.sh"') < demo.index("launch/horovodrun.sh")
    assert "HVDL_NP=${HVDL_NP:-2}" in demo and "horovodrun.sh --model lenet5" in demo
