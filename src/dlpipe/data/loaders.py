"""In-memory batching: tensors live on the training device, batches are slices
of a seeded permutation (airbench style), augmentation runs on whole batches.

The permutation of epoch ``e`` is drawn from ``seed + e``, so an epoch's order
depends only on (seed, epoch): a resumed run sees exactly the batches an
uninterrupted run would have seen, with no sampler state to checkpoint.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch

BatchTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class TensorLoader:
    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        transform: BatchTransform | None = None,
        max_batches: int | None = None,
    ):
        if len(inputs) != len(targets):
            raise ValueError(f"inputs ({len(inputs)}) and targets ({len(targets)}) differ in length")
        self.inputs, self.targets = inputs, targets
        self.batch_size = min(batch_size, len(inputs))
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.transform, self.max_batches = transform, max_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.inputs)
        batches = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        return min(batches, self.max_batches) if self.max_batches else batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        n = len(self.inputs)
        # The permutation is drawn on the CPU (same numbers on every device), then moved.
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        order = order.to(self.inputs.device)
        for b in range(len(self)):
            index = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.inputs[index]
            if self.transform is not None:
                x = self.transform(x, generator)
            yield x, self.targets[index]
