"""Colours of scored classes, and label maps as indexed (palette) PNG files.

A scored class takes the dataset's own colour (``DatasetSpec.palette``) of the first native class
it covers, so saved predictions look like the dataset's colour-coded labels; datasets without a
palette (DLRSD's labels are grey ids, the synthetic demo) get a fixed sequence of distinct hues.
Ignored pixels (255) are black.
"""

from __future__ import annotations

import colorsys
import io

import numpy as np
from PIL import Image

from ovrsisbench.data.registry import REGISTRY
from ovrsisbench.metrics import IGNORE_INDEX
from ovrsisbench.protocol import Vocabulary

IGNORED_COLOUR = (0, 0, 0)
_GOLDEN_RATIO = 0.618033988749895


def default_colours(count: int) -> list[tuple[int, int, int]]:
    """``count`` distinct, saturated colours: hues a golden-ratio step apart (deterministic)."""
    colours = []
    for index in range(count):
        hue = (0.05 + index * _GOLDEN_RATIO) % 1.0
        value = 0.95 if index % 2 == 0 else 0.75  # neighbours in hue also differ in brightness
        red, green, blue = colorsys.hsv_to_rgb(hue, 0.8, value)
        colours.append((round(red * 255), round(green * 255), round(blue * 255)))
    return colours


def class_colours(vocabulary: Vocabulary) -> list[tuple[int, int, int]]:
    """The RGB colour of each scored class of ``vocabulary``, in score order."""
    spec = REGISTRY.get(vocabulary.dataset)
    if spec is None or spec.palette is None:
        return default_colours(len(vocabulary.classes))
    return [tuple(spec.palette[cls.native_ids[0]]) for cls in vocabulary.classes]


def palette_bytes(colours: list[tuple[int, int, int]]) -> list[int]:
    """A PIL palette (768 values): ``colours`` first, the ignore index black, the rest black."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(colours)] = np.asarray(colours, dtype=np.uint8).reshape(-1, 3)
    table[IGNORE_INDEX] = IGNORED_COLOUR
    return table.reshape(-1).tolist()


def indexed_png(label_map: np.ndarray, colours: list[tuple[int, int, int]]) -> bytes:
    """An (H, W) uint8 map of class indices (255 = ignored) as indexed PNG bytes: decoding it
    (``np.asarray(Image.open(...))``) gives back exactly ``label_map``."""
    if label_map.dtype != np.uint8 or label_map.ndim != 2:
        raise ValueError(
            f"expected an (H, W) uint8 label map, got {label_map.dtype} {label_map.shape}"
        )
    image = Image.fromarray(label_map, mode="P")
    image.putpalette(palette_bytes(colours))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def colourise(label_map: np.ndarray, colours: list[tuple[int, int, int]]) -> np.ndarray:
    """An (H, W, 3) uint8 RGB picture of a class-index map (255 black)."""
    table = np.asarray(palette_bytes(colours), dtype=np.uint8).reshape(256, 3)
    return table[label_map]
