"""Raw ISPRS Potsdam and Vaihingen downloads (spec sections 4 and 5), tiny and synthetic.

Both datasets share the ISPRS colour code; a tile is drawn once and written as every file the
official download holds for it (image, distractors, full and eroded colour labels), so the
``labels`` argument only chooses which label variant ``expected`` describes.

Potsdam (``archives=True`` file names; ``archives=False`` extracts each zip, flat zips into a
folder named after the zip)::

    2_Ortho_RGB.zip                2_Ortho_RGB/top_potsdam_{r}_{c}_RGB.{tif,tfw}  (EPSG:32633)
    3_Ortho_IRRG.zip               3_Ortho_IRRG/top_potsdam_{r}_{c}_IRRG.{tif,tfw}  (distractor)
    1_DSM.zip                      1_DSM/dsm_potsdam_{rr}_{cc}.tif  (distractor)
    5_Labels_all.zip               top_potsdam_{r}_{c}_label.tif  (labels="full")
    5_Labels_all_noBoundary.zip    top_potsdam_{r}_{c}_label_noBoundary.tif  (labels="eroded")
    5_Labels_for_participants.zip  top_potsdam_{r}_{c}_label.tif  (train tiles; other content)
    5_Labels_for_participants_no_Boundary.zip
                                   top_potsdam_{r}_{c}_label_noBoundary.tif  (the same, eroded)

Vaihingen::

    ISPRS_semantic_labeling_Vaihingen.zip   top/top_mosaic_09cm_area{N}.tif (IRRG), dsm/...,
                                            gts_for_participants/top_mosaic_09cm_area{N}.tif,
                                            gts_eroded_for_participants/
                                            top_mosaic_09cm_area{N}_noBoundary.tif
                                            (first area only; DIFFERENT from the COMPLETE labels)
    ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip         top_mosaic_09cm_area{N}.tif
    ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip
                                                          top_mosaic_09cm_area{N}_noBoundary.tif
"""

from __future__ import annotations

import io
import math
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .common import IGNORE, ExpectedImage, RawFixture

# ISPRS colour code in native (ISPRS) order: impervious, building, low vegetation, tree, car,
# clutter.
ISPRS_COLOURS = np.array(
    [[255, 255, 255], [0, 0, 255], [0, 255, 255], [0, 255, 0], [255, 255, 0], [255, 0, 0]],
    np.uint8,
)
BOUNDARY = (0, 0, 0)  # -> 255, not counted as unmatched
# off-palette colours reported in real tiles (spec section 4 pitfalls) -> 255, counted unmatched
OFF_PALETTE = np.array([[252, 255, 0], [9, 222, 221], [225, 227, 227]], np.uint8)

POTSDAM_TRAIN = set(
    "2_10 2_11 2_12 3_10 3_11 3_12 4_10 4_11 4_12 5_10 5_11 5_12 6_10 6_11 6_12 6_7 6_8 6_9 "
    "7_10 7_11 7_12 7_7 7_8 7_9".split()
)
POTSDAM_VAL = set("5_15 6_15 6_13 3_13 4_14 6_14 5_14 2_13 4_15 2_14 5_13 4_13 3_14 7_13".split())
VAIHINGEN_TRAIN = set(
    "area1 area11 area13 area15 area17 area21 area23 area26 area28 area3 area30 area32 area34 "
    "area37 area5 area7".split()
)
VAIHINGEN_VAL = set(
    "area6 area24 area35 area16 area14 area22 area10 area4 area2 area20 area8 area31 area33 "
    "area27 area38 area12 area29".split()
)

LABEL_VARIANTS = ("full", "eroded")
POTSDAM_CRS = "EPSG:32633"
POTSDAM_GSD = 0.05


@dataclass(frozen=True)
class _Tile:
    tile_id: str  # "2_10" (Potsdam) or "area1" (Vaihingen)
    height: int
    width: int
    off_full: int  # off-palette pixels in the full label
    off_eroded: int  # off-palette pixels in the eroded label
    black_full: int = 6  # stray black pixels in the full label (eroded: every class boundary)


POTSDAM_TILES = (
    _Tile("2_10", 70, 90, off_full=7, off_eroded=3),
    _Tile("2_13", 64, 77, off_full=0, off_eroded=5),
    _Tile("3_14", 80, 66, off_full=4, off_eroded=0),
)
VAIHINGEN_TILES = (
    _Tile("area1", 72, 58, off_full=5, off_eroded=2),
    _Tile("area6", 61, 80, off_full=0, off_eroded=4),
    _Tile("area2", 80, 69, off_full=3, off_eroded=0),
)


