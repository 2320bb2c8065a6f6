"""A small SYNTHETIC two-domain benchmark (for the demo and tests), in the unified layout.

Labels are random rectangles and elliptic blobs; images paint each class with its own colour
and stripe texture plus noise, and the target domain is colour-shifted. Everything is integer
arithmetic on a seeded generator, so the files are byte-identical on every run and machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from ovrsisbench.data.layout import IGNORE_INDEX, DatasetWriter
from ovrsisbench.data.native import SYNTHETIC_CLASSES
from ovrsisbench.errors import UserError

SYNTHETIC_DATASETS: dict[str, list[str]] = {
    name: list(classes) for name, classes in SYNTHETIC_CLASSES.items()
}
"""Native classes of each generated dataset (from ``ovrsisbench.data.native``)."""
CONVERTER_VERSION = "1"


class _Look(NamedTuple):
    rgb: tuple[int, int, int]
    stripe_period: int  # pixels per stripe pair
    stripe_dir: tuple[int, int]  # (dy, dx) weights of the stripe coordinate


_LOOKS = {
    "background": _Look((120, 110, 95), 16, (1, 1)),
    "building": _Look((200, 70, 60), 6, (1, 0)),
    "road": _Look((135, 135, 140), 12, (0, 1)),
    "tree": _Look((40, 125, 45), 4, (1, 1)),
    "water": _Look((35, 70, 170), 10, (1, 0)),
    "car": _Look((230, 205, 40), 2, (0, 1)),
    "field": _Look((165, 190, 80), 8, (1, -1)),
}
_DOMAIN_OFFSET = {"synthetic-source": (0, 0, 0), "synthetic-target": (-20, -5, 20)}
_STRIPE_AMPLITUDE = 18
_NOISE = 12
_UNLABELLED_EVERY = 5  # every 5th image gets a small unlabelled (255) patch


def _shapes(size: int) -> list[tuple[int, int]]:
    return [(size, size), (size * 3 // 4, size * 5 // 4)]  # 64x64 and 48x80 for size 64


def _draw_label(rng: np.random.Generator, height: int, width: int, num_classes: int) -> np.ndarray:
    label = np.zeros((height, width), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(int(rng.integers(3, 8))):
        cls = int(rng.integers(1, num_classes))
        cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
        ry, rx = (
            int(rng.integers(height // 10, height // 3)),
            int(rng.integers(width // 10, width // 3)),
        )
        if rng.integers(2):
            mask = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        else:
            mask = (yy - cy) ** 2 * rx**2 + (xx - cx) ** 2 * ry**2 <= rx**2 * ry**2
        label[mask] = cls
    return label


def _mark_unlabelled(rng: np.random.Generator, label: np.ndarray) -> None:
    height, width = label.shape
    y, x = int(rng.integers(0, height - 4)), int(rng.integers(0, width - 4))
    label[y : y + 4, x : x + 4] = IGNORE_INDEX


def _render(
    rng: np.random.Generator, label: np.ndarray, classes: list[str], offset: tuple[int, int, int]
) -> np.ndarray:
    looks = [_LOOKS[name] for name in classes]
    ids = np.where(label == IGNORE_INDEX, 0, label)  # unlabelled pixels still get an appearance
    colours = np.array([look.rgb for look in looks], dtype=np.int32)[ids]
    periods = np.array([look.stripe_period for look in looks], dtype=np.int32)[ids]
    dirs = np.array([look.stripe_dir for look in looks], dtype=np.int32)[ids]
    yy, xx = np.mgrid[0 : label.shape[0], 0 : label.shape[1]]
    coord = yy * dirs[..., 0] + xx * dirs[..., 1] + 4 * label.shape[1]  # keep it non-negative
    stripes = np.where((coord * 2 // periods) % 2 == 0, _STRIPE_AMPLITUDE, -_STRIPE_AMPLITUDE)
    noise = rng.integers(-_NOISE, _NOISE + 1, size=(*label.shape, 3), dtype=np.int32)
    image = colours + stripes[..., None] + noise + np.array(offset, dtype=np.int32)
    return np.clip(image, 0, 255).astype(np.uint8)


def _write_dataset(directory: Path, name: str, seed: int, num_images: int, size: int) -> None:
    classes = SYNTHETIC_DATASETS[name]
    rng = np.random.default_rng([seed, list(SYNTHETIC_DATASETS).index(name)])
    writer = DatasetWriter(
        directory,
        name,
        classes,
        source={"kind": "synthetic", "seed": seed, "num_images": num_images, "size": size},
        converter_version=CONVERTER_VERSION,
        tiling={"scheme": "none"},
    )
    num_val = max(1, num_images // 4)
    shapes = _shapes(size)
    for index in range(num_images):
        height, width = shapes[1] if index % 3 == 2 else shapes[0]
        label = _draw_label(rng, height, width, len(classes))
        if index % _UNLABELLED_EVERY == 0:
            _mark_unlabelled(rng, label)
        image = _render(rng, label, classes, _DOMAIN_OFFSET[name])
        split = "val" if index >= num_images - num_val else "train"
        writer.add(f"img{index:04d}", image, label, split=split)
    writer.finalize()


def generate_synthetic_benchmark(
    data_root: Path, seed: int = 0, num_images: int = 24, size: int = 64
) -> list[str]:
    """Write the SYNTHETIC datasets of ``SYNTHETIC_DATASETS`` under ``data_root``; return names.

    Each has ``num_images`` images (a quarter, at least one, in ``val``; the rest in ``train``),
    mostly ``size`` x ``size`` with every third one ``3/4 size`` x ``5/4 size``.
    """
    if seed < 0 or num_images < 2 or size < 16:
        raise UserError(
            f"synthetic benchmark needs seed >= 0, num_images >= 2 and size >= 16, "
            f"got seed={seed}, num_images={num_images}, size={size}"
        )
    for name in SYNTHETIC_DATASETS:
        _write_dataset(Path(data_root) / name, name, seed, num_images, size)
    return list(SYNTHETIC_DATASETS)
