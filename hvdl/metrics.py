"""Classification metrics aggregated over ranks so they equal a single-process evaluation.

Each rank counts its own shard's confusion matrix and cost sum; one allreduce adds them up, and
every figure (accuracy, per-class precision, recall and F1) is derived from the global counts.
Integer counts make the figures exactly those of one process on the whole test set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import torch
import torch.nn.functional as F

from hvdl import dist


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, classes: int) -> torch.Tensor:
    """(classes, classes) int64 counts; row = true class, column = predicted class."""
    flat = labels.long() * classes + predicted.long()
    return torch.bincount(flat, minlength=classes * classes).reshape(classes, classes)


def report(confusion: torch.Tensor, cost_sum: float, count: int,
           names: Sequence[Any] | None = None) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1 and their macro means from global counts; the
    classes are named by `names` (default: their indices)."""
    c = confusion.double()
    true_pos = c.diag()
    predicted = c.sum(0)
    actual = c.sum(1)
    precision = torch.where(predicted > 0, true_pos / predicted.clamp(min=1), 0.0)
    recall = torch.where(actual > 0, true_pos / actual.clamp(min=1), 0.0)
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-300), 0.0)
    return {
        "cost": cost_sum / count,
        "accuracy": float(true_pos.sum() / c.sum()),
        "error": 1.0 - float(true_pos.sum() / c.sum()),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "macro_f1": float(f1.mean()),
        "confusion": confusion.tolist(),
        "count": count,
        "classes": list(names) if names is not None else list(range(len(confusion))),
    }


@torch.no_grad()
def evaluate_classifier(model: torch.nn.Module, batches: Any,
                        classes: int | Sequence[Any] = 10, name: str = "eval",
                        loss: Callable = F.cross_entropy) -> dict[str, Any]:
    """Evaluate on this rank's batches, then aggregate over ranks (a collective on every rank).
    `classes`: their number, or their names (the data's vocabulary)."""
    names = None if isinstance(classes, int) else list(classes)
    classes = classes if names is None else len(names)
    was_training = model.training
    model.eval()
    confusion = None
    cost = None
    for x, y in batches:
        logits = model(x)  # (B, classes)
        # Summed in float64 so that the total does not depend on how examples are batched.
        batch_cost = loss(logits.double(), y, reduction="sum")
        batch_conf = confusion_matrix(y, logits.argmax(1), classes)
        confusion = batch_conf if confusion is None else confusion + batch_conf
        cost = batch_cost if cost is None else cost + batch_cost
    model.train(was_training)
    device = next(model.parameters()).device
    if confusion is None:  # an empty shard still joins the collective
        confusion = torch.zeros(classes, classes, dtype=torch.int64, device=device)
        cost = torch.zeros((), dtype=torch.float64, device=device)
    confusion = dist.allreduce_sum(confusion.cpu(), name=f"{name}.confusion")
    cost_sum = float(dist.allreduce_sum(cost.reshape(1).cpu(), name=f"{name}.cost"))
    return report(confusion, cost_sum, int(confusion.sum()), names)


def summary(result: dict[str, Any]) -> dict[str, float]:
    """The scalar part of a report, for TensorBoard and one-line console output."""
    return {k: v for k, v in result.items() if isinstance(v, float)}
