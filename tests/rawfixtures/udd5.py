"""UDD5 as downloaded: ``UDD5/{train,val}/{src,gt}``, ``src/<id>.JPG``, ``gt/<id>.png``.

Labels are mode "P" index PNGs carrying the UDD5 visualisation palette (spec section 7); values
0..4 are the native ids. Off-table values (5, 9) must become 255 and be counted as unmatched.
Their palette entries are black, the colour of "Other" (4): a converter that wrongly reads the
labels through ``.convert("RGB")`` would turn them into class 4 and fail the check.
Images are JPEGs with the upper-case ``.JPG`` extension; untiled, their bytes are copied.
The archive form is ``UDD5.zip`` holding ``UDD5/...``. The writer is shared with VDD
(:class:`.index_png.SrcGt`).
"""

from __future__ import annotations

from pathlib import Path

from .common import RawFixture
from .index_png import SrcGt

NUM_CLASSES = 5
PALETTE = ((107, 142, 35), (102, 102, 156), (128, 64, 128), (0, 0, 142), (0, 0, 0))
INVALID = (5, 9)

# (split, id, height, width): different sizes, ids unique across the splits
FILES = (
    ("train", "000001", 40, 56),
    ("train", "000007", 48, 48),
    ("train", "000023", 33, 70),
    ("val", "000061", 64, 40),
    ("val", "000075", 50, 37),
)

FORMAT = SrcGt("UDD5", FILES, NUM_CLASSES, INVALID, seed=5, palette=PALETTE)
ARCHIVE = FORMAT.archive


def write_raw(root: Path, *, archives: bool = False) -> RawFixture:
    """Write the fixture under ``root`` (``archives``: as ``UDD5.zip`` holding ``UDD5/...``)."""
    return FORMAT.write_raw(root, archives=archives)
