"""iSAID as downloaded for mmsegmentation: DOTA image PNGs plus iSAID colour masks, in zips.

Archives (``archives=True``, the layout of spec section 3; every zip holds an ``images/`` folder)::

    train/images/part1.zip            images/P0000.png, images/P0001.png
    train/images/part2.zip            images/P0002.png
    train/Semantic_masks/images.zip   images/P000{0,1,2}_instance_color_RGB.png
                                      + images/P0000_instance_id_RGB.png (distractor)
    train/Instance_masks/images.zip   images/P000{0,1,2}_instance_id_RGB.png (distractors)
    val/images/part1.zip              images/P0003.png
    val/Semantic_masks/images.zip     images/P0003_instance_color_RGB.png
    test/images/part1.zip             images/P0100.png (no mask anywhere: ignored)

``archives=False`` with ``layout="mmseg"`` (default) is the same with every zip unpacked where it
lies (``train/images/images/P0000.png``, ``train/Semantic_masks/images/...``); ``layout="devkit"``
is the iSAID devkit's flat folders: images and both masks side by side in ``{split}/images/``.

Mask colours: the mmseg palette (spec section 3); background (0, 0, 0) -> native 0, ship -> 1, ...,
harbor -> 15; any other colour -> 255 counted unmatched. Split = the train/val folder.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from .common import IGNORE, ExpectedImage, RawFixture

# native id i has this colour (mmseg iSAIDDataset palette, RGB; 0 = background)
PALETTE = (
    (0, 0, 0),
    (0, 0, 63),
    (0, 63, 63),
    (0, 63, 0),
    (0, 63, 127),
    (0, 63, 191),
    (0, 63, 255),
    (0, 127, 63),
    (0, 127, 127),
    (0, 0, 127),
    (0, 0, 191),
    (0, 0, 255),
    (0, 191, 127),
    (0, 127, 191),
    (0, 127, 255),
    (0, 100, 155),
)

# colours in no palette entry: near misses of harbor / ship, white, the BGR order of ship
OFF_PALETTE = ((0, 100, 154), (0, 0, 64), (255, 255, 255), (63, 0, 0), (1, 1, 1))

# (split, image archive, stem, height, width, off-palette pixels in its mask)
SAMPLES = (
    ("train", "part1", "P0000", 50, 70, True),
    ("train", "part1", "P0001", 20, 30, False),
    ("train", "part2", "P0002", 24, 64, True),
    ("val", "part1", "P0003", 45, 33, True),
)
TEST_SAMPLES = (("test", "part1", "P0100", 30, 30),)

COLOR_SUFFIX = "_instance_color_RGB.png"
ID_SUFFIX = "_instance_id_RGB.png"


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _mask(rng: np.random.Generator, height: int, width: int, off_palette: bool):
    """A colour mask (blocks of classes, every palette colour somewhere) and its native ids."""
    native = rng.integers(0, len(PALETTE), size=(height, width), dtype=np.uint8)
    native[:4, :4] = rng.integers(0, len(PALETTE))  # a uniform block, as real masks have
    raw = np.array(PALETTE, np.uint8)[native]
    unmatched = 0
    if off_palette:
        for k, colour in enumerate(OFF_PALETTE):
            raw[k + 5, 1 : 1 + k + 1] = colour  # 1..5 pixels
            native[k + 5, 1 : 1 + k + 1] = IGNORE
            unmatched += k + 1
    return raw, native, unmatched


def _instance_ids(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def write_raw(root: Path, *, archives: bool = False, layout: str = "mmseg") -> RawFixture:
    """Write the fixture under ``root`` (the ``--src`` folder) and say what prepare must give.

    ``layout`` ("mmseg" or "devkit") chooses the unpacked folders when ``archives`` is False.
    """
    if layout not in ("mmseg", "devkit"):
        raise ValueError(layout)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240604)
    # archive path (relative to root) -> {member name: bytes}
    zips: dict[str, dict[str, bytes]] = {}
    expected: dict[str, ExpectedImage] = {}
    image_bytes: dict[str, bytes] = {}

    def add(archive: str, name: str, data: bytes) -> str:
        zips.setdefault(archive, {})[f"images/{name}"] = data
        return f"{archive}/images/{name}"

    for split, part, stem, height, width, off_palette in SAMPLES:
        image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        raw, native, unmatched = _mask(rng, height, width, off_palette)
        image_bytes[stem] = _png(image)
        add(f"{split}/images/{part}.zip", f"{stem}.png", image_bytes[stem])
        member = add(f"{split}/Semantic_masks/images.zip", stem + COLOR_SUFFIX, _png(raw))
        ids = _png(_instance_ids(rng, height, width))
        add(f"{split}/Instance_masks/images.zip", stem + ID_SUFFIX, ids)
        expected[stem] = ExpectedImage(image, native, split, unmatched, member)
    # an instance-id mask among the semantic masks too (ignored wherever it lies)
    p0000 = expected["P0000"].label.shape
    add("train/Semantic_masks/images.zip", "P0000" + ID_SUFFIX, _png(_instance_ids(rng, *p0000)))
    for split, part, stem, height, width in TEST_SAMPLES:
        image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        add(f"{split}/images/{part}.zip", f"{stem}.png", _png(image))

    label_paths: dict[str, str] = {}
    for archive, members in zips.items():
        if archives:
            path = root / archive
            path.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
                zf.writestr("images/", b"")
                for name, data in members.items():
                    zf.writestr(name, data)
            continue
        for name, data in members.items():
            if layout == "mmseg":  # unzipped where the zip lies
                rel = f"{Path(archive).parent.as_posix()}/{name}"
            else:  # devkit: {split}/images/<file>
                rel = f"{archive.split('/')[0]}/images/{Path(name).name}"
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            if name.endswith(COLOR_SUFFIX):
                label_paths[Path(name).name[: -len(COLOR_SUFFIX)]] = rel
    if not archives:
        for stem, item in expected.items():
            item.source_label = label_paths[stem]
    notes = {"image_bytes": image_bytes, "archives": archives, "layout": layout}
    return RawFixture(root, expected, notes)
