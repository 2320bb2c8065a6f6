"""Pieces shared by the fixtures of the index-PNG datasets (UDD5, LoveDA, VDD).

Their raw labels are single-channel PNGs whose values are the native ids; any other value is off
the table: expected 255 and counted as unmatched. Also: JPEG/PNG image writers that return the
pixels a reader decodes, a deterministic zip packer, the writer of a download either extracted or
as zips, the ``<top>/<split>/{src,gt}`` format that UDD5 and VDD share, and the checks of an
untiled prepared dataset and of the generated files.
"""

from __future__ import annotations

import io
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .common import (
    IGNORE,
    ExpectedImage,
    RawFixture,
    assert_prepared,
    check_verification,
    expected_tiles,
    prepare_error,
    run_prepare,
)

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


Written = tuple[dict[str, ExpectedImage], dict[str, bytes]]


def write_download(
    root: Path,
    write: Callable[[Path], Written],
    *,
    archives: bool,
    prefixes: dict[str, str],
    image_suffix: str,
) -> RawFixture:
    """Write a download under ``root`` (the ``--src`` folder) with ``write(base)``.

    ``write`` lays the extracted files out under ``base`` and returns (expected, image bytes), each
    ``source_label`` relative to ``base``. With ``archives`` it writes to a staging folder and
    every top folder ``F`` named in ``prefixes`` is packed into ``root/F.zip`` with its members
    under ``prefixes[F]``; the labels then become ``F.zip/<prefix>/<rest>`` (logical paths).
    ``notes["image_name"]`` is ``<stem><image_suffix>``, ``notes["image_bytes"]`` the raw bytes.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if not archives:
        expected, image_bytes = write(root)
    else:
        with tempfile.TemporaryDirectory() as staging:
            expected, image_bytes = write(Path(staging))
            for top, prefix in prefixes.items():
                pack_zip(root / f"{top}.zip", Path(staging) / top, prefix)
        for item in expected.values():
            top, rest = item.source_label.split("/", 1)
            item.source_label = f"{top}.zip/{prefixes[top]}/{rest}"
    names = {stem: f"{stem}{image_suffix}" for stem in expected}
    return RawFixture(root, expected, {"image_name": names, "image_bytes": image_bytes})


@dataclass(frozen=True)
class SrcGt:
    """A ``<top>/<split>/{src,gt}`` download (UDD5, VDD): ``src/<stem>.JPG``, ``gt/<stem>.png``.

    Labels are index PNGs (mode "P" with ``palette``, else mode "L") holding ids
    ``0..num_classes-1`` plus a few pixels of each ``invalid`` value. The archive form is
    ``<top>.zip`` with the members under ``zip_prefix`` (default ``<top>``).
    """

    top: str
    files: tuple[tuple[str, str, int, int], ...]  # (split, stem, height, width)
    num_classes: int
    invalid: tuple[int, ...]
    seed: int
    palette: tuple[tuple[int, int, int], ...] | None = None
    zip_prefix: str | None = None

    @property
    def archive(self) -> str:
        return f"{self.top}.zip"

    def prefix(self, archives: bool) -> str:
        """The logical folder that holds the splits (``UDD5`` or ``UDD5.zip/UDD5``)."""
        return f"{self.archive}/{self.zip_prefix or self.top}" if archives else self.top

    def _write(self, base: Path) -> Written:
        rng = np.random.default_rng(self.seed)
        expected: dict[str, ExpectedImage] = {}
        image_bytes: dict[str, bytes] = {}
        for split, stem, height, width in self.files:
            src = base / self.top / split / "src" / f"{stem}.JPG"
            gt = base / self.top / split / "gt" / f"{stem}.png"
            image = write_jpeg(src, random_image(rng, height, width))
            native = label_map(rng, height, width, self.num_classes)
            raw, label, unmatched = add_invalid(rng, native, self.invalid)
            write_index_png(gt, raw, None if self.palette is None else list(self.palette))
            rel = gt.relative_to(base).as_posix()
            expected[stem] = ExpectedImage(image, label, split, unmatched, rel)
            image_bytes[stem] = src.read_bytes()
        return expected, image_bytes

    def write_raw(self, root: Path, *, archives: bool = False) -> RawFixture:
        """Write the fixture under ``root`` (``archives``: as ``<top>.zip``)."""
        prefixes = {self.top: self.zip_prefix or self.top}
        return write_download(
            root, self._write, archives=archives, prefixes=prefixes, image_suffix=".JPG"
        )

    def check_fixture(self, fixture: RawFixture, *, archives: bool, splits: dict[str, int]):
        """The generator on its own: the raw files hold what ``fixture.expected`` says, and it
        has ``splits`` images per split."""
        top = sorted(path.name for path in fixture.src.iterdir())
        assert top == ([self.archive] if archives else [self.top])
        prefix = self.prefix(archives)
        want_palette = [c for colour in self.palette or () for c in colour]
        for stem, item in fixture.expected.items():
            assert item.source_label == f"{prefix}/{item.split}/gt/{stem}.png"
            data = read_raw(fixture.src, item.source_label)
            mode, raw, palette = read_index_png(io.BytesIO(data))
            assert mode == ("P" if self.palette else "L")
            if self.palette:
                assert palette[: len(want_palette)] == want_palette
            assert set(range(self.num_classes)) | set(self.invalid) == set(np.unique(raw).tolist())
            label, unmatched = to_native(raw, self.num_classes)
            np.testing.assert_array_equal(label, item.label)
            assert unmatched == item.unmatched > 0
            data = read_raw(fixture.src, f"{prefix}/{item.split}/src/{stem}.JPG")
            assert data == fixture.notes["image_bytes"][stem]
            with Image.open(io.BytesIO(data)) as image:
                assert image.format == "JPEG"
                np.testing.assert_array_equal(np.asarray(image.convert("RGB")), item.image)
            assert item.image.shape[:2] == item.label.shape
        assert len(fixture.expected) == len(self.files)
        got = [item.split for item in fixture.expected.values()]
        assert {split: got.count(split) for split in got} == splits
        assert len({item.label.shape for item in fixture.expected.values()}) == len(self.files)
        if archives:
            with zipfile.ZipFile(fixture.src / self.archive) as archive:
                assert all(name.startswith(f"{self.top}/") for name in archive.namelist())

    def check_stem_in_two_splits(
        self, cli, name: str, fixture: RawFixture, data_root: Path, stem: str, splits: tuple
    ) -> None:
        """Copy the image and label of ``stem`` from split ``splits[0]`` into ``splits[1]``: prepare
        must stop with an ``error:`` line naming the files of both splits, writing no meta."""
        base = Path(fixture.src) / self.top
        source, target = splits
        for folder, file_name in (("src", f"{stem}.JPG"), ("gt", f"{stem}.png")):
            shutil.copy(base / source / folder / file_name, base / target / folder / file_name)
        line = prepare_error(cli, name, fixture.src, data_root)
        for split in splits:
            pattern = rf"{self.top}/{split}/(src|gt)/{re.escape(stem)}\.(JPG|png)"
            assert re.search(pattern, line), line


def check_untiled(data_root: Path, name: str, fixture: RawFixture, classes) -> dict:
    """An untiled prepare of an index-PNG fixture: every pixel, split and the verification, and
    each image file copied byte for byte under its own name (extension case kept)."""
    meta = assert_prepared(data_root, name, fixture.expected)
    assert meta["classes"] == list(classes)
    assert meta["tiling"] == {"tile": None, "stride": None, "edge": None}
    assert meta["source"]["kind"] == "raw"
    check_verification(meta, fixture, fixture.expected, classes)
    images = Path(data_root) / name / "images"
    names = fixture.notes["image_name"]
    assert sorted(path.name for path in images.iterdir()) == sorted(names.values())
    for stem, file_name in names.items():
        assert (images / file_name).read_bytes() == fixture.notes["image_bytes"][stem]
    return meta


def prepare_tiled(
    cli, name: str, fixture: RawFixture, data_root: Path, classes, tile: int, stride, edge: str
) -> dict[str, ExpectedImage]:
    """``prepare`` an index-PNG fixture into ``tile`` px PNG tiles (``stride`` None: not passed,
    so the default, ``tile``); check every tile, the tiling in meta and the verification.

    Returns the expected tiles.
    """
    data_root = Path(data_root)
    args = ["--tile", str(tile), "--edge", edge]
    if stride is not None:
        args += ["--stride", str(stride)]
    run_prepare(cli, name, fixture.src, data_root, *args)
    tiles = expected_tiles(fixture.expected, tile, stride, edge)
    meta = assert_prepared(data_root, name, tiles)
    assert meta["tiling"] == {"tile": tile, "stride": stride or tile, "edge": edge}
    images = sorted((data_root / name / "images").iterdir())
    assert len(images) == len(tiles) and {path.suffix for path in images} == {".png"}
    check_verification(meta, fixture, tiles, classes)
    return tiles
