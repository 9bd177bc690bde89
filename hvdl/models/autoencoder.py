"""Sparse autoencoder (UFLDL) and the stacked autoencoder classifier built from a stack of them.

    python -m hvdl.train --model sae_patches                     # 64-25-64 on natural patches
    horovodrun -np 2 python -m hvdl.train --model sae_mnist      # 784-196-784 on MNIST
    horovodrun -np 2 python -m hvdl.train --model stacked_ae_mnist

Reference: A. Ng, "Sparse autoencoder", CS294A lecture notes (2011), and the Stanford UFLDL
tutorial exercises "Sparse Autoencoder", "Vectorization" and "Building Deep Networks for
Classification". Sigmoid encoder and decoder on m examples x ∈ [0, 1]^n:

    a2 = σ(W1 x + b1),  x̂ = σ(W2 a2 + b2),  ρ̂_j = (1/m) Σ_i a2_ij
    J  = (1/2m) Σ_i ‖x̂_i − x_i‖² + (λ/2)(‖W1‖² + ‖W2‖²) + β Σ_j KL(ρ ‖ ρ̂_j)
    KL(ρ ‖ ρ̂) = ρ log(ρ/ρ̂) + (1 − ρ) log((1 − ρ)/(1 − ρ̂))

Data-parallel, m and ρ̂ are taken over the examples of every rank: each rank computes the sums
(Σ a2, Σ‖x̂ − x‖², its count) of its shard, one `reduce_sum` adds them up, and J follows from the
global sums. The gradient of the KL term with respect to a2_ij is the constant
c_j / m with c_j = β(−ρ/ρ̂_j + (1 − ρ)/(1 − ρ̂_j)) once the global ρ̂ is known, so each rank
backpropagates the surrogate `Σ‖x̂ − x‖²/2m + Σ_ij c_j a2_ij / m + (λ/2)ΣW²/ranks` over its own
examples: these shares summed over ranks are exactly ∇J (autograd cannot differentiate through an
allreduce, and does not need to). `reduce_sum` is the identity in one process.

Results on this project's machine (2-core CPU, horovodrun -np 2, results/autoencoders/README.md):
64-25 on 10,000 scikit-image patches, 400 L-BFGS iterations in 36 s: oriented edge and bar
detectors, reconstruction term 0.296 against 0.456 for always predicting the mean patch (UFLDL's
IMAGES.mat: 0.359 against 0.516); 784-196 on 10,000 digits: pen strokes; the 784-200-200-10 stack:
89.9% test accuracy before fine-tuning, 98.32% after (UFLDL: 87.7% and 97.6%).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

Reduce = Callable[[torch.Tensor], torch.Tensor]  # sums a tensor over ranks


def identity(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of a one-process job."""
    return tensor


def init_linear(layer: nn.Linear, generator: torch.Generator) -> nn.Linear:
    """UFLDL initialisation: b = 0, W ~ U[−r, r] with r = sqrt(6 / (n_in + n_out + 1))."""
    n_out, n_in = layer.weight.shape
    r = math.sqrt(6.0 / (n_in + n_out + 1))
    with torch.no_grad():
        w = torch.rand(layer.weight.shape, generator=generator, dtype=torch.float64)
        layer.weight.copy_((2 * w - 1) * r)
        layer.bias.zero_()
    return layer


class SparseAutoencoder(nn.Module):
    """n_visible → n_hidden → n_visible with sigmoid units; W1 is `encoder.weight`."""

    def __init__(self, *, n_visible: int, n_hidden: int, seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)  # the same start on every rank
        self.encoder = init_linear(nn.Linear(n_visible, n_hidden, dtype=dtype), gen)  # W1, b1
        self.decoder = init_linear(nn.Linear(n_hidden, n_visible, dtype=dtype), gen)  # W2, b2

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.encoder(x))  # (B, n_hidden)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂ (B, n_visible), a2 (B, n_hidden))."""
        a2 = self.encode(x)  # (B, n_hidden)
        return torch.sigmoid(self.decoder(a2)), a2

    def weights(self) -> list[torch.Tensor]:
        """The decayed parameters W1, W2 (biases are not decayed)."""
        return [self.encoder.weight, self.decoder.weight]


