"""``prepare vdd`` from a raw VDD download (synthetic fixture: tests/rawfixtures/vdd.py)."""

import io
import re
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image
from rawfixtures import vdd
from rawfixtures.common import assert_prepared, expected_tiles
from rawfixtures.index_png import assert_verification, read_index_png, read_raw, to_native

from ovrsisbench.data.native import NATIVE_CLASSES

CLASSES = NATIVE_CLASSES["vdd"]
UNTILED = {"tile": None, "stride": None, "edge": None}


def _prepare(cli, fixture, data_root, *args):
    result = cli("prepare", "vdd", "--src", fixture.src, "--data-root", data_root, *args)
    assert result.code == 0, result.err
    return result


@pytest.mark.parametrize("archives", [False, True])
def test_fixture_decodes_as_claimed(tmp_path, archives):
    """The generator on its own: the raw files hold what ``expected`` says they do."""
    fixture = vdd.write_raw(tmp_path / "raw", archives=archives)
    top = sorted(path.name for path in fixture.src.iterdir())
    assert top == (["VDD.zip"] if archives else ["VDD"])
    prefix = "VDD.zip/VDD/VDD" if archives else "VDD"
    for stem, item in fixture.expected.items():
        assert item.source_label == f"{prefix}/{item.split}/gt/{stem}.png"
        mode, raw, _ = read_index_png(io.BytesIO(read_raw(fixture.src, item.source_label)))
        assert mode == "L"
        assert set(range(vdd.NUM_CLASSES)) | set(vdd.INVALID) == set(np.unique(raw).tolist())
        label, unmatched = to_native(raw, vdd.NUM_CLASSES)
        np.testing.assert_array_equal(label, item.label)
        assert unmatched == item.unmatched > 0
        data = read_raw(fixture.src, f"{prefix}/{item.split}/src/{stem}.JPG")
        assert data == fixture.notes["image_bytes"][stem]
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "JPEG"
            np.testing.assert_array_equal(np.asarray(image.convert("RGB")), item.image)
    assert len({item.label.shape for item in fixture.expected.values()}) == len(fixture.expected)
    splits = [item.split for item in fixture.expected.values()]
    assert {split: splits.count(split) for split in splits} == {"train": 2, "val": 2, "test": 2}
    if archives:
        with zipfile.ZipFile(fixture.src / "VDD.zip") as archive:
            assert all(name.startswith("VDD/") for name in archive.namelist())


def _check_untiled(data_root, fixture, *, archives):
    meta = assert_prepared(data_root, "vdd", fixture.expected)
    assert meta["classes"] == list(CLASSES)
    assert meta["tiling"] == UNTILED
    assert meta["source"]["kind"] == "raw"
    assert_verification(meta, fixture, fixture.expected, CLASSES, archives=archives)
    images = data_root / "vdd" / "images"
    names = fixture.notes["image_name"]
    assert sorted(path.name for path in images.iterdir()) == sorted(names.values())
    for stem, name in names.items():  # JPEG bytes copied, upper-case extension kept
        assert (images / name).read_bytes() == fixture.notes["image_bytes"][stem]


def test_prepare_folders_default_untiled(cli, tmp_path):
    fixture = vdd.write_raw(tmp_path / "raw")
    _prepare(cli, fixture, tmp_path / "data")
    _check_untiled(tmp_path / "data", fixture, archives=False)


def test_prepare_nested_zip(cli, tmp_path):
    fixture = vdd.write_raw(tmp_path / "raw", archives=True)
    _prepare(cli, fixture, tmp_path / "data")
    _check_untiled(tmp_path / "data", fixture, archives=True)


@pytest.mark.parametrize("archives", [False, True], ids=["folders", "zip"])
def test_prepare_tiled_pad(cli, tmp_path, archives):
    """JPEG sources cut into PNG tiles; windows past the border padded (image 0, label 255)."""
    fixture = vdd.write_raw(tmp_path / "raw", archives=archives)
    data_root = tmp_path / "data"
    _prepare(cli, fixture, data_root, "--tile", "16", "--edge", "pad")
    tiles = expected_tiles(fixture.expected, 16, None, "pad")
    assert len(tiles) == 58  # 3x4 + 2x3 + 3x3 + 3x3 + 4x4 + 2x3 (FILES sizes)
    meta = assert_prepared(data_root, "vdd", tiles)
    assert meta["tiling"] == {"tile": 16, "stride": 16, "edge": "pad"}
    images = sorted((data_root / "vdd" / "images").iterdir())
    assert len(images) == len(tiles) and {path.suffix for path in images} == {".png"}
    assert_verification(meta, fixture, tiles, CLASSES, archives=archives)


def test_prepare_rejects_name_in_two_splits(cli, tmp_path):
    fixture = vdd.write_raw(tmp_path / "raw")
    base = fixture.src / "VDD"
    for folder, name in (("src", "DJI_0240.JPG"), ("gt", "DJI_0240.png")):
        shutil.copy(base / "test" / folder / name, base / "train" / folder / name)
    data_root = tmp_path / "data"
    result = cli("prepare", "vdd", "--src", fixture.src, "--data-root", data_root)
    assert result.code == 2
    line = result.err.strip().splitlines()[-1]
    assert line.startswith("error:")
    for split in ("train", "test"):
        assert re.search(rf"VDD/{split}/(src|gt)/DJI_0240\.(JPG|png)", line), line
    assert not (data_root / "vdd" / "meta.json").exists()
