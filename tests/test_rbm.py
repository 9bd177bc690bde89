"""RBM, DBN and deep autoencoder: NumPy references for CD-k and the free energy, distributed
equivalence with real Horovod jobs, unrolling, and every RBM recipe run briefly."""

import itertools
import json

import numpy as np
import pytest
import torch

from hvdl import dist
from hvdl.models import pca as pca_module
from hvdl.models.rbm import RBM, classifier, contrastive_divergence, make_stack, unroll
from procs import ROOT, check_job, run_hvdl, train_here


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_cd(W, b_vis, b_hid, v0, noise, chain=None, visible="bernoulli", hidden="bernoulli"):
    """Hinton's CD-k statistics in NumPy: (dW, db_vis, db_hid) ascent directions, new chain."""
    hid = (lambda x: x) if hidden == "linear" else sigmoid
    vis = (lambda x: x) if visible == "gaussian" else sigmoid

    def sample(p, u):
        return p + u if hidden == "linear" else (u < p).astype(p.dtype)

    p0 = hid(v0 @ W + b_hid)
    h = sample(p0, noise[0]) if chain is None else chain
    for i in range(1, len(noise)):
        v = vis(h @ W.T + b_vis)
        p = hid(v @ W + b_hid)
        h = sample(p, noise[i])
    n = len(v0)
    return (v0.T @ p0 - v.T @ p) / n, (v0 - v).mean(0), (p0 - p).mean(0), h


def small_rbm(n_vis=7, n_hid=5, **kw):
    rbm = RBM(n_vis, n_hid, generator=torch.Generator().manual_seed(0), **kw).double()
    with torch.no_grad():
        rbm.b_vis.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
        rbm.b_hid.normal_(0, 0.3, generator=torch.Generator().manual_seed(2))
    return rbm


def params(rbm):
    return [p.detach().numpy().copy() for p in (rbm.W, rbm.b_vis, rbm.b_hid)]


@pytest.mark.parametrize("k,visible,hidden", [(1, "bernoulli", "bernoulli"),
                                              (3, "bernoulli", "bernoulli"),
                                              (2, "gaussian", "linear")])
def test_cd_step_matches_numpy_reference(k, visible, hidden):
    """Test that one CD-k step's gradients are minus the NumPy reference statistics."""
    rbm = small_rbm(visible=visible, hidden=hidden)
    gen = torch.Generator().manual_seed(3)
    v0 = torch.rand(6, 7, generator=gen, dtype=torch.float64)
    noise = rbm.draw_noise(k, 6, gen)
    assert noise.shape == (k + 1, 6, 5)
    dW, db_vis, db_hid, _ = numpy_cd(*params(rbm), v0.numpy(), noise.numpy(),
                                     visible=visible, hidden=hidden)
    contrastive_divergence(rbm, v0, noise)
    assert np.abs(dW).max() > 1e-3  # the step is not trivially zero
    np.testing.assert_allclose(rbm.W.grad.numpy(), -dW, atol=1e-12)
    np.testing.assert_allclose(rbm.b_vis.grad.numpy(), -db_vis, atol=1e-12)
    np.testing.assert_allclose(rbm.b_hid.grad.numpy(), -db_hid, atol=1e-12)


def test_persistent_chain_continues_from_the_given_state():
    """Test that PCD's negative phase starts from the chain and returns the reference's chain."""
    rbm = small_rbm()
    gen = torch.Generator().manual_seed(4)
    v0 = torch.rand(6, 7, generator=gen, dtype=torch.float64)
    chain = (torch.rand(6, 5, generator=gen, dtype=torch.float64) < 0.5).double()
    noise = rbm.draw_noise(1, 6, gen)  # k = 1: the negative statistics come from the chain
    dW, _, _, h = numpy_cd(*params(rbm), v0.numpy(), noise.numpy(), chain=chain.numpy())
    out = contrastive_divergence(rbm, v0, noise, chain)
    np.testing.assert_allclose(rbm.W.grad.numpy(), -dW, atol=1e-12)
    np.testing.assert_allclose(out.chain.numpy(), h)
    cd_grad = rbm.W.grad.clone()
    contrastive_divergence(rbm, v0, noise)
    assert not torch.allclose(cd_grad, rbm.W.grad)  # the chain made a difference


