"""Safe extraction of zip and tar archives, and file checksums.

Every member is checked before anything is written: absolute paths, ``..`` components, links
whose target is absolute or leaves the destination, and device or FIFO files make the whole
archive refused (``DataError`` naming the archive and the member). Extracted files get the
modification time stored in the archive, so re-extracting gives the same file identities.
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
from pathlib import Path, PurePosixPath

from ovrsisbench.errors import DataError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_CHUNK = 1 << 20


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


def _safe_member_path(archive: Path, name: str) -> PurePosixPath:
    """The member's path relative to the destination, or DataError if it could escape."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        raise DataError(f"{archive}: member '{name}' has an absolute path; archive refused")
    parts = [part for part in posix.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise DataError(f"{archive}: member '{name}' contains '..'; archive refused")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _check_link_target(archive: Path, name: str, member: PurePosixPath, target: str, hard: bool):
    """DataError unless the link ``member`` -> ``target`` stays inside the destination."""
    kind = "hard link" if hard else "symlink"
    if target.startswith("/") or (len(target) > 1 and target[1] == ":"):
        raise DataError(f"{archive}: {kind} '{name}' points to absolute path '{target}'")
    base = "" if hard else str(member.parent)  # hard-link targets are archive paths
    resolved = posixpath.normpath(posixpath.join(base, target))
    if resolved == ".." or resolved.startswith("../"):
        raise DataError(f"{archive}: {kind} '{name}' points outside the archive ('{target}')")


def _open_zip(archive: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise DataError(f"{archive}: not a readable zip archive ({error})") from None


def _zip_time(info: zipfile.ZipInfo) -> float:
    return time.mktime((*info.date_time, 0, 0, -1))


def _extract_zip(archive: Path, dest: Path) -> list[tuple[Path, str]]:
    """Extract regular files and folders; return the (path, target) symlinks still to create."""
    with _open_zip(archive) as zf:
        plan, links = [], []
        for info in zf.infolist():
            member = _safe_member_path(archive, info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                target = zf.read(info).decode("utf-8", "replace")
                _check_link_target(archive, info.filename, member, target, hard=False)
                links.append((dest / member, target))
            else:
                plan.append((info, member))
        for info, member in plan:
            path = dest / member
            if info.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as source, open(path, "wb") as handle:
                    shutil.copyfileobj(source, handle, _CHUNK)
            except (zipfile.BadZipFile, OSError, EOFError) as error:
                raise DataError(f"{archive}: cannot extract '{info.filename}' ({error})") from None
            os.utime(path, (_zip_time(info), _zip_time(info)))
    return links


def _check_tar_member(archive: Path, info: tarfile.TarInfo) -> PurePosixPath:
    member = _safe_member_path(archive, info.name)
    if info.issym() or info.islnk():
        _check_link_target(archive, info.name, member, info.linkname, hard=info.islnk())
    elif not (info.isfile() or info.isdir()):
        raise DataError(
            f"{archive}: member '{info.name}' is a device, FIFO or other special file; "
            "archive refused"
        )
    return member


def _extract_tar(archive: Path, dest: Path) -> list[tuple[Path, str]]:
    """Extract regular files, hard links and folders; return the symlinks still to create."""
    links = []
    try:
        with tarfile.open(archive) as tf:
            plan = [(info, _check_tar_member(archive, info)) for info in tf.getmembers()]
            for info, member in plan:
                path = dest / member
                if info.issym():
                    links.append((path, info.linkname))
                    continue
                if info.isdir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                if info.islnk():  # a copy: the target was extracted before (tar order)
                    shutil.copyfile(dest / _safe_member_path(archive, info.linkname), path)
                else:
                    with tf.extractfile(info) as source, open(path, "wb") as handle:
                        shutil.copyfileobj(source, handle, _CHUNK)
                os.utime(path, (info.mtime, info.mtime))
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DataError(f"{archive}: not a readable tar archive ({error})") from None
    return links


def _create_symlinks(archive: Path, dest: Path, links: list[tuple[Path, str]]) -> None:
    """Create the symlinks last (no file is ever written through one), then check where they
    lead: a chain of links can escape even when each target looks inside on its own."""
    for path, target in links:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)
    root = dest.resolve()
    for path, target in links:
        if not path.resolve().is_relative_to(root):
            shutil.rmtree(dest)
            raise DataError(
                f"{archive}: symlink '{path.relative_to(dest)}' leads outside the archive "
                f"('{target}'); archive refused"
            )


def extract_archive(archive: Path, dest: Path) -> None:
    """Extract ``archive`` (zip or tar, any compression) into ``dest`` after checking every member.

    Raises DataError naming the archive (and the member) for unreadable archives and for members
    that could write outside ``dest``; a refused archive writes nothing.
    """
    archive, dest = Path(archive), Path(dest)
    if not is_archive(archive):
        raise DataError(f"{archive}: not a supported archive ({', '.join(ARCHIVE_SUFFIXES)})")
    dest.mkdir(parents=True, exist_ok=True)
    if archive.name.lower().endswith(".zip"):
        links = _extract_zip(archive, dest)
    else:
        links = _extract_tar(archive, dest)
    _create_symlinks(archive, dest, links)
