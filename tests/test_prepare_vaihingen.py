"""``ovrsisbench prepare vaihingen`` on a synthetic raw ISPRS Vaihingen download (spec 5)."""

from __future__ import annotations

import hashlib
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from rawfixtures.common import assert_prepared, check_verification, expected_tiles, run_prepare
from rawfixtures.isprs import (
    ISPRS_COLOURS,
    VAIHINGEN_ERODED_ZIP,
    VAIHINGEN_GT_ZIP,
    VAIHINGEN_ZIP,
    decode_isprs,
    write_vaihingen_raw,
)

from ovrsisbench.data.native import NATIVE_CLASSES

CLASSES = NATIVE_CLASSES["vaihingen"]
IMAGES = "ISPRS_semantic_labeling_Vaihingen/top"
# spec section 5 (torchgeo): the fixture zips are synthetic, so neither may match
SPEC_MD5 = {
    VAIHINGEN_ZIP: "462b8dca7b6fa9eaf729840f0cdfc7f3",
    VAIHINGEN_GT_ZIP: "4802dd6326e2727a352fb735be450277",
}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """The extracted download with the full COMPLETE labels (read only: shared by the tests)."""
    return write_vaihingen_raw(tmp_path_factory.mktemp("vaihingen_raw"))


def _check_bands(meta: dict, data_root: Path) -> None:
    """meta names the file's band order and every output image keeps it (NIR > R > G here)."""
    from ovrsisbench.data.layout import open_dataset

    assert meta["bands"] == ["NIR", "R", "G"]
    dataset = open_dataset(data_root, "vaihingen")
    for stem in dataset.stems("all"):
        nir, red, green = dataset.read_image(stem).reshape(-1, 3).mean(axis=0)
        assert nir > red > green, stem


# --- the fixture itself ----------------------------------------------------------------------


def _read_tiff(data: bytes) -> np.ndarray:
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # plain TIFFs, as in the zip
        with MemoryFile(data) as memory, memory.open() as source:
            return source.read().transpose(1, 2, 0)


@pytest.mark.parametrize("labels", ["full", "eroded"])
def test_fixture_files_decode_to_the_expected_arrays(tmp_path, labels):
    fixture = write_vaihingen_raw(tmp_path / "raw", labels=labels)
    zipped = write_vaihingen_raw(tmp_path / "zipped", archives=True, labels=labels)
    bases = ["top_mosaic_09cm_area1", "top_mosaic_09cm_area2", "top_mosaic_09cm_area6"]
    assert sorted(fixture.expected) == bases
    assert {b: e.split for b, e in fixture.expected.items()} == dict(
        zip(bases, ["train", "val", "val"], strict=True)
    )
    assert len({e.label.shape for e in fixture.expected.values()}) == 3
    archives = {p.name: zipfile.ZipFile(p) for p in zipped.src.glob("*.zip")}
    assert sorted(archives) == sorted([VAIHINGEN_ZIP, VAIHINGEN_GT_ZIP, VAIHINGEN_ERODED_ZIP])
    assert all("/" not in name for name in archives[VAIHINGEN_GT_ZIP].namelist())  # flat
    for base, item in fixture.expected.items():
        data = (fixture.src / f"{IMAGES}/{base}.tif").read_bytes()
        assert archives[VAIHINGEN_ZIP].read(f"top/{base}.tif") == data
        image = _read_tiff(data)
        np.testing.assert_array_equal(image, item.image)
        nir, red, green = image.reshape(-1, 3).mean(axis=0)
        assert nir > red > green

        member = item.source_label.split("/", 1)[1]
        assert zipped.expected[base].source_label.endswith(".zip/" + member)
        assert member == (f"{base}.tif" if labels == "full" else f"{base}_noBoundary.tif")
        data = (fixture.src / item.source_label).read_bytes()
        assert archives[item.source_label.split("/")[0] + ".zip"].read(member) == data
        rgb = _read_tiff(data)
        decoded, unmatched = decode_isprs(rgb, labels)
        np.testing.assert_array_equal(decoded, item.label)
        assert unmatched == item.unmatched
        assert np.all(rgb == 0, axis=-1).any()
        for colour in ISPRS_COLOURS:
            assert np.all(rgb == colour, axis=-1).any()
    for variant, gts, archive in (
        ("full", "gts_for_participants", VAIHINGEN_GT_ZIP),
        ("eroded", "gts_eroded_for_participants", VAIHINGEN_ERODED_ZIP),
    ):  # the participants' copies of area1: same file names as the COMPLETE labels, other content
        participants = fixture.src / fixture.notes["participants"][variant]
        complete = fixture.src / archive.removesuffix(".zip") / participants.name
        assert participants.parent.name == gts
        assert not np.array_equal(
            _read_tiff(participants.read_bytes()), _read_tiff(complete.read_bytes())
        )
    assert fixture.unmatched == (26 if labels == "full" else 6)  # full: 18 stray black pixels