@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_free_energy_matches_brute_force_marginal(visible):
    """Test that F(v) = −log Σ_h exp(−E(v, h)), enumerating every hidden state of a tiny RBM."""
    rbm = small_rbm(4, 3, visible=visible)
    W, b_vis, b_hid = params(rbm)
    v = torch.rand(5, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    hs = np.array(list(itertools.product([0.0, 1.0], repeat=3)))  # (8, 3)
    vn = v.numpy()
    vis = -0.5 * ((vn - b_vis) ** 2).sum(1) if visible == "gaussian" else vn @ b_vis
    minus_energy = vis[:, None] + (hs @ b_hid)[None] + np.einsum("bi,ij,hj->bh", vn, W, hs)
    expected = -np.log(np.exp(minus_energy).sum(1))
    np.testing.assert_allclose(rbm.free_energy(v).detach().numpy(), expected, rtol=1e-10)


def test_linear_hidden_free_energy_matches_numerical_integral():
    """Test that F(v) for linear hidden units matches integrating exp(−E) over h on a grid."""
    rbm = small_rbm(3, 2, hidden="linear")
    W, b_vis, b_hid = params(rbm)
    v = np.array([[0.2, 0.9, 0.4], [0.7, 0.1, 0.5]])
    grid = np.arange(-12, 12, 0.02)
    h1, h2 = np.meshgrid(grid, grid, indexing="ij")
    expected = []
    for row in v:
        x = row @ W + b_hid
        log_integrand = x[0] * h1 + x[1] * h2 - 0.5 * (h1 ** 2 + h2 ** 2) + row @ b_vis
        integral = np.exp(log_integrand).sum() * 0.02 ** 2
        expected.append(-np.log(integral) + np.log(2 * np.pi))  # F drops the (2π)^{n_hid/2}
    got = rbm.free_energy(torch.tensor(v)).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-8)


def test_unrolled_autoencoder_has_the_mirrored_shapes_and_tied_initial_weights():
    """Test that unrolling 784-1000-500-250-30 gives encoder Wᵀ/b_hid and decoder W/b_vis."""
    rbms = make_stack((784, 1000, 500, 250, 30), top_hidden="linear",
                      generator=torch.Generator().manual_seed(0))
    for rbm in rbms:
        torch.nn.init.normal_(rbm.b_vis)
        torch.nn.init.normal_(rbm.b_hid)
    model = unroll(rbms)
    x = torch.rand(3, 784)
    assert model.encode(x).shape == (3, 30)
    assert model(x).shape == (3, 784)
    assert ((model.reconstruct(x) > 0) & (model.reconstruct(x) < 1)).all()
    assert [layer.weight.shape for layer in model.decoder] == [(250, 30), (500, 250),
                                                                (1000, 500), (784, 1000)]
    for layer, rbm in zip(model.encoder, rbms):
        assert torch.equal(layer.weight, rbm.W.T) and torch.equal(layer.bias, rbm.b_hid)
    for layer, rbm in zip(model.decoder, reversed(rbms)):
        assert torch.equal(layer.weight, rbm.W) and torch.equal(layer.bias, rbm.b_vis)
    # Untied after initialisation: the decoder owns separate storage.
    assert model.decoder[-1].weight.data_ptr() != model.encoder[0].weight.data_ptr()
    # The code layer is linear: values outside (0, 1) appear.
    code = model.encode(torch.rand(50, 784))
    assert (code < 0).any() or (code > 1).any()


def test_dbn_classifier_starts_from_the_rbm_weights():
    """Test that the DBN's sigmoid layers copy the RBMs and the softmax layer has 10 outputs."""
    rbms = make_stack((784, 500, 100), generator=torch.Generator().manual_seed(0))
    net = classifier(rbms, 10, generator=torch.Generator().manual_seed(1))
    assert net(torch.rand(4, 784)).shape == (4, 10)
    assert torch.equal(net[0].weight, rbms[0].W.T) and torch.equal(net[2].bias, rbms[1].b_hid)
    x = torch.rand(4, 784)
    assert torch.allclose(net[:4](x), rbms[1](rbms[0](x)))  # the stack's hidden probabilities


def test_pca_reconstruction_matches_numpy_svd(monkeypatch):
    """Test that fit_pca and squared_error on one process equal an SVD of the centred data."""
    monkeypatch.setattr(dist, "allreduce_sum", lambda tensor, name: tensor)  # one process
    gen = np.random.default_rng(0)
    x = gen.random((200, 12)) @ gen.random((12, 12))
    test = gen.random((30, 12))
    pca = pca_module.fit_pca(torch.tensor(x).split(64), n_components=4)
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    v = vt[:4].T
    expected = (((test - mean) - (test - mean) @ v @ v.T) ** 2).sum(1).mean()
    got = pca_module.squared_error(pca.reconstruct, torch.tensor(test).split(7))
    np.testing.assert_allclose(got, expected, rtol=1e-8)


