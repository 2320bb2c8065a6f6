"""What a prepared dataset must contain, and the checks of a prepared folder against it.

Also the one ``prepare`` call every converter test uses (``run_prepare``, ``prepare_error``) and
the one check of ``meta["verification"]`` (``check_verification``, ``check_pixels``).

The tiling here is an independent, deliberately plain re-statement of the rules documented in the
README (``drop``, ``clamp``, ``pad``), used as the test oracle for the converters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IGNORE = 255


@dataclass
class ExpectedImage:
    """One source image as the converter must see it (before tiling)."""

    image: np.ndarray  # (H, W, 3) uint8, bands in file order (RGB; IRRG for Vaihingen)
    label: np.ndarray  # (H, W) uint8 native ids, 255 = unlabelled / off-palette
    split: str | None  # official split of the source image (None: only in "all")
    unmatched: int = 0  # pixels whose raw value/colour is in no palette (must be counted)
    source_label: str = ""  # raw label path under the fixture root; in a zip "<zip>/<member>"


@dataclass
class RawFixture:
    """A generated raw download: pass ``src`` to ``prepare``; ``expected`` is keyed by base stem."""

    src: Path
    expected: dict[str, ExpectedImage]
    notes: dict = field(default_factory=dict)

    @property
    def unmatched(self) -> int:
        return sum(item.unmatched for item in self.expected.values())


def _starts(length: int, tile: int, stride: int, edge: str) -> list[int]:
    if edge == "drop":
        return list(range(0, length - tile + 1, stride))
    if length <= tile:
        return [0]
    if edge == "clamp":
        starts = list(range(0, length - tile, stride))
        return starts + [length - tile] if starts[-1] != length - tile else starts
    if edge == "pad":
        return [i * stride for i in range(math.ceil((length - tile) / stride) + 1)]
    raise ValueError(edge)


def expected_tiles(
    expected: dict[str, ExpectedImage], tile: int | None, stride: int | None = None, edge="drop"
) -> dict[str, ExpectedImage]:
    """Cut every expected image as the converter must (``tile=None``: whole images)."""
    if tile is None:
        return dict(expected)
    stride = stride or tile
    out: dict[str, ExpectedImage] = {}
    for base, item in expected.items():
        height, width = item.label.shape
        for y0 in _starts(height, tile, stride, edge):
            for x0 in _starts(width, tile, stride, edge):
                image = np.zeros((tile, tile, 3), np.uint8)
                label = np.full((tile, tile), IGNORE, np.uint8)
                crop = item.label[y0 : y0 + tile, x0 : x0 + tile]
                label[: crop.shape[0], : crop.shape[1]] = crop
                image[: crop.shape[0], : crop.shape[1]] = item.image[y0 : y0 + tile, x0 : x0 + tile]
                stem = f"{base}_{y0}_{y0 + tile}_{x0}_{x0 + tile}"
                out[stem] = ExpectedImage(image, label, item.split)
    return out


def assert_prepared(data_root: Path, name: str, expected: dict[str, ExpectedImage]) -> dict:
    """Check every output image and label pixel and the split files; return the meta.json dict."""
    from ovrsisbench.data.layout import open_dataset

    dataset = open_dataset(data_root, name)
    assert dataset.stems("all") == sorted(expected)
    for stem, item in expected.items():
        image, label = dataset.read_sample(stem)
        np.testing.assert_array_equal(label, item.label, err_msg=f"label of {stem}")
        np.testing.assert_array_equal(image, item.image, err_msg=f"image of {stem}")
    splits = sorted({item.split for item in expected.values() if item.split})
    assert dataset.split_names() == ["all", *splits]
    for split in splits:
        want = sorted(stem for stem, item in expected.items() if item.split == split)
        assert dataset.stems(split) == want, split
    meta = dataset.meta.to_json()
    assert meta["splits"] == {
        "all": len(expected),
        **{s: sum(item.split == s for item in expected.values()) for s in splits},
    }
    return meta


def check_pixels(meta: dict, tiles: dict[str, ExpectedImage], classes) -> None:
    """``meta["verification"]["pixels"]`` counts every class name (and "unlabelled") of ``tiles``.

    Names with no pixels may be left out or listed as 0; any other name is an error.
    """
    counts = np.zeros(256, np.int64)
    for item in tiles.values():
        counts += np.bincount(item.label.ravel(), minlength=256)
    assert counts[len(classes) : IGNORE].sum() == 0  # the oracle itself holds only ids and 255
    want = {name: int(counts[index]) for index, name in enumerate(classes)}
    want["unlabelled"] = int(counts[IGNORE])
    pixels = meta["verification"]["pixels"]
    assert set(pixels) <= set(want), pixels
    assert {k: v for k, v in pixels.items() if v} == {k: v for k, v in want.items() if v}


def check_verification(
    meta: dict, fixture: RawFixture, tiles: dict[str, ExpectedImage], classes
) -> None:
    """Check ``meta["verification"]`` against the raw fixture and the expected ``tiles``.

    The fixture must have unmatched pixels (so that counting them is tested). Each
    ``unmatched_by_file`` key must be the fixture's ``source_label`` to the letter: the label's
    path under ``--src`` with archives read as folders (``<zip>/<member>``, e.g.
    ``5_Labels_all.zip/5_Labels_all/top_potsdam_2_10_label.tif``).
    """
    verification = meta["verification"]
    assert verification["unmatched_pixels"] == fixture.unmatched > 0
    want = {e.source_label: e.unmatched for e in fixture.expected.values() if e.unmatched}
    assert verification["unmatched_by_file"] == want
    assert verification["bad_inputs"] == []
    check_pixels(meta, tiles, classes)


def run_prepare(cli, dataset: str, src: Path, data_root: Path, *args, code: int = 0):
    """``ovrsisbench prepare <dataset> --src <src> --data-root <data_root> <args>``; check its exit
    code (0 unless ``code`` says otherwise) and return the CLI result."""
    result = cli("prepare", dataset, "--src", src, "--data-root", data_root, *args)
    assert result.code == code, result.err
    return result


def prepare_error(cli, dataset: str, src: Path, data_root: Path, *args) -> str:
    """A ``prepare`` that must stop with a user error: exit code 2, the last line of stderr an
    ``error:`` line (returned), and no ``meta.json`` written."""
    result = run_prepare(cli, dataset, src, data_root, *args, code=2)
    line = result.err.strip().splitlines()[-1]
    assert line.startswith("error:")
    assert not (Path(data_root) / dataset / "meta.json").exists()
    return line
