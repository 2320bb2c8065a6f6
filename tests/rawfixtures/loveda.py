"""LoveDA as downloaded from Zenodo: ``Train.zip``, ``Val.zip``, ``Test.zip``.

Each archive holds its top folder: ``Train/{Urban,Rural}/{images_png,masks_png}/<id>.png`` (same
for ``Val``); ``Test/{Urban,Rural}/images_png`` has no masks and must be ignored. Ids are integers,
unique across Urban/Rural and Train/Val. Masks are mode "L" PNGs with raw values 0..7 = native ids;
0 is no-data, which stays the native class 0 (NOT 255, not unmatched). Off-table values (8, and
255, which is not a LoveDA value either: the spec table has no 255, so it counts as unmatched like
any other unknown value) become 255 and are counted. Images are RGB PNGs; untiled, bytes copied.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import ExpectedImage, RawFixture
from .index_png import (
    Written,
    add_invalid,
    label_map,
    random_image,
    write_download,
    write_index_png,
    write_png_rgb,
)

NUM_CLASSES = 8
INVALID = (8, 255)
ARCHIVES = ("Train.zip", "Val.zip", "Test.zip")

# (top folder, area, id, height, width); the split is the lower-cased top folder
FILES = [
    ("Train", "Rural", "10", 48, 40),
    ("Train", "Rural", "11", 36, 52),
    ("Train", "Urban", "1400", 64, 64),
    ("Val", "Rural", "2600", 40, 72),
    ("Val", "Urban", "3600", 56, 33),
]
TEST_FILES = [("Urban", "4500", 32, 32), ("Rural", "5500", 40, 24)]


def _write(base: Path) -> Written:
    rng = np.random.default_rng(8)
    expected: dict[str, ExpectedImage] = {}
    image_bytes: dict[str, bytes] = {}
    for top, area, stem, height, width in FILES:
        image_path = base / top / area / "images_png" / f"{stem}.png"
        mask_path = base / top / area / "masks_png" / f"{stem}.png"
        image = random_image(rng, height, width)
        write_png_rgb(image_path, image)
        native = label_map(rng, height, width, NUM_CLASSES)
        native[-3:, :] = 0  # a no-data strip along the border, as in the real tiles
        raw, label, unmatched = add_invalid(rng, native, INVALID)
        write_index_png(mask_path, raw)
        rel = mask_path.relative_to(base).as_posix()
        expected[stem] = ExpectedImage(image, label, top.lower(), unmatched, rel)
        image_bytes[stem] = image_path.read_bytes()
    for area, stem, height, width in TEST_FILES:  # unlabelled: ignored by the converter
        test_image = base / "Test" / area / "images_png" / f"{stem}.png"
        write_png_rgb(test_image, random_image(rng, height, width))
    return expected, image_bytes


def write_raw(root: Path, *, archives: bool = False) -> RawFixture:
    """Write the fixture under ``root`` (``archives``: as Train.zip, Val.zip and Test.zip)."""
    prefixes = {name.removesuffix(".zip"): name.removesuffix(".zip") for name in ARCHIVES}
    return write_download(root, _write, archives=archives, prefixes=prefixes, image_suffix=".png")
