"""``prepare loveda`` from the raw LoveDA zips (synthetic fixture: tests/rawfixtures/loveda.py)."""

import hashlib
import io
import re
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image
from rawfixtures import loveda
from rawfixtures.common import prepare_error, run_prepare
from rawfixtures.index_png import check_untiled, prepare_tiled, read_index_png, read_raw, to_native

from ovrsisbench.data.native import NATIVE_CLASSES

CLASSES = NATIVE_CLASSES["loveda"]
SPEC_MD5 = {  # spec section 8 (torchgeo); a synthetic zip never matches
    "Train.zip": "de2b196043ed9b4af1690b3f9a7d558f",
    "Val.zip": "84cae2577468ff0b5386758bb386d31d",
    "Test.zip": "a489be0090465e01fb067795d24e6b47",
}


@pytest.mark.parametrize("archives", [False, True])
def test_fixture_decodes_as_claimed(tmp_path, archives):
    """The generator on its own: the raw files hold what ``expected`` says they do."""
    fixture = loveda.write_raw(tmp_path / "raw", archives=archives)
    top = sorted(path.name for path in fixture.src.iterdir())
    assert top == (["Test.zip", "Train.zip", "Val.zip"] if archives else ["Test", "Train", "Val"])
    for stem, item in fixture.expected.items():
        pattern = rf"(Train|Val)/(Urban|Rural)/masks_png/{stem}\.png$"
        assert re.search(pattern, item.source_label)
        assert item.split == re.search(pattern, item.source_label)[1].lower()
        mode, raw, _ = read_index_png(io.BytesIO(read_raw(fixture.src, item.source_label)))
        assert mode == "L"
        assert set(range(loveda.NUM_CLASSES)) | set(loveda.INVALID) == set(np.unique(raw).tolist())
        label, unmatched = to_native(raw, loveda.NUM_CLASSES)
        np.testing.assert_array_equal(label, item.label)
        assert unmatched == item.unmatched > 0
        assert (item.label == 0).any()  # no-data stays native 0
        data = read_raw(fixture.src, item.source_label.replace("/masks_png/", "/images_png/"))
        assert data == fixture.notes["image_bytes"][stem]
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG" and image.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(image), item.image)
    assert len({item.label.shape for item in fixture.expected.values()}) == len(fixture.expected)
    if archives:
        for name in loveda.ARCHIVES:
            with zipfile.ZipFile(fixture.src / name) as archive:
                names = archive.namelist()
            assert all(entry.startswith(name.removesuffix(".zip") + "/") for entry in names)
        with zipfile.ZipFile(fixture.src / "Test.zip") as archive:
            assert not [entry for entry in archive.namelist() if "masks_png" in entry]
    else:
        assert not list((fixture.src / "Test").rglob("masks_png"))
        assert list((fixture.src / "Test").rglob("*.png"))


def _check_untiled(data_root, fixture) -> dict:
    """PNG bytes copied; no-data (0) is a class, not "unlabelled"."""
    meta = check_untiled(data_root, "loveda", fixture, CLASSES)
    assert meta["verification"]["pixels"]["no-data"] > 0
    return meta


def test_prepare_folders_default_untiled(cli, tmp_path):
    fixture = loveda.write_raw(tmp_path / "raw")
    run_prepare(cli, "loveda", fixture.src, tmp_path / "data")
    _check_untiled(tmp_path / "data", fixture)


def test_prepare_zips_with_checksums(cli, tmp_path):
    fixture = loveda.write_raw(tmp_path / "raw", archives=True)
    run_prepare(cli, "loveda", fixture.src, tmp_path / "data")
    meta = _check_untiled(tmp_path / "data", fixture)
    entries = {entry["file"]: entry for entry in meta["checksums"]}
    # Train.zip and Val.zip are read, so they must be listed; Test.zip (unlabelled, not read)
    # may be listed or not, but if it is, its entry must be right as well.
    assert {"Train.zip", "Val.zip"} <= set(entries) <= set(SPEC_MD5)
    assert len(entries) == len(meta["checksums"])
    for name, entry in entries.items():
        observed = hashlib.md5((fixture.src / name).read_bytes()).hexdigest()
        assert entry == {"file": name, "md5": observed, "expected": SPEC_MD5[name], "match": False}


def test_prepare_tiled_drop(cli, tmp_path):
    fixture = loveda.write_raw(tmp_path / "raw")
    tiles = prepare_tiled(cli, "loveda", fixture, tmp_path / "data", CLASSES, 32, 24, "drop")
    assert len(tiles) == 10  # 48x40: 1, 36x52: 1, 64x64: 4, 40x72: 2, 56x33: 2


@pytest.mark.parametrize(
    ("source", "target"),
    [(("Train", "Rural"), ("Train", "Urban")), (("Train", "Rural"), ("Val", "Rural"))],
    ids=["urban-rural", "train-val"],
)
def test_prepare_rejects_colliding_ids(cli, tmp_path, source, target):
    """The flattened stems must be unique: the same id twice is an error naming both files and
    where the id repeats (the official release never repeats one), not an archive beside its
    extracted copy."""
    fixture = loveda.write_raw(tmp_path / "raw")
    for folder in ("images_png", "masks_png"):
        into = fixture.src.joinpath(*target, folder)
        shutil.copy(fixture.src.joinpath(*source, folder, "10.png"), into / "10.png")
    line = prepare_error(cli, "loveda", fixture.src, tmp_path / "data")
    for top, area in (source, target):
        assert re.search(rf"{top}/{area}/(images|masks)_png/10\.png", line), line
    places = sorted("/".join(place) for place in (source, target))
    assert f"id 10 is in both {places[0]} and {places[1]}" in line
    assert "the official LoveDA never repeats an id across Train/Val and Urban/Rural" in line
    assert "archive" not in line


def test_prepare_names_a_zip_beside_its_extracted_copy(cli, tmp_path):
    """The same download twice (Train.zip and its extracted Train/): both paths and that cause."""
    loveda.write_raw(tmp_path / "raw", archives=True)
    fixture = loveda.write_raw(tmp_path / "raw")  # extracted beside the zips
    line = prepare_error(cli, "loveda", fixture.src, tmp_path / "data")
    assert re.search(r"Train\.zip/Train/Rural/(images|masks)_png/10\.png", line), line
    assert re.search(r" Train/Rural/(images|masks)_png/10\.png", line), line
    assert "the same download twice (an archive beside its extracted copy?)" in line
