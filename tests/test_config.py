"""Configuration: recipes, overrides, types and ranges."""

import pytest

from hvdl import config as configlib
from hvdl.config import ConfigError


def test_recipe_and_overrides_resolve():
    """Test that a recipe loads and command-line overrides win over it, sections included."""
    config = configlib.load("lenet5", ["--epochs", "7", "--lr=0.5", "--perf.fp16_compression"])
    assert config.recipe == "lenet5" and config.family == "cnn"
    assert config.epochs == 7 and config.lr == 0.5
    assert config.perf.fp16_compression is True


def test_resolved_config_round_trips_through_toml(tmp_path):
    """Test that the resolved config written to a run folder loads back to the same config."""
    config = configlib.load("lenet5", ["--layers", "784,10", "--sae.rho", "0.2"])
    path = tmp_path / "config.toml"
    path.write_text(configlib.to_toml(config))
    assert configlib.load(str(path)) == config
    assert configlib.from_dict(configlib.to_dict(config)) == config


@pytest.mark.parametrize("argv, words", [
    (["--epoch", "3"], "unknown config key 'epoch'"),
    (["--epochs", "three"], "'epochs' must be an integer"),
    (["--lr", "-0.1"], "'lr' must be > 0"),
    (["--batch_size", "0"], "'batch_size' must be > 0"),
    (["--optimizer", "rmsprop"], "allowed: sgd, adam, lbfgs"),
    (["--perf.fp16_compression", "maybe"], "must be true or false"),
    (["--rbm.nope", "1"], "unknown config key 'rbm.nope'"),
    (["--bogus.key", "1"], "unknown config key 'bogus.key'"),
    (["--layers", "784,x"], "comma-separated list of integers"),
    (["stray"], "unexpected argument 'stray'"),
    (["--lr"], "--lr needs a value"),
    # what elastic training cannot honour is refused, not ignored
    (["--elastic", "--perf.sync", "average"], "'perf.sync' is 'average' with elastic true"),
    (["--elastic", "--perf.sync_every", "4"], "'perf.sync_every' is 4 with elastic true"),
    (["--elastic", "--perf.backward_passes_per_step", "2"],
     "'perf.backward_passes_per_step' is 2 with elastic true"),
    (["--elastic", "--perf.compile"], "'perf.compile' is true with elastic true"),
])
def test_bad_values_name_the_key(argv, words):
    """Test that unknown keys, wrong types and out-of-range values raise a one-line error."""
    with pytest.raises(ConfigError) as err:
        configlib.load("lenet5", argv)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_unknown_recipe_lists_the_available_ones():
    """Test that an unknown recipe name is an error listing the recipes there are."""
    with pytest.raises(ConfigError, match="unknown recipe 'lenet6'.*lenet5"):
        configlib.load("lenet6")


def test_every_recipe_is_valid():
    """Test that every recipe in models/ loads under the current config schema."""
    names = configlib.recipe_names()
    assert "lenet5" in names
    for name in names:
        assert configlib.load(name).recipe == name
