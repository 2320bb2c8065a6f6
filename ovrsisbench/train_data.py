"""The training data stream: the train split augmented by a recipe's transform, and the batch
plan that makes every iteration's batch a pure function of (seed, iteration)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ovrsisbench.data.loader import SegmentationDataset
from ovrsisbench.errors import UserError

# first words of the seed sequences, so the kinds of streams never coincide (the trainer's
# per-iteration seeds use a third)
_ORDER, _SAMPLE = 0x6F72, 0x7361


class TrainSamples(Dataset):
    """Samples of the train split, augmented by the recipe's transform.

    Keys are ``(epoch, index)``: the transform's generator is seeded by (seed, epoch, index), so
    an item is the same whenever and wherever it is loaded. Items are uint8 tensors: the image
    (3, S, S) and the label (S, S) of scored ids or 255.
    """

    def __init__(
        self, samples: SegmentationDataset, transform: Callable[..., Any], seed: int
    ) -> None:
        self.samples = samples
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        item = self.samples[index]
        rng = np.random.default_rng([_SAMPLE, self.seed, epoch, index])
        image, label = self.transform(
            item["image"].permute(1, 2, 0).numpy(), item["label"].numpy(), rng
        )
        _check_transformed(image, label, item["stem"])
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        return image, torch.from_numpy(np.ascontiguousarray(label))


def _check_transformed(image: Any, label: Any, stem: str) -> None:
    ok = (
        isinstance(image, np.ndarray)
        and isinstance(label, np.ndarray)
        and image.dtype == np.uint8
        and label.dtype == np.uint8
        and image.ndim == 3
        and image.shape[2] == 3
        and label.shape == image.shape[:2]
    )
    if not ok:
        described = [
            f"{type(a).__name__} {getattr(a, 'shape', '')} {getattr(a, 'dtype', '')}".strip()
            for a in (image, label)
        ]
        raise UserError(
            f"the adapter's train transform returned image {described[0]} and label "
            f"{described[1]} for '{stem}' (expected uint8 (S, S, 3) and uint8 (S, S))"
        )


class BatchPlan(Sampler):
    """An endless batch sampler: the micro-batches of iterations ``start``, ``start + 1``, ...

    Sample positions 0, 1, 2, ... run through one permutation of the split per epoch (seeded by
    (seed, epoch)); iteration ``i`` takes positions ``i*B .. (i+1)*B - 1``, rank ``r`` of ``W``
    takes every W-th of them from the r-th, and cuts its share into ``accumulate`` micro-batches.
    The same iteration thus covers the same samples whatever the number of processes.
    """

    def __init__(
        self,
        num_samples: int,
        seed: int,
        batch_size: int,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
        accumulate: int = 1,
    ) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.batch_size = batch_size
        self.start = start
        self.rank = rank
        self.world_size = world_size
        self.accumulate = accumulate
        self._orders: dict[int, np.ndarray] = {}

    def order(self, epoch: int) -> np.ndarray:
        """The sample indices of ``epoch`` in visiting order."""
        if epoch not in self._orders:
            if len(self._orders) > 2:
                self._orders.pop(min(self._orders))
            rng = np.random.default_rng([_ORDER, self.seed, epoch])
            self._orders[epoch] = rng.permutation(self.num_samples)
        return self._orders[epoch]

    def key(self, position: int) -> tuple[int, int]:
        """The (epoch, index) of sample position ``position``."""
        epoch, offset = divmod(position, self.num_samples)
        return epoch, int(self.order(epoch)[offset])

    def iteration(self, iteration: int) -> list[list[tuple[int, int]]]:
        """This rank's micro-batches of ``iteration``."""
        first = iteration * self.batch_size
        mine = range(first + self.rank, first + self.batch_size, self.world_size)
        size = len(mine) // self.accumulate
        return [
            [self.key(p) for p in mine[k * size : (k + 1) * size]] for k in range(self.accumulate)
        ]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        iteration = self.start
        while True:
            yield from self.iteration(iteration)
            iteration += 1


def collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack items into uint8 images (B, 3, S, S) and labels (B, S, S); the trainer converts
    them on the device (float32 0-255, int64), which moves a quarter of the bytes."""
    images, labels = zip(*items, strict=True)
    if len({tuple(image.shape) for image in images}) > 1:
        shapes = sorted({tuple(image.shape[1:]) for image in images})
        raise UserError(f"the adapter's train transform returned several sizes {shapes}")
    return torch.stack(images), torch.stack(labels)
