"""DLRSD as downloaded: UC Merced RGB TIFFs plus the separate DLRSD label PNGs.

Layout (``archives=False``)::

    UCMerced_LandUse/Images/<scene>/<scene>NN.tif     3-band uint8 TIFF, no georeferencing
    DLRSD/Images/<scene>/<scene>NN.png                label: mode L or P (values 0..17) or RGB

``archives=True`` packs ``UCMerced_LandUse/`` into ``UCMerced_LandUse.zip`` and ``DLRSD/`` into
``DLRSD.zip`` (members keep the top folder, as the official UCM zip does) and removes the folders;
``source_label`` is then the logical path ``DLRSD.zip/DLRSD/Images/<scene>/<scene>NN.png``.

Label rules (spec section 2, lead's conventions): index value 0 -> 255 (unlabelled, not counted),
1..17 -> value - 1, any other value -> 255 counted unmatched; an RGB label maps the DLRSD palette
colours to ids and counts every other colour as unmatched. Split by the image number: 00-79 train,
80-99 val. An image without a label is ignored; non-image/label files are distractors.
"""

from __future__ import annotations

import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from .common import IGNORE, ExpectedImage, RawFixture

IMAGES_DIR = "UCMerced_LandUse/Images"
LABELS_DIR = "DLRSD/Images"
IMAGES_ZIP = "UCMerced_LandUse.zip"
LABELS_ZIP = "DLRSD.zip"
UCM_MD5 = "5b7ec56793786b6dc8a908e8854ac0e4"  # spec section 2 (the official UCM zip)

# raw id r (1..17) has native id r - 1 and this colour (spec section 2 table, raw id order)
PALETTE = (
    (166, 202, 240),
    (128, 128, 0),
    (0, 0, 128),
    (255, 0, 0),
    (0, 128, 0),
    (128, 0, 0),
    (255, 233, 233),
    (160, 160, 164),
    (0, 128, 128),
    (90, 87, 255),
    (255, 255, 0),
    (255, 192, 0),
    (0, 0, 255),
    (255, 0, 192),
    (128, 0, 128),
    (0, 255, 0),
    (0, 255, 255),
)

# colours in no palette entry (a near miss of airplane, arbitrary ones)
OFF_PALETTE = ((166, 202, 241), (10, 20, 30), (255, 255, 255), (1, 128, 0))

# (scene, number, height, width, label mode or None for "no label file")
SAMPLES = (
    ("airplane", 0, 24, 24, "L"),
    ("airplane", 1, 24, 21, "P"),
    ("airplane", 85, 24, 24, "RGB"),
    ("harbor", 0, 24, 24, "L"),
    ("harbor", 85, 24, 24, "P"),
    ("tenniscourt", 1, 24, 24, None),
    ("tenniscourt", 99, 21, 24, "L"),
)

# raw index values that are no class (value 255 included: it is not "unlabelled" in DLRSD)
INVALID_VALUES = (18, 200, 255)


def _write_tiff(path: Path, image: np.ndarray) -> None:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    height, width, _ = image.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            height=height,
            width=width,
            count=3,
            dtype="uint8",
            photometric="RGB",
        ) as dst:
            dst.write(image.transpose(2, 0, 1))


def _index_palette() -> list[int]:
    """A PNG palette like a colour-coded index label: index r shows raw id r's colour."""
    colours = [(0, 0, 0), *PALETTE]
    flat = [c for colour in colours for c in colour]
    return flat + [0] * (768 - len(flat))


def _index_label(rng: np.random.Generator, height: int, width: int, invalid: bool):
    """Raw values 0..17 (plus some invalid ones) and the native labels they must become."""
    raw = rng.integers(0, 18, size=(height, width), dtype=np.uint8)
    if invalid:
        for k, value in enumerate(INVALID_VALUES):
            raw[k + 1, 2 : 2 + 2 * (k + 1)] = value  # 2, 4, 6 pixels
    native = np.full(raw.shape, IGNORE, np.uint8)
    labelled = (raw >= 1) & (raw <= 17)
    native[labelled] = raw[labelled] - 1
    unmatched = int((raw > 17).sum())
    return raw, native, unmatched


def _colour_label(rng: np.random.Generator, height: int, width: int):
    native = rng.integers(0, len(PALETTE), size=(height, width), dtype=np.uint8)
    raw = np.array(PALETTE, np.uint8)[native]
    unmatched = 0
    for k, colour in enumerate(OFF_PALETTE):
        raw[2 * k + 3, 5 : 5 + k + 1] = colour  # 1, 2, 3, 4 pixels
        native[2 * k + 3, 5 : 5 + k + 1] = IGNORE
        unmatched += k + 1
    return raw, native, unmatched


def _zip_folder(root: Path, folder: str, archive: str) -> None:
    """Pack ``root/folder`` into ``root/archive`` (members ``folder/...``, dirs included)."""
    with zipfile.ZipFile(root / archive, "w", zipfile.ZIP_DEFLATED) as zf:
        base = root / folder
        zf.write(base, folder)
        for path in sorted(base.rglob("*")):
            zf.write(path, path.relative_to(root).as_posix())
    shutil.rmtree(base)


def write_raw(root: Path, *, archives: bool = False) -> RawFixture:
    """Write the fixture under ``root`` (the ``--src`` folder) and say what prepare must give."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240603)
    expected: dict[str, ExpectedImage] = {}
    image_bytes: dict[str, bytes] = {}
    for scene, number, height, width, mode in SAMPLES:
        stem = f"{scene}{number:02d}"
        image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        image_path = root / IMAGES_DIR / scene / f"{stem}.tif"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        _write_tiff(image_path, image)
        if mode is None:
            continue
        label_rel = f"{LABELS_DIR}/{scene}/{stem}.png"
        label_path = root / label_rel
        label_path.parent.mkdir(parents=True, exist_ok=True)
        if mode == "RGB":
            raw, native, unmatched = _colour_label(rng, height, width)
            Image.fromarray(raw).save(label_path)
        else:
            raw, native, unmatched = _index_label(rng, height, width, invalid=stem != "harbor00")
            picture = Image.fromarray(raw)  # mode L
            if mode == "P":
                picture.putpalette(_index_palette())  # mode P, same indices
            picture.save(label_path)
        image_bytes[stem] = image_path.read_bytes()
        split = "train" if number < 80 else "val"
        expected[stem] = ExpectedImage(image, native, split, unmatched, label_rel)
    # distractors: a thumbnail cache, a readme, a non-label file next to the labels
    (root / IMAGES_DIR / "harbor" / "Thumbs.db").write_bytes(b"\0" * 16)
    (root / "UCMerced_LandUse" / "readme.txt").write_text("UC Merced Land Use (fixture)\n")
    (root / "DLRSD" / "README.txt").write_text("DLRSD labels (fixture)\n")
    notes = {"image_bytes": image_bytes, "archives": archives}
    if archives:
        _zip_folder(root, "UCMerced_LandUse", IMAGES_ZIP)
        _zip_folder(root, "DLRSD", LABELS_ZIP)
        notes["label_archive"] = LABELS_ZIP
        for item in expected.values():  # DLRSD/Images/... -> DLRSD.zip/DLRSD/Images/...
            item.source_label = f"{LABELS_ZIP}/{item.source_label}"
    return RawFixture(root, expected, notes)
