"""``prepare udd5`` from a raw UDD5 download (synthetic fixture: tests/rawfixtures/udd5.py)."""

import pytest
from rawfixtures import udd5
from rawfixtures.common import run_prepare
from rawfixtures.index_png import check_untiled, prepare_tiled

from ovrsisbench.data.native import NATIVE_CLASSES

CLASSES = NATIVE_CLASSES["udd5"]


@pytest.mark.parametrize("archives", [False, True])
def test_fixture_decodes_as_claimed(tmp_path, archives):
    """The generator on its own: mode "P" labels with the UDD5 palette, JPEG images."""
    fixture = udd5.write_raw(tmp_path / "raw", archives=archives)
    udd5.FORMAT.check_fixture(fixture, archives=archives, splits={"train": 3, "val": 2})


@pytest.mark.parametrize("archives", [False, True], ids=["folders", "zip"])
def test_prepare_default_untiled(cli, tmp_path, archives):
    """Every pixel and the verification; JPEG bytes copied, upper-case extension kept."""
    fixture = udd5.write_raw(tmp_path / "raw", archives=archives)
    run_prepare(cli, "udd5", fixture.src, tmp_path / "data")
    check_untiled(tmp_path / "data", "udd5", fixture, CLASSES)


def test_prepare_tiled_clamp(cli, tmp_path):
    fixture = udd5.write_raw(tmp_path / "raw")
    tiles = prepare_tiled(cli, "udd5", fixture, tmp_path / "data", CLASSES, 24, 16, "clamp")
    assert len(tiles) == 37  # 6 + 9 + 8 + 8 + 6


def test_prepare_rejects_id_in_two_splits(cli, tmp_path):
    fixture = udd5.write_raw(tmp_path / "raw")
    splits = ("val", "train")
    udd5.FORMAT.check_stem_in_two_splits(cli, "udd5", fixture, tmp_path / "data", "000061", splits)
