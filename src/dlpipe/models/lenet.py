"""The LeNet of PyTorch's CIFAR-10 tutorial, for 3 x 32 x 32 images: two 5x5
convolutions (6 and 16 channels), each followed by ReLU and 2x2 max-pooling,
then fully connected 120 -> 84 -> classes.

``features(x)`` returns the penultimate (84-d) activations: the space in which
the DCGAN stage measures its Frechet distance with a LeNet trained here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_SIZE = 32


class LeNet(nn.Module):
    def __init__(self, num_classes: int = 10, channels: tuple[int, int] = (6, 16),
                 hidden: tuple[int, int] = (120, 84), in_channels: int = 3):
        super().__init__()
        c1, c2 = channels
        h1, h2 = hidden
        self.conv1 = nn.Conv2d(in_channels, c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        side = ((IMAGE_SIZE - 4) // 2 - 4) // 2  # 32 -> conv 28 -> pool 14 -> conv 10 -> pool 5
        self.fc1 = nn.Linear(c2 * side * side, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (after fc2 and its ReLU), N x hidden[1]."""
        if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"LeNet expects N x C x {IMAGE_SIZE} x {IMAGE_SIZE} images, got {tuple(x.shape)}")
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return F.relu(self.fc2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.features(x))
