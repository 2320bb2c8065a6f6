"""``ovrsisbench prepare dlrsd`` on a generated raw download (UCM TIFFs + DLRSD label PNGs)."""

from __future__ import annotations

import hashlib
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rawfixtures import dlrsd
from rawfixtures.common import (
    IGNORE,
    assert_prepared,
    check_verification,
    expected_tiles,
    run_prepare,
)

from ovrsisbench.data.native import NATIVE_CLASSES

CLASSES = NATIVE_CLASSES["dlrsd"]


def test_default_is_untiled_and_copies_the_tiffs(cli, tmp_path):
    fixture = dlrsd.write_raw(tmp_path / "raw")
    run_prepare(cli, "dlrsd", fixture.src, tmp_path / "data")
    meta = assert_prepared(tmp_path / "data", "dlrsd", fixture.expected)
    assert meta["name"] == "dlrsd" and meta["classes"] == list(CLASSES)
    assert meta["splits"] == {"all": 6, "train": 3, "val": 3}
    assert meta["tiling"] == {"tile": None, "stride": None, "edge": None}
    assert meta["source"]["kind"] == "raw"
    check_verification(meta, fixture, fixture.expected, CLASSES)
    images = tmp_path / "data" / "dlrsd" / "images"
    assert sorted(p.name for p in images.iterdir()) == sorted(f"{s}.tif" for s in fixture.expected)
    for stem, data in fixture.notes["image_bytes"].items():
        assert (images / f"{stem}.tif").read_bytes() == data, stem


def test_archives(cli, tmp_path):
    fixture = dlrsd.write_raw(tmp_path / "raw", archives=True)
    run_prepare(cli, "dlrsd", fixture.src, tmp_path / "data")
    meta = assert_prepared(tmp_path / "data", "dlrsd", fixture.expected)
    assert meta["tiling"] == {"tile": None, "stride": None, "edge": None}
    assert meta["source"]["kind"] == "raw"
    check_verification(meta, fixture, fixture.expected, CLASSES)
    images = tmp_path / "data" / "dlrsd" / "images"
    for stem, data in fixture.notes["image_bytes"].items():
        assert (images / f"{stem}.tif").read_bytes() == data, stem
    # the UCM zip has an md5 in the spec; a fixture zip cannot match it
    observed = hashlib.md5((fixture.src / dlrsd.IMAGES_ZIP).read_bytes()).hexdigest()
    entries = {entry["file"]: entry for entry in meta["checksums"]}
    assert entries[dlrsd.IMAGES_ZIP] == {
        "file": dlrsd.IMAGES_ZIP,
        "md5": observed,
        "expected": dlrsd.UCM_MD5,
        "match": False,
    }


@pytest.mark.parametrize("edge", ["drop", "clamp", "pad"])
def test_explicit_tiling(cli, tmp_path, edge):
    fixture = dlrsd.write_raw(tmp_path / "raw")
    tiling = ("--tile", "16", "--stride", "8", "--edge", edge)
    run_prepare(cli, "dlrsd", fixture.src, tmp_path / "data", *tiling)
    tiles = expected_tiles(fixture.expected, 16, 8, edge)
    # 24 px -> starts 0, 8 (every mode); 21 px -> drop 0 / clamp 0, 5 / pad 0, 8
    per_side = {"drop": 1, "clamp": 2, "pad": 2}[edge]
    assert len(tiles) == 4 * 4 + 2 * 2 * per_side
    meta = assert_prepared(tmp_path / "data", "dlrsd", tiles)
    assert meta["tiling"] == {"tile": 16, "stride": 8, "edge": edge}
    check_verification(meta, fixture, tiles, CLASSES)
    images = tmp_path / "data" / "dlrsd" / "images"
    assert {p.suffix for p in images.iterdir()} == {".png"}
    if edge == "clamp":
        assert "airplane01_8_24_5_21" in tiles and "tenniscourt99_5_21_8_24" in tiles
    if edge == "pad":
        assert "airplane01_8_24_8_24" in tiles


# --- the generator itself (independent of the converter) -----------------------------------------


def _read_tiff(path: Path) -> np.ndarray:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as source:
            assert source.count == 3 and source.dtypes == ("uint8",) * 3
            return source.read().transpose(1, 2, 0)


def _decode(label: Image.Image) -> tuple[np.ndarray, int]:
    """The DLRSD rules, restated: index 1..17 -> -1, 0 -> 255, other -> 255 counted."""
    if label.mode == "RGB":
        rgb = np.array(label).astype(np.int64)
        keys = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        out = np.full(keys.shape, IGNORE, np.uint8)
        for native, (r, g, b) in enumerate(dlrsd.PALETTE):
            out[keys == (r << 16) | (g << 8) | b] = native
        return out, int((out == IGNORE).sum())
    values = np.array(label)
    out = np.where((values >= 1) & (values <= 17), values - 1, IGNORE).astype(np.uint8)
    return out, int((values > 17).sum())


def test_generator_writes_what_it_claims(tmp_path):
    fixture = dlrsd.write_raw(tmp_path)
    modes = set()
    for stem, item in fixture.expected.items():
        scene = stem.rstrip("0123456789")
        image = _read_tiff(tmp_path / dlrsd.IMAGES_DIR / scene / f"{stem}.tif")
        np.testing.assert_array_equal(image, item.image)
        with Image.open(tmp_path / item.source_label) as label:
            modes.add(label.mode)
            decoded, unmatched = _decode(label)
        np.testing.assert_array_equal(decoded, item.label)
        assert unmatched == item.unmatched
        assert item.split == ("train" if int(stem[len(scene) :]) < 80 else "val")
    assert modes == {"L", "P", "RGB"}
    assert {item.label.shape for item in fixture.expected.values()} == {
        (24, 24),
        (24, 21),
        (21, 24),
    }
    assert (tmp_path / dlrsd.IMAGES_DIR / "tenniscourt" / "tenniscourt01.tif").is_file()
    assert "tenniscourt01" not in fixture.expected  # no label: ignored
    values = np.unique(np.concatenate([item.label.ravel() for item in fixture.expected.values()]))
    assert values.tolist() == [*range(17), IGNORE]
    assert fixture.unmatched == sum(e.unmatched for e in fixture.expected.values()) == 58


def test_generator_archives_hold_the_same_files(tmp_path):
    plain = dlrsd.write_raw(tmp_path / "plain")
    packed = dlrsd.write_raw(tmp_path / "packed", archives=True)
    assert sorted(p.name for p in packed.src.iterdir()) == [dlrsd.LABELS_ZIP, dlrsd.IMAGES_ZIP]
    for archive, top in ((dlrsd.IMAGES_ZIP, "UCMerced_LandUse"), (dlrsd.LABELS_ZIP, "DLRSD")):
        with zipfile.ZipFile(packed.src / archive) as zf:
            files = {n: zf.read(n) for n in zf.namelist() if not n.endswith("/")}
        want = {
            p.relative_to(plain.src).as_posix(): p.read_bytes()
            for p in (plain.src / top).rglob("*")
            if p.is_file()
        }
        assert files == want
