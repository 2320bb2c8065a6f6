"""PyTorch access to a prepared dataset: one image per item, at its original resolution."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ovrsisbench.data.layout import IGNORE_INDEX, PreparedDataset
from ovrsisbench.errors import UserError


def _check_lookup(lookup: np.ndarray) -> np.ndarray:
    if lookup.shape != (256,) or lookup.dtype != np.uint8 or lookup[IGNORE_INDEX] != IGNORE_INDEX:
        raise ValueError(
            f"lookup must be a (256,) uint8 array with lookup[{IGNORE_INDEX}] == {IGNORE_INDEX}, "
            f"got shape {lookup.shape} dtype {lookup.dtype}"
        )
    return lookup


class SegmentationDataset(Dataset):
    """Items ``{"image": uint8 (3, H, W), "label": uint8 (H, W), "stem": str}`` of one split.

    ``lookup`` maps native class ids to scored ids (``label = lookup[label]``); ``start`` skips
    the first stems of the split (to resume an interrupted evaluation).
    """

    def __init__(
        self,
        dataset: PreparedDataset,
        split: str,
        lookup: np.ndarray | None = None,
        start: int = 0,
    ) -> None:
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.dataset = dataset
        self.split = split
        self.lookup = None if lookup is None else _check_lookup(lookup)
        num_native = len(dataset.meta.classes)  # read_label guarantees values < num_native or 255
        if self.lookup is not None and np.array_equal(
            self.lookup[:num_native], np.arange(num_native)
        ):
            self.lookup = None  # identity on every value a label can hold: skip the pass
        self.stems = dataset.stems(split)[start:]

    def __len__(self) -> int:
        return len(self.stems)

    def __getitem__(self, index: int) -> dict:
        stem = self.stems[index]
        image, label = self.dataset.read_sample(stem)
        if self.lookup is not None:
            label = self.lookup[label]
        return {
            "image": torch.from_numpy(image).permute(2, 0, 1),  # a (3, H, W) view, no copy
            "label": torch.from_numpy(label),
            "stem": stem,
        }


def _original_message(exc: UserError) -> str:
    """The one-line message of a UserError, also when DataLoader re-raised it from a worker.

    A worker's error comes back as the same type whose message is the worker's traceback; its
    last line is ``<qualified type name>: <original message>``.
    """
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    last_line = text.strip().splitlines()[-1]
    return last_line.partition(f"{type(exc).__name__}: ")[2] or last_line


class _OneLineErrorLoader(DataLoader):
    """A DataLoader whose UserErrors keep their one-line message when raised in a worker.

    Workers are shut down as soon as iteration stops (error or early exit): left to the garbage
    collector after an error, torch's shutdown waits 5 s per worker.
    """

    def __iter__(self) -> Iterator:
        iterator = super().__iter__()
        try:
            yield from iterator
        except UserError as exc:
            raise type(exc)(_original_message(exc)) from None
        finally:
            shutdown_workers = getattr(iterator, "_shutdown_workers", None)
            if shutdown_workers is not None:
                shutdown_workers()


def make_loader(ds: SegmentationDataset, num_workers: int = 0) -> DataLoader:
    """A DataLoader yielding one item dict per image, in order (no batching, no pinning)."""
    return _OneLineErrorLoader(
        ds,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=False,
        persistent_workers=False,
    )


def read_ahead(ds: SegmentationDataset, threads: int = 2, depth: int = 4) -> Iterator[dict]:
    """Yield ``ds``'s items in order while up to ``threads * depth`` are read ahead in threads.

    Image decoding (PIL, zlib) releases the GIL, so threads overlap reading with the model's
    work without the inter-process copies of DataLoader workers. ``threads=0`` reads inline.
    """
    if threads == 0:
        yield from (ds[index] for index in range(len(ds)))
        return
    indices = iter(range(len(ds)))
    with ThreadPoolExecutor(threads, thread_name_prefix="ovrsisbench-read") as pool:
        pending: deque[Future] = deque(
            pool.submit(ds.__getitem__, i) for i in itertools.islice(indices, threads * depth)
        )
        try:
            while pending:
                item = pending.popleft().result()
                following = next(indices, None)
                if following is not None:
                    pending.append(pool.submit(ds.__getitem__, following))
                yield item
        finally:
            for future in pending:
                future.cancel()
