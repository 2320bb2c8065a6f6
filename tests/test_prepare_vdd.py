"""``prepare vdd`` from a raw VDD download (synthetic fixture: tests/rawfixtures/vdd.py)."""

import pytest
from rawfixtures import vdd
from rawfixtures.common import run_prepare
from rawfixtures.index_png import check_untiled, prepare_tiled

from ovrsisbench.data.native import NATIVE_CLASSES

CLASSES = NATIVE_CLASSES["vdd"]


@pytest.mark.parametrize("archives", [False, True])
def test_fixture_decodes_as_claimed(tmp_path, archives):
    """The generator on its own: mode "L" labels, JPEG images, three labelled splits."""
    fixture = vdd.write_raw(tmp_path / "raw", archives=archives)
    splits = {"train": 2, "val": 2, "test": 2}
    vdd.FORMAT.check_fixture(fixture, archives=archives, splits=splits)  # zip: VDD/VDD/...


@pytest.mark.parametrize("archives", [False, True], ids=["folders", "nested-zip"])
def test_prepare_default_untiled(cli, tmp_path, archives):
    """Every pixel and the verification; JPEG bytes copied, upper-case extension kept."""
    fixture = vdd.write_raw(tmp_path / "raw", archives=archives)
    run_prepare(cli, "vdd", fixture.src, tmp_path / "data")
    check_untiled(tmp_path / "data", "vdd", fixture, CLASSES)


@pytest.mark.parametrize("archives", [False, True], ids=["folders", "zip"])
def test_prepare_tiled_pad(cli, tmp_path, archives):
    """JPEG sources cut into PNG tiles; windows past the border padded (image 0, label 255).

    No ``--stride``: it defaults to the tile size.
    """
    fixture = vdd.write_raw(tmp_path / "raw", archives=archives)
    tiles = prepare_tiled(cli, "vdd", fixture, tmp_path / "data", CLASSES, 16, None, "pad")
    assert len(tiles) == 58  # 3x4 + 2x3 + 3x3 + 3x3 + 4x4 + 2x3 (FILES sizes)


def test_prepare_rejects_name_in_two_splits(cli, tmp_path):
    fixture = vdd.write_raw(tmp_path / "raw")
    splits = ("test", "train")
    vdd.FORMAT.check_stem_in_two_splits(cli, "vdd", fixture, tmp_path / "data", "DJI_0240", splits)
