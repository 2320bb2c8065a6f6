"""The unified on-disk dataset layout: ``meta.json``, reader (``PreparedDataset``) and writer.

::

    <data-root>/<dataset>/meta.json
    <data-root>/<dataset>/images/<stem>.<png|jpg|jpeg|tif|tiff>   RGB (extension case kept)
    <data-root>/<dataset>/labels/<stem>.png                        uint8 'L', 0..K-1 or 255
    <data-root>/<dataset>/splits/<split>.txt                       one stem per line

Split ``all`` is every stem that has both a label and an image. Every problem with a file
raises ``DataError`` whose one-line message starts with the file's path.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ovrsisbench.data.native import IGNORE_INDEX
from ovrsisbench.errors import DataError, UserError
from ovrsisbench.io import atomic_copy, atomic_write_text, atomic_writer

META_FILE = "meta.json"
ALL_SPLIT = "all"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_TIFF_SUFFIXES = (".tif", ".tiff")
_RGB_CONVERTIBLE_MODES = {"RGB", "RGBA", "RGBX", "RGBa", "L", "LA", "La", "P", "PA", "1", "CMYK"}
_LABEL_MODES = ("L", "P")
_DECODE_ERRORS = (OSError, ValueError, EOFError, SyntaxError, Image.DecompressionBombError)
# the largest DOTA/iSAID images have about 400 Mpx: above PIL's default limit (~179 Mpx)
Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, 500_000_000)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _is_iso8601(text: str) -> bool:
    try:
        datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        return False
    return True


def check_name(kind: str, value: object) -> str:
    """Return ``value`` if it is a safe file name (stem, split or dataset name), else UserError."""
    if (
        not isinstance(value, str)
        or not value
        or value != value.strip()
        or value.startswith(".")
        or any(char in value for char in "/\\\0\n\r")
    ):
        raise UserError(
            f"invalid {kind} {_short(value)}: use a non-empty file name without '/', '\\', "
            "line breaks, surrounding spaces or a leading '.'"
        )
    return value


# --- meta.json ------------------------------------------------------------------------------


def _field_error(path: Path, name: str, problem: str) -> DataError:
    return DataError(f"{path}: field '{name}' {problem}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_type(path: Path, data: dict, name: str, kind: type, label: str) -> Any:
    value = data[name]
    if not isinstance(value, kind):
        raise _field_error(path, name, f"must be {label}, got {_short(value)}")
    return value


def _check_classes(path: Path, classes: list) -> list[str]:
    if not 1 <= len(classes) <= IGNORE_INDEX:
        raise _field_error(
            path, "classes", f"must list 1..{IGNORE_INDEX} names, got {len(classes)}"
        )
    for index, name in enumerate(classes):
        if not isinstance(name, str) or not name.strip():
            raise _field_error(path, "classes", f"entry {index} must be a non-empty string")
    duplicates = sorted({name for name in classes if classes.count(name) > 1})
    if duplicates:
        raise _field_error(path, "classes", f"has duplicate names {duplicates}")
    return list(classes)


def _check_splits(path: Path, splits: dict) -> dict[str, int]:
    for name, count in splits.items():
        if not _is_int(count) or count < 0:
            raise _field_error(path, "splits", f"count of '{name}' must be an int >= 0")
    if ALL_SPLIT not in splits:
        raise _field_error(path, "splits", f"must have an '{ALL_SPLIT}' count")
    return dict(splits)


@dataclass(kw_only=True)
class DatasetMeta:
    """The contents of a dataset's ``meta.json``; unknown keys are kept in ``extra``."""

    name: str
    classes: list[str]
    ignore_index: int = IGNORE_INDEX
    splits: dict[str, int]
    source: dict
    converter_version: str
    tiling: dict
    created: str
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        clashes = sorted(set(self.extra) & _META_FIELDS)
        if clashes:
            raise ValueError(f"extra meta keys {clashes} clash with meta.json fields")

    def version(self) -> dict[str, str]:
        """What identifies the prepared data itself: the source kind (raw, archive, synthetic)
        and a hash of meta.json without what differs between machines or runs (creation time,
        the download's path), so identical conversions anywhere have the same version."""
        stable = self.to_json()
        stable.pop("created")
        stable["source"] = {k: v for k, v in self.source.items() if k != "src"}
        if isinstance(stable.get("prepare"), dict):
            stable["prepare"] = {"settings": stable["prepare"].get("settings")}
        digest = hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()
        return {"source": str(self.source.get("kind", "unknown")), "sha256": digest}

    def to_json(self) -> dict:
        """Return the JSON object written to ``meta.json`` (known fields first, then extras)."""
        known = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**known, **self.extra}

    @classmethod
    def from_json(cls, data: dict, path: Path) -> DatasetMeta:
        """Validate a parsed ``meta.json`` object; DataError names ``path`` and the bad field."""
        path = Path(path)
        if not isinstance(data, dict):
            raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
        missing = [name for name in _REQUIRED_FIELDS if name not in data]
        if missing:
            raise DataError(f"{path}: missing field(s) {', '.join(missing)}")
        name = _check_type(path, data, "name", str, "a non-empty string")
        if not name:
            raise _field_error(path, "name", "must be a non-empty string")
        ignore_index = data.get("ignore_index", IGNORE_INDEX)
        if not _is_int(ignore_index) or ignore_index != IGNORE_INDEX:
            raise _field_error(
                path, "ignore_index", f"must be {IGNORE_INDEX}, got {ignore_index!r}"
            )
        created = _check_type(path, data, "created", str, "an ISO-8601 string")
        if not _is_iso8601(created):
            raise _field_error(path, "created", f"is not an ISO-8601 time: {_short(created)}")
        return cls(
            name=name,
            classes=_check_classes(path, _check_type(path, data, "classes", list, "a list")),
            ignore_index=ignore_index,
            splits=_check_splits(path, _check_type(path, data, "splits", dict, "an object")),
            source=_check_type(path, data, "source", dict, "an object"),
            converter_version=_check_type(path, data, "converter_version", str, "a string"),
            tiling=_check_type(path, data, "tiling", dict, "an object"),
            created=created,
            extra={key: value for key, value in data.items() if key not in _META_FIELDS},
        )


