"""The benchmark's reference workloads, written in plain PyTorch with no hvdl code.

What a user would write without hvdl: the same four networks (LeNet-5, the 784-196 sparse
autoencoder, a 784-500 RBM trained by CD-1, the 784-500-500-2000-10 DBN being fine-tuned) and
their training steps. The single-process baseline runs them as they are; the DDP baseline wraps
them in `DistributedDataParallel`. hvdl/bench/worker.py runs the same networks through hvdl's own
classes and engine. Shapes, batch sizes and optimizer settings come from `SPECS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Spec:
    """One benchmark workload."""

    title: str
    shape: tuple[int, ...]  # one example's shape
    classes: int  # label range (0: unsupervised)
    batch: int  # examples per rank per step
    lr: float  # SGD learning rate (momentum 0.9)
    layers: tuple[int, ...]  # hvdl's `layers` for the family


SPECS = {
    "lenet5": Spec("LeNet-5", (1, 28, 28), 10, 64, 0.01, ()),
    "sae": Spec("sparse autoencoder 784-196", (784,), 0, 64, 0.1, (784, 196)),
    "rbm": Spec("RBM 784-500, CD-1", (784,), 0, 100, 0.1, (784, 500)),
    "dbn": Spec("DBN 784-500-500-2000-10 fine-tuning", (784,), 10, 100, 0.1,
                (784, 500, 500, 2000, 10)),
}
SAE = {"rho": 0.1, "beta": 3.0, "lam": 3e-3}  # the sae_mnist recipe's ρ, β, λ
RBM_WEIGHT_COST = 2e-4  # L2 cost on W only


def synthetic_data(name: str, steps: int, seed: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`steps` batches of random inputs (normal for LeNet-5, [0, 1] otherwise) and labels."""
    spec = SPECS[name]
    gen = torch.Generator().manual_seed(seed)
    n = steps * spec.batch
    if name == "lenet5":
        x = torch.randn((n, *spec.shape), generator=gen)  # (n, 1, 28, 28), standardised
    else:
        x = torch.rand((n, *spec.shape), generator=gen)  # (n, 784), pixels in [0, 1]
    y = torch.randint(0, spec.classes, (n,), generator=gen) if spec.classes else None
    return x.to(device), None if y is None else y.to(device)


class SparseAE(nn.Module):
    """784 → 196 → 784 with sigmoid units; forward returns (x̂, a2)."""

    def __init__(self, n_vis: int, n_hid: int) -> None:
        super().__init__()
        self.encoder, self.decoder = nn.Linear(n_vis, n_hid), nn.Linear(n_hid, n_vis)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a2 = torch.sigmoid(self.encoder(x))  # (B, 196)
        return torch.sigmoid(self.decoder(a2)), a2  # (B, 784), (B, 196)


class RBM(nn.Module):
    """W (784, 500), b_vis, b_hid, initialised as Hinton's rbm.m."""

    def __init__(self, n_vis: int, n_hid: int) -> None:
        super().__init__()
        self.W = nn.Parameter(0.1 * torch.randn(n_vis, n_hid))
        self.b_vis = nn.Parameter(torch.zeros(n_vis))
        self.b_hid = nn.Parameter(torch.zeros(n_hid))


def build(name: str) -> nn.Module:
    """The family's network, seeded the same on every rank."""
    torch.manual_seed(0)
    if name == "lenet5":
        return nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    if name == "sae":
        return SparseAE(784, 196)
    if name == "rbm":
        return RBM(784, 500)
    sizes = SPECS["dbn"].layers
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(n_in, n_out), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(sizes[-2], sizes[-1]))


def optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    spec = SPECS[name]
    if name == "rbm":
        groups = [{"params": [model.W], "weight_decay": RBM_WEIGHT_COST},
                  {"params": [model.b_vis, model.b_hid], "weight_decay": 0.0}]
        return torch.optim.SGD(groups, lr=spec.lr, momentum=0.9)
    return torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=0.9)


Reduce = Callable[[torch.Tensor], torch.Tensor]  # sums over ranks; identity in one process


def identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def sparse_loss(net: SparseAE, out: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor,
                reduce_sum: Reduce, ranks: int) -> torch.Tensor:
    """UFLDL's J with ρ̂ over all ranks' examples: its value, and a gradient that, averaged
    over ranks, is ∇J.

    The KL term's gradient is c_j/m per activation once the global ρ̂ is known, so each rank
    backpropagates its share; × ranks because DDP averages rather than sums gradients. The
    value is J itself (reconstruction, weight decay and the KL sparsity term), the cost a user
    logs, so that the loop computes what hvdl's does.
    """
    x_hat, a2 = out
    err = ((x_hat - x) ** 2).sum()
    a_sum = a2.sum(0)  # (196,)
    total = reduce_sum(torch.cat([a_sum.detach(), err.detach().reshape(1),
                                  x.new_full((1,), len(x))]))  # (198,)
    m = total[-1]
    rho_hat = (total[:-2] / m).clamp(1e-6, 1 - 1e-6)  # (196,)
    rho, beta, lam = SAE["rho"], SAE["beta"], SAE["lam"]
    c = beta * (-rho / rho_hat + (1 - rho) / (1 - rho_hat))  # ∂(β Σ KL)/∂ρ̂
    decay = 0.5 * lam * ((net.encoder.weight ** 2).sum() + (net.decoder.weight ** 2).sum())
    share = ranks * (err / (2 * m) + (a_sum @ c) / m) + decay
    kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
    cost = total[-2] / (2 * m) + decay.detach() + beta * kl.sum()
    return share - share.detach() + cost


@torch.no_grad()
def cd1_grads(rbm: RBM, v0: torch.Tensor) -> torch.Tensor:
    """Write minus the CD-1 estimate into `.grad`; returns the reconstruction error."""
    p0 = torch.sigmoid(v0 @ rbm.W + rbm.b_hid)  # (B, 500)
    h0 = (torch.rand_like(p0) < p0).to(p0.dtype)
    v1 = torch.sigmoid(h0 @ rbm.W.T + rbm.b_vis)  # (B, 784)
    p1 = torch.sigmoid(v1 @ rbm.W + rbm.b_hid)
    rbm.W.grad = -(v0.T @ p0 - v1.T @ p1) / len(v0)
    rbm.b_vis.grad = -(v0 - v1).mean(0)
    rbm.b_hid.grad = -(p0 - p1).mean(0)
    return (v0 - v1).pow(2).sum(1).mean()


def step(name: str, model: nn.Module, net: nn.Module, opt: torch.optim.Optimizer,
         x: torch.Tensor, y: torch.Tensor | None, reduce_sum: Reduce = identity,
         ranks: int = 1, sync_grads: Callable[[], None] | None = None) -> torch.Tensor:
    """One training step; `model` may be DDP around `net`. Returns the detached loss.

    The RBM has no backward pass for DDP to hook into: `sync_grads` averages its gradients.
    """
    opt.zero_grad()
    if name == "rbm":
        loss = cd1_grads(net, x)
        if sync_grads is not None:
            sync_grads()
    else:
        out = model(x)
        loss = (sparse_loss(net, out, x, reduce_sum, ranks) if name == "sae"
                else F.cross_entropy(out, y))
        loss.backward()
    opt.step()
    return loss.detach()
