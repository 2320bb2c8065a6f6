"""Files: atomic writes and content hashes.

Writes go to a temp file in the target's folder, fsync, then ``os.replace``: an interrupted
write leaves either the old file or the new one, never half a file. Temp files are hidden
(``.<name>.<random>.tmp``) so folder listings that skip dot-files never see them.

Hashes (hex SHA-256) identify what results depend on: a file's bytes, a JSON value in canonical
form, a module's weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import torch

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_writer(path: Path, durable: bool = True) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` atomically when the block exits cleanly.

    The parent folder is created if needed; on an exception the temp file is removed and
    ``path`` is left untouched. ``durable=False`` skips the fsync: the rename still protects
    against a killed process, not against a power cut (for bulk outputs that are re-verified).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give what open() would
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        try:
            os.replace(tmp_name, path)
        except OSError as error:  # name the target, not the hidden temp file
            raise OSError(error.errno, error.strerror, str(path)) from None
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_writer(path) as handle:
        handle.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8, newlines untranslated) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_copy(src: Path, dst: Path, durable: bool = True) -> None:
    """Copy the bytes of ``src`` to ``dst`` atomically, streaming (no whole-file read)."""
    with open(src, "rb") as source, atomic_writer(dst, durable) as handle:
        shutil.copyfileobj(source, handle)


# -- hashes ----------------------------------------------------------------------------------
def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def state_dict_sha256(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict (key names and tensor bytes, in key order): the
    identity of random weights that no file holds."""
    import torch  # here: leaderboards and the CLI read this module without torch

    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def json_sha256(value: Any) -> str:
    """Hex SHA-256 of a JSON-serialisable value in canonical form (sorted keys, no spaces)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