_META_FIELDS = {f.name for f in fields(DatasetMeta)} - {"extra"}
_REQUIRED_FIELDS = [f.name for f in fields(DatasetMeta) if f.name not in ("extra", "ignore_index")]


def _meta_json_text(meta: DatasetMeta) -> str:
    return json.dumps(meta.to_json(), indent=2, ensure_ascii=False) + "\n"


def read_meta(dataset_dir: Path) -> DatasetMeta:
    """Read and validate ``<dataset_dir>/meta.json``."""
    path = Path(dataset_dir) / META_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: missing (the dataset is not prepared)") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({_one_line(exc)})") from None
    return DatasetMeta.from_json(data, path)


# --- reading images and labels --------------------------------------------------------------


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in _TIFF_SUFFIXES


@contextmanager
def _open_raster(path: Path) -> Iterator[Any]:
    """Open a TIFF with rasterio (imported lazily: it is slow to import); errors -> DataError."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as source:
                yield source
    except RasterioError as exc:
        raise DataError(f"{path}: cannot read image ({_one_line(exc)})") from None


@contextmanager
def open_pil_image(path: Path, what: str) -> Iterator[Image.Image]:
    """Open an image with PIL; decoding errors -> DataError naming ``path`` and ``what``."""
    try:
        with Image.open(path) as image:
            yield image
    except _DECODE_ERRORS as exc:
        raise DataError(f"{path}: cannot read {what} ({_one_line(exc)})") from None


def _read_tiff_rgb(path: Path) -> np.ndarray:
    with _open_raster(path) as source:
        if source.dtypes[0] != "uint8":
            raise DataError(f"{path}: expected 8-bit bands, got {source.dtypes[0]}")
        bands = source.read()
    if bands.shape[0] < 3:
        bands = np.repeat(bands[:1], 3, axis=0)
    return np.ascontiguousarray(bands[:3].transpose(1, 2, 0))


def _read_pil_rgb(path: Path) -> np.ndarray:
    with open_pil_image(path, "image") as image:
        if image.mode not in _RGB_CONVERTIBLE_MODES:
            raise DataError(f"{path}: unsupported image mode {image.mode} (expected 8-bit)")
        return np.array(image.convert("RGB"))


def read_rgb(path: Path) -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 RGB array (TIFF via rasterio, others via PIL)."""
    path = Path(path)
    return _read_tiff_rgb(path) if _is_tiff(path) else _read_pil_rgb(path)


def tiff_band_count(path: Path) -> int:
    """Number of bands of a TIFF file (from its header)."""
    with _open_raster(Path(path)) as source:
        return source.count


