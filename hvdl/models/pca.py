"""Principal component analysis computed data-parallel: the baseline of the deep autoencoder.

    from hvdl.models.pca import fit_pca
    pca = fit_pca(batches, n_components=30)             # a collective on every rank
    x_hat = pca.reconstruct(x)                           # (B, 784)
    error = squared_error(pca.reconstruct, test_batches) # mean over all ranks' images

Each rank sums its examples and their Gram matrix Σ x xᵀ in float64; one allreduce adds the
sums over ranks, so the mean μ and covariance C = Σ x xᵀ / n − μ μᵀ are those of the whole
training set. The top `n_components` eigenvectors V (D, c) of C give x̂ = μ + (x − μ) V Vᵀ.

Reference: Hinton & Salakhutdinov (2006) report 13.87 average squared test reconstruction error
per MNIST image for 30-component PCA; this project's figure is in results/rbm/README.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from hvdl import dist


@dataclass(frozen=True)
class PCA:
    mean: torch.Tensor  # (D,) μ, float64
    components: torch.Tensor  # (D, c) V, orthonormal columns, largest variance first
    variances: torch.Tensor  # (c,) eigenvalues of the covariance for those columns

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.mean.device, torch.float64) - self.mean) @ self.components  # (B, c)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.mean + self.encode(x) @ self.components.T  # (B, D)


def fit_pca(batches: Iterable[torch.Tensor], n_components: int, name: str = "pca") -> PCA:
    """PCA of every rank's examples together (a collective: every rank must call it)."""
    total, gram, count = None, None, 0
    for x in batches:
        x = x.reshape(len(x), -1).double().cpu()  # (B, D)
        total = x.sum(0) if total is None else total + x.sum(0)
        gram = x.T @ x if gram is None else gram + x.T @ x  # (D, D)
        count += len(x)
    if total is None:
        raise ValueError("fit_pca needs at least one example on every rank")
    dim = total.shape[0]
    packed = torch.cat([total, gram.reshape(-1), torch.tensor([float(count)], dtype=torch.float64)])
    packed = dist.allreduce_sum(packed, name=f"{name}.moments")
    n = float(packed[-1])
    mean = packed[:dim] / n  # (D,)
    cov = packed[dim:-1].reshape(dim, dim) / n - torch.outer(mean, mean)  # (D, D)
    values, vectors = torch.linalg.eigh(cov)  # ascending
    top = torch.arange(dim - 1, dim - 1 - n_components, -1)
    return PCA(mean=mean, components=vectors[:, top].contiguous(), variances=values[top])


@torch.no_grad()
def squared_error(reconstruct: Callable[[torch.Tensor], torch.Tensor],
                  batches: Iterable[torch.Tensor], name: str = "squared_error") -> float:
    """Σ over units of (x − x̂)², averaged over the examples of every rank (a collective).

    Sums and counts are allreduced, so the figure is one process's on all examples even when
    the ranks hold different numbers of them.
    """
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    for part in batches:
        x_hat = reconstruct(part).to(part.device, torch.float64)  # (B, D)
        total += (part.double() - x_hat).pow(2).sum().cpu()
        count += len(part)
    packed = torch.stack([total, torch.tensor(float(count), dtype=torch.float64)])
    total_sum, count = dist.allreduce_sum(packed, name=name).tolist()
    return total_sum / max(count, 1.0)
