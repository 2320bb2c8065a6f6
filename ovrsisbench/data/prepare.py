"""``ovrsisbench prepare``: choose converters, settings and sources for one dataset or ``all``."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ovrsisbench.data.archives import archive_names, extract_archive, is_archive
from ovrsisbench.data.converters import converter_classes, get_converter
from ovrsisbench.data.converters.base import Converter, NothingFoundError
from ovrsisbench.data.converters.engine import (
    PrepareReport,
    Progress,
    prepare_dataset,
    up_to_date,
)
from ovrsisbench.data.registry import REGISTRY
from ovrsisbench.data.tiling import Tiling
from ovrsisbench.errors import UserError

ALL = "all"


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
    names = REGISTRY[dataset].raw_folders
    matches = [p for p in sorted(src.iterdir()) if p.name.lower() in names]
    return matches[0] if matches else None


@contextmanager
def _extracted(src: Path, data_root: Path, converters: list[Converter]) -> Iterator[Path]:
    """``src`` (an OVSISBench archive) extracted once for all ``converters``, removed after."""
    scratch = data_root / ".ovsisbench.extract"
    if scratch.exists():
        shutil.rmtree(scratch)
    try:
        extract_archive(
            src,
            scratch,
            lambda name: any(c.wants_member(f"{src.name}/{name}") for c in converters),
        )
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
    converter_classes(kind)  # an unknown kind fails here
    if dataset != ALL:
        converter = get_converter(dataset, kind, settings.options)
        return [
            DatasetOutcome(dataset, _prepare_one(converter, src, data_root, settings, progress))
        ]
    if settings.customised():
        raise UserError("--tile, --stride, --edge and -o apply to one dataset; not with 'all'")
    if kind == "raw" and not src.is_dir():
        raise UserError(f"prepare all --src must be a folder with one subfolder per dataset: {src}")
    if kind == "archive" and src.is_file():
        return _prepare_all_from_archive_file(src, data_root, settings, progress)
    outcomes = []
    for name, cls in converter_classes(kind).items():
        source = src if kind == "archive" else _raw_source(src, name)
        if source is None:
            names = " or ".join(REGISTRY[name].raw_folders)
            outcomes.append(DatasetOutcome(name, skipped=f"no folder {names} in {src}"))
            continue
        outcomes.append(_outcome(cls(), source, data_root, settings, progress, kind, src))
    return outcomes


def _prepare_all_from_archive_file(
    src: Path, data_root: Path, settings: PrepareSettings, progress: Progress | None
) -> list[DatasetOutcome]:
    """Every dataset of an OVSISBench archive file, extracting it once, and only when a dataset
    is not up to date."""
    if not is_archive(src):
        raise UserError(f"--src {src} is a file but not a zip or tar archive")
    outcomes, pending = {}, []
    names = [f"{src.name}/{name}" for name in archive_names(src)]
    for name, cls in converter_classes("archive").items():
        converter = cls()
        meta = up_to_date(converter, src, data_root)
        if meta is not None:
            outcomes[name] = DatasetOutcome(name, PrepareReport(name, meta, up_to_date=True))
        elif not any(converter.wants_member(member) for member in names):
            outcomes[name] = DatasetOutcome(name, skipped=f"not in {src}")
        else:
            pending.append(converter)
    if pending:
        with _extracted(src, data_root, pending) as root:
            for converter in pending:
                outcome = _outcome(converter, root, data_root, settings, progress, "archive", src)
                outcomes[converter.dataset] = outcome
    return [outcomes[name] for name in converter_classes("archive")]


def _outcome(
    converter: Converter,
    source: Path,
    data_root: Path,
    settings: PrepareSettings,
    progress: Progress | None,
    kind: str,
    src: Path,
) -> DatasetOutcome:
    """Prepare one dataset of ``all``: its failure is reported, not raised."""
    name = converter.dataset
    origin = src if source != src else None  # an archive extracted once for all
    try:
        return DatasetOutcome(
            name, _prepare_one(converter, source, data_root, settings, progress, origin)
        )
    except NothingFoundError as error:
        if kind == "archive":  # the archive simply lacks this dataset
            return DatasetOutcome(name, skipped=f"not in {src}")
        return DatasetOutcome(name, error=str(error))
    except UserError as error:
        return DatasetOutcome(name, error=str(error))
