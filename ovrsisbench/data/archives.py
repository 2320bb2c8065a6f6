"""Safe extraction of zip and tar archives, and file checksums.

Every member is checked before anything is written, and the whole archive is refused
(``DataError`` naming the archive and the member) for: absolute paths, ``..`` components, a path
or link target that passes through a symlink member (links could then chain out of the
destination), links whose target is absolute or leaves the destination, device or FIFO files,
and a member that is both a file and a folder. Symlinks are created last, so no file is ever
written through one. A damaged archive (bad CRC, cut short) is an error too, not a partial
extraction. Extracted files get the modification time stored in the archive, so re-extracting
gives the same file identities.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from ovrsisbench.errors import DataError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_CHUNK = 1 << 20
_TAR_END = 2 * tarfile.BLOCKSIZE  # two zero blocks end every complete tar archive


def is_archive(path: Path) -> bool:
    """True if the name of ``path`` ends with a supported archive suffix (any case)."""
    return Path(path).name.lower().endswith(ARCHIVE_SUFFIXES)


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of the file at ``path`` (streamed)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Member:
    """One archive entry, checked: where it goes (relative to the destination) and what it is."""

    name: str  # as stored in the archive
    path: PurePosixPath
    kind: str  # "file", "dir", "symlink", "hardlink"
    target: str = ""  # link target (symlink: relative to its folder; hard link: archive path)
    mtime: float = 0.0
    handle: object = None  # ZipInfo or TarInfo, to read the bytes


def _refuse(archive: Path, name: str, problem: str) -> DataError:
    return DataError(f"{archive}: member '{name}' {problem}; archive refused")


def _is_absolute(path: str) -> bool:
    return path.startswith("/") or (len(path) > 1 and path[1] == ":")


def _relative_path(archive: Path, name: str) -> PurePosixPath:
    posix = name.replace("\\", "/")
    if _is_absolute(posix):
        raise _refuse(archive, name, "has an absolute path")
    parts = [part for part in posix.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _refuse(archive, name, "contains '..'")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _check_plan(archive: Path, members: list[_Member]) -> None:
    """Refuse paths through symlinks, escaping links and file/folder clashes (see the module)."""
    links = {m.path for m in members if m.kind == "symlink"}
    kinds: dict[PurePosixPath, str] = {}
    for member in members:
        for parent in member.path.parents:
            if parent in links:
                raise _refuse(archive, member.name, f"lies inside the symlink member '{parent}'")
            if kinds.setdefault(parent, "dir") != "dir":
                raise _refuse(archive, member.name, f"needs the file '{parent}' as a folder")
        if member.path in kinds and not (member.kind == kinds[member.path] == "dir"):
            raise _refuse(archive, member.name, "is given twice, or as both file and folder")
        kinds[member.path] = member.kind
        if member.kind in ("symlink", "hardlink"):
            _check_link(archive, member, links)


def _check_link(archive: Path, member: _Member, links: set[PurePosixPath]) -> None:
    kind = "hard link" if member.kind == "hardlink" else "symlink"
    target = member.target.replace("\\", "/")
    if _is_absolute(target):
        raise _refuse(archive, member.name, f"is a {kind} to the absolute path '{target}'")
    base = "" if member.kind == "hardlink" else str(member.path.parent)
    steps: list[str] = []
    for part in posixpath.join(base, target).split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not steps:
                raise _refuse(archive, member.name, f"is a {kind} leading outside ('{target}')")
            steps.pop()
            continue
        steps.append(part)
        if PurePosixPath(*steps) in links:
            raise _refuse(archive, member.name, f"is a {kind} through another symlink")


# --- reading the two formats ------------------------------------------------------------------


def _zip_members(archive: Path, zf: zipfile.ZipFile) -> list[_Member]:
    members = []
    for info in zf.infolist():
        path = _relative_path(archive, info.filename)
        mtime = time.mktime((*info.date_time, 0, 0, -1))
        if stat.S_ISLNK(info.external_attr >> 16):
            target = zf.read(info).decode("utf-8", "replace")
            members.append(_Member(info.filename, path, "symlink", target, mtime, info))
        else:
            kind = "dir" if info.is_dir() else "file"
            members.append(_Member(info.filename, path, kind, "", mtime, info))
    return members


def _tar_members(archive: Path, tf: tarfile.TarFile) -> list[_Member]:
    members = []
    for info in tf.getmembers():
        path = _relative_path(archive, info.name)
        if info.issym():
            kind = "symlink"
        elif info.islnk():
            kind = "hardlink"
        elif info.isdir():
            kind = "dir"
        elif info.isfile():
            kind = "file"
        else:
            raise _refuse(archive, info.name, "is a device, FIFO or other special file")
        members.append(_Member(info.name, path, kind, info.linkname, info.mtime, info))
    return members


def _check_tar_end(archive: Path, tf: tarfile.TarFile) -> None:
    """A tar cut at a member boundary reads as complete; the end marker and (for compressed
    archives) reading the stream to its end, which checks the CRC, tell."""
    assert tf.fileobj is not None
    tf.fileobj.seek(tf.offset)
    rest = tf.fileobj.read()
    if len(rest) < _TAR_END or rest[:_TAR_END].strip(b"\0"):
        raise DataError(f"{archive}: the tar archive is cut short (no end marker)")


@contextmanager
def _read_errors(archive: Path) -> Iterator[None]:
    """Errors of the archive libraries -> DataError naming the archive."""
    try:
        yield
    except DataError:
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, NotImplementedError, OSError) as error:
        raise DataError(f"{archive}: damaged or unsupported archive ({error})") from None
    except RuntimeError as error:  # e.g. an encrypted zip member
        raise DataError(f"{archive}: cannot extract ({error})") from None


# --- extracting ----------------------------------------------------------------------------------


def _write_member(
    archive: Path, dest: Path, member: _Member, open_member: Callable[[_Member], IO[bytes]]
) -> None:
    path = dest / member.path
    try:
        if member.kind == "dir":
            path.mkdir(parents=True, exist_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if member.kind == "hardlink":  # a copy: its target was extracted before (tar order)
            shutil.copyfile(dest / _relative_path(archive, member.target), path)
        else:
            with open_member(member) as source, open(path, "wb") as handle:
                shutil.copyfileobj(source, handle, _CHUNK)
        os.utime(path, (member.mtime, member.mtime))
    except OSError as error:
        raise DataError(
            f"{archive}: cannot extract '{member.name}' to {path} ({error.strerror or error})"
        ) from None


def archive_names(archive: Path) -> list[str]:
    """The member paths of ``archive`` (read from its index; a tar is read through)."""
    with _read_errors(archive):
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                return zf.namelist()
        with tarfile.open(archive) as tf:
            return tf.getnames()


def extract_archive(
    archive: Path, dest: Path, wanted: Callable[[str], bool] = lambda name: True
) -> None:
    """Extract ``archive`` (zip or tar, any compression) into ``dest`` after checking every member.

    Only members whose archive path satisfies ``wanted`` are written (every member is checked).
    Raises DataError naming the archive (and the member) for members that could write outside
    ``dest`` (then nothing is written) and for damaged archives (found while reading: what was
    extracted before stays in ``dest``).
    """
    archive, dest = Path(archive), Path(dest)
    if not is_archive(archive):
        raise DataError(f"{archive}: not a supported archive ({', '.join(ARCHIVE_SUFFIXES)})")
    if not archive.is_file():
        raise DataError(f"{archive}: not a file")
    with _read_errors(archive):
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                members = _zip_members(archive, zf)
                _extract(archive, dest, members, lambda m: zf.open(m.handle), wanted)
        else:
            with tarfile.open(archive) as tf:
                members = _tar_members(archive, tf)
                _check_tar_end(archive, tf)
                _extract(archive, dest, members, lambda m: tf.extractfile(m.handle), wanted)


def _extract(
    archive: Path,
    dest: Path,
    members: list[_Member],
    open_member: Callable[[_Member], IO[bytes]],
    wanted: Callable[[str], bool],
) -> None:
    _check_plan(archive, members)
    dest.mkdir(parents=True, exist_ok=True)
    chosen = [m for m in members if wanted(m.path.as_posix())]
    for member in chosen:
        if member.kind != "symlink":
            _write_member(archive, dest, member, open_member)
    for member in chosen:  # last: nothing is written through a link
        if member.kind == "symlink":
            path = dest / member.path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(member.target)