def hinton_updates(run, name, visible, hidden, persistent, steps=3, lr=0.1, weight_cost=0.01):
    """Parameters after each of Hinton's updates inc = m·inc + lr·(stat − wc·W) on the global
    batches of a job's output, in NumPy (weight cost on W only, momentum 0.5 then 0.9)."""
    p = [run[f"{name}.initial.{n}"].double().numpy() for n in ("W", "b_vis", "b_hid")]
    incs = [np.zeros_like(x) for x in p]
    chain, out = None, []
    for s in range(steps):
        data = run[f"{name}.data"][s].double().numpy()
        noise = run[f"{name}.noise"][s].double().numpy()
        *stats, h = numpy_cd(*p, data, noise, chain, visible=visible, hidden=hidden)
        chain = h if persistent else None
        stats[0] = stats[0] - weight_cost * p[0]
        momentum = 0.5 if s == 0 else 0.9
        incs = [momentum * inc + lr * g for inc, g in zip(incs, stats)]
        p = [x + inc for x, inc in zip(p, incs)]
        out.append(p)
    return out


JOB_SETTINGS = [("bernoulli-bernoulli-k1", "bernoulli", "bernoulli", False),
                ("bernoulli-bernoulli-k2-pcd", "bernoulli", "bernoulli", True),
                ("gaussian-linear-k1", "gaussian", "linear", False)]


@pytest.fixture(scope="module")
def step_runs(tmp_path_factory):
    """Rank outputs of tests/jobs/rbm_step.py under mpirun -np 1 and -np 2, per sync mode (hooks:
    the Horovod engine, whose per-tensor hook optimizer they are)."""
    runs = {}
    for mode in ("fused", "hooks"):
        for n in (1, 2):
            out = tmp_path_factory.mktemp(f"rbm_step_{mode}_np{n}")
            check_job(n, [str(ROOT / "tests" / "jobs" / "rbm_step.py"), str(out), mode],
                      launcher="mpirun")
            runs[mode, n] = [torch.load(out / f"rank{r}.pt", weights_only=True)
                             for r in range(n)]
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fused", "hooks"])
@pytest.mark.parametrize("name,visible,hidden,persistent", JOB_SETTINGS)
def test_cd_updates_on_two_ranks_equal_one_process_on_the_global_batch(
        step_runs, mode, name, visible, hidden, persistent):
    """Test that CD-k updates with -np 2 equal -np 1 and Hinton's NumPy update within 1e-6."""
    one = step_runs[mode, 1][0]
    assert [r["size"] for r in step_runs[mode, 2]] == [2, 2]
    expected = hinton_updates(one, name, visible, hidden, persistent)
    for s, params_s in enumerate(expected):
        for param, want in zip(("W", "b_vis", "b_hid"), params_s):
            key = f"{name}.step{s}.{param}"
            assert not np.allclose(want, one[f"{name}.initial.{param}"].numpy())
            np.testing.assert_allclose(one[key].numpy(), want, atol=1e-6, rtol=0, err_msg=key)
            for rank in step_runs[mode, 2]:
                np.testing.assert_allclose(rank[key].numpy(), one[key].numpy(), atol=1e-6,
                                           rtol=0, err_msg=key)


@pytest.mark.slow
def test_distributed_pca_equals_single_process_and_numpy(step_runs):
    """Test that PCA fitted and evaluated over 2 ranks equals 1 process and a NumPy SVD."""
    one = step_runs["fused", 1][0]
    x, held = one["pca.x"].double().numpy(), one["pca.held"].double().numpy()
    mean = x.mean(0)
    v = np.linalg.svd(x - mean, full_matrices=False)[2][:3].T
    expected = (((held - mean) - (held - mean) @ v @ v.T) ** 2).sum(1).mean()
    np.testing.assert_allclose(float(one["pca.squared_error"]), expected, rtol=1e-6)
    for rank in step_runs["fused", 2]:
        for key in ("pca.mean", "pca.variances", "pca.projector", "pca.squared_error"):
            np.testing.assert_allclose(rank[key].numpy(), one[key].numpy(), atol=1e-9,
                                       err_msg=key)


RECIPE_STAGES = {"rbm_mnist": ["pretrain1"], "rbm_patches": ["pretrain1"],
                 "dbn_small": ["pretrain1", "pretrain2", "finetune"],
                 "dbn_mnist": ["pretrain1", "pretrain2", "pretrain3", "finetune_top", "finetune"],
                 "deep_ae_mnist": ["pretrain1", "pretrain2", "pretrain3", "pretrain4", "finetune"]}
