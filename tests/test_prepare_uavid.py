"""``ovrsisbench prepare uavid`` on a synthetic raw UAVid download (spec section 6)."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from PIL import Image
from rawfixtures.common import assert_prepared, check_verification, expected_tiles, run_prepare
from rawfixtures.uavid import RELEASE, UAVID_COLOURS, decode_uavid, write_raw

from ovrsisbench.data.native import NATIVE_CLASSES

CLASSES = NATIVE_CLASSES["uavid"]
STEMS = [
    "train_seq1_000000",
    "train_seq1_000100",
    "train_seq2_000000",
    "train_seq2_000100",
    "val_seq3_000000",
    "val_seq3_000100",
]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """The extracted download, not nested (read only: shared by the tests)."""
    return write_raw(tmp_path_factory.mktemp("uavid_raw"))


def _image_source(fixture, stem: str) -> str:
    return fixture.expected[stem].source_label.replace("/Labels/", "/Images/")


# --- the fixture itself ----------------------------------------------------------------------


def test_fixture_files_decode_to_the_expected_arrays(tmp_path):
    fixture = write_raw(tmp_path / "raw")
    nested = write_raw(tmp_path / "nested", nested=True)
    zipped = write_raw(tmp_path / "zipped", archives=True)
    assert sorted(fixture.expected) == STEMS
    assert [p.name for p in zipped.src.iterdir()] == [f"{RELEASE}.zip"]
    archive = zipfile.ZipFile(zipped.src / f"{RELEASE}.zip")
    tops = {name.split("/")[0] for name in archive.namelist()}
    assert tops == {RELEASE}
    assert {name.split("/")[1] for name in archive.namelist() if name.count("/") > 1} == {
        "uavid_train",
        "uavid_val",
        "uavid_test",
    }
    assert sorted((fixture.src / "uavid_test/seq4").iterdir()) == [
        fixture.src / "uavid_test/seq4/Images"
    ]
    for stem, item in fixture.expected.items():
        split, seq, frame = stem.split("_")
        assert item.split == split
        assert item.source_label == f"uavid_{split}/{seq}/Labels/{frame}.png"
        assert nested.expected[stem].source_label == f"{RELEASE}/{item.source_label}"
        assert zipped.expected[stem].source_label == f"{RELEASE}.zip/{RELEASE}/{item.source_label}"
        for name in (item.source_label, _image_source(fixture, stem)):
            data = (fixture.src / name).read_bytes()
            assert (nested.src / RELEASE / name).read_bytes() == data
            assert archive.read(f"{RELEASE}/{name}") == data
        with Image.open(fixture.src / _image_source(fixture, stem)) as image:
            assert image.format == "PNG" and image.mode == "RGB"
            np.testing.assert_array_equal(np.array(image), item.image)
        with Image.open(fixture.src / item.source_label) as label:
            assert label.format == "PNG" and label.mode == "RGB"
            rgb = np.array(label)
        decoded, unmatched = decode_uavid(rgb)
        np.testing.assert_array_equal(decoded, item.label)
        assert unmatched == item.unmatched
        for colour in UAVID_COLOURS:
            assert np.all(rgb == colour, axis=-1).any()
    # the V1 order of the spec table (clutter, building, road, tree, low veg., moving car, ...)
    assert UAVID_COLOURS[3].tolist() == [0, 128, 0] and UAVID_COLOURS[5].tolist() == [64, 0, 128]
    assert fixture.unmatched == 16
    assert [e.unmatched > 0 for e in fixture.expected.values()].count(False) == 2


# --- prepare ---------------------------------------------------------------------------------


def test_prepare_default_keeps_whole_frames(cli, raw, tmp_path):
    from ovrsisbench.data.layout import open_dataset

    run_prepare(cli, "uavid", raw.src, tmp_path)
    meta = assert_prepared(tmp_path, "uavid", raw.expected)
    assert meta["classes"] == list(CLASSES)
    assert meta["splits"] == {"all": 6, "train": 4, "val": 2}
    assert meta["tiling"] == {"tile": None, "stride": None, "edge": None}
    assert meta["source"]["kind"] == "raw"
    check_verification(meta, raw, raw.expected, CLASSES)
    dataset = open_dataset(tmp_path, "uavid")
    for stem in STEMS:
        path = dataset.image_path(stem)
        assert path.name == f"{stem}.png"
        assert path.read_bytes() == (raw.src / _image_source(raw, stem)).read_bytes()


def test_prepare_from_the_release_zip(cli, tmp_path):
    fixture = write_raw(tmp_path / "raw", archives=True)
    run_prepare(cli, "uavid", fixture.src, tmp_path / "data")
    meta = assert_prepared(tmp_path / "data", "uavid", fixture.expected)
    assert meta["tiling"] == {"tile": None, "stride": None, "edge": None}
    check_verification(meta, fixture, fixture.expected, CLASSES)


def test_prepare_nested_folder_tile_32_stride_24_clamp(cli, tmp_path):
    fixture = write_raw(tmp_path / "raw", nested=True)
    tiling = ("--tile", "32", "--stride", "24", "--edge", "clamp")
    run_prepare(cli, "uavid", fixture.src, tmp_path / "data", *tiling)
    tiles = expected_tiles(fixture.expected, 32, 24, "clamp")
    assert len(tiles) == 2 * (3 * 3) + 2 * (2 * 3) + 2 * (2 * 3)
    assert "train_seq2_000100_16_48_40_72" in tiles  # border-aligned last window
    meta = assert_prepared(tmp_path / "data", "uavid", tiles)
    assert meta["tiling"] == {"tile": 32, "stride": 24, "edge": "clamp"}
    check_verification(meta, fixture, tiles, CLASSES)
