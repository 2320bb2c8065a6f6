"""Pieces shared by the fixtures of the index-PNG datasets (UDD5, LoveDA, VDD).

Their raw labels are single-channel PNGs whose values are the native ids; any other value is off
the table: expected 255 and counted as unmatched. Also: JPEG/PNG image writers that return the
pixels a reader decodes, a deterministic zip packer, and the check of ``meta["verification"]``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from .common import IGNORE, ExpectedImage, RawFixture

_ZIP_TIME = (2021, 6, 1, 12, 0, 0)


def label_map(rng: np.random.Generator, height: int, width: int, num_classes: int) -> np.ndarray:
    """Blocky native ids (cells of 5-9 px) in which every class 0..num_classes-1 appears."""
    cell = int(rng.integers(5, 10))
    rows, cols = -(-height // cell), -(-width // cell)
    grid = rng.integers(0, num_classes, (rows, cols))
    grid.flat[:num_classes] = rng.permutation(num_classes)
    label = np.kron(grid, np.ones((cell, cell), np.int64))[:height, :width]
    return label.astype(np.uint8)


def add_invalid(
    rng: np.random.Generator, label: np.ndarray, values: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Scatter a few pixels of each off-table ``values`` into ``label``.

    Returns (raw values to write, expected native label with those pixels at 255, their count).
    """
    raw = label.copy()
    flat = raw.reshape(-1)
    positions = rng.permutation(flat.size)
    start = 0
    for value in values:
        count = int(rng.integers(2, 9))
        flat[positions[start : start + count]] = value
        start += count
    expected = label.copy()
    expected.reshape(-1)[positions[:start]] = IGNORE
    return raw, expected, start


def random_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth-ish RGB image (gradient plus noise) so that JPEG keeps it recognisable."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([yy * 3, xx * 3, (yy + xx) * 2], axis=-1)
    noise = rng.integers(0, 60, (height, width, 3))
    return ((base + noise) % 256).astype(np.uint8)


def write_jpeg(path: Path, image: np.ndarray) -> np.ndarray:
    """Write ``image`` as JPEG; return what PIL decodes from the file (the converter's input)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG", quality=90)
    with Image.open(path) as decoded:
        assert decoded.format == "JPEG"
        return np.asarray(decoded.convert("RGB")).copy()


def write_png_rgb(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")


def write_index_png(path: Path, raw: np.ndarray, palette: list[tuple[int, int, int]] | None = None):
    """Write ``raw`` values as an 8-bit PNG: mode L, or mode P with ``palette`` (rest black)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(raw)
    assert image.mode == "L"
    if palette is not None:
        entries = list(palette) + [(0, 0, 0)] * (256 - len(palette))
        image.putpalette([channel for colour in entries for channel in colour])
        assert image.mode == "P"
    image.save(path, format="PNG")
    with Image.open(path) as back:  # round trip: the values on disk are the values we claim
        assert back.mode == ("P" if palette is not None else "L")
        np.testing.assert_array_equal(np.asarray(back), raw)


def read_index_png(data) -> tuple[str, np.ndarray, list[int] | None]:
    """Mode, raw values and palette (flat RGB list, or None) of an index PNG (path or file)."""
    with Image.open(data) as image:
        palette = image.getpalette() if image.mode == "P" else None
        return image.mode, np.asarray(image).copy(), palette


def read_raw(src: Path, rel: str) -> bytes:
    """Bytes of the raw file ``rel`` under ``src``; ``<name>.zip/<member>`` reads inside a zip."""
    first, _, member = rel.partition("/")
    if first.endswith(".zip") and (Path(src) / first).is_file():
        with zipfile.ZipFile(Path(src) / first) as archive:
            return archive.read(member)
    return (Path(src) / rel).read_bytes()


def to_native(raw: np.ndarray, num_classes: int) -> tuple[np.ndarray, int]:
    """What a converter must make of raw index values: (native label, unmatched pixel count)."""
    bad = raw >= num_classes
    return np.where(bad, IGNORE, raw).astype(np.uint8), int(bad.sum())


def pack_zip(zip_path: Path, folder: Path, prefix: str) -> list[str]:
    """Zip every file under ``folder`` as ``<prefix>/<relative path>`` (with directory entries).

    Fixed timestamps and sorted entries make the archive bytes deterministic. Returns the names.
    """
    names = []
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        parts = prefix.split("/")
        for depth in range(1, len(parts) + 1):
            names.append("/".join(parts[:depth]) + "/")
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            names.append(f"{prefix}/{rel}/" if path.is_dir() else f"{prefix}/{rel}")
        for name in names:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            if name.endswith("/"):
                info.external_attr = (0o40755 << 16) | 0x10
                archive.writestr(info, b"")
            else:
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o100644 << 16
                archive.writestr(info, (folder / name[len(prefix) + 1 :]).read_bytes())
    return [name for name in names if not name.endswith("/")]


def assert_verification(
    meta: dict,
    fixture: RawFixture,
    tiles: dict[str, ExpectedImage],
    classes: tuple[str, ...],
    *,
    archives: bool = False,
) -> None:
    """Check ``meta["verification"]`` against the fixture (raw counts) and the expected tiles.

    ``unmatched_by_file`` keys name the raw label relative to ``--src``; inside an archive the
    exact spelling is the converter's choice, so there a key must end with the member path
    (``source_label`` of archive fixtures is ``<zip name>/<member>``).
    """
    verification = meta["verification"]
    assert verification["unmatched_pixels"] == fixture.unmatched > 0
    want = {
        item.source_label: item.unmatched for item in fixture.expected.values() if item.unmatched
    }
    got = verification["unmatched_by_file"]
    if archives:
        assert len(got) == len(want), got
        for label, count in want.items():
            member = label.split("/", 1)[1]
            hits = [key for key in got if key == member or key.endswith("/" + member)]
            hits = hits or [key for key in got if key.endswith(member)]
            assert len(hits) == 1, (member, got)
            assert got[hits[0]] == count, (member, got)
    else:
        assert got == want
    assert verification["bad_inputs"] == []
    counts = np.bincount(
        np.concatenate([item.label.reshape(-1) for item in tiles.values()]), minlength=256
    )
    assert counts[len(classes) : IGNORE].sum() == 0  # the oracle itself holds only ids and 255
    expected = {name: int(counts[index]) for index, name in enumerate(classes)}
    expected["unlabelled"] = int(counts[IGNORE])
    pixels = verification["pixels"]
    assert set(pixels) <= set(expected), pixels
    assert {k: v for k, v in pixels.items() if v} == {k: v for k, v in expected.items() if v}
