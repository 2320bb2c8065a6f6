"""Weights files: the one reader, and the one strict loader (timm's ``load_checkpoint`` shape).

``read_weights_file`` reads every weights file the models use: ``.safetensors`` through
safetensors, anything else through ``torch.load(weights_only=True)``. What it returns is the
file's mapping: a state dict, or a checkpoint wrapping one (detectron2's ``{"model": ...}``,
Lightning's ``{"state_dict": ...}``, DINO's ``{"teacher": ...}``), which the model's own code
unwraps. Every failure is a ``CheckpointReadError`` whose message starts with the file's path and
says what is wrong.

``load_checkpoint`` copies a state dict into a model strictly. Where a checkpoint format names
modules differently from ours, an :class:`OriginalKeys` (the counterpart of timm's per-model
``checkpoint_filter_fn``: prefix renames, both ways) maps its keys onto ours, so that errors name
keys as the file does. Keys of modules a model leaves out on purpose are passed as *unused* and
returned by name, never dropped silently; any other difference raises
``CheckpointMismatchError`` naming the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "CheckpointMismatchError",
    "CheckpointReadError",
    "OUR_NAMES",
    "OriginalKeys",
    "load_checkpoint",
    "read_weights_file",
]

#: How many keys an error message lists before it only counts the rest.
_SHOWN = 8
#: The most characters of a library's error message that ours quotes.
_CAUSE_LENGTH = 160
#: The class torch's weights-only unpickler refused, in its error message (a dotted name: random
#: bytes can look like a pickled global too).
_REFUSED_CLASS = re.compile(r"Unsupported global: GLOBAL ([A-Za-z_][\w.]*) was not an allowed")
#: The source location that torch's C++ errors start with.
_C10_LOCATION = re.compile(r"^\[enforce fail at [^\]]*\][\s.]*")


class CheckpointReadError(ValueError):
    """A weights file that cannot be read as a state dict; the message starts with its path."""


class CheckpointMismatchError(ValueError):
    """A state dict whose keys or shapes do not match the model (the message names them)."""


# -- reading ----------------------------------------------------------------------------------
def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def _cause(error: BaseException) -> str:
    """``error`` in one short line: its type and the first sentence of its message (torch's
    run on for a paragraph)."""
    text = str(error).split("WeightsUnpickler error:")[-1]
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = _C10_LOCATION.sub("", line).split(". ")[0].rstrip(".")
    if len(first) > _CAUSE_LENGTH:  # it may quote the file's bytes
        first = first[: _CAUSE_LENGTH - 3] + "..."
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _read(path: Path, allowed_globals: Iterable[type]) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if _is_torchscript(path):
        raise CheckpointReadError(
            f"{path}: a TorchScript archive, which cannot be read safely (weights_only); give "
            "a plain state dict instead (for OpenAI CLIP: the open_clip pretrained tag 'openai')"
        )
    with torch.serialization.safe_globals(list(allowed_globals)):
        return torch.load(path, map_location="cpu", weights_only=True)


def read_weights_file(path: str | Path, *, allowed_globals: Iterable[type] = ()) -> dict[str, Any]:
    """The mapping a weights file holds (see the module docstring), on the CPU.

    ``allowed_globals``: classes a pickled file may hold besides tensors and plain containers
    (e.g. the ``argparse.Namespace`` of a DINO training checkpoint). Raises
    ``CheckpointReadError`` ("<path>: ...") for a missing or unreadable file, one pickling any
    other class (named), a TorchScript archive, and a file holding no (or an empty) mapping.
    """
    path = Path(path)
    try:
        checkpoint = _read(path, allowed_globals)
    except CheckpointReadError:
        raise
    except FileNotFoundError:
        raise CheckpointReadError(f"{path}: does not exist") from None
    except OSError as error:
        raise CheckpointReadError(f"{path}: unreadable ({error.strerror or error})") from None
    except Exception as error:  # torch and safetensors raise many kinds for damaged files
        refused = _REFUSED_CLASS.search(str(error))
        if refused:
            raise CheckpointReadError(
                f"{path}: refused by weights_only: it pickles {refused.group(1)}, not only "
                "tensors and plain containers"
            ) from None
        kind = "safetensors file" if path.suffix == ".safetensors" else "file saved by torch.save"
        raise CheckpointReadError(
            f"{path}: unreadable: damaged, or not a {kind} ({_cause(error)})"
        ) from None
    if not isinstance(checkpoint, Mapping):
        raise CheckpointReadError(f"{path}: holds no state dict (a {type(checkpoint).__name__})")
    if not checkpoint:
        raise CheckpointReadError(f"{path}: holds no state dict (an empty mapping)")
    return dict(checkpoint)


# -- key names --------------------------------------------------------------------------------
def _rename(key: str, pairs: Iterable[tuple[str, str]]) -> str:
    for old, new in pairs:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def _listing(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _SHOWN else "")


@dataclass(frozen=True)
class OriginalKeys:
    """The prefix renames of one checkpoint format: ``prefixes`` = ((original, ours), ...), the
    longest original prefix first where one extends another."""

    prefixes: tuple[tuple[str, str], ...]

    def from_original(self, key: str) -> str:
        """Our name of an original checkpoint key."""
        return _rename(key, self.prefixes)

    def to_original(self, key: str) -> str:
        """The original name of one of our keys."""
        return _rename(key, ((new, old) for old, new in self.prefixes))

    def unwrap(self, checkpoint: Mapping) -> Mapping[str, Tensor]:
        """The state dict, in original key names, of a detectron2 checkpoint
        (``{"model": ...}``), a bare original state dict, or one of ours (``state_dict()``,
        e.g. from training)."""
        model = checkpoint.get("model") if isinstance(checkpoint, Mapping) else None
        state = model if isinstance(model, Mapping) else checkpoint
        ours = tuple(new for _, new in self.prefixes)
        if isinstance(state, Mapping) and any(str(key).startswith(ours) for key in state):
            return {self.to_original(key): value for key, value in state.items()}
        return state

    def load(self, model: nn.Module, checkpoint: Mapping, unused: Iterable[str] = ()) -> list[str]:
        """``load_checkpoint`` of an original-format checkpoint (see ``unwrap``) with these
        renames; returns the ``unused`` keys it holds."""
        return load_checkpoint(model, self.unwrap(checkpoint), self, unused=unused)


#: No renames: a state dict in our own key names.
OUR_NAMES = OriginalKeys(())


# -- strict loading ---------------------------------------------------------------------------
def _shape(value: Any) -> tuple[int, ...] | str:
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__


def load_checkpoint(
    model: nn.Module,
    state: Mapping[str, Any],
    keys: OriginalKeys = OUR_NAMES,
    *,
    unused: Iterable[str] = (),
) -> list[str]:
    """Copy ``state`` (keys named as ``keys`` says) into ``model``, strictly; return the
    ``unused`` keys it holds (modules the model leaves out on purpose), sorted.

    Raises CheckpointMismatchError naming the missing, unexpected and mis-shaped keys in the
    state's names; ``model`` is then left unchanged.
    """
    unused = set(unused)
    expected = model.state_dict()
    mapped, unexpected, shapes = {}, [], []
    for key, value in state.items():
        if key in unused:
            continue
        ours = keys.from_original(key)
        mapped[ours] = value
        if ours not in expected:
            unexpected.append(key)
        elif _shape(value) != _shape(expected[ours]):
            shapes.append(f"{key} {_shape(value)} != {_shape(expected[ours])}")
    missing = [keys.to_original(key) for key in expected if key not in mapped]
    problems = [
        f"{label}: {_listing(found)}"
        for label, found in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches (checkpoint != model)", shapes),
        )
        if found
    ]
    if problems:
        raise CheckpointMismatchError("; ".join(problems))
    model.load_state_dict(mapped, strict=True)
    return sorted(key for key in state if key in unused)