TINY = ["--max_steps", "3", "--train_size", "2000", "--rbm.pretrain_epochs", "1",
        "--rbm.finetune_epochs", "1", "--log_every", "2", "--patches.count", "2000"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RECIPE_STAGES))
def test_recipe_runs_a_few_steps_and_keeps_each_stage(tmp_path, recipe):
    """Test that each RBM recipe trains 3 steps per stage and saves every stage's weights."""
    stdout = train_here(["-m", "hvdl.train", "--model", recipe, *TINY,
                         "--results_dir", str(tmp_path)])
    (run_dir,) = list(tmp_path.iterdir())
    stages = RECIPE_STAGES[recipe]
    assert sorted(p.stem for p in (run_dir / "stages").glob("*.pt")) == sorted(stages)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert all(stage in metrics for stage in stages)  # each stage's epoch history
    assert (run_dir / "pretrain1-filters.png").is_file()
    for stage in stages:
        assert f"{stage} epoch 1:" in stdout
    if recipe.startswith("dbn"):
        assert "confusion matrix" in stdout and "error" in metrics["final"]["test"]
    if recipe.startswith("deep_ae"):
        assert metrics["final"]["pca_squared_error"] > 0
        (epoch,) = metrics["finetune"]  # the test figure of each fine-tuning epoch
        assert epoch["test"]["squared_error"] == pytest.approx(metrics["final"]["squared_error"])


@pytest.mark.slow
def test_deep_autoencoder_trains_on_two_ranks(tmp_path):
    """Test that a tiny deep_ae_mnist run on 2 ranks reports finite autoencoder and PCA errors."""
    check_job(2, ["-m", "hvdl.train", "--model", "deep_ae_mnist", *TINY,
                  "--results_dir", str(tmp_path)], launcher="mpirun")
    (run_dir,) = list(tmp_path.iterdir())
    final = json.loads((run_dir / "metrics.json").read_text())["final"]
    assert 0 < final["squared_error"] < final["squared_error_before_finetune"]  # it learned
    assert 0 < final["pca_squared_error"] < 100