# --- prepare ---------------------------------------------------------------------------------


def test_prepare_tile_32_drop_keeps_the_irrg_bands(cli, raw, tmp_path):
    run_prepare(cli, "vaihingen", raw.src, tmp_path, "--tile", "32")
    tiles = expected_tiles(raw.expected, 32, 32, "drop")
    sizes = [e.label.shape for e in raw.expected.values()]
    assert len(tiles) == sum((h // 32) * (w // 32) for h, w in sizes) == 2 + 2 + 4
    meta = assert_prepared(tmp_path, "vaihingen", tiles)
    assert meta["classes"] == list(CLASSES)
    assert meta["tiling"] == {"tile": 32, "stride": 32, "edge": "drop"}
    assert meta["source"]["kind"] == "raw"
    assert not meta.get("checksums")  # no archives were given
    check_verification(meta, raw, tiles, CLASSES)
    _check_bands(meta, tmp_path)


def test_prepare_from_the_official_zips_records_checksums(cli, tmp_path):
    fixture = write_vaihingen_raw(tmp_path / "raw", archives=True)
    tiling = ("--tile", "32", "--stride", "20", "--edge", "pad")
    run_prepare(cli, "vaihingen", fixture.src, tmp_path / "data", *tiling)
    tiles = expected_tiles(fixture.expected, 32, 20, "pad")
    assert len(tiles) == 3 * 3 + 3 * 4 + 4 * 3
    meta = assert_prepared(tmp_path / "data", "vaihingen", tiles)
    assert meta["tiling"] == {"tile": 32, "stride": 20, "edge": "pad"}
    check_verification(meta, fixture, tiles, CLASSES)
    _check_bands(meta, tmp_path / "data")
    checksums = {Path(entry["file"]).name: entry for entry in meta["checksums"]}
    for name, md5 in SPEC_MD5.items():
        observed = hashlib.md5((fixture.src / name).read_bytes()).hexdigest()
        assert checksums[name] == {"file": name, "md5": observed, "expected": md5, "match": False}


def test_prepare_eroded_labels_untiled(cli, tmp_path):
    from ovrsisbench.data.layout import open_dataset

    fixture = write_vaihingen_raw(tmp_path / "raw", labels="eroded")
    run_prepare(
        cli, "vaihingen", fixture.src, tmp_path / "data", "--tile", "0", "-o", "labels=eroded"
    )
    meta = assert_prepared(tmp_path / "data", "vaihingen", fixture.expected)
    assert meta["tiling"] == {"tile": None, "stride": None, "edge": None}
    check_verification(meta, fixture, fixture.expected, CLASSES)
    assert all("_noBoundary" in key for key in meta["verification"]["unmatched_by_file"])
    _check_bands(meta, tmp_path / "data")
    dataset = open_dataset(tmp_path / "data", "vaihingen")
    for base in fixture.expected:
        path = dataset.image_path(base)
        assert path.name == f"{base}.tif"
        assert path.read_bytes() == (fixture.src / f"{IMAGES}/{base}.tif").read_bytes()


@pytest.mark.parametrize("archives", [False, True], ids=["folders", "zips"])
def test_eroded_labels_skip_the_participants_eroded_copy(cli, tmp_path, archives):
    """gts_eroded_for_participants (beside the images, in their zip too) has the eroded labels'
    file names, as gts_for_participants has the full ones': never labels."""
    fixture = write_vaihingen_raw(tmp_path / "raw", archives=archives, labels="eroded")
    copy = fixture.notes["participants"]["eroded"]  # "<zip or folder>/<member>"
    assert copy.endswith("/gts_eroded_for_participants/top_mosaic_09cm_area1_noBoundary.tif")
    if archives:
        zipped, member = copy.split("/", 1)
        assert member in zipfile.ZipFile(fixture.src / zipped).namelist()
    else:
        assert (fixture.src / copy).is_file()
    data = tmp_path / "data"
    run_prepare(cli, "vaihingen", fixture.src, data, "--tile", "0", "-o", "labels=eroded")
    meta = assert_prepared(data, "vaihingen", fixture.expected)  # each tile once, its own label
    assert meta["source"]["pairs"] == len(fixture.expected) and not meta["orphans"]
