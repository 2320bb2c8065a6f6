"""A raw UAVid download (spec section 6), tiny and synthetic.

Layout (``archives=False``; ``nested=True`` puts it under ``uavid_v1.5_official_release_image/``)::

    uavid_train/seq1/{Images,Labels}/{000000,000100}.png
    uavid_train/seq2/{Images,Labels}/{000000,000100}.png
    uavid_val/seq3/{Images,Labels}/{000000,000100}.png
    uavid_test/seq4/Images/{000000,000100}.png          (no labels: ignored)

``archives=True`` writes one zip ``uavid_v1.5_official_release_image.zip`` whose top folder
``uavid_v1.5_official_release_image/`` holds the three split folders. Images are RGB PNGs, labels
RGB colour PNGs using all 8 official colours plus off-palette colours (-> 255, counted).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from .common import ExpectedImage, RawFixture
from .isprs import Download, class_map, colour_labels

RELEASE = "uavid_v1.5_official_release_image"

# Official colours indexed by native (V1) id: clutter, building, road, tree, low vegetation,
# moving car, static car, human (spec section 6, right-hand columns).
UAVID_COLOURS = np.array(
    [
        [0, 0, 0],
        [128, 0, 0],
        [128, 64, 128],
        [0, 128, 0],
        [128, 128, 0],
        [64, 0, 128],
        [192, 0, 192],
        [64, 64, 0],
    ],
    np.uint8,
)
# near misses of real colours and a plain white: none is a class (never clutter)
OFF_PALETTE = np.array([[255, 255, 255], [128, 0, 1], [64, 64, 64], [0, 0, 1]], np.uint8)

FRAMES = ("000000", "000100")
# (split, sequence, height, width, off-palette pixels per frame)
SEQUENCES = (
    ("train", 1, 64, 80, (6, 0)),
    ("train", 2, 48, 72, (3, 2)),
    ("val", 3, 56, 60, (0, 5)),
)
TEST_SEQUENCE = (4, 40, 50)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_uavid(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    """Reference decoding of a UAVid colour label: (native ids with 255, unmatched count)."""
    out = np.full(rgb.shape[:2], 255, np.uint8)
    known = np.zeros(rgb.shape[:2], bool)
    for index, colour in enumerate(UAVID_COLOURS):
        hit = np.all(rgb == colour, axis=-1)
        out[hit] = index
        known |= hit
    return out, int((~known).sum())


def write_raw(root: Path, *, archives: bool = False, nested: bool = False) -> RawFixture:
    """Write the fixture under ``root``; ``expected`` is keyed by ``{split}_seq{N}_{frame}``."""
    out = Download(root, archives)
    prefix = f"{RELEASE}/" if archives or nested else ""
    archive = f"{RELEASE}.zip"
    expected: dict[str, ExpectedImage] = {}
    for index, (split, seq, height, width, offs) in enumerate(SEQUENCES):
        for number, (frame, off) in enumerate(zip(FRAMES, offs, strict=True)):
            rng = np.random.default_rng(6000 + 10 * index + number)
            image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            ids = class_map(rng, height, width, len(UAVID_COLOURS))
            rgb, label, unmatched = colour_labels(
                rng, ids, UAVID_COLOURS, OFF_PALETTE, black=None, off=off
            )
            folder = f"{prefix}uavid_{split}/seq{seq}"
            out.add(archive, "", f"{folder}/Images/{frame}.png", _png(image))
            source = out.add(archive, "", f"{folder}/Labels/{frame}.png", _png(rgb))
            stem = f"{split}_seq{seq}_{frame}"
            expected[stem] = ExpectedImage(image, label, split, unmatched, source)
    seq, height, width = TEST_SEQUENCE
    rng = np.random.default_rng(6999)
    for frame in FRAMES:
        image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        out.add(archive, "", f"{prefix}uavid_test/seq{seq}/Images/{frame}.png", _png(image))
    out.close()
    notes = {"archive": archive if archives else None, "prefix": prefix}
    return RawFixture(Path(root), expected, notes)