@dataclass(frozen=True)
class SparseTerms:
    """The global terms of J (0-d tensors, detached) and ρ̂."""

    reconstruction: torch.Tensor  # (1/2m) Σ‖x̂ − x‖²
    weight_decay: torch.Tensor  # (λ/2)(‖W1‖² + ‖W2‖²)
    sparsity: torch.Tensor  # β Σ_j KL(ρ ‖ ρ̂_j)
    rho_hat: torch.Tensor  # (n_hidden,) mean activation over all examples
    m: torch.Tensor  # examples over all ranks
    ranks: torch.Tensor  # ranks that contributed

    @property
    def cost(self) -> torch.Tensor:
        return self.reconstruction + self.weight_decay + self.sparsity

    def floats(self) -> dict[str, float]:
        return {"cost": float(self.cost), "reconstruction": float(self.reconstruction),
                "weight_decay": float(self.weight_decay), "sparsity": float(self.sparsity),
                "mean_rho_hat": float(self.rho_hat.mean())}


def kl_divergence(rho: float, rho_hat: torch.Tensor) -> torch.Tensor:
    """KL(ρ ‖ ρ̂_j) for each hidden unit j."""
    return rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))


def sparse_share(x: torch.Tensor, x_hat: torch.Tensor, a2: torch.Tensor,
                 weights: Sequence[torch.Tensor], *, rho: float, beta: float, lam: float,
                 reduce_sum: Reduce = identity) -> tuple[torch.Tensor, SparseTerms]:
    """(share, terms): J's global terms, and a scalar whose gradient summed over ranks is ∇J.

    A collective when `reduce_sum` is: every rank calls it once, with its own shard.
    """
    err = ((x_hat - x) ** 2).sum()  # this rank's Σ‖x̂ − x‖²
    a_sum = a2.sum(0)  # (n_hidden,) this rank's Σ_i a2_ij
    # the counts filled on the device (new_tensor would copy from the host and wait for it)
    local = torch.cat([a_sum.detach(), err.detach().reshape(1), a2.new_full((1,), len(x)),
                       a2.new_ones(1)])
    total = reduce_sum(local)  # (n_hidden + 3,)
    m, ranks = total[-2], total[-1]
    eps = torch.finfo(a2.dtype).eps  # keeps the logarithms finite for a saturated unit
    rho_hat = (total[:-3] / m).clamp(eps, 1 - eps)  # (n_hidden,)
    decay = 0.5 * lam * sum((w ** 2).sum() for w in weights)
    terms = SparseTerms(reconstruction=total[-3] / (2 * m), weight_decay=decay.detach(),
                        sparsity=beta * kl_divergence(rho, rho_hat).sum(), rho_hat=rho_hat,
                        m=m, ranks=ranks)
    c = beta * (-rho / rho_hat + (1 - rho) / (1 - rho_hat))  # (n_hidden,) ∂(βΣKL)/∂ρ̂
    share = err / (2 * m) + (a_sum @ c) / m + decay / ranks
    return share, terms


