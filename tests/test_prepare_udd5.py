"""``prepare udd5`` from a raw UDD5 download (synthetic fixture: tests/rawfixtures/udd5.py)."""

import io
import re
import shutil

import numpy as np
import pytest
from PIL import Image
from rawfixtures import udd5
from rawfixtures.common import assert_prepared, expected_tiles
from rawfixtures.index_png import assert_verification, read_index_png, read_raw, to_native

from ovrsisbench.data.native import NATIVE_CLASSES

CLASSES = NATIVE_CLASSES["udd5"]
UNTILED = {"tile": None, "stride": None, "edge": None}


def _prepare(cli, fixture, data_root, *args):
    result = cli("prepare", "udd5", "--src", fixture.src, "--data-root", data_root, *args)
    assert result.code == 0, result.err
    return result


@pytest.mark.parametrize("archives", [False, True])
def test_fixture_decodes_as_claimed(tmp_path, archives):
    """The generator on its own: the raw files hold what ``expected`` says they do."""
    fixture = udd5.write_raw(tmp_path / "raw", archives=archives)
    top = sorted(path.name for path in fixture.src.iterdir())
    assert top == (["UDD5.zip"] if archives else ["UDD5"])
    palette = [channel for colour in udd5.PALETTE for channel in colour]
    for stem, item in fixture.expected.items():
        assert re.search(rf"UDD5/{item.split}/gt/{stem}\.png$", item.source_label)
        data = read_raw(fixture.src, item.source_label)
        mode, raw, raw_palette = read_index_png(io.BytesIO(data))
        assert mode == "P" and raw_palette[: len(palette)] == palette
        assert set(range(udd5.NUM_CLASSES)) | set(udd5.INVALID) == set(np.unique(raw).tolist())
        label, unmatched = to_native(raw, udd5.NUM_CLASSES)
        np.testing.assert_array_equal(label, item.label)
        assert unmatched == item.unmatched > 0
        image_path = item.source_label.replace("/gt/", "/src/")[: -len(".png")] + ".JPG"
        data = read_raw(fixture.src, image_path)
        assert data == fixture.notes["image_bytes"][stem]
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "JPEG"
            np.testing.assert_array_equal(np.asarray(image.convert("RGB")), item.image)
        assert item.image.shape[:2] == item.label.shape
    assert len({item.label.shape for item in fixture.expected.values()}) == len(fixture.expected)
    assert [item.split for item in fixture.expected.values()].count("train") == 3
    assert [item.split for item in fixture.expected.values()].count("val") == 2


def _check_untiled(data_root, fixture, *, archives):
    meta = assert_prepared(data_root, "udd5", fixture.expected)
    assert meta["classes"] == list(CLASSES)
    assert meta["tiling"] == UNTILED
    assert meta["source"]["kind"] == "raw"
    assert_verification(meta, fixture, fixture.expected, CLASSES, archives=archives)
    images = data_root / "udd5" / "images"
    names = fixture.notes["image_name"]
    assert sorted(path.name for path in images.iterdir()) == sorted(names.values())
    for stem, name in names.items():  # JPEG bytes copied, upper-case extension kept
        assert (images / name).read_bytes() == fixture.notes["image_bytes"][stem]


def test_prepare_folders_default_untiled(cli, tmp_path):
    fixture = udd5.write_raw(tmp_path / "raw")
    _prepare(cli, fixture, tmp_path / "data")
    _check_untiled(tmp_path / "data", fixture, archives=False)


def test_prepare_zip(cli, tmp_path):
    fixture = udd5.write_raw(tmp_path / "raw", archives=True)
    _prepare(cli, fixture, tmp_path / "data")
    _check_untiled(tmp_path / "data", fixture, archives=True)


def test_prepare_tiled_clamp(cli, tmp_path):
    fixture = udd5.write_raw(tmp_path / "raw")
    data_root = tmp_path / "data"
    _prepare(cli, fixture, data_root, "--tile", "24", "--stride", "16", "--edge", "clamp")
    tiles = expected_tiles(fixture.expected, 24, 16, "clamp")
    assert len(tiles) == 37  # 6 + 9 + 8 + 8 + 6
    meta = assert_prepared(data_root, "udd5", tiles)
    assert meta["tiling"] == {"tile": 24, "stride": 16, "edge": "clamp"}
    images = sorted((data_root / "udd5" / "images").iterdir())
    assert len(images) == len(tiles) and {path.suffix for path in images} == {".png"}
    assert_verification(meta, fixture, tiles, CLASSES)


def test_prepare_rejects_id_in_two_splits(cli, tmp_path):
    fixture = udd5.write_raw(tmp_path / "raw")
    base = fixture.src / "UDD5"
    for folder, name in (("src", "000061.JPG"), ("gt", "000061.png")):
        shutil.copy(base / "val" / folder / name, base / "train" / folder / name)
    data_root = tmp_path / "data"
    result = cli("prepare", "udd5", "--src", fixture.src, "--data-root", data_root)
    assert result.code == 2
    line = result.err.strip().splitlines()[-1]
    assert line.startswith("error:")
    for split in ("train", "val"):
        assert re.search(rf"UDD5/{split}/(src|gt)/000061\.(JPG|png)", line), line
    assert not (data_root / "udd5" / "meta.json").exists()
