"""Saved predictions: the predicted label maps of the first N images of a split, kept beside the
result record as indexed PNGs (pixel = scored class index, 255 = ignored; the dataset's colours)
and listed in the record's ``predictions`` entry with each file's SHA-256.

The choice is deterministic: the first N images of the split in the order the evaluator visits
them (``PreparedDataset.stems``: the split file's order, or file-name order for ``all``), so a
resumed or distributed run saves exactly the files an uninterrupted single process saves.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ovrsisbench.errors import DataError, UserError
from ovrsisbench.io import atomic_write_bytes, file_sha256
from ovrsisbench.palette import indexed_png

ALL = "all"
#: What ``--save-predictions`` takes: a number of images per split, or ``all``.
Request = int | str | None


def parse_request(text: str | int | None) -> Request:
    """``N`` (N >= 0; 0 = none) or ``all``; None stays None (none saved)."""
    if text is None or isinstance(text, int) and not isinstance(text, bool):
        value: Any = text
    elif str(text).strip().lower() == ALL:
        return ALL
    else:
        try:
            value = int(str(text).strip())
        except ValueError:
            value = None
        if value is None:
            raise UserError(f"save_predictions must be a number of images or 'all', got {text!r}")
    if value is not None and value < 0:
        raise UserError(f"save_predictions must be at least 0, got {value}")
    return value or None


def wanted(request: Request, total: int) -> int:
    """How many of a split's ``total`` images a request saves."""
    if request is None:
        return 0
    return total if request == ALL else min(int(request), total)


def folder_name(record_path: Path) -> str:
    """The folder of a record's maps, beside it: ``<record file stem>.predictions``."""
    return f"{record_path.stem}.predictions"


def map_path(record_path: Path, stem: str) -> Path:
    """Where the map of image ``stem`` of the record at ``record_path`` is saved."""
    return record_path.parent / folder_name(record_path) / f"{stem}.png"


def save_map(record_path: Path, stem: str, label_map: np.ndarray, colours: list) -> str:
    """Write one predicted map (atomic: an interrupted run never leaves half a file); returns
    the file's SHA-256."""
    data = indexed_png(label_map, colours)
    atomic_write_bytes(map_path(record_path, stem), data)
    return hashlib.sha256(data).hexdigest()


def read_map(path: Path) -> np.ndarray:
    """The (H, W) uint8 map of scored class indices (255 = ignored) of a saved map; DataError
    when the file is missing, unreadable or not an indexed PNG."""
    try:
        with Image.open(path) as image:
            if image.mode != "P":
                raise DataError(f"{path}: not an indexed PNG (mode {image.mode})")
            return np.array(image)
    except OSError as error:  # missing, truncated, not an image
        raise DataError(f"{path}: unreadable ({error})") from None


def all_saved(record_path: Path, stems: list[str]) -> bool:
    """Whether the maps of ``stems`` are there (those a checkpoint's counted images imply)."""
    return all(map_path(record_path, stem).is_file() for stem in stems)


def describe(request: Request, count: int) -> str:
    return f"the first {count} images of the split in evaluation order" + (
        " (all of them)" if request == ALL else ""
    )


def listing(
    record_path: Path, stems: list[str], request: Request, hashes: dict[str, str]
) -> dict[str, Any] | None:
    """The record's ``predictions`` entry for the maps of ``stems`` (the first ones of the
    split): ``hashes`` holds the SHA-256 of those written in this run, the others (written
    before a resume, by this process) are read; DataError names a map that is not there."""
    if request is None:
        return None
    files = []
    for stem in stems:
        path = map_path(record_path, stem)
        sha256 = hashes.get(stem)
        if sha256 is None:
            if not path.is_file():
                raise DataError(f"{path}: saved prediction missing (deleted during the run?)")
            sha256 = file_sha256(path)
        relative = path.relative_to(record_path.parent).as_posix()
        files.append({"image": stem, "path": relative, "sha256": sha256})
    return {"requested": request, "selection": describe(request, len(stems)), "files": files}


def covers(record_path: Path, record: dict[str, Any], request: Request, stems: list[str]) -> bool:
    """Whether ``record`` lists the maps ``request`` asks for of a split of ``stems`` (its
    first images), each still the file it lists (same SHA-256)."""
    count = wanted(request, len(stems))
    if count == 0:
        return True
    entry = record.get("predictions")
    files = entry.get("files") if isinstance(entry, dict) else None
    if not isinstance(files, list) or len(files) < count:
        return False
    maps = saved_maps(record_path, record)
    for stem, item in zip(stems[:count], files, strict=False):
        path = maps.get(stem)
        if not isinstance(item, dict) or item.get("image") != stem or path is None:
            return False
        if not path.is_file() or file_sha256(path) != item.get("sha256"):
            return False
    return True


def saved_maps(record_path: Path, record: dict[str, Any]) -> dict[str, Path]:
    """Image stem -> saved map file of a record, in the record's order (empty without saved
    predictions); entries that would point outside the record's folder are left out."""
    entry = record.get("predictions")
    files = entry.get("files") if isinstance(entry, dict) else None
    maps: dict[str, Path] = {}
    for item in files if isinstance(files, list) else []:
        if not isinstance(item, dict):
            continue
        stem, relative = item.get("image"), item.get("path")
        if isinstance(stem, str) and isinstance(relative, str) and _inside(relative):
            maps[stem] = record_path.parent / relative
    return maps


def _inside(relative: str) -> bool:
    parts = Path(relative).parts
    return bool(parts) and not Path(relative).is_absolute() and ".." not in parts
