"""What a prepared dataset must contain, and a check of a prepared folder against it.

The tiling here is an independent, deliberately plain re-statement of the rules documented in the
README (``drop``, ``clamp``, ``pad``), used as the test oracle for the converters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IGNORE = 255


@dataclass
class ExpectedImage:
    """One source image as the converter must see it (before tiling)."""

    image: np.ndarray  # (H, W, 3) uint8, bands in file order (RGB; IRRG for Vaihingen)
    label: np.ndarray  # (H, W) uint8 native ids, 255 = unlabelled / off-palette
    split: str | None  # official split of the source image (None: only in "all")
    unmatched: int = 0  # pixels whose raw value/colour is in no palette (must be counted)
    source_label: str = ""  # path of the raw label file relative to the fixture root


@dataclass
class RawFixture:
    """A generated raw download: pass ``src`` to ``prepare``; ``expected`` is keyed by base stem."""

    src: Path
    expected: dict[str, ExpectedImage]
    notes: dict = field(default_factory=dict)

    @property
    def unmatched(self) -> int:
        return sum(item.unmatched for item in self.expected.values())


def _starts(length: int, tile: int, stride: int, edge: str) -> list[int]:
    if edge == "drop":
        return list(range(0, length - tile + 1, stride))
    if length <= tile:
        return [0]
    if edge == "clamp":
        starts = list(range(0, length - tile, stride))
        return starts + [length - tile] if starts[-1] != length - tile else starts
    if edge == "pad":
        return [i * stride for i in range(math.ceil((length - tile) / stride) + 1)]
    raise ValueError(edge)


def expected_tiles(
    expected: dict[str, ExpectedImage], tile: int | None, stride: int | None = None, edge="drop"
) -> dict[str, ExpectedImage]:
    """Cut every expected image as the converter must (``tile=None``: whole images)."""
    if tile is None:
        return dict(expected)
    stride = stride or tile
    out: dict[str, ExpectedImage] = {}
    for base, item in expected.items():
        height, width = item.label.shape
        for y0 in _starts(height, tile, stride, edge):
            for x0 in _starts(width, tile, stride, edge):
                image = np.zeros((tile, tile, 3), np.uint8)
                label = np.full((tile, tile), IGNORE, np.uint8)
                crop = item.label[y0 : y0 + tile, x0 : x0 + tile]
                label[: crop.shape[0], : crop.shape[1]] = crop
                image[: crop.shape[0], : crop.shape[1]] = item.image[y0 : y0 + tile, x0 : x0 + tile]
                stem = f"{base}_{y0}_{y0 + tile}_{x0}_{x0 + tile}"
                out[stem] = ExpectedImage(image, label, item.split)
    return out


def assert_prepared(data_root: Path, name: str, expected: dict[str, ExpectedImage]) -> dict:
    """Check every output image and label pixel and the split files; return the meta.json dict."""
    from ovrsisbench.data.layout import open_dataset

    dataset = open_dataset(data_root, name)
    assert dataset.stems("all") == sorted(expected)
    for stem, item in expected.items():
        image, label = dataset.read_sample(stem)
        np.testing.assert_array_equal(label, item.label, err_msg=f"label of {stem}")
        np.testing.assert_array_equal(image, item.image, err_msg=f"image of {stem}")
    splits = sorted({item.split for item in expected.values() if item.split})
    assert dataset.split_names() == ["all", *splits]
    for split in splits:
        want = sorted(stem for stem, item in expected.items() if item.split == split)
        assert dataset.stems(split) == want, split
    meta = dataset.meta.to_json()
    assert meta["splits"] == {
        "all": len(expected),
        **{s: sum(item.split == s for item in expected.values()) for s in splits},
    }
    return meta