def _split(tile_id: str, train: set[str], val: set[str]) -> str:
    assert (tile_id in train) != (tile_id in val), tile_id
    return "train" if tile_id in train else "val"


# --- label drawing ---------------------------------------------------------------------------


def class_map(rng: np.random.Generator, height: int, width: int, classes: int) -> np.ndarray:
    """Blocky (H, W) native ids in which every class occurs (a 3x3 patch each at least)."""
    cell = 8
    cells = rng.integers(0, classes, size=(math.ceil(height / cell), math.ceil(width / cell)))
    ids = np.repeat(np.repeat(cells, cell, axis=0), cell, axis=1)[:height, :width]
    ids = ids.astype(np.uint8)
    for k in range(classes):
        ids[2 + 5 * k : 5 + 5 * k, 2:5] = k
    return ids


def _boundary(ids: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of another class (both sides of every class edge)."""
    mask = np.zeros(ids.shape, bool)
    across = ids[:, 1:] != ids[:, :-1]
    mask[:, 1:] |= across
    mask[:, :-1] |= across
    down = ids[1:] != ids[:-1]
    mask[1:] |= down
    mask[:-1] |= down
    return mask


def colour_labels(
    rng: np.random.Generator,
    ids: np.ndarray,
    colours: np.ndarray,
    off_palette: np.ndarray,
    *,
    black: np.ndarray | None,
    off: int,
    black_unmatched: bool = False,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Colour ``ids``; ``black`` pixels become (0,0,0), ``off`` random pixels off-palette.

    Returns (RGB label, expected native label, unmatched count). Off-palette pixels are drawn
    at distinct positions and override black ones; black counts as unmatched when
    ``black_unmatched`` (full ISPRS labels: black marks boundaries of the eroded ones only).
    """
    rgb = colours[ids].copy()
    expected = ids.copy()
    if black is not None:
        rgb[black] = BOUNDARY
        expected[black] = IGNORE
    flat = rng.permutation(ids.size)[:off]
    ys, xs = np.unravel_index(flat, ids.shape)
    rgb[ys, xs] = off_palette[rng.integers(0, len(off_palette), size=off)]
    expected[ys, xs] = IGNORE
    unmatched = off
    if black is not None and black_unmatched:
        unmatched += int(np.all(rgb == BOUNDARY, axis=-1).sum())
    return rgb, expected, unmatched


def _isprs_labels(rng: np.random.Generator, tile: _Tile) -> dict[str, tuple]:
    """Full and eroded colour labels of one tile: {variant: (rgb, expected, unmatched)}."""
    ids = class_map(rng, tile.height, tile.width, len(ISPRS_COLOURS))
    stray = np.zeros(ids.shape, bool)
    stray.flat[rng.permutation(ids.size)[: tile.black_full]] = True
    full = colour_labels(
        rng, ids, ISPRS_COLOURS, OFF_PALETTE, black=stray, off=tile.off_full, black_unmatched=True
    )
    eroded = colour_labels(
        rng, ids, ISPRS_COLOURS, OFF_PALETTE, black=_boundary(ids), off=tile.off_eroded
    )
    return {"full": full, "eroded": eroded}


def decode_isprs(rgb: np.ndarray, labels: str = "full") -> tuple[np.ndarray, int]:
    """Reference decoding of an ISPRS colour label: (native ids with 255, unmatched count);
    black is the expected boundary of eroded labels, off-palette in full ones."""
    out = np.full(rgb.shape[:2], IGNORE, np.uint8)
    known = np.all(rgb == BOUNDARY, axis=-1) & (labels == "eroded")
    for index, colour in enumerate(ISPRS_COLOURS):
        hit = np.all(rgb == colour, axis=-1)
        out[hit] = index
        known |= hit
    return out, int((~known).sum())


# --- file encoding ---------------------------------------------------------------------------


def _geotiff(array: np.ndarray, transform, *, crs: str | None, compress: str | None = None):
    """Bytes of a GeoTIFF of ``array`` ((H, W, bands) or (H, W)) written with rasterio."""
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    bands = array[..., None] if array.ndim == 2 else array
    profile = {
        "driver": "GTiff",
        "height": bands.shape[0],
        "width": bands.shape[1],
        "count": bands.shape[2],
        "dtype": bands.dtype.name,
        "transform": transform,
    }
    if crs:
        profile["crs"] = crs
    if compress:
        profile["compress"] = compress
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile() as memory:
            with memory.open(**profile) as dataset:
                dataset.write(bands.transpose(2, 0, 1))
            return memory.read()


def _plain_tiff(array: np.ndarray) -> bytes:
    """Bytes of an ungeoreferenced 3-band uint8 TIFF written with PIL."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="TIFF")
    return buffer.getvalue()


def _world_file(transform) -> bytes:
    """An ESRI world file (``.tfw``): pixel sizes, rotations, centre of the top-left pixel."""
    values = [
        transform.a,
        transform.d,
        transform.b,
        transform.e,
        transform.c + transform.a / 2,
        transform.f + transform.e / 2,
    ]
    return "".join(f"{value:.10f}\n" for value in values).encode()


class Download:
    """Collects the files of a raw download; writes them extracted or as the official zips."""

    def __init__(self, root: Path, archives: bool) -> None:
        self.root = Path(root)
        self.archives = archives
        self.root.mkdir(parents=True, exist_ok=True)
        self._zips: dict[str, dict[str, bytes]] = {}

    def add(self, archive: str, folder: str, member: str, data: bytes) -> str:
        """Add ``member`` of zip ``archive`` (extracted under ``folder``); return its path.

        The returned path is relative to the root: ``<archive>/<member>`` for zips,
        ``<folder>/<member>`` (or ``<member>`` when ``folder`` is empty) for extracted files.
        """
        if self.archives:
            self._zips.setdefault(archive, {})[member] = data
            return f"{archive}/{member}"
        relative = f"{folder}/{member}" if folder else member
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return relative

    def close(self) -> None:
        """Write the zips (sorted members, directory entries, fixed time stamps)."""
        for archive, members in sorted(self._zips.items()):
            parts = [name.split("/") for name in members]
            folders = sorted({"/".join(p[: i + 1]) + "/" for p in parts for i in range(len(p) - 1)})
            with zipfile.ZipFile(self.root / archive, "w", zipfile.ZIP_DEFLATED) as handle:
                for folder in folders:
                    handle.writestr(zipfile.ZipInfo(folder, (2018, 1, 1, 0, 0, 0)), b"")
                for name in sorted(members):
                    info = zipfile.ZipInfo(name, (2018, 1, 1, 0, 0, 0))
                    info.compress_type = zipfile.ZIP_DEFLATED
                    handle.writestr(info, members[name])
        self._zips.clear()


def _check_variant(labels: str) -> None:
    if labels not in LABEL_VARIANTS:
        raise ValueError(f"labels must be one of {LABEL_VARIANTS}, got {labels!r}")


# --- Potsdam ---------------------------------------------------------------------------------


def write_potsdam_raw(root: Path, *, archives: bool = False, labels: str = "full") -> RawFixture:
    """Three Potsdam tiles (2_10 train, 2_13 and 3_14 val) as the official download lays them out.

    ``labels`` ("full" or "eroded") selects which label variant ``expected`` describes (what
    ``prepare`` must produce without / with ``-o labels=eroded``); both are always written.
    """
    _check_variant(labels)
    from rasterio.transform import Affine

    out = Download(root, archives)
    expected: dict[str, ExpectedImage] = {}
    for index, tile in enumerate(POTSDAM_TILES):
        rng = np.random.default_rng(4000 + index)
        row, col = tile.tile_id.split("_")
        base = f"top_potsdam_{row}_{col}"
        size = (tile.height, tile.width, 3)
        west, north = 364000.0 + 300.0 * int(col), 5813000.0 - 300.0 * int(row)
        transform = Affine(POTSDAM_GSD, 0.0, west, 0.0, -POTSDAM_GSD, north)
        image = rng.integers(0, 256, size=size, dtype=np.uint8)
        irrg = rng.integers(0, 256, size=size, dtype=np.uint8)
        dsm = rng.normal(35.0, 4.0, size=size[:2]).astype(np.float32)
        variants = _isprs_labels(rng, tile)

        world = _world_file(transform)
        for folder, kind, array in (("2_Ortho_RGB", "RGB", image), ("3_Ortho_IRRG", "IRRG", irrg)):
            tif = _geotiff(array, transform, crs=POTSDAM_CRS)
            out.add(f"{folder}.zip", "", f"{folder}/{base}_{kind}.tif", tif)
            out.add(f"{folder}.zip", "", f"{folder}/{base}_{kind}.tfw", world)
        dsm_name = f"1_DSM/dsm_potsdam_{int(row):02d}_{int(col):02d}.tif"
        out.add("1_DSM.zip", "", dsm_name, _geotiff(dsm, transform, crs=POTSDAM_CRS))
        paths = {}  # both label variants: 5_Labels_all{,_noBoundary}(.zip)/<base>_label{,...}.tif
        for variant, suffix in (("full", ""), ("eroded", "_noBoundary")):
            rgb = _geotiff(variants[variant][0], transform, crs=POTSDAM_CRS, compress="lzw")
            folder = f"5_Labels_all{suffix}"
            paths[variant] = out.add(f"{folder}.zip", folder, f"{base}_label{suffix}.tif", rgb)
        split = _split(tile.tile_id, POTSDAM_TRAIN, POTSDAM_VAL)
        if split == "train":  # the participants' subsets: same names, other (wrong) content
            wrong = ISPRS_COLOURS[(decode_isprs(variants["full"][0])[0] % 6 + 1) % 6]
            for suffix, name in (("", "_label"), ("_no_Boundary", "_label_noBoundary")):
                folder = f"5_Labels_for_participants{suffix}"
                out.add(
                    f"{folder}.zip",
                    folder,
                    f"{base}{name}.tif",
                    _geotiff(wrong, transform, crs=POTSDAM_CRS),
                )
        _, label, unmatched = variants[labels]
        expected[base] = ExpectedImage(image, label, split, unmatched, paths[labels])
    out.close()
    notes = {
        "labels": labels,
        "crs": POTSDAM_CRS,
        "distractors": [
            "3_Ortho_IRRG",
            "1_DSM",
            "5_Labels_for_participants",
            "5_Labels_for_participants_no_Boundary",
        ],
    }
    return RawFixture(Path(root), expected, notes)


# --- Vaihingen -------------------------------------------------------------------------------

VAIHINGEN_ZIP = "ISPRS_semantic_labeling_Vaihingen.zip"
VAIHINGEN_GT_ZIP = "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip"
VAIHINGEN_ERODED_ZIP = "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip"


def _irrg(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A false-colour image whose bands are told apart by range: NIR high, R middle, G low."""
    nir = rng.integers(170, 256, size=(height, width))
    red = rng.integers(80, 170, size=(height, width))
    green = rng.integers(0, 80, size=(height, width))
    return np.stack([nir, red, green], axis=-1).astype(np.uint8)


def write_vaihingen_raw(root: Path, *, archives: bool = False, labels: str = "full") -> RawFixture:
    """Three Vaihingen areas (area1 train, area6 and area2 val) as the official download.

    ``labels`` as for :func:`write_potsdam_raw`. ``expected`` images keep the file band order
    (NIR, R, G). ``notes["participants"]`` names the ``gts_for_participants`` and
    ``gts_eroded_for_participants`` copies (full, eroded) that differ from the COMPLETE labels
    (the converter must ignore them).
    """
    _check_variant(labels)
    out = Download(root, archives)
    folder = VAIHINGEN_ZIP.removesuffix(".zip")
    expected: dict[str, ExpectedImage] = {}
    participants: dict[str, str] = {}
    for index, tile in enumerate(VAIHINGEN_TILES):
        rng = np.random.default_rng(5000 + index)
        base = f"top_mosaic_09cm_{tile.tile_id}"
        image = _irrg(rng, tile.height, tile.width)
        dsm = rng.normal(260.0, 5.0, size=(tile.height, tile.width)).astype(np.float32)
        variants = _isprs_labels(rng, tile)

        out.add(VAIHINGEN_ZIP, folder, f"top/{base}.tif", _plain_tiff(image))
        out.add(
            VAIHINGEN_ZIP,
            folder,
            f"dsm/dsm_09cm_matching_{tile.tile_id}.tif",
            _geotiff(dsm, None, crs=None),
        )
        if index == 0:  # training GT copies shipped with the images: here they differ
            for variant, gts, name in (
                ("full", "gts_for_participants", base),
                ("eroded", "gts_eroded_for_participants", f"{base}_noBoundary"),
            ):
                wrong = np.ascontiguousarray(variants[variant][0][::-1])
                participants[variant] = out.add(
                    VAIHINGEN_ZIP, folder, f"{gts}/{name}.tif", _plain_tiff(wrong)
                )
        paths = {
            "full": out.add(
                VAIHINGEN_GT_ZIP,
                VAIHINGEN_GT_ZIP.removesuffix(".zip"),
                f"{base}.tif",
                _plain_tiff(variants["full"][0]),
            ),
            "eroded": out.add(
                VAIHINGEN_ERODED_ZIP,
                VAIHINGEN_ERODED_ZIP.removesuffix(".zip"),
                f"{base}_noBoundary.tif",
                _plain_tiff(variants["eroded"][0]),
            ),
        }
        split = _split(tile.tile_id, VAIHINGEN_TRAIN, VAIHINGEN_VAL)
        _, label, unmatched = variants[labels]
        expected[base] = ExpectedImage(image, label, split, unmatched, paths[labels])
    out.close()
    notes = {
        "labels": labels,
        "bands": ["NIR", "R", "G"],
        "participants": participants,
        "distractors": ["dsm", "gts_for_participants", "gts_eroded_for_participants"],
    }
    return RawFixture(Path(root), expected, notes)
