"""LeNet-5 for 28×28 digits (LeCun et al., 1998), in its common modern form.

Two 5×5 convolutions (6 and 16 maps) each followed by ReLU and 2×2 max-pooling, then fully
connected 120-84-10. The first convolution pads by 2 so MNIST's 28×28 plays the part of the
original 32×32 input. 61,706 parameters.

    horovodrun -np 2 python -m hvdl.train --model lenet5

Reference: 0.95% test error without distortions (LeCun et al. 1998). This project's measured
result is in results/lenet5/README.md.
"""

from __future__ import annotations

import torch
from torch import nn


def feature_size(size: int) -> int:
    """Side of the last feature maps for an input side `size` (5 for MNIST's 28)."""
    return (size // 2 - 4) // 2


class LeNet5(nn.Module):
    """LeNet-5 for (channels, height, width) inputs; sides of at least 12 pixels."""

    def __init__(self, *, classes: int = 10, shape: tuple[int, int, int] = (1, 28, 28)) -> None:
        super().__init__()
        channels, height, width = shape
        if min(feature_size(height), feature_size(width)) < 1:
            raise ValueError(f"LeNet-5 needs images of at least 12×12 pixels, got "
                             f"{height}×{width}")
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, kernel_size=5, padding=2),  # (B, 6, 28, 28)
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 6, 14, 14)
            nn.Conv2d(6, 16, kernel_size=5),  # (B, 16, 10, 10)
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 16, 5, 5)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (B, 400)
            nn.Linear(16 * feature_size(height) * feature_size(width), 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, classes),  # (B, classes) logits
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # x: (B, C, H, W), e.g. (B, 1, 28, 28)
