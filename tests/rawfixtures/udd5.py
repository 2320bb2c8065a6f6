"""UDD5 as downloaded: ``UDD5/{train,val}/{src,gt}``, ``src/<id>.JPG``, ``gt/<id>.png``.

Labels are mode "P" index PNGs carrying the UDD5 visualisation palette (spec section 7); values
0..4 are the native ids. Off-table values (5, 9) must become 255 and be counted as unmatched.
Their palette entries are black, the colour of "Other" (4): a converter that wrongly reads the
labels through ``.convert("RGB")`` would turn them into class 4 and fail the check.
Images are JPEGs with the upper-case ``.JPG`` extension; untiled, their bytes are copied.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .common import ExpectedImage, RawFixture
from .index_png import add_invalid, label_map, pack_zip, random_image, write_index_png, write_jpeg

NUM_CLASSES = 5
PALETTE = [(107, 142, 35), (102, 102, 156), (128, 64, 128), (0, 0, 142), (0, 0, 0)]
INVALID = (5, 9)
ARCHIVE = "UDD5.zip"

# (split, id, height, width): different sizes, ids unique across the splits
FILES = [
    ("train", "000001", 40, 56),
    ("train", "000007", 48, 48),
    ("train", "000023", 33, 70),
    ("val", "000061", 64, 40),
    ("val", "000075", 50, 37),
]


def _write(base: Path) -> tuple[dict[str, ExpectedImage], dict[str, bytes]]:
    rng = np.random.default_rng(5)
    expected: dict[str, ExpectedImage] = {}
    image_bytes: dict[str, bytes] = {}
    for split, stem, height, width in FILES:
        src = base / "UDD5" / split / "src" / f"{stem}.JPG"
        gt = base / "UDD5" / split / "gt" / f"{stem}.png"
        image = write_jpeg(src, random_image(rng, height, width))
        native = label_map(rng, height, width, NUM_CLASSES)
        raw, label, unmatched = add_invalid(rng, native, INVALID)
        write_index_png(gt, raw, PALETTE)
        rel = gt.relative_to(base).as_posix()
        expected[stem] = ExpectedImage(image, label, split, unmatched, rel)
        image_bytes[stem] = src.read_bytes()
    return expected, image_bytes


def write_raw(root: Path, *, archives: bool = False) -> RawFixture:
    """Write the fixture under ``root`` (``archives``: as ``UDD5.zip`` holding ``UDD5/...``)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if not archives:
        expected, image_bytes = _write(root)
    else:
        with tempfile.TemporaryDirectory() as staging:
            expected, image_bytes = _write(Path(staging))
            pack_zip(root / ARCHIVE, Path(staging) / "UDD5", "UDD5")
        for item in expected.values():
            item.source_label = f"{ARCHIVE}/{item.source_label}"
    notes = {"image_name": {stem: f"{stem}.JPG" for stem in expected}, "image_bytes": image_bytes}
    return RawFixture(root, expected, notes)
