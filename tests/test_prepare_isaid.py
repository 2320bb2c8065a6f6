"""``ovrsisbench prepare isaid`` on a generated raw download (mmseg archive layout)."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image
from rawfixtures import isaid
from rawfixtures.common import (
    IGNORE,
    assert_prepared,
    check_verification,
    expected_tiles,
    run_prepare,
)

from ovrsisbench.data.native import NATIVE_CLASSES

CLASSES = NATIVE_CLASSES["isaid"]


def test_small_tiles_with_edge_clamp(cli, tmp_path):
    fixture = isaid.write_raw(tmp_path / "raw")
    run_prepare(cli, "isaid", fixture.src, tmp_path / "data", "--tile", "32", "--stride", "16")
    tiles = expected_tiles(fixture.expected, 32, 16, "clamp")
    # P0000 50x70: rows 0,16,18 x cols 0,16,32,38; P0001 20x30: one padded window;
    # P0002 24x64: row 0 (padded) x cols 0,16,32; P0003 45x33: rows 0,13 x cols 0,1
    assert len(tiles) == 12 + 1 + 3 + 4
    assert {"P0000_18_50_38_70", "P0001_0_32_0_32", "P0003_13_45_1_33"} <= set(tiles)
    meta = assert_prepared(tmp_path / "data", "isaid", tiles)
    assert meta["classes"] == list(CLASSES)
    assert meta["splits"] == {"all": 20, "train": 16, "val": 4}
    assert meta["tiling"] == {"tile": 32, "stride": 16, "edge": "clamp"}
    assert meta["source"]["kind"] == "raw"
    check_verification(meta, fixture, tiles, CLASSES)


def test_default_tiling_gives_one_padded_window_per_small_image(cli, tmp_path):
    fixture = isaid.write_raw(tmp_path / "raw", archives=True)
    run_prepare(cli, "isaid", fixture.src, tmp_path / "data")
    tiles = expected_tiles(fixture.expected, 896, 512, "clamp")
    assert sorted(tiles) == [f"{stem}_0_896_0_896" for stem in sorted(fixture.expected)]
    meta = assert_prepared(tmp_path / "data", "isaid", tiles)
    assert meta["tiling"] == {"tile": 896, "stride": 512, "edge": "clamp"}
    check_verification(meta, fixture, tiles, CLASSES)


def test_archives_untiled(cli, tmp_path):
    fixture = isaid.write_raw(tmp_path / "raw", archives=True)
    run_prepare(cli, "isaid", fixture.src, tmp_path / "data", "--tile", "0")
    meta = assert_prepared(tmp_path / "data", "isaid", fixture.expected)
    assert meta["splits"] == {"all": 4, "train": 3, "val": 1}
    assert meta["tiling"] == {"tile": None, "stride": None, "edge": None}
    assert meta["source"]["kind"] == "raw"
    check_verification(meta, fixture, fixture.expected, CLASSES)
    images = tmp_path / "data" / "isaid" / "images"
    for stem, data in fixture.notes["image_bytes"].items():
        assert (images / f"{stem}.png").read_bytes() == data, stem


@pytest.mark.parametrize("layout", ["mmseg", "devkit"])
def test_unpacked_folders_untiled(cli, tmp_path, layout):
    fixture = isaid.write_raw(tmp_path / "raw", layout=layout)
    run_prepare(cli, "isaid", fixture.src, tmp_path / "data", "--tile", "0")
    meta = assert_prepared(tmp_path / "data", "isaid", fixture.expected)
    assert meta["tiling"] == {"tile": None, "stride": None, "edge": None}
    check_verification(meta, fixture, fixture.expected, CLASSES)
    images = tmp_path / "data" / "isaid" / "images"
    assert sorted(p.name for p in images.iterdir()) == [
        f"{s}.png" for s in sorted(fixture.expected)
    ]


# --- the generator itself (independent of the converter) -----------------------------------------


def _decode(mask: Image.Image) -> tuple[np.ndarray, int]:
    """The iSAID rules, restated: palette colour i -> i, any other colour -> 255 counted."""
    rgb = np.array(mask).astype(np.int64)
    keys = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    out = np.full(keys.shape, IGNORE, np.uint8)
    for native, (r, g, b) in enumerate(isaid.PALETTE):
        out[keys == (r << 16) | (g << 8) | b] = native
    return out, int((out == IGNORE).sum())


def _zip_members(src: Path) -> dict[str, bytes]:
    """Every file of every zip under ``src``: ``<zip path>/<member>`` -> bytes."""
    out = {}
    for archive in sorted(src.rglob("*.zip")):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if not name.endswith("/"):
                    out[f"{archive.relative_to(src).as_posix()}/{name}"] = zf.read(name)
    return out


def test_generator_writes_what_it_claims(tmp_path):
    fixture = isaid.write_raw(tmp_path / "raw", archives=True)
    members = _zip_members(fixture.src)
    assert sorted(p.relative_to(fixture.src).as_posix() for p in fixture.src.rglob("*.zip")) == [
        "test/images/part1.zip",
        "train/Instance_masks/images.zip",
        "train/Semantic_masks/images.zip",
        "train/images/part1.zip",
        "train/images/part2.zip",
        "val/Instance_masks/images.zip",
        "val/Semantic_masks/images.zip",
        "val/images/part1.zip",
    ]
    assert all(p.is_dir() or p.suffix == ".zip" for p in fixture.src.rglob("*"))
    assert "test/images/part1.zip/images/P0100.png" in members
    assert "train/images/part2.zip/images/P0002.png" in members
    assert "train/Semantic_masks/images.zip/images/P0000_instance_id_RGB.png" in members
    colours = set()
    for stem, item in fixture.expected.items():
        folder = "train" if item.split == "train" else "val"
        assert item.source_label.startswith(f"{folder}/Semantic_masks/images.zip/images/")
        with Image.open(io.BytesIO(members[item.source_label])) as mask:
            assert mask.mode == "RGB"
            decoded, unmatched = _decode(mask)
            colours |= {tuple(c) for c in np.array(mask).reshape(-1, 3).tolist()}
        np.testing.assert_array_equal(decoded, item.label)
        assert unmatched == item.unmatched
        part = "part2" if stem == "P0002" else "part1"
        data = members[f"{folder}/images/{part}.zip/images/{stem}.png"]
        assert data == fixture.notes["image_bytes"][stem]
        with Image.open(io.BytesIO(data)) as image:
            np.testing.assert_array_equal(np.array(image.convert("RGB")), item.image)
    assert set(isaid.PALETTE) <= colours and colours - set(isaid.PALETTE)
    shapes = {stem: item.label.shape for stem, item in fixture.expected.items()}
    assert shapes == {"P0000": (50, 70), "P0001": (20, 30), "P0002": (24, 64), "P0003": (45, 33)}
    assert fixture.expected["P0001"].unmatched == 0 and fixture.unmatched == 45


@pytest.mark.parametrize("layout", ["mmseg", "devkit"])
def test_generator_unpacked_layouts_hold_the_archive_files(tmp_path, layout):
    packed = _zip_members(isaid.write_raw(tmp_path / "packed", archives=True).src)
    plain = isaid.write_raw(tmp_path / layout, layout=layout)
    files = {
        p.relative_to(plain.src).as_posix(): p.read_bytes()
        for p in plain.src.rglob("*")
        if p.is_file()
    }
    if layout == "mmseg":  # every zip unpacked where it lies
        unzipped = {re.sub(r"/[^/]+\.zip/", "/", k): v for k, v in packed.items()}
        assert files == unzipped
    else:  # {split}/images/<every file of that split>
        assert set(files) == {f"{k.split('/')[0]}/images/{PurePosixPath(k).name}" for k in packed}
        assert "train/images/P0000_instance_color_RGB.png" in files
    for item in plain.expected.values():
        name = PurePosixPath(item.source_label).name
        assert (
            files[item.source_label]
            == packed[f"{item.split}/Semantic_masks/images.zip/images/{name}"]
        )
