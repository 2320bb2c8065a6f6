"""Tile windows (``ovrsisbench.data.tiling``) against the mmseg converters the README compares
them with (spec datasets.md sections 3 and 4)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ovrsisbench.data.tiling import Tiling

README = Path(__file__).parents[1] / "README.md"
LENGTHS = [512, 600, 897, 1024, 1919, 2569, 6000]  # Vaihingen area1 is 1919 x 2569


def _mmseg_isprs_starts(length: int, clip: int, stride: int) -> list[int]:
    """Window starts along one side as mmseg's ISPRS converters (``clip_big_image`` of
    tools/dataset_converters/potsdam.py and vaihingen.py) place them: how many from the stride,
    where from the clip size, windows past the border moved back inside it; windows that then
    coincide overwrite one file."""
    steps = math.ceil((length - clip) / stride)
    count = steps if steps * stride + clip >= length else steps + 1
    return sorted({min(i * clip, length - clip) for i in range(count + 1)})


def _mmseg_isaid_starts(length: int, patch: int, stride: int) -> list[int]:
    """As mmseg's iSAID converter (``slide_crop_image``): a window every stride, each one past
    the border moved back inside it."""
    return sorted({min(start, length - patch) for start in range(0, length, stride)})


@pytest.mark.parametrize("length", LENGTHS)
def test_clamp_gives_mmseg_isprs_windows_with_tile_and_stride_512(length):
    """mmseg's defaults (clip 512, stride 256) step by the clip size: our stride must be 512."""
    assert Tiling(512, 512, "clamp").starts(length) == _mmseg_isprs_starts(length, 512, 256)


def test_clamp_with_another_stride_is_not_mmseg_isprs():
    assert Tiling(512, 256, "clamp").starts(6000) != _mmseg_isprs_starts(6000, 512, 256)
    assert len(Tiling(512, 512, "clamp").windows(6000, 6000)) == 144  # spec: 12 x 12 per tile


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("stride", [256, 384, 512])
def test_clamp_gives_mmseg_isaid_windows(length, stride):
    """Any stride up to the tile (mmseg's is the window minus a non-negative overlap)."""
    if length > 512:
        assert Tiling(512, stride, "clamp").starts(length) == _mmseg_isaid_starts(
            length, 512, stride
        )


def test_readme_says_when_clamp_matches_mmseg():
    [row] = [line for line in README.read_text().splitlines() if line.startswith("| `clamp` |")]
    assert "mmseg's iSAID converter" in row
    assert "mmseg's ISPRS converters only with `--tile 512 --stride 512`" in row
