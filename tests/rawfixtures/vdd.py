"""VDD as downloaded: ``VDD/{train,val,test}/{src,gt}``, ``src/<name>.JPG``, ``gt/<name>.png``.

All three splits are labelled. Labels are mode "L" index PNGs, values 0..6 = native ids; off-table
values (7, 100) become 255 and are counted as unmatched. The archive form is ``VDD.zip`` with the
extra nesting users report (``VDD/VDD/{train,val,test}/...``). Images are JPEGs with the
upper-case ``.JPG`` extension; untiled, their bytes are copied.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .common import ExpectedImage, RawFixture
from .index_png import add_invalid, label_map, pack_zip, random_image, write_index_png, write_jpeg

NUM_CLASSES = 7
INVALID = (7, 100)
ARCHIVE = "VDD.zip"
ARCHIVE_PREFIX = "VDD/VDD"

# (split, name, height, width): different sizes, names unique across the splits
FILES = [
    ("train", "DJI_0012", 40, 50),
    ("train", "DJI_0035", 30, 44),
    ("val", "DJI_0101", 48, 36),
    ("val", "DJI_0117", 33, 33),
    ("test", "DJI_0240", 52, 60),
    ("test", "DJI_0255", 24, 40),
]


def _write(base: Path) -> tuple[dict[str, ExpectedImage], dict[str, bytes]]:
    rng = np.random.default_rng(7)
    expected: dict[str, ExpectedImage] = {}
    image_bytes: dict[str, bytes] = {}
    for split, stem, height, width in FILES:
        src = base / "VDD" / split / "src" / f"{stem}.JPG"
        gt = base / "VDD" / split / "gt" / f"{stem}.png"
        image = write_jpeg(src, random_image(rng, height, width))
        native = label_map(rng, height, width, NUM_CLASSES)
        raw, label, unmatched = add_invalid(rng, native, INVALID)
        write_index_png(gt, raw)
        rel = gt.relative_to(base).as_posix()
        expected[stem] = ExpectedImage(image, label, split, unmatched, rel)
        image_bytes[stem] = src.read_bytes()
    return expected, image_bytes


def write_raw(root: Path, *, archives: bool = False) -> RawFixture:
    """Write the fixture under ``root`` (``archives``: as ``VDD.zip`` holding ``VDD/VDD/...``)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if not archives:
        expected, image_bytes = _write(root)
    else:
        with tempfile.TemporaryDirectory() as staging:
            expected, image_bytes = _write(Path(staging))
            pack_zip(root / ARCHIVE, Path(staging) / "VDD", ARCHIVE_PREFIX)
        for item in expected.values():  # VDD/train/gt/x.png -> VDD.zip/VDD/VDD/train/gt/x.png
            item.source_label = f"{ARCHIVE}/VDD/{item.source_label}"
    notes = {"image_name": {stem: f"{stem}.JPG" for stem in expected}, "image_bytes": image_bytes}
    return RawFixture(root, expected, notes)
