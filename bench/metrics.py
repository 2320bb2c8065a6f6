"""Confusion-matrix accumulation throughput: ovrsisbench vs a plain np.bincount baseline
(and torchmetrics' multiclass confusion matrix when installed), measured side by side on the
same data in one run.

Usage: python bench/metrics.py [--images 8] [--size 1024] [--classes 15] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from tabulate import tabulate

from ovrsisbench.metrics import ConfusionMatrix

IGNORE = 255


def numpy_baseline(preds: list[np.ndarray], labels: list[np.ndarray], k: int) -> np.ndarray:
    """The textbook way: mask ignored pixels, then one bincount of label * K + pred."""
    total = np.zeros(k * k, dtype=np.int64)
    for pred, label in zip(preds, labels, strict=True):
        valid = label != IGNORE
        total += np.bincount(label[valid].astype(np.int64) * k + pred[valid], minlength=k * k)
    return total.reshape(k, k)


def ours(preds: list[np.ndarray], labels: list[np.ndarray], k: int) -> np.ndarray:
    confusion = ConfusionMatrix(k)
    for pred, label in zip(preds, labels, strict=True):
        confusion.update(pred, label)
    return confusion.matrix


def torchmetrics_cm(preds: list[np.ndarray], labels: list[np.ndarray], k: int) -> np.ndarray:
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    total = torch.zeros((k, k), dtype=torch.int64)
    for pred, label in zip(preds, labels, strict=True):
        total += multiclass_confusion_matrix(
            torch.from_numpy(pred),
            torch.from_numpy(label).long(),
            k,
            ignore_index=IGNORE,
            validate_args=False,
        )
    return total.numpy()


def best_seconds(fn: Callable[[], np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    k, rng = args.classes, np.random.default_rng(0)
    shape = (args.size, args.size)
    labels = []
    for _ in range(args.images):
        label = rng.integers(0, k, shape, dtype=np.uint8)
        label[: args.size // 10] = IGNORE  # a band of unlabelled pixels
        labels.append(label)
    pixels = args.images * args.size * args.size
    contenders: list[tuple[str, Callable]] = [
        ("np.bincount baseline", numpy_baseline),
        ("ovrsisbench", ours),
    ]
    try:
        import torchmetrics  # noqa: F401

        contenders.append(("torchmetrics", torchmetrics_cm))
    except ImportError:
        pass

    rows = []
    for dtype in (np.uint8, np.int64):  # uint8: what the evaluation engine feeds; int64: argmax
        preds = [rng.integers(0, k, shape).astype(dtype) for _ in labels]
        timings = {}
        reference = None
        for name, fn in contenders:
            seconds, matrix = best_seconds(partial(fn, preds, labels, k), args.repeats)
            reference = matrix if reference is None else reference
            assert np.array_equal(matrix, reference), f"{name} disagrees with the baseline"
            timings[name] = seconds
        base = timings["np.bincount baseline"]
        for name, seconds in timings.items():
            rows.append(
                [
                    np.dtype(dtype).name,
                    name,
                    f"{pixels / seconds / 1e6:.1f}",
                    f"{base / seconds:.2f}",
                ]
            )
    print(
        f"{args.images} images of {args.size}x{args.size}, K={k}, best of {args.repeats}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(tabulate(rows, headers=["pred dtype", "implementation", "Mpixel/s", "x baseline"]))


if __name__ == "__main__":
    main()
