"""Converting one source pair and re-reading what was written (this runs in worker processes).

A worker decodes the label, reads the image fully (truncation shows), copies it whole or cuts
it into tiles, writes every file atomically and proves each label's round trip; the result
(outputs with their pixel counts, unmatched pixels) goes back to the engine's journal.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ovrsisbench.data.archives import file_digest
from ovrsisbench.data.converters.base import Converter, SourceFile, SourcePair
from ovrsisbench.data.layout import (
    IMAGE_SUFFIXES,
    check_label_values,
    image_size,
    open_pil_image,
    read_rgb,
    tiff_band_count,
    write_label,
    write_png,
)
from ovrsisbench.data.native import IGNORE_INDEX
from ovrsisbench.data.tiling import Tiling
from ovrsisbench.errors import DataError
from ovrsisbench.io import atomic_copy


@dataclass
class Output:
    stem: str
    image: str  # file name in images/
    split: str | None
    pixels: dict[str, int]  # label value (as text: JSON keys) -> pixel count


@dataclass
class PairResult:
    stem: str
    inputs: list  # [[logical path, size, mtime_ns], ...] of the image and the label
    label: str  # logical path of the raw label
    outputs: list[Output] = field(default_factory=list)
    unmatched: int = 0
    unmatched_values: dict[str, int] = field(default_factory=dict)
    snapped: int = 0
    sha256: dict[str, str] = field(default_factory=dict)
    bad: dict[str, str] | None = None  # {"path": logical path, "problem": one line}

    @classmethod
    def from_json(cls, data: dict) -> PairResult:
        return cls(**{**data, "outputs": [Output(**o) for o in data["outputs"]]})


@dataclass(frozen=True)
class Job:
    dataset: str
    kind: str
    options: tuple  # sorted (name, value) items, hashable for the converter cache
    tiling: Tiling
    out: Path
    pair: SourcePair
    inputs: list
    hash_inputs: bool


@lru_cache(maxsize=8)
def _cached_converter(dataset: str, kind: str, options: tuple) -> Converter:
    from ovrsisbench.data.converters import get_converter

    return get_converter(dataset, kind, dict(options))


def _histogram(label: np.ndarray) -> dict[str, int]:
    counts = np.bincount(label.ravel(), minlength=256)
    return {str(value): int(counts[value]) for value in np.flatnonzero(counts)}


class _BadInput(Exception):
    def __init__(self, file: SourceFile, problem: str) -> None:
        super().__init__(problem)
        self.file = file
        self.problem = problem


@contextmanager
def _blame(pair: SourcePair, file: SourceFile) -> Iterator[None]:
    """A DataError inside is a bad ``file``; its message names the pair's files by their path
    under --src (an extracted member's temporary path would mean nothing to the user)."""
    try:
        yield
    except DataError as error:
        problem = str(error)
        for named in (pair.image, pair.label):
            problem = problem.replace(str(named.real), named.logical)
        raise _BadInput(file, problem) from None


def _read_image(job: Job) -> np.ndarray:
    """The source image as (H, W, 3) uint8 in file band order; a TIFF must have exactly the
    bands the converter declares (e.g. Vaihingen's NIR, R, G), so no extra band goes unnoticed."""
    path = job.pair.image.real
    if path.suffix.lower() in (".tif", ".tiff"):
        bands = _cached_converter(job.dataset, job.kind, job.options).bands
        count = tiff_band_count(path)
        if count != len(bands):
            raise DataError(f"{path}: {count} bands, expected {len(bands)} ({', '.join(bands)})")
    return read_rgb(path)


def _write_whole(job: Job, image: np.ndarray, label: np.ndarray) -> list[Output]:
    """Copy the image bytes (decoded before, to catch truncation) and write the label."""
    pair, out = job.pair, job.out
    name = f"{pair.stem}{Path(pair.image.name).suffix}"
    atomic_copy(pair.image.real, out / "images" / name, durable=False)
    write_label(out / "labels" / f"{pair.stem}.png", label, durable=False)
    return [Output(pair.stem, name, pair.split, _histogram(label))]


def cut(array: np.ndarray, tiling: Tiling, y0: int, x0: int, fill: int) -> np.ndarray:
    """The window of ``tiling`` at (y0, x0) of ``array`` (H, W[, C]), padded with ``fill`` past
    the border."""
    tile = tiling.tile
    assert tile is not None
    crop = array[y0 : y0 + tile, x0 : x0 + tile]
    if crop.shape[:2] == (tile, tile):
        return np.ascontiguousarray(crop)
    out = np.full((tile, tile, *array.shape[2:]), fill, array.dtype)
    out[: crop.shape[0], : crop.shape[1]] = crop
    return out


def cut_pair(
    tiling: Tiling, image: np.ndarray, label: np.ndarray, y0: int, x0: int
) -> tuple[np.ndarray, np.ndarray]:
    """The window at (y0, x0) of an image (padded with 0) and its label (padded with 255)."""
    return cut(image, tiling, y0, x0, 0), cut(label, tiling, y0, x0, IGNORE_INDEX)


def _write_tiles(job: Job, image: np.ndarray, label: np.ndarray) -> list[Output]:
    pair, out, tiling = job.pair, job.out, job.tiling
    outputs = []
    for y0, x0 in tiling.windows(*label.shape):
        stem = tiling.tile_stem(pair.stem, y0, x0)
        image_tile, label_tile = cut_pair(tiling, image, label, y0, x0)
        write_png(out / "images" / f"{stem}.png", image_tile, durable=False)
        write_label(out / "labels" / f"{stem}.png", label_tile, durable=False)
        outputs.append(Output(stem, f"{stem}.png", pair.split, _histogram(label_tile)))
    return outputs


def convert_pair(job: Job) -> PairResult:
    """Convert one source pair; an unreadable or inconsistent input gives a result with ``bad``
    set (nothing written for it)."""
    pair = job.pair
    result = PairResult(pair.stem, job.inputs, pair.label.logical)
    converter = _cached_converter(job.dataset, job.kind, job.options)
    try:
        with _blame(pair, pair.label):
            decoded = converter.codec().decode(pair.label.real)
            check_label_values(decoded.label, len(converter.classes), pair.label.real)
        with _blame(pair, pair.image):
            image = _read_image(job)
        with _blame(pair, pair.label):
            if image.shape[:2] != decoded.label.shape:
                (h, w), (lh, lw) = image.shape[:2], decoded.label.shape
                raise DataError(
                    f"{pair.label.real} ({lh}x{lw}) and its image {pair.image.real} ({h}x{w}) "
                    "differ in size (height x width)"
                )
    except _BadInput as bad:
        result.bad = {"path": bad.file.logical, "problem": bad.problem}
        return result
    if job.hash_inputs:
        result.sha256 = {f.logical: file_digest(f.real) for f in (pair.image, pair.label)}
    whole = job.tiling.tile is None and Path(pair.image.name).suffix.lower() in IMAGE_SUFFIXES
    result.outputs = (_write_whole if whole else _write_tiles)(job, image, decoded.label)
    result.unmatched = decoded.unmatched
    result.unmatched_values = decoded.unmatched_values
    result.snapped = decoded.snapped
    return result


def verify_outputs(args: tuple[Path, list[Output], int]) -> list[str]:
    """Re-read written samples; return the problems found (see ``verify_output``)."""
    out, outputs, num_classes = args
    return [p for p in (verify_output(out, o, num_classes) for o in outputs) if p is not None]


def verify_output(out: Path, output: Output, num_classes: int) -> str | None:
    """Re-read one written sample; return a problem, or None if image and label agree with the
    journal (same size, label values within the classes, same pixel counts)."""
    label_path = out / "labels" / f"{output.stem}.png"
    try:
        with open_pil_image(label_path, "label") as image:
            if image.mode != "L":
                return f"{label_path}: mode {image.mode}, expected L"
            label = np.array(image)
        check_label_values(label, num_classes, label_path)
        if image_size(out / "images" / output.image) != label.shape:
            return f"{out / 'images' / output.image}: size differs from its label {label_path}"
    except DataError as error:
        return str(error)
    if _histogram(label) != output.pixels:
        return f"{label_path}: pixel counts differ from what was written"
    return None
