"""VDD as downloaded: ``VDD/{train,val,test}/{src,gt}``, ``src/<name>.JPG``, ``gt/<name>.png``.

All three splits are labelled. Labels are mode "L" index PNGs, values 0..6 = native ids; off-table
values (7, 100) become 255 and are counted as unmatched. The archive form is ``VDD.zip`` with the
extra nesting users report (``VDD/VDD/{train,val,test}/...``). Images are JPEGs with the
upper-case ``.JPG`` extension; untiled, their bytes are copied. The writer is shared with UDD5
(:class:`.index_png.SrcGt`).
"""

from __future__ import annotations

from pathlib import Path

from .common import RawFixture
from .index_png import SrcGt

NUM_CLASSES = 7
INVALID = (7, 100)

# (split, name, height, width): different sizes, names unique across the splits
FILES = (
    ("train", "DJI_0012", 40, 50),
    ("train", "DJI_0035", 30, 44),
    ("val", "DJI_0101", 48, 36),
    ("val", "DJI_0117", 33, 33),
    ("test", "DJI_0240", 52, 60),
    ("test", "DJI_0255", 24, 40),
)

FORMAT = SrcGt("VDD", FILES, NUM_CLASSES, INVALID, seed=7, zip_prefix="VDD/VDD")
ARCHIVE = FORMAT.archive


def write_raw(root: Path, *, archives: bool = False) -> RawFixture:
    """Write the fixture under ``root`` (``archives``: as ``VDD.zip`` holding ``VDD/VDD/...``)."""
    return FORMAT.write_raw(root, archives=archives)
