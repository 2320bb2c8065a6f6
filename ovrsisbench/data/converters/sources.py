"""Listing a download: plain files and the members of the archives a converter wants, each
under its logical path (archives read as folders)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ovrsisbench.data.archives import extract_archive, file_digest, is_archive
from ovrsisbench.data.converters.base import Converter, SourceFile, SourceTree
from ovrsisbench.data.converters.workers import Progress
from ovrsisbench.errors import UserError

_MAX_NESTING = 3


def _walk(root: Path, skip: frozenset[Path] = frozenset()) -> Iterator[tuple[str, Path]]:
    """(posix path relative to ``root``, path) of the visible files under ``root``, sorted.

    Symlinked folders are followed (each real folder once); the paths in ``skip`` (resolved
    files or folders: what prepare writes) are left out.
    """
    seen = {root.resolve()}
    for folder, dirs, files in os.walk(root, followlinks=True):
        kept = []
        for name in sorted(dirs):
            real = Path(folder, name).resolve()
            if not name.startswith(".") and real not in skip and real not in seen:
                seen.add(real)
                kept.append(name)
        dirs[:] = kept
        for name in sorted(files):
            path = Path(folder, name)
            if name.startswith(".") or not path.is_file() or path.resolve() in skip:
                continue
            yield path.relative_to(root).as_posix(), path


def stat_listing(src: Path, skip: frozenset[Path]) -> list:
    """(relative path, size, mtime_ns) of every file of the download (``src`` itself if a file)."""
    files = [(src.name, src)] if src.is_file() else _walk(src, skip)
    return [[relative, (stat := path.stat()).st_size, stat.st_mtime_ns] for relative, path in files]


class _Lister:
    """Collects the files of a download, extracting the archives the converter wants."""

    def __init__(self, converter: Converter, scratch: Path, progress: Progress) -> None:
        self.converter = converter
        self.scratch = scratch
        self.progress = progress
        self.files: list[SourceFile] = []
        self.archives: list[SourceFile] = []

    def wants(self, logical: str) -> bool:
        return is_archive(Path(logical)) and self.converter.wants_archive(logical)

    def add(self, logical: str, real: Path, depth: int = 0) -> None:
        if depth > _MAX_NESTING or not self.wants(logical):
            self.files.append(SourceFile(logical, real))
            return
        self.archives.append(SourceFile(logical, real))
        dest = self.scratch / str(len(self.archives))
        self.progress.start(f"extracting {logical}", 1, 0)
        extract_archive(real, dest, lambda name: self.converter.wants_member(f"{logical}/{name}"))
        self.progress.advance(1)
        for relative, path in _walk(dest):
            self.add(f"{logical}/{relative}", path, depth + 1)


@contextmanager
def source_tree(
    src: Path, converter: Converter, scratch: Path, progress: Progress, skip: frozenset[Path]
) -> Iterator[tuple[SourceTree, list[SourceFile]]]:
    """The download as a SourceTree; extracted archives are removed on the way out."""
    lister = _Lister(converter, scratch, progress)
    if scratch.exists():  # left by a killed run
        shutil.rmtree(scratch)
    try:
        if src.is_file():
            if not is_archive(src):
                raise UserError(f"--src {src} is a file but not a zip or tar archive")
            lister.add(src.name, src)
        else:
            for relative, path in _walk(src, skip):
                lister.add(relative, path)
        yield SourceTree(lister.files), lister.archives
    finally:
        if scratch.exists():
            shutil.rmtree(scratch)


def archive_checksums(converter: Converter, archives: list[SourceFile]) -> list[dict]:
    entries = []
    for archive in archives:
        expected = converter.checksums.get(archive.name)
        if expected:
            observed = file_digest(archive.real, "md5")
            entries.append(
                {
                    "file": archive.logical,
                    "md5": observed,
                    "expected": expected,
                    "match": observed == expected,
                }
            )
    return entries
