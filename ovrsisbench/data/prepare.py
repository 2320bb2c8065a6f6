"""``ovrsisbench prepare``: choose converters, settings and sources for one dataset or ``all``."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ovrsisbench.data.archives import extract_archive, is_archive
from ovrsisbench.data.converters import converter_classes, get_converter
from ovrsisbench.data.converters.base import Converter, NothingFoundError
from ovrsisbench.data.converters.engine import PrepareReport, Progress, prepare_dataset
from ovrsisbench.data.converters.tiling import Tiling
from ovrsisbench.errors import UserError

ALL = "all"
# folder names (lower case) under --src that hold each dataset's raw download for `prepare all`
RAW_FOLDERS = {
    "dlrsd": ("dlrsd",),
    "isaid": ("isaid",),
    "potsdam": ("potsdam",),
    "vaihingen": ("vaihingen",),
    "uavid": ("uavid",),
    "udd5": ("udd5", "udd"),
    "loveda": ("loveda",),
    "vdd": ("vdd",),
}


@dataclass(frozen=True)
class PrepareSettings:
    """What the user asked for, beyond the dataset and the source."""

    tile: int | None = None  # None: the dataset's default; 0: whole images
    stride: int | None = None
    edge: str | None = None
    options: dict[str, Any] | None = None
    workers: int = 1
    skip_bad: bool = False

    def customised(self) -> bool:
        return any(v is not None for v in (self.tile, self.stride, self.edge)) or bool(self.options)


def resolve_tiling(default: Tiling, tile: int | None, stride: int | None, edge: str | None):
    """The tiling from the command line, filling what was not given from the dataset default."""
    if tile == 0:
        return Tiling(None, stride, edge)  # Tiling rejects a stride or edge without a tile
    size = tile if tile is not None else default.tile
    if size is None:
        return Tiling(None, stride, edge)
    if tile is not None and tile < 0:
        raise UserError(f"--tile must be >= 0, got {tile}")
    if stride is None:
        stride = size if tile is not None else default.stride
    return Tiling(size, stride, edge or default.edge or "drop")


@dataclass
class DatasetOutcome:
    dataset: str
    report: PrepareReport | None = None
    error: str | None = None
    skipped: str | None = None


def _raw_source(src: Path, dataset: str) -> Path | None:
    names = RAW_FOLDERS[dataset]
    matches = [p for p in sorted(src.iterdir()) if p.name.lower() in names]
    return matches[0] if matches else None


@contextmanager
def _archive_root(src: Path, data_root: Path) -> Iterator[Path]:
    """The OVSISBench root: ``src`` itself, or ``src`` extracted once for all datasets."""
    if not src.is_file():
        yield src
        return
    if not is_archive(src):
        raise UserError(f"--src {src} is a file but not a zip or tar archive")
    scratch = data_root / ".ovsisbench.extract"
    if scratch.exists():
        shutil.rmtree(scratch)
    try:
        extract_archive(src, scratch)
        yield scratch
    finally:
        if scratch.exists():
            shutil.rmtree(scratch)


def _prepare_one(
    converter: Converter,
    src: Path,
    data_root: Path,
    settings: PrepareSettings,
    progress: Progress | None,
    origin: Path | None = None,
) -> PrepareReport:
    tiling = resolve_tiling(converter.default_tiling, settings.tile, settings.stride, settings.edge)
    return prepare_dataset(
        converter,
        src,
        data_root,
        tiling=tiling,
        workers=settings.workers,
        skip_bad=settings.skip_bad,
        progress=progress,
        origin=origin,
    )


def prepare(
    dataset: str,
    src: Path,
    data_root: Path,
    kind: str = "raw",
    settings: PrepareSettings | None = None,
    progress: Progress | None = None,
) -> list[DatasetOutcome]:
    """Prepare ``dataset`` (or every dataset for ``all``) from ``src`` under ``data_root``.

    A single dataset raises on failure; with ``all`` each dataset's failure is reported in its
    outcome and the others still run.
    """
    settings = settings or PrepareSettings()
    src, data_root = Path(src), Path(data_root)
    if settings.workers < 1:
        raise UserError(f"--workers must be >= 1, got {settings.workers}")
    if not src.exists():
        raise UserError(f"--src {src} does not exist")
    classes = converter_classes(kind)
    if dataset != ALL:
        converter = get_converter(dataset, kind, settings.options)
        return [
            DatasetOutcome(dataset, _prepare_one(converter, src, data_root, settings, progress))
        ]
    if settings.customised():
        raise UserError("--tile, --stride, --edge and -o apply to one dataset; not with 'all'")
    if kind == "raw" and not src.is_dir():
        raise UserError(f"prepare all --src must be a folder with one subfolder per dataset: {src}")
    outcomes = []
    with _archive_root(src, data_root) if kind == "archive" else _same(src) as root:
        for name, cls in classes.items():
            source = root if kind == "archive" else _raw_source(root, name)
            if source is None:
                names = " or ".join(RAW_FOLDERS[name])
                outcomes.append(DatasetOutcome(name, skipped=f"no folder {names} in {src}"))
                continue
            try:
                origin = src if root != src else None  # an archive extracted once for all
                report = _prepare_one(cls(), source, data_root, settings, progress, origin)
            except NothingFoundError as error:
                missing = kind == "archive"  # the archive simply lacks this dataset
                outcomes.append(
                    DatasetOutcome(name, skipped=f"not in {src}")
                    if missing
                    else DatasetOutcome(name, error=str(error))
                )
                continue
            except UserError as error:
                outcomes.append(DatasetOutcome(name, error=str(error)))
                continue
            outcomes.append(DatasetOutcome(name, report))
    return outcomes


@contextmanager
def _same(path: Path) -> Iterator[Path]:
    yield path
