"""The command line explains itself: `hvdl --help` lists the commands, each command's `--help`
lists every option with its default, what it allows and what it means (train's from the config
dataclasses), `--print-config` shows a resolved config without running, and a misspelt key names
the nearest known one."""

import dataclasses
import re
import subprocess
import sys

import pytest

from hvdl import cli
from hvdl import config as configlib
from procs import ROOT, run_hvdl


def every_key():
    """(key, field) for every config field a user can set, sections included."""
    fields = [(f.name, f) for f in dataclasses.fields(configlib.Config)
              if f.name not in configlib.SECTIONS and f.name != "recipe"]
    for name, cls in configlib.SECTIONS.items():
        fields += [(f"{name}.{f.name}", f) for f in dataclasses.fields(cls)]
    return fields


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_hvdl_help_lists_every_command(capsys, flag):
    """Test that `hvdl --help` (and -h) exits 0 and lists each command with what it does."""
    status, out, _ = run_hvdl([flag], capsys)
    assert status == 0
    for name, (_, what) in cli.COMMANDS.items():
        assert re.search(rf"^  {name}\s+{re.escape(what)}$", out, re.M), name


def test_hvdl_version_and_python_m_hvdl_agree():
    """Test that `hvdl --version` and `python -m hvdl --version` print the installed version."""
    from importlib.metadata import version

    for command in ([str(ROOT / ".venv" / "bin" / "hvdl")], [sys.executable, "-m", "hvdl"]):
        if not (ROOT / ".venv" / "bin" / "hvdl").exists() and command[0].endswith("hvdl"):
            command = [sys.executable, "-m", "hvdl"]
        proc = subprocess.run([*command, "--version"], capture_output=True, text=True,
                              cwd=ROOT, timeout=60)
        assert (proc.returncode, proc.stdout) == (0, f"hvdl {version('hvdl')}\n"), proc.stderr


def test_train_help_lists_every_field_with_its_default_rule_and_comment(capsys):
    """Test that `hvdl train --help` names every config field with its default, what it allows
    and the comment beside the field in hvdl/config.py."""
    status, out, _ = run_hvdl(["train", "--help"], capsys)
    assert status == 0
    defaults = configlib.Config()
    for key, field in every_key():
        section, _, name = key.rpartition(".")
        cls = configlib.SECTIONS[section] if section else configlib.Config
        comment = cli.field_comments(cls)[name]
        assert comment, f"{key} has no comment in hvdl/config.py"
        default = getattr(getattr(defaults, section) if section else defaults, name)
        # the default recipe, lenet5, shows its own values beside the defaults
        match = re.search(rf"^  --{re.escape(key)}  default (.+?)(?: \(lenet5: .+\))?;  (.+)$",
                          out, re.M)
        assert match, key
        assert match.group(1) == cli.shown(default), key
        assert match.group(2) == cli.allowed(
            __import__("typing").get_type_hints(cls, include_extras=True)[name]), key
        block = re.split(r"\n  --|\n\n", out[match.end():], maxsplit=1)[0]
        assert " ".join(block.split()) == comment, key
    assert "one of '', mnist, patches" in out  # the "" choice shown as such


def test_train_help_shows_a_recipes_values_beside_the_defaults(capsys):
    """Test that `hvdl train --model dbn_small --help` gives the recipe's value where it differs
    from the default."""
    _, out, _ = run_hvdl(["train", "--model", "dbn_small", "--help"], capsys)
    assert "  --family  default cnn (dbn_small: dbn);" in out
    assert "  --layers  default (none) (dbn_small: 0,500,100,0);" in out
    assert "  --seed  default 42;" in out  # the same in the recipe: nothing beside it


@pytest.mark.parametrize("command", ["eval", "encode", "data inspect", "data convert", "bench",
                                     "report", "fetch"])
def test_every_commands_options_have_help(capsys, monkeypatch, command):
    """Test that each command's `--help` exits 0 and shows every option with a line of help."""
    from hvdl.errors import HelpFormatter

    shown = []
    format_action = HelpFormatter._format_action

    def noting(self, action):
        shown.append(action)
        return format_action(self, action)

    monkeypatch.setattr(HelpFormatter, "_format_action", noting)
    status, out, _ = run_hvdl([*command.split(), "--help"], capsys)
    assert status == 0
    options = [a for a in shown if a.option_strings and "--help" not in a.option_strings]
    assert options, out
    for action in options:
        assert action.help and action.help.strip(), f"{command}: {action.option_strings}"
        assert action.option_strings[0] in out
    if command in ("eval", "encode"):  # and the config fields that choose other data
        assert "  --data.test_path  default '';" in out and "--dist.backend" in out


def test_print_config_prints_the_resolved_config_and_runs_nothing(tmp_path):
    """Test that `--print-config` prints the recipe plus overrides as TOML that loads back to the
    same config, exits 0 and creates no run folder."""
    results = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "hvdl.train", "--model", "dbn_small",
                           "--rbm.cd_k", "3", "--epochs", "7", "--results_dir", str(results),
                           "--print-config"], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    saved = tmp_path / "printed.toml"
    saved.write_text(proc.stdout)
    printed = configlib.load(str(saved))
    assert printed == configlib.load("dbn_small", ["--rbm.cd_k", "3", "--epochs", "7",
                                                   "--results_dir", str(results)])
    assert printed.rbm.cd_k == 3 and printed.family == "dbn"
    assert not results.exists()


@pytest.mark.parametrize("given, nearest", [
    ("--batchsize", "batch_size"), ("--epoch", "epochs"), ("--rho", "sae.rho"),
    ("--sae.roh", "sae.rho"), ("--data.lable", "data.label"), ("--zzz", None)])
def test_an_unknown_key_names_the_nearest_known_one(capsys, given, nearest):
    """Test that a misspelt key is one line, status 2, naming the closest key (none if nothing
    is close) and where every key is listed."""
    status, _, err = run_hvdl(["train", given, "1"], capsys)
    assert status == 2
    (line,) = err.strip().splitlines()
    key = given[2:]
    assert line.startswith(f"hvdl: error: unknown config key {key!r}")
    assert line.endswith("`hvdl train --help` lists every key")
    assert (f"did you mean {nearest!r}?" in line) if nearest else "did you mean" not in line


@pytest.mark.parametrize("argv", [["--epoch", "1"], ["--help"], ["--print-config"]])
def test_options_are_answered_before_torch_loads(argv):
    """Test that a mistyped key, --help and --print-config are answered without importing torch
    or an engine (two seconds of a user's wait, each time)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "hvdl.train", *argv],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == (2 if argv[0] == "--epoch" else 0), proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "hvdl.config" in imported  # the timing lines are there to read
    assert not {"torch", "hvdl.dist", "hvdl.run"} & imported