def image_size(path: Path) -> tuple[int, int]:
    """Return (height, width) of an image file from its header, without decoding pixels."""
    path = Path(path)
    if _is_tiff(path):
        with _open_raster(path) as source:
            return source.height, source.width
    with open_pil_image(path, "image") as image:
        return image.height, image.width


def check_label_values(label: np.ndarray, num_classes: int, path: Path) -> None:
    """DataError naming ``path`` if ``label`` has values outside 0..num_classes-1 and 255."""
    bad = np.unique(label[(label >= num_classes) & (label != IGNORE_INDEX)])
    if bad.size:
        shown = ", ".join(str(value) for value in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise DataError(
            f"{path}: label values [{shown}] are not class ids 0..{num_classes - 1} "
            f"or {IGNORE_INDEX}"
        )


def _check_sizes(
    image_path: Path, image_hw: tuple[int, ...], label_path: Path, label_hw: tuple[int, ...]
) -> None:
    if tuple(image_hw) != tuple(label_hw):
        raise DataError(
            f"{image_path} ({image_hw[0]}x{image_hw[1]}) and {label_path} "
            f"({label_hw[0]}x{label_hw[1]}) differ in size (height x width)"
        )


def _list_files(folder: Path) -> list[Path]:
    """Visible files of ``folder`` (hidden temp files are skipped); DataError if it is missing."""
    try:
        with os.scandir(folder) as entries:
            return [Path(e.path) for e in entries if not e.name.startswith(".") and e.is_file()]
    except OSError as exc:
        raise DataError(f"{folder}: cannot list folder ({_one_line(exc)})") from None


class PreparedDataset:
    """A dataset in the unified layout; folder listings are cached once per instance."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.meta = read_meta(self.directory)
        self.name = self.meta.name

    def __repr__(self) -> str:
        return f"PreparedDataset({str(self.directory)!r})"

    @cached_property
    def _image_files(self) -> dict[str, Path]:
        index: dict[str, Path] = {}
        for path in _list_files(self.directory / "images"):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            other = index.setdefault(path.stem, path)
            if other != path:
                raise DataError(f"{path}: a second image for stem '{path.stem}' (also {other})")
        return index

    @cached_property
    def _label_stems(self) -> set[str]:
        return {p.stem for p in _list_files(self.directory / "labels") if p.suffix == ".png"}

    def split_names(self) -> list[str]:
        """Names of the available splits: ``all`` plus one per ``splits/<name>.txt``."""
        folder = self.directory / "splits"
        files = _list_files(folder) if folder.is_dir() else []
        return [ALL_SPLIT] + sorted(p.stem for p in files if p.suffix == ".txt")

    def stems(self, split: str) -> list[str]:
        """Stems of ``split`` in file order (``all``: every labelled stem with an image, sorted)."""
        if split == ALL_SPLIT:
            return sorted(stem for stem in self._label_stems if stem in self._image_files)
        available = self.split_names()
        if split not in available:
            raise UserError(
                f"unknown split '{split}' for dataset '{self.name}' "
                f"(available: {', '.join(available)})"
            )
        return self._read_split_file(self.directory / "splits" / f"{split}.txt")

    def _read_split_file(self, path: Path) -> list[str]:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read split file ({_one_line(exc)})") from None
        stems = [line.strip() for line in lines if line.strip()]
        seen: set[str] = set()
        for stem in stems:
            if stem in seen:
                raise DataError(f"{path}: stem '{stem}' is listed twice")
            seen.add(stem)
            if stem not in self._image_files:
                raise DataError(
                    f"{path}: stem '{stem}' has no image in {self.directory / 'images'}"
                )
            if stem not in self._label_stems:
                raise DataError(f"{path}: stem '{stem}' has no label {self.label_path(stem)}")
        return stems

    def image_path(self, stem: str) -> Path:
        """Path of the image of ``stem``, whatever its extension."""
        try:
            return self._image_files[stem]
        except KeyError:
            raise DataError(f"{self.directory / 'images'}: no image for stem '{stem}'") from None

    def label_path(self, stem: str) -> Path:
        """Path of the label PNG of ``stem`` (not checked for existence)."""
        return self.directory / "labels" / f"{stem}.png"

    def sample_size(self, stem: str) -> tuple[int, int]:
        """(H, W) of the sample ``stem``, from its label file's header (labels match images)."""
        with open_pil_image(self.label_path(stem), "label") as label:
            width, height = label.size
        return height, width

    def read_image(self, stem: str) -> np.ndarray:
        """The image of ``stem`` as an (H, W, 3) uint8 RGB array."""
        return read_rgb(self.image_path(stem))

    def read_label(self, stem: str) -> np.ndarray:
        """The label of ``stem`` as an (H, W) uint8 array of native class ids or 255."""
        path = self.label_path(stem)
        with open_pil_image(path, "label") as image:
            if image.mode not in _LABEL_MODES:
                raise DataError(
                    f"{path}: label must be single-channel 8-bit (mode L or P), "
                    f"got mode {image.mode}"
                )
            label = np.array(image)  # mode P gives palette indices, never colours
        check_label_values(label, len(self.meta.classes), path)
        return label

    def read_sample(self, stem: str) -> tuple[np.ndarray, np.ndarray]:
        """Image and label of ``stem``, checked to have the same size."""
        image, label = self.read_image(stem), self.read_label(stem)
        _check_sizes(self.image_path(stem), image.shape[:2], self.label_path(stem), label.shape)
        return image, label

    def check_sample(self, stem: str) -> None:
        """DataError naming both files if image and label of ``stem`` differ in size."""
        image_path, label_path = self.image_path(stem), self.label_path(stem)
        _check_sizes(image_path, image_size(image_path), label_path, image_size(label_path))


def _existing_root(data_root: Path) -> Path:
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise UserError(f"data root {data_root} does not exist")
    return data_root


def open_dataset(data_root: Path, name: str) -> PreparedDataset:
    """Open the prepared dataset ``name`` under ``data_root``."""
    data_root = _existing_root(data_root)
    directory = data_root / check_name("dataset name", name)
    if not (directory / META_FILE).is_file():
        raise UserError(
            f"dataset '{name}' is not prepared under {data_root} "
            f"(run: ovrsisbench prepare {name} --src ...)"
        )
    dataset = PreparedDataset(directory)
    if dataset.meta.name != name:  # e.g. Vaihingen copied into potsdam/: same classes
        raise DataError(
            f"{directory / META_FILE}: names dataset '{dataset.meta.name}', "
            f"but it lies in the folder of '{name}'"
        )
    return dataset


def list_datasets(data_root: Path) -> list[PreparedDataset]:
    """Every prepared dataset under ``data_root`` (folders with a ``meta.json``), by name."""
    data_root = _existing_root(data_root)
    folders = sorted(p for p in data_root.iterdir() if (p / META_FILE).is_file())
    return sorted((PreparedDataset(folder) for folder in folders), key=lambda d: d.name)


# --- writing --------------------------------------------------------------------------------


def write_png(path: Path, array: np.ndarray, durable: bool = True) -> bytes:
    """Write ``array`` (H, W) or (H, W, 3) uint8 as a lossless PNG atomically; return the bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    data = buffer.getvalue()
    with atomic_writer(path, durable) as handle:
        handle.write(data)
    return data


def write_label(path: Path, label: np.ndarray, durable: bool = True) -> None:
    """Write a label as an 8-bit 'L' PNG and prove the round trip: the encoded bytes must decode
    to exactly ``label`` (PIL has silently collapsed 'P'-mode labels before)."""
    data = write_png(path, label, durable)
    with Image.open(io.BytesIO(data)) as image:
        back = np.array(image)
        mode = image.mode
    if mode != "L" or not np.array_equal(back, label):
        raise DataError(f"{path}: the written label does not read back identically")


class DatasetWriter:
    """Write a dataset in the unified layout, one sample at a time, then ``finalize()``.

    Any existing ``meta.json`` is removed first, so the folder reads as unprepared until
    ``finalize()`` succeeds; ``finalize()`` also deletes files in ``images/``, ``labels/`` and
    ``splits/`` that this writer did not write (leftovers of earlier or interrupted runs).
    """

    def __init__(
        self,
        directory: Path,
        name: str,
        classes: list[str],
        *,
        source: dict,
        converter_version: str,
        tiling: dict,
        extra: dict | None = None,
    ) -> None:
        self.directory = Path(directory)
        meta = DatasetMeta(
            name=check_name("dataset name", name),
            classes=list(classes),
            splits={ALL_SPLIT: 0},
            source=source,
            converter_version=converter_version,
            tiling=tiling,
            created=_utc_now(),
            extra=dict(extra or {}),
        )
        # A JSON round trip proves the meta is serialisable and valid before any file is written.
        self._meta = DatasetMeta.from_json(json.loads(_meta_json_text(meta)), self._meta_path)
        self._image_names: dict[str, str] = {}
        self._splits: dict[str, list[str]] = {}
        self._meta_path.unlink(missing_ok=True)
        for folder in ("images", "labels", "splits"):
            (self.directory / folder).mkdir(parents=True, exist_ok=True)

    @property
    def _meta_path(self) -> Path:
        return self.directory / META_FILE

    def add(
        self, stem: str, image: np.ndarray | Path, label: np.ndarray, split: str | None = None
    ) -> None:
        """Write one sample: an RGB array (saved as PNG) or an image file (bytes copied)."""
        check_name("stem", stem)
        if stem in self._image_names:
            raise UserError(f"stem '{stem}' added twice to {self.directory}")
        if split is not None and check_name("split name", split) == ALL_SPLIT:
            raise UserError(f"split '{ALL_SPLIT}' is implicit; add '{stem}' with split=None")
        label_path = self.directory / "labels" / f"{stem}.png"
        if not isinstance(label, np.ndarray) or label.dtype != np.uint8 or label.ndim != 2:
            raise DataError(
                f"{label_path}: label must be a 2-D uint8 array, got {_describe(label)}"
            )
        check_label_values(label, len(self._meta.classes), label_path)
        if isinstance(image, np.ndarray):
            image_path = self._add_array_image(stem, image, label.shape)
        else:
            image_path = self._add_file_image(stem, Path(image), label.shape)
        write_label(label_path, label)
        self._image_names[stem] = image_path.name
        if split is not None:
            self._splits.setdefault(split, []).append(stem)

    def _add_array_image(self, stem: str, image: np.ndarray, label_hw: tuple) -> Path:
        path = self.directory / "images" / f"{stem}.png"
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise DataError(
                f"{path}: image must be an (H, W, 3) uint8 array, got {_describe(image)}"
            )
        _check_sizes(path, image.shape[:2], self.directory / "labels" / f"{stem}.png", label_hw)
        write_png(path, image)
        return path

    def _add_file_image(self, stem: str, source: Path, label_hw: tuple) -> Path:
        if source.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{source}: unsupported image type (use {', '.join(IMAGE_SUFFIXES)})")
        _check_sizes(
            source, image_size(source), self.directory / "labels" / f"{stem}.png", label_hw
        )
        path = self.directory / "images" / f"{stem}{source.suffix}"
        atomic_copy(source, path)
        return path

    def adopt(self, stem: str, image_name: str, split: str | None = None) -> None:
        """Count a sample whose files are already in place (written by a converter's workers)."""
        if stem in self._image_names:
            raise UserError(f"stem '{stem}' added twice to {self.directory}")
        self._image_names[check_name("stem", stem)] = check_name("image file name", image_name)
        if split is not None:
            self._splits.setdefault(check_name("split name", split), []).append(stem)

    def finalize(self, extra: dict | None = None) -> DatasetMeta:
        """Write the split files and ``meta.json`` (with counts and ``extra`` fields); return the
        meta written."""
        counts: dict[str, int] = {}
        for split, stems in sorted(self._splits.items()):
            atomic_write_text(
                self.directory / "splits" / f"{split}.txt", "".join(f"{s}\n" for s in sorted(stems))
            )
            counts[split] = len(stems)
        counts[ALL_SPLIT] = len(self._image_names)
        self._remove_leftovers()
        meta = replace(
            self._meta,
            splits=counts,
            created=_utc_now(),
            extra={**self._meta.extra, **(extra or {})},
        )
        atomic_write_text(self._meta_path, _meta_json_text(meta))
        return meta

    def _remove_leftovers(self) -> None:
        keep = {self.directory / "images" / name for name in self._image_names.values()}
        keep |= {self.directory / "labels" / f"{stem}.png" for stem in self._image_names}
        keep |= {self.directory / "splits" / f"{split}.txt" for split in self._splits}
        for folder in ("images", "labels", "splits"):
            with os.scandir(self.directory / folder) as entries:
                stale = [Path(e.path) for e in entries if e.is_file() and Path(e.path) not in keep]
            for path in stale:
                path.unlink()


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"shape {value.shape} dtype {value.dtype}"
    return type(value).__name__
