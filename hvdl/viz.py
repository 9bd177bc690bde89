"""Learned filters as one picture: a near-square grid, as UFLDL's display_network draws them.

    from hvdl.viz import filter_grid
    picture = filter_grid(model.encoder.weight)        # (H, W) in [0, 1]
    run.image("sae/filters", picture, step)            # PNG in the run folder and TensorBoard

Reference: display_network.m of the Stanford UFLDL exercises. The mean of all filter weights is
subtracted, each filter is divided by its own largest absolute weight (so each uses the full
contrast range), and [−1, 1] is mapped to [0, 1]; filters are separated by 1-pixel black borders.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def filter_grid(W: np.ndarray | torch.Tensor, shape: tuple[int, int] | None = None, *,
                scale: int = 1) -> np.ndarray:
    """Tile the rows of W (n_filters, n_in), each reshaped to `shape` (default square), into an
    (H, W) picture in [0, 1]; `scale` enlarges every pixel to scale × scale."""
    if isinstance(W, torch.Tensor):
        W = W.detach().cpu().double().numpy()
    A = np.asarray(W, dtype=np.float64)
    n, n_in = A.shape
    if shape is None:
        side = math.isqrt(n_in)
        if side * side != n_in:
            raise ValueError(f"filters of {n_in} inputs are not square; pass shape=(h, w)")
        shape = (side, side)
    h, w = shape
    if h * w != n_in:
        raise ValueError(f"shape {shape} holds {h * w} values, the filters have {n_in}")
    A = A - A.mean()
    peak = np.abs(A).max(axis=1, keepdims=True)  # (n, 1)
    A = A / np.where(peak > 0, peak, 1.0)  # each filter in [−1, 1]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    picture = np.zeros((rows * (h + 1) + 1, cols * (w + 1) + 1))  # black borders
    for k in range(n):
        r, c = divmod(k, cols)
        top, left = 1 + r * (h + 1), 1 + c * (w + 1)
        picture[top:top + h, left:left + w] = (A[k].reshape(h, w) + 1) / 2
    if scale > 1:
        picture = np.kron(picture, np.ones((scale, scale)))
    return picture


def display_scale(picture_side: int, target: int = 320) -> int:
    """The integer enlargement that makes a picture about `target` pixels wide (at least 1)."""
    return max(1, round(target / max(1, picture_side)))
