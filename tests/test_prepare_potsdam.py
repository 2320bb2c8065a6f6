"""``ovrsisbench prepare potsdam`` on a synthetic raw ISPRS Potsdam download (spec section 4)."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from rawfixtures.common import assert_prepared, check_verification, expected_tiles, run_prepare
from rawfixtures.isprs import (
    ISPRS_COLOURS,
    POTSDAM_CRS,
    decode_isprs,
    write_potsdam_raw,
)

from ovrsisbench.data.native import NATIVE_CLASSES

CLASSES = NATIVE_CLASSES["potsdam"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """The extracted download with full labels (read only: shared by the tests)."""
    return write_potsdam_raw(tmp_path_factory.mktemp("potsdam_raw"))


# --- the fixture itself ----------------------------------------------------------------------


def _read_tiff(data: bytes):
    from rasterio.io import MemoryFile

    with MemoryFile(data) as memory, memory.open() as source:
        return source.read().transpose(1, 2, 0), source.crs, source.transform


@pytest.mark.parametrize("labels", ["full", "eroded"])
def test_fixture_files_decode_to_the_expected_arrays(tmp_path, labels):
    fixture = write_potsdam_raw(tmp_path / "raw", labels=labels)
    zipped = write_potsdam_raw(tmp_path / "zipped", archives=True, labels=labels)
    assert sorted(fixture.expected) == ["top_potsdam_2_10", "top_potsdam_2_13", "top_potsdam_3_14"]
    assert [e.split for e in fixture.expected.values()] == ["train", "val", "val"]
    archives = {p.name: zipfile.ZipFile(p) for p in zipped.src.glob("*.zip")}
    assert sorted(archives) == [
        "1_DSM.zip",
        "2_Ortho_RGB.zip",
        "3_Ortho_IRRG.zip",
        "5_Labels_all.zip",
        "5_Labels_all_noBoundary.zip",
        "5_Labels_for_participants.zip",
        "5_Labels_for_participants_no_Boundary.zip",
    ]
    for base, item in fixture.expected.items():
        image_path = f"2_Ortho_RGB/{base}_RGB.tif"
        data = (fixture.src / image_path).read_bytes()
        assert archives["2_Ortho_RGB.zip"].read(image_path) == data
        image, crs, transform = _read_tiff(data)
        np.testing.assert_array_equal(image, item.image)
        assert image.dtype == np.uint8 and crs.to_string() == POTSDAM_CRS
        world = (fixture.src / f"2_Ortho_RGB/{base}_RGB.tfw").read_text().split()
        assert [float(v) for v in world[:4]] == [0.05, 0.0, 0.0, -0.05]
        assert float(world[4]) == pytest.approx(transform.c + 0.025)
        irrg, _, _ = _read_tiff((fixture.src / f"3_Ortho_IRRG/{base}_IRRG.tif").read_bytes())
        assert not np.array_equal(irrg, item.image)

        member = item.source_label.split("/", 1)[1]
        assert zipped.expected[base].source_label.endswith(".zip/" + member)
        data = (fixture.src / item.source_label).read_bytes()
        assert archives[item.source_label.split("/")[0] + ".zip"].read(member) == data
        rgb, _, _ = _read_tiff(data)
        decoded, unmatched = decode_isprs(rgb, labels)
        np.testing.assert_array_equal(decoded, item.label)
        assert unmatched == item.unmatched
        assert np.all(rgb == 0, axis=-1).any()  # boundary pixels
        for colour in ISPRS_COLOURS:  # every class colour
            assert np.all(rgb == colour, axis=-1).any()
        np.testing.assert_array_equal(zipped.expected[base].label, item.label)
    for complete, participants in (
        ("5_Labels_all", "5_Labels_for_participants"),
        ("5_Labels_all_noBoundary", "5_Labels_for_participants_no_Boundary"),
    ):  # the participants' copies of the train tile: same file names, other content
        [name] = [p.name for p in (fixture.src / participants).iterdir()]
        assert name in {"top_potsdam_2_10_label.tif", "top_potsdam_2_10_label_noBoundary.tif"}
        assert not np.array_equal(
            _read_tiff((fixture.src / participants / name).read_bytes())[0],
            _read_tiff((fixture.src / complete / name).read_bytes())[0],
        )
    assert fixture.unmatched == (29 if labels == "full" else 8)  # full: 18 stray black pixels
    assert [e.unmatched > 0 for e in fixture.expected.values()].count(False) == (labels != "full")


# --- prepare ---------------------------------------------------------------------------------


def test_prepare_tile_32_drop(cli, raw, tmp_path):
    run_prepare(cli, "potsdam", raw.src, tmp_path, "--tile", "32")
    tiles = expected_tiles(raw.expected, 32, 32, "drop")
    sizes = [e.label.shape for e in raw.expected.values()]
    assert len(tiles) == sum((h // 32) * (w // 32) for h, w in sizes) == 12
    assert "top_potsdam_2_10_32_64_32_64" in tiles
    meta = assert_prepared(tmp_path, "potsdam", tiles)
    assert meta["name"] == "potsdam"
    assert meta["classes"] == list(CLASSES)
    assert meta["tiling"] == {"tile": 32, "stride": 32, "edge": "drop"}
    assert meta["source"]["kind"] == "raw"
    check_verification(meta, raw, tiles, CLASSES)


def test_prepare_stride_24_clamp(cli, raw, tmp_path):
    run_prepare(
        cli, "potsdam", raw.src, tmp_path, "--tile", "32", "--stride", "24", "--edge", "clamp"
    )
    tiles = expected_tiles(raw.expected, 32, 24, "clamp")
    assert len(tiles) == 3 * 4 + 3 * 3 + 3 * 3
    assert "top_potsdam_2_10_38_70_58_90" in tiles  # the border-aligned last window
    meta = assert_prepared(tmp_path, "potsdam", tiles)
    assert meta["tiling"] == {"tile": 32, "stride": 24, "edge": "clamp"}
    check_verification(meta, raw, tiles, CLASSES)


def test_prepare_from_the_official_zips(cli, tmp_path):
    fixture = write_potsdam_raw(tmp_path / "raw", archives=True)
    assert not any(p.is_dir() for p in fixture.src.iterdir())
    run_prepare(cli, "potsdam", fixture.src, tmp_path / "data", "--tile", "40", "--edge", "pad")
    tiles = expected_tiles(fixture.expected, 40, 40, "pad")
    assert len(tiles) == 2 * 3 + 2 * 2 + 2 * 2
    meta = assert_prepared(tmp_path / "data", "potsdam", tiles)
    assert meta["tiling"] == {"tile": 40, "stride": 40, "edge": "pad"}
    assert meta["source"]["kind"] == "raw"
    check_verification(meta, fixture, tiles, CLASSES)


def test_prepare_eroded_labels(cli, tmp_path):
    fixture = write_potsdam_raw(tmp_path / "raw", labels="eroded")
    run_prepare(
        cli, "potsdam", fixture.src, tmp_path / "data", "--tile", "32", "-o", "labels=eroded"
    )
    tiles = expected_tiles(fixture.expected, 32, 32, "drop")
    meta = assert_prepared(tmp_path / "data", "potsdam", tiles)
    check_verification(meta, fixture, tiles, CLASSES)
    assert all("_noBoundary" in key for key in meta["verification"]["unmatched_by_file"])


def test_eroded_labels_skip_the_participants_eroded_copy(cli, tmp_path):
    """An extracted 5_Labels_for_participants_no_Boundary (the train subset, eroded) has the
    eroded labels' file names, as 5_Labels_for_participants has the full ones': never labels."""
    fixture = write_potsdam_raw(tmp_path / "raw", labels="eroded")
    copy = "5_Labels_for_participants_no_Boundary/top_potsdam_2_10_label_noBoundary.tif"
    assert (fixture.src / copy).is_file()
    data = tmp_path / "data"
    run_prepare(cli, "potsdam", fixture.src, data, "--tile", "0", "-o", "labels=eroded")
    meta = assert_prepared(data, "potsdam", fixture.expected)  # each tile once, its own label
    assert meta["source"]["pairs"] == len(fixture.expected) and not meta["orphans"]


def test_prepare_untiled_keeps_the_geotiff_bytes(cli, raw, tmp_path):
    from ovrsisbench.data.layout import open_dataset

    run_prepare(cli, "potsdam", raw.src, tmp_path, "--tile", "0")
    meta = assert_prepared(tmp_path, "potsdam", raw.expected)
    assert meta["tiling"] == {"tile": None, "stride": None, "edge": None}
    check_verification(meta, raw, raw.expected, CLASSES)
    dataset = open_dataset(tmp_path, "potsdam")
    for base in raw.expected:
        path = dataset.image_path(base)
        assert path.name == f"{base}.tif"
        assert path.read_bytes() == (raw.src / f"2_Ortho_RGB/{base}_RGB.tif").read_bytes()


def test_prepare_without_the_chosen_labels_is_a_user_error(cli, tmp_path):
    fixture = write_potsdam_raw(tmp_path / "raw")
    for path in (fixture.src / "5_Labels_all_noBoundary").iterdir():
        path.unlink()
    (fixture.src / "5_Labels_all_noBoundary").rmdir()
    data = tmp_path / "data"
    result = run_prepare(cli, "potsdam", fixture.src, data, "-o", "labels=eroded", code=2)
    assert result.err.startswith("error:") and result.err.count("\n") <= 1
