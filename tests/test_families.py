"""The family table (hvdl/families.py): every family the config allows is in it, and every
capability it declares works on a model of its last stage."""

import typing

import pytest
import torch

from hvdl import config as configlib
from hvdl.config import Config
from hvdl.families import FAMILIES

# A small model of each family: (overrides, one example's shape as the model takes it).
SMALL = {
    "cnn": ([], (1, 16, 16)),
    "sae": (["--layers", "12,5"], (12,)),
    "stacked_ae": (["--layers", "12,6,4,3"], (12,)),
    "rbm": (["--layers", "12,5"], (12,)),
    "dbn": (["--layers", "12,6,4,3"], (12,)),
    "deep_ae": (["--layers", "12,6,4,2", "--rbm.code_units", "linear"], (12,)),
}
DATA = {"classes": ["a", "b", "c"], "shape": [1, 16, 16]}
CASES = [(name, capability) for name, family in FAMILIES.items()
         for capability in family.capabilities]


def small_config(name):
    return configlib.load("lenet5", ["--family", name, *SMALL[name][0]])


def test_the_table_holds_every_family_the_config_allows():
    """Test that the family table and the config's family choices are the same set."""
    allowed = typing.get_args(typing.get_type_hints(Config)["family"])
    assert set(FAMILIES) == set(allowed)
    assert {name for name, _ in CASES} == set(FAMILIES)  # each family can do something


@pytest.mark.parametrize("name, capability", CASES)
def test_each_declared_capability_works_on_the_last_stages_model(name, capability):
    """Test that a capability the table declares gives outputs of the right shape."""
    family, config = FAMILIES[name], small_config(name)
    model = family.build(config, DATA).eval()
    x = torch.rand(4, *SMALL[name][1], dtype=next(model.parameters()).dtype)
    with torch.no_grad():
        if capability == "classifier":
            assert family.classifier(model)(x).shape == (4, len(DATA["classes"]))
        elif capability == "encoder":
            depth = family.depth(config)
            assert depth >= 1
            for layer in range(1, depth + 1):
                assert family.encoder(model, layer)(x).shape == (4, config.layers[layer])
        elif capability == "reconstruction":
            assert family.reconstruction(model)(x).shape == x.shape
        else:
            energy = family.free_energy(model)(x)
            assert energy.shape == (4,) and torch.isfinite(energy).all()


def sae_decode(model, x):
    """x ↦ σ(W2 σ(W1 x + b1) + b2), from the autoencoder's two layers."""
    code = torch.sigmoid(x @ model.encoder.weight.T + model.encoder.bias)
    return torch.sigmoid(code @ model.decoder.weight.T + model.decoder.bias)


def rbm_decode(model, x):
    """E[v | h = E[h | x]] from W and the biases (Bernoulli or linear units as the RBM has)."""
    h = x @ model.W + model.b_hid
    h = h if model.hidden == "linear" else torch.sigmoid(h)
    v = h @ model.W.T + model.b_vis
    return v if model.visible == "gaussian" else torch.sigmoid(v)


def deep_ae_decode(model, x):
    """The encoder's layers (a linear code), then the mirrored decoder's, each but the code
    through a sigmoid."""
    for i, layer in enumerate(model.encoder):
        x = x @ layer.weight.T + layer.bias
        if i < len(model.encoder) - 1 or not model.linear_code:
            x = torch.sigmoid(x)
    for layer in model.decoder:
        x = torch.sigmoid(x @ layer.weight.T + layer.bias)
    return x


DECODE = {"sae": sae_decode, "rbm": rbm_decode, "deep_ae": deep_ae_decode}


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if f.reconstruction])
def test_each_reconstruction_is_the_models_own_decode_not_its_input(name):
    """Test that a family's reconstruction differs from its input and equals the input encoded
    then decoded through the model's own layers."""
    family, config = FAMILIES[name], small_config(name)
    model = family.build(config, DATA).eval()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # every weight and bias away from its start, so each one shows
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
        x = torch.rand(4, *SMALL[name][1], generator=gen, dtype=next(model.parameters()).dtype)
        x_hat = family.reconstruction(model)(x)
        expected = DECODE[name](model, x)
    assert float((x_hat - x).abs().max()) > 0.1
    torch.testing.assert_close(x_hat, expected, rtol=1e-5, atol=1e-6)


def test_capabilities_follow_what_each_model_is():
    """Test that classifiers, encoders and reconstructions are declared where they belong."""
    can = {name: set(f.capabilities) for name, f in FAMILIES.items()}
    assert can["cnn"] == {"classifier"}
    assert can["rbm"] == {"encoder", "reconstruction", "free_energy"}
    assert can["sae"] == can["deep_ae"] == {"encoder", "reconstruction"}
    assert can["dbn"] == can["stacked_ae"] == {"classifier", "encoder"}
    assert FAMILIES["stacked_ae"].last(small_config("stacked_ae")) == "finetune"
    assert FAMILIES["stacked_ae"].last(configlib.load("lenet5", ["--family", "stacked_ae",
                                                                 "--layers", "12,3"])) == "softmax"
