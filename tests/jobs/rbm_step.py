"""A few CD-k updates and a PCA on one fixed global batch, on however many ranks are launched.

    mpirun -np 2 python tests/jobs/rbm_step.py OUT_DIR [fused|hooks]    (hooks: the Horovod engine)

Every rank draws the same global data and sampling noise from seeded generators and keeps its
own contiguous slice, so a job of any size sees exactly the examples and noise of one process.
The updates go through the trainer's own optimizer (SGD + momentum + weight cost on W, wrapped by
`sync.wrap`: one fused allreduce, or Horovod's DistributedOptimizer with `hooks`). Each rank
writes OUT_DIR/rank<r>.pt: for every unit setting the initial parameters, data, noise and the
parameters after each update, plus the PCA figures.
tests/test_rbm.py compares -np 1 with -np 2 and with a NumPy reference of Hinton's update.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from hvdl import config as configlib
from hvdl import dist
from hvdl.loop import sync
from hvdl.models.pca import fit_pca, squared_error
from hvdl.models.rbm import RBM, contrastive_divergence
from hvdl.trainers.rbm import rbm_optimizer

GLOBAL_BATCH = 12  # examples per update over all ranks
STEPS = 3  # updates; momentum switches from 0.5 to 0.9 after the first
N_VIS, N_HID = 10, 6
LR, WEIGHT_COST = 0.1, 0.01  # a large weight cost makes a W-only penalty visible in the test
# (visible units, hidden units, k, persistent)
SETTINGS = [("bernoulli", "bernoulli", 1, False), ("bernoulli", "bernoulli", 2, True),
            ("gaussian", "linear", 1, False)]


def run_setting(visible: str, hidden: str, k: int, persistent: bool, grad_sync: str,
                ctx: dist.Context) -> dict[str, torch.Tensor]:
    """STEPS updates of one RBM on this rank's slices of the global batches and noise."""
    torch.manual_seed(0)
    rbm = RBM(N_VIS, N_HID, visible=visible, hidden=hidden)
    with torch.no_grad():  # non-zero biases, so that any bias mistake shows
        rbm.b_vis.normal_(0, 0.1)
        rbm.b_hid.normal_(0, 0.1)
    gen = torch.Generator().manual_seed(1)
    data = torch.rand(STEPS, GLOBAL_BATCH, N_VIS, generator=gen)  # (S, G, n_vis)
    noise = torch.stack([rbm.draw_noise(k, GLOBAL_BATCH, gen) for _ in range(STEPS)])
    config = configlib.build({"family": "rbm", "layers": (N_VIS, N_HID),
                              "rbm.weight_cost": WEIGHT_COST, "perf.grad_sync": grad_sync})
    optimizer = sync.wrap(rbm_optimizer(rbm, LR, config), rbm, config)  # as the loop does
    # Parameters only: a fresh SGD has no state, and Horovod's optimizer-state broadcast would
    # initialise it with a zero-gradient step that applies the weight cost once.
    dist.broadcast_state(rbm)
    out = {f"initial.{n}": p.detach().clone() for n, p in rbm.named_parameters()}
    lo, hi = ctx.rank * GLOBAL_BATCH // ctx.size, (ctx.rank + 1) * GLOBAL_BATCH // ctx.size
    chain = None
    for s in range(STEPS):
        for group in optimizer.param_groups:
            group["momentum"] = 0.5 if s == 0 else 0.9
        step = contrastive_divergence(rbm, data[s, lo:hi], noise[s, :, lo:hi], chain)
        optimizer.step()
        chain = step.chain if persistent else None
        out.update({f"step{s}.{n}": p.detach().clone() for n, p in rbm.named_parameters()})
    return {**out, "data": data, "noise": noise}


def run_pca(ctx: dist.Context) -> dict[str, torch.Tensor]:
    """PCA of 40 global examples, error on 7 held-out ones split unevenly over the ranks."""
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(40, N_VIS, generator=gen) @ torch.rand(N_VIS, N_VIS, generator=gen)
    held = torch.rand(7, N_VIS, generator=gen)
    mine = slice(ctx.rank * 40 // ctx.size, (ctx.rank + 1) * 40 // ctx.size)
    pca = fit_pca(x[mine].split(3), n_components=3, name="job.pca")
    mine = slice(ctx.rank * 7 // ctx.size, (ctx.rank + 1) * 7 // ctx.size)
    error = squared_error(pca.reconstruct, held[mine].split(3), name="job.pca.sq")
    return {"pca.mean": pca.mean, "pca.variances": pca.variances,
            "pca.projector": pca.components @ pca.components.T,
            "pca.squared_error": torch.tensor(error), "pca.x": x, "pca.held": held}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out_dir, grad_sync = Path(args[0]), (args[1] if len(args) > 1 else "fused")
    ctx = dist.init(threads=1, backend="horovod" if grad_sync == "hooks" else "auto")
    results = {"size": ctx.size, **run_pca(ctx)}
    for visible, hidden, k, persistent in SETTINGS:
        name = f"{visible}-{hidden}-k{k}{'-pcd' if persistent else ''}"
        results.update({f"{name}.{key}": value for key, value in
                        run_setting(visible, hidden, k, persistent, grad_sync, ctx).items()})
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(results, out_dir / f"rank{ctx.rank}.pt")
    dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