def with_value(share: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A scalar with the gradient of `share` and the value `value` (for logging the true cost)."""
    return share - share.detach() + value.detach()


def reduce_gradient(share: torch.Tensor, params: Sequence[torch.Tensor],
                    reduce_sum: Reduce = identity) -> list[torch.Tensor]:
    """The gradients of `share` summed over ranks, in one flat reduction."""
    grads = torch.autograd.grad(share, list(params))
    flat = reduce_sum(torch.cat([g.reshape(-1) for g in grads]))  # (n_params,)
    return [g.view_as(p) for g, p in zip(flat.split([p.numel() for p in params]), params)]


def sparse_cost_grad(model: SparseAutoencoder, x: torch.Tensor, *, rho: float, beta: float,
                     lam: float, reduce_sum: Reduce = identity,
                     ) -> tuple[SparseTerms, list[torch.Tensor]]:
    """J's terms and ∇J over the examples of all ranks, given this rank's `x` (B, n_visible)."""
    x_hat, a2 = model(x)  # (B, n_visible), (B, n_hidden)
    share, terms = sparse_share(x, x_hat, a2, model.weights(), rho=rho, beta=beta, lam=lam,
                                reduce_sum=reduce_sum)
    return terms, reduce_gradient(share, list(model.parameters()), reduce_sum)


class SparseLoss:
    """J on a global minibatch as an `loop.Stage` loss for Horovod's averaging optimizer.

    ρ̂ and m come from the minibatches of all ranks (one `reduce_sum` per step); the share is
    multiplied by the number of ranks because the distributed optimizer averages gradients.
    `terms` holds the last step's global terms.
    """

    def __init__(self, model: SparseAutoencoder, *, rho: float, beta: float, lam: float,
                 reduce_sum: Reduce = identity) -> None:
        self.model, self.reduce_sum = model, reduce_sum
        self.rho, self.beta, self.lam = rho, beta, lam
        self.terms: SparseTerms | None = None

    def __call__(self, output: tuple[torch.Tensor, torch.Tensor],
                 x: torch.Tensor) -> torch.Tensor:
        x_hat, a2 = output
        share, self.terms = sparse_share(x, x_hat, a2, self.model.weights(), rho=self.rho,
                                         beta=self.beta, lam=self.lam,
                                         reduce_sum=self.reduce_sum)
        return with_value(share * self.terms.ranks, self.terms.cost)


def mean_predictor_error(x: torch.Tensor, reduce_sum: Reduce = identity) -> float:
    """(1/2m) Σ‖x̄ − x‖²: the reconstruction term of always predicting the global mean example."""
    x = x.double()
    local = torch.cat([x.sum(0), (x ** 2).sum().reshape(1), x.new_full((1,), len(x))])
    total = reduce_sum(local)  # (n + 2,)
    m = total[-1]
    mean = total[:-2] / m  # (n,)
    return float((total[-2] - m * (mean ** 2).sum()) / (2 * m))


# --- the stacked autoencoder classifier (UFLDL "Building Deep Networks for Classification") ---

def softmax_layer(n_in: int, classes: int, *, seed: int,
                  dtype: torch.dtype = torch.float32) -> nn.Linear:
    """The classifier on top of a stack: W ~ 0.005·N(0, 1), b = 0, as in UFLDL's softmax."""
    layer = nn.Linear(n_in, classes, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(0.005 * torch.randn(layer.weight.shape, generator=gen,
                                               dtype=torch.float64))
        layer.bias.zero_()
    return layer


def stack(encoders: Sequence[nn.Linear], softmax: nn.Linear) -> nn.Sequential:
    """Encoder, sigmoid, ..., encoder, sigmoid, softmax: the network that fine-tuning trains."""
    layers: list[nn.Module] = []
    for encoder in encoders:
        layers += [encoder, nn.Sigmoid()]
    return nn.Sequential(*layers, softmax)


def classifier_share(logits: torch.Tensor, y: torch.Tensor, decayed: Sequence[torch.Tensor], *,
                     lam: float, reduce_sum: Reduce = identity,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(share, cost) of J = (1/m) Σ cross-entropy + (λ/2) Σ‖W‖² over the `decayed` weights.

    `logits` (B, classes) are this rank's; m is global; the shares summed over ranks give ∇J.
    """
    ce = F.cross_entropy(logits, y, reduction="sum")
    total = reduce_sum(torch.stack([ce.detach(), logits.new_full((), len(y)),
                                    logits.new_ones(())]))  # (3,), filled on the device
    m, ranks = total[1], total[2]
    decay = 0.5 * lam * sum((w ** 2).sum() for w in decayed)
    share = ce / m + decay / ranks
    return share, total[0] / m + decay.detach()
