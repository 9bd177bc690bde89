"""Sparse and stacked autoencoders: math against finite differences, ranks against one process."""

import json
import math
import threading

import numpy as np
import pytest
import torch

from hvdl.loop import lbfgs
from hvdl.models import autoencoder as ae
from hvdl.viz import filter_grid
from procs import ROOT, check_job, train_here

HYPER = {"rho": 0.05, "beta": 3.0, "lam": 1e-3}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny float64 problems: one torch thread avoids spinning against a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_problem(n=23, n_vis=6, n_hid=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, n_vis, generator=gen, dtype=torch.float64)  # (n, n_vis)
    model = ae.SparseAutoencoder(n_visible=n_vis, n_hidden=n_hid, seed=seed + 1,
                                 dtype=torch.float64)
    with torch.no_grad():  # non-zero biases, so a bias mistake shows
        for p in (model.encoder.bias, model.decoder.bias):
            p.normal_(0, 0.3, generator=gen)
    return model, x


def flat(tensors):
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def set_flat(params, vector):
    with torch.no_grad():
        for p, v in zip(params, vector.split([p.numel() for p in params])):
            p.copy_(v.view_as(p))


def numerical_gradient(cost, params, eps=1e-5):
    """Central differences of cost() over every parameter entry (float64)."""
    theta = flat(params)
    grad = torch.zeros_like(theta)
    for i in range(len(theta)):
        step = torch.zeros_like(theta)
        step[i] = eps
        set_flat(params, theta + step)
        up = cost()
        set_flat(params, theta - step)
        grad[i] = (up - cost()) / (2 * eps)
    set_flat(params, theta)
    return grad


def relative_error(a, b):
    return float((a - b).norm() / (a + b).norm())


def sparse_cost(model, x, **hyper):
    with torch.no_grad():
        x_hat, a2 = model(x)
        return float(ae.sparse_share(x, x_hat, a2, model.weights(), **hyper)[1].cost)


def simulated_ranks(work, shards):
    """Run work(shard, reduce_sum) on one thread per shard; reduce_sum adds over the threads."""
    barrier, slots, results = threading.Barrier(len(shards)), [None] * len(shards), {}

    def rank(r):
        def reduce_sum(t):
            slots[r] = t.clone()
            barrier.wait()
            total = sum(slots)
            barrier.wait()
            return total
        results[r] = work(shards[r], reduce_sum)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(len(shards))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [results[r] for r in range(len(shards))]


def test_forward_shapes_and_range():
    """Test that the autoencoder maps (B, n_vis) to x̂ (B, n_vis) and a2 (B, n_hid) in (0, 1)."""
    model = ae.SparseAutoencoder(n_visible=64, n_hidden=25)
    with torch.no_grad():
        x_hat, a2 = model(torch.rand(7, 64))
    assert x_hat.shape == (7, 64) and a2.shape == (7, 25)
    assert 0 < float(a2.min()) and float(a2.max()) < 1
    assert model.encode(torch.rand(3, 64)).shape == (3, 25)


def test_initialisation_follows_ufldl():
    """Test that b = 0 and W ~ U[−r, r] with r = sqrt(6/(n_in + n_out + 1)), same per seed."""
    model = ae.SparseAutoencoder(n_visible=64, n_hidden=25, seed=3)
    r = math.sqrt(6 / (64 + 25 + 1))
    for layer in (model.encoder, model.decoder):
        w, b = layer.weight.detach(), layer.bias.detach()
        assert float(b.abs().max()) == 0.0
        assert 0.9 * r < float(w.abs().max()) <= r  # uses the whole range
    again = ae.SparseAutoencoder(n_visible=64, n_hidden=25, seed=3)
    assert torch.equal(again.encoder.weight, model.encoder.weight)


def test_cost_and_gradient_match_finite_differences():
    """Test that ∇J (reconstruction + weight decay + sparsity) matches central differences."""
    model, x = small_problem()
    terms, grads = ae.sparse_cost_grad(model, x, **HYPER)
    assert float(terms.sparsity) > 0.1 and float(terms.weight_decay) > 0  # every term counts
    params = list(model.parameters())
    numeric = numerical_gradient(lambda: sparse_cost(model, x, **HYPER), params)
    assert relative_error(flat(grads), numeric) < 1e-6