@pytest.mark.slow
def test_minibatch_lbfgs_on_two_ranks_equals_one_process_on_the_global_batch(tmp_path):
    """Test that MinibatchLBFGS on 2 ranks, each with half of every minibatch, takes the steps
    one process takes on the whole minibatches (float64, within 1e-9), the ranks in lockstep."""
    runs = {}
    for np_ in (1, 2):
        out = tmp_path / f"np{np_}.json"
        check_job(np_, ["tests/jobs/lbfgs_batches.py", str(out)], "mpirun")
        runs[np_] = json.loads(out.read_text())
    assert runs[2]["size"] == 2 and runs[2]["ranks_agree"]
    assert all(runs[1]["lowered"])  # each step lowered the cost of its minibatch
    np.testing.assert_allclose(runs[2]["weights"], runs[1]["weights"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(runs[2]["losses"], runs[1]["losses"], rtol=0, atol=1e-9)


@pytest.mark.slow
def test_dbn_fine_tunes_the_top_layer_first_then_all_by_minibatch_lbfgs(tmp_path):
    """Test that `rbm.top_epochs` trains the softmax alone (lower layers unchanged) before the
    whole net, here by minibatch L-BFGS on batches of `rbm.finetune_batch_size`."""
    stdout = train_here(["-m", "hvdl.train", "--model", "dbn_small", *TINY, "--optimizer",
                         "lbfgs", "--rbm.top_epochs", "1", "--rbm.finetune_batch_size", "50",
                         "--results_dir", str(tmp_path)])
    (run_dir,) = list(tmp_path.iterdir())
    stages = {p.stem: torch.load(p)["model"] for p in (run_dir / "stages").glob("*.pt")}
    assert set(stages) == {"pretrain1", "pretrain2", "finetune_top", "finetune"}
    top, pretrained = stages["finetune_top"], stages["pretrain1"]
    torch.testing.assert_close(top["0.weight"], pretrained["W"].T, rtol=0, atol=0)
    assert not torch.equal(stages["finetune"]["0.weight"], top["0.weight"])
    assert not torch.equal(stages["finetune"]["4.weight"], top["4.weight"])
    assert "finetune_top epoch 1:" in stdout and "finetune epoch 1:" in stdout


@pytest.mark.slow
def test_dbn_fine_tunes_a_saved_stack_without_pretraining_it_again(tmp_path, capfd):
    """Test that `rbm.pretrained` fine-tunes an earlier run's stack: no pretraining epochs, the
    loaded weights kept as this run's stages; a stack of other sizes is refused in one line."""
    first, second = tmp_path / "first", tmp_path / "second"
    train_here(["-m", "hvdl.train", "--model", "dbn_small", *TINY,
                "--results_dir", str(first)])
    (saved,) = list(first.iterdir())
    stdout = train_here(["-m", "hvdl.train", "--model", "dbn_small", *TINY,
                         "--rbm.pretrained", str(saved), "--results_dir", str(second)])
    (run_dir,) = list(second.iterdir())
    assert "pretrain1 epoch" not in stdout and "finetune epoch 1:" in stdout
    assert f"2 RBMs loaded from {saved}" in stdout
    for name in ("pretrain1", "pretrain2"):
        old, new = (torch.load(d / "stages" / f"{name}.pt")["model"] for d in (saved, run_dir))
        assert old.keys() == new.keys()
        for key in old:
            torch.testing.assert_close(new[key], old[key], rtol=0, atol=0)
    # The deep autoencoder's stack has other sizes and linear code units: refused, nothing kept.
    refused = tmp_path / "refused"
    status, _, err = run_hvdl(["train", "--model", "deep_ae_mnist", *TINY, "--rbm.pretrained",
                               str(saved), "--results_dir", str(refused)], capfd)
    assert status == 2
    (line,) = err.strip().splitlines()
    assert line.endswith("belongs to the stack 784-500-100 (bernoulli visible, bernoulli top "
                         "hidden units); allowed: this run's stack, 784-1000-500-250-30 "
                         "(auto visible, "
                         "linear top hidden units)"), line
    assert not refused.exists() or not any(refused.iterdir())


def test_pretrained_stack_is_checked_before_data_or_run_folder(tmp_path, capfd):
    """Test that a `rbm.pretrained` stack of other sizes is refused (one line, status 2) before
    the data are read and before the run folder is opened: a missing data file and an
    unwritable results folder are not what the run reports."""
    from hvdl import checkpoint
    from hvdl import config as configlib
    saved = tmp_path / "saved"
    other = configlib.load("dbn_small", ["--layers", "784,300,100,10"])
    for i, rbm in enumerate(make_stack([784, 300, 100]), start=1):
        checkpoint.write(saved / "stages" / f"pretrain{i}.pt",
                         {"model": rbm.state_dict(), "config": configlib.to_dict(other),
                          "stage": f"pretrain{i}"})
    (tmp_path / "taken").write_text("a file, not a folder\n")
    status, _, err = run_hvdl(["train", "--model", "dbn_small", "--rbm.pretrained", str(saved),
                               "--data.path", str(tmp_path / "missing.npy"),
                               "--results_dir", str(tmp_path / "taken" / "runs")], capfd)
    assert status == 2, err[-3000:]
    (line,) = err.strip().splitlines()
    assert line == (f"hvdl: error: rbm.pretrained: {saved}/stages/pretrain1.pt belongs to the "
                    "stack 784-300-100 (auto visible, bernoulli top hidden units); allowed: "
                    "this run's stack, 0-500-100 (auto visible, bernoulli top hidden "
                    "units)"), line


@pytest.mark.slow
def test_auto_visible_units_on_standardized_data_are_gaussian_in_the_run_and_its_checkpoint(
        tmp_path):
    """Test that an RBM on real-valued, standardized data gets Gaussian visible units under the
    default rbm.visible auto, that the run says so, and that its saved model is rebuilt so."""
    from hvdl.families import load_trained

    rng = np.random.default_rng(3)
    np.save(tmp_path / "x.npy", rng.normal(4.0, 2.0, (256, 6)).astype(np.float32))
    stdout = train_here(["-m", "hvdl.train", "--model", "rbm_mnist", "--data.path",
                         str(tmp_path / "x.npy"), "--data.scale", "standardize", "--layers",
                         "0,5", "--rbm.pretrain_epochs", "1", "--rbm.pretrain_lr", "0.001",
                         "--batch_size", "32", "--results_dir", str(tmp_path / "runs")])
    assert "hvdl: rbm.visible auto: gaussian (the scaled training values span [" in stdout
    assert "RBM 6-5 (gaussian visible" in stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    trained = load_trained(run_dir / "stages" / "pretrain1.pt")
    assert trained.config.rbm.visible == "gaussian" and trained.model.visible == "gaussian"
