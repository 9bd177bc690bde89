"""Sparse autoencoder cost and gradient, and patch normalisation, on however many ranks run.

    mpirun -np 2 python tests/jobs/sae_grad.py OUT_DIR     (or horovodrun, torchrun)

Every rank builds the same fixed global data (float64, seeded) and keeps its shard by the
project's chunk rule (uneven sizes: 37 examples); the cost and gradient go through the trainer's
allreduce (`make_reduce`). Each rank writes OUT_DIR/rank<r>.pt with the global cost terms and
gradient, the same figures computed the naive way (each rank's own ρ̂ and m, then averaged over
ranks, as an averaging optimizer would), and its normalised, ZCA-whitened patches.
tests/test_autoencoder.py compares -np 2 with -np 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from hvdl import dist
from hvdl.data import chunks
from hvdl.data.formats.patches import normalize_patches
from hvdl.models import autoencoder as ae
from hvdl.trainers.sparse import make_reduce

N, N_VIS, N_HID = 37, 12, 5
HYPER = {"rho": 0.05, "beta": 3.0, "lam": 1e-3}


def fixed_data() -> tuple[torch.Tensor, torch.Tensor]:
    """(examples (37, 12) in (0, 1), patches (41, 16)), the same on every rank.

    The examples are sorted by their mean, so shards differ in their hidden activations and a
    per-rank ρ̂ differs from the global one.
    """
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(N, N_VIS, generator=gen, dtype=torch.float64)
    x = x[x.mean(1).argsort()]
    p = torch.randn(41, 16, generator=gen, dtype=torch.float64) ** 3  # heavy tails get clipped
    return x, p


def shard_rows(n: int, ctx: dist.Context, seed: int) -> torch.Tensor:
    """This rank's rows of n by the chunk rule (chunks of 4 rows), in ascending order."""
    mine = chunks.deal(chunks.permute(chunks.cut([n], 4), seed), ctx.rank, ctx.size)
    return torch.cat([torch.arange(p.start, p.stop) for p in mine]).sort().values


def flat_grad(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def main(argv: list[str] | None = None) -> int:
    out_dir = Path((sys.argv[1:] if argv is None else argv)[0])
    ctx = dist.init(threads=1)
    x, p = fixed_data()
    mine = shard_rows(N, ctx, seed=3)
    model = ae.SparseAutoencoder(n_visible=N_VIS, n_hidden=N_HID, seed=1, dtype=torch.float64)
    reduce = make_reduce(ctx, "job.sae") if ctx.size > 1 else ae.identity
    terms, grads = ae.sparse_cost_grad(model, x[mine], reduce_sum=reduce, **HYPER)
    local, local_grads = ae.sparse_cost_grad(model, x[mine], **HYPER)  # this rank's ρ̂ and m
    naive = torch.cat([local.cost.reshape(1), flat_grad(local_grads)])
    if ctx.size > 1:
        naive = dist.allreduce_mean(naive, name="job.naive")
    patch_rows = shard_rows(len(p), ctx, seed=4)
    normalized = normalize_patches(p[patch_rows].numpy(), zca_epsilon=0.1, reduce_sum=reduce)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"size": ctx.size, "cost": terms.cost, "grad": flat_grad(grads),
                "terms": terms.floats(), "naive_cost": naive[0], "naive_grad": naive[1:],
                "patch_rows": patch_rows, "patches": torch.as_tensor(normalized)},
               out_dir / f"rank{ctx.rank}.pt")
    dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