def test_cost_terms_match_a_direct_formula():
    """Test that the terms equal J written out directly in NumPy."""
    model, x = small_problem()
    terms, _ = ae.sparse_cost_grad(model, x, **HYPER)
    W1, b1 = model.encoder.weight.detach().numpy(), model.encoder.bias.detach().numpy()
    W2, b2 = model.decoder.weight.detach().numpy(), model.decoder.bias.detach().numpy()
    xs = x.numpy()
    a2 = 1 / (1 + np.exp(-(xs @ W1.T + b1)))
    x_hat = 1 / (1 + np.exp(-(a2 @ W2.T + b2)))
    rho, rho_hat = HYPER["rho"], a2.mean(0)
    kl = rho * np.log(rho / rho_hat) + (1 - rho) * np.log((1 - rho) / (1 - rho_hat))
    assert float(terms.reconstruction) == pytest.approx(((x_hat - xs) ** 2).sum() / (2 * len(xs)))
    assert float(terms.weight_decay) == pytest.approx(
        HYPER["lam"] / 2 * ((W1 ** 2).sum() + (W2 ** 2).sum()))
    assert float(terms.sparsity) == pytest.approx(HYPER["beta"] * kl.sum())


def test_two_simulated_ranks_equal_one_process():
    """Test that cost and gradient summed over 2 uneven shards equal those of one process."""
    model, x = small_problem(n=29)
    terms, grads = ae.sparse_cost_grad(model, x, **HYPER)
    shards = [x[:11], x[11:]]
    results = simulated_ranks(
        lambda shard, reduce: ae.sparse_cost_grad(model, shard, reduce_sum=reduce, **HYPER),
        shards)
    for r_terms, r_grads in results:
        assert float(r_terms.cost) == pytest.approx(float(terms.cost), abs=1e-12)
        torch.testing.assert_close(flat(r_grads), flat(grads), rtol=0, atol=1e-12)


def test_averaging_per_shard_kl_terms_differs_from_the_global_cost():
    """Test that each shard's own ρ̂, averaged over shards, gives another cost and gradient."""
    model, x = small_problem(n=30)
    x = x[x.mean(1).argsort()]  # shards with different activation statistics
    terms, grads = ae.sparse_cost_grad(model, x, **HYPER)
    local = [ae.sparse_cost_grad(model, shard, **HYPER) for shard in (x[:15], x[15:])]
    naive_cost = sum(float(t.cost) for t, _ in local) / 2
    naive_grad = sum(flat(g) for _, g in local) / 2
    assert abs(naive_cost - float(terms.cost)) > 1e-4
    assert float((naive_grad - flat(grads)).abs().max()) > 1e-4


def test_minibatch_loss_has_the_cost_as_value_and_its_gradient():
    """Test that SparseLoss's value is J and its gradient ∇J in one process."""
    model, x = small_problem()
    terms, grads = ae.sparse_cost_grad(model, x, **HYPER)
    loss_fn = ae.SparseLoss(model, **HYPER)
    loss = loss_fn(model(x), x)
    assert float(loss.detach()) == pytest.approx(float(terms.cost), abs=1e-12)
    loss.backward()
    torch.testing.assert_close(flat(p.grad for p in model.parameters()), flat(grads))


def test_minibatch_loss_times_ranks_averages_to_the_global_gradient():
    """Test that the per-rank SparseLoss gradients, averaged as Horovod does, are ∇J."""
    model, x = small_problem(n=24)
    _, grads = ae.sparse_cost_grad(model, x, **HYPER)

    def rank_gradient(shard, reduce):
        loss_fn_r = ae.SparseLoss(model, reduce_sum=reduce, **HYPER)
        loss = loss_fn_r(model(shard), shard)
        return flat(torch.autograd.grad(loss, list(model.parameters())))

    per_rank = simulated_ranks(rank_gradient, [x[:12], x[12:]])
    torch.testing.assert_close((per_rank[0] + per_rank[1]) / 2, flat(grads))


def test_classifier_gradient_matches_finite_differences():
    """Test that the softmax-stack cost's gradient (softmax weight decay only) is correct."""
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(17, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (17,), generator=gen)
    encoder = ae.SparseAutoencoder(n_visible=6, n_hidden=5, seed=1, dtype=torch.float64).encoder
    net = ae.stack([encoder], ae.softmax_layer(5, 3, seed=2, dtype=torch.float64))
    with torch.no_grad():
        net[-1].weight.mul_(100)  # away from zero, so the decay matters
    params = list(net.parameters())

    def cost():
        with torch.no_grad():
            return float(ae.classifier_share(net(x), y, [net[-1].weight], lam=0.1)[1])

    share, value = ae.classifier_share(net(x), y, [net[-1].weight], lam=0.1)
    assert float(value) == pytest.approx(cost())
    grads = ae.reduce_gradient(share, params)
    assert relative_error(flat(grads), numerical_gradient(cost, params)) < 1e-6


def test_mean_predictor_error_matches_numpy():
    """Test that the mean-example reconstruction term is (1/2m) Σ‖x̄ − x‖²."""
    x = torch.rand(50, 8, dtype=torch.float64)
    expected = ((x.numpy() - x.numpy().mean(0)) ** 2).sum() / (2 * 50)
    assert ae.mean_predictor_error(x) == pytest.approx(expected)
    halves = simulated_ranks(ae.mean_predictor_error, [x[:20], x[20:]])
    assert halves[0] == pytest.approx(expected) and halves[1] == pytest.approx(expected)


def lbfgs_run(chunk, iterations=12):
    model, x = small_problem(n=40, n_vis=8, n_hid=3)
    params = list(model.parameters())

    def objective():
        terms, grads = ae.sparse_cost_grad(model, x, **HYPER)
        lbfgs.set_grads(params, grads)
        return terms.cost

    first = float(objective())
    report = lbfgs.minimize(params, objective, iterations=iterations, chunk=chunk)
    return first, report, flat(params)


def test_lbfgs_lowers_the_cost_and_chunks_do_not_change_the_path():
    """Test that L-BFGS lowers J, and running it in chunks gives bitwise the same parameters."""
    first, whole, theta = lbfgs_run(chunk=None)
    _, chunked, theta_chunked = lbfgs_run(chunk=5)
    assert whole["iterations"] == chunked["iterations"] == 12
    assert whole["cost"] < 0.5 * first
    assert torch.equal(theta, theta_chunked)
    assert chunked["evaluations"] <= whole["evaluations"] + 3  # one per chunk at most


def test_filter_grid_tiles_and_normalises_filters():
    """Test that filter_grid lays filters on a near-square grid in [0, 1] with black borders."""
    W = torch.randn(25, 64, dtype=torch.float64)
    picture = filter_grid(W)
    assert picture.shape == (5 * 9 + 1, 5 * 9 + 1)
    assert picture.min() >= 0 and picture.max() <= 1
    assert np.all(picture[0] == 0) and np.all(picture[:, 9] == 0)  # borders
    tile = picture[1:9, 1:9]  # the first filter: its own max |w − mean| maps to 0 or 1
    centred = (W[0] - W.mean()).numpy()
    expected = (centred / np.abs(centred).max() + 1) / 2
    np.testing.assert_allclose(tile.reshape(-1), expected, atol=1e-12)
    assert filter_grid(np.ones((7, 6)), (2, 3)).shape == (3 * 3 + 1, 3 * 4 + 1)
    assert filter_grid(W, scale=3).shape == (46 * 3, 46 * 3)
    with pytest.raises(ValueError, match="not square"):
        filter_grid(np.ones((3, 10)))


@pytest.mark.parametrize("overrides, message", [
    ({"layers": "784"}, "needs at least input and one hidden size"),
    ({"sae.finetune_optimizer": "rmsprop"}, "allowed: lbfgs, sgd, adam"),
])
def test_stacked_autoencoder_config_errors_name_the_key(overrides, message):
    """Test that a stack without hidden layers or an unknown fine-tuning optimizer is a
    ConfigError."""
    from hvdl import config as configlib
    from hvdl.trainers.stacked import check_stacked

    with pytest.raises(configlib.ConfigError, match=message):  # at load or at the stack check
        check_stacked(configlib.load("stacked_ae_mnist",
                                     [f"--{k}={v}" for k, v in overrides.items()]))


# --- real 2-rank jobs (mpirun: the engine is not what these test) --------------------------------

@pytest.fixture(scope="module")
def grad_job(tmp_path_factory):
    """The rank outputs of tests/jobs/sae_grad.py run with mpirun -np 1 and -np 2."""
    outputs = {}
    for n in (1, 2):
        out = tmp_path_factory.mktemp(f"sae_grad_np{n}")
        check_job(n, [str(ROOT / "tests" / "jobs" / "sae_grad.py"), str(out)], launcher="mpirun")
        outputs[n] = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(n)]
    return outputs


@pytest.mark.slow
def test_two_ranks_give_the_cost_and_gradient_of_one(grad_job):
    """Test that mpirun -np 2 gives the -np 1 cost and gradient (with sparsity) within 1e-6."""
    (one,), two = grad_job[1], grad_job[2]
    assert one["terms"]["sparsity"] > 0.1
    for rank in two:
        assert abs(float(rank["cost"] - one["cost"])) < 1e-6
        assert float((rank["grad"] - one["grad"]).abs().max()) < 1e-6


@pytest.mark.slow
def test_two_ranks_averaging_their_own_kl_terms_would_differ(grad_job):
    """Test that averaging per-rank costs (each its own ρ̂) misses -np 1 by far more than 1e-6."""
    (one,), two = grad_job[1], grad_job[2]
    assert abs(float(two[0]["naive_cost"] - one["cost"])) > 1e-4
    assert float((two[0]["naive_grad"] - one["grad"]).abs().max()) > 1e-4


@pytest.mark.slow
def test_two_ranks_normalise_patches_as_one_process(grad_job):
    """Test that patch clipping and ZCA over 2 ranks equal one process on the same patches."""
    (one,), two = grad_job[1], grad_job[2]
    for rank in two:
        expected = one["patches"][rank["patch_rows"]]
        assert float((rank["patches"] - expected).abs().max()) < 1e-9


# --- the recipes, briefly -------------------------------------------------------------------------

def run_recipe(tmp_path, np_, launcher, *args):
    """(run folder, metrics) of a run; `launcher` "python": one run in this process."""
    args = ["-m", "hvdl.train", *args, "--results_dir", str(tmp_path), "--log_every", "2"]
    if launcher == "python":
        train_here(args)
    else:
        check_job(np_, args, launcher=launcher)
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_sae_patches_recipe_runs_on_two_ranks_with_identical_parameters(tmp_path):
    """Test that sae_patches runs 3 L-BFGS iterations on 2 ranks, which end identical."""
    run_dir, found = run_recipe(tmp_path, 2, "mpirun", "--model", "sae_patches",
                                "--sae.lbfgs_iterations", "3", "--patches.count", "2000")
    sae = found["final"]
    assert sae["iterations"] == 3
    digests = sae["parameters"]["sha256"]
    assert sae["parameters"]["identical"] and len(digests) == 2 and len(set(digests)) == 1
    assert sae["reconstruction"] < sae["mean_predictor_reconstruction"] * 2
    assert (run_dir / "sae-filters.png").is_file()


@pytest.mark.slow
def test_sae_minibatch_adam_runs_on_two_ranks(tmp_path):
    """Test that the minibatch path (Adam, gradients averaged over ranks) trains sae_patches."""
    _, found = run_recipe(tmp_path, 2, "mpirun", "--model", "sae_patches", "--optimizer", "adam",
                          "--lr", "0.01", "--epochs", "1", "--batch_size", "100",
                          "--patches.count", "2000", "--filters_every", "5")
    assert found["final"]["steps"] == 10
    assert found["final"]["parameters"]["identical"]


@pytest.mark.slow
def test_sae_mnist_recipe_runs(tmp_path):
    """Test that sae_mnist runs 3 L-BFGS iterations on 1,000 digits."""
    run_dir, found = run_recipe(tmp_path, 1, "python", "--model", "sae_mnist",
                                "--sae.lbfgs_iterations", "3", "--train_size", "1000")
    assert found["final"]["iterations"] == 3
    assert (run_dir / "sae-filters.png").is_file()


@pytest.mark.slow
def test_stacked_ae_recipe_runs(tmp_path):
    """Test that stacked_ae_mnist pretrains, trains the softmax and fine-tunes, briefly, into a
    classifier that spreads its predictions and beats chance before and after fine-tuning."""
    _, found = run_recipe(tmp_path, 1, "python", "--model", "stacked_ae_mnist",
                          "--train_size", "1000", "--sae.lbfgs_iterations", "25",
                          "--sae.finetune_iterations", "1", "--max_steps", "3")
    assert [found["stages"][f"layer{i}"]["iterations"] for i in (1, 2)] == [25, 25]
    assert found["stages"]["finetune"]["step"] == 3
    for key in ("test_before_finetune", "test_after_finetune"):  # each reaches 0.47; chance 0.1
        assert found[key]["count"] == 10000
        predicted = [sum(column) for column in zip(*found[key]["confusion"])]
        assert sum(n >= 100 for n in predicted) >= 3, (key, predicted)
        assert found[key]["accuracy"] > 0.3, (key, found[key]["accuracy"])
