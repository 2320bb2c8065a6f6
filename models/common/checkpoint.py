"""Original (detectron2) checkpoints of the Cat-Seg family <-> our module names.

The originals nest modules under prefixes such as ``sem_seg_head.predictor.clip_model.``; our
models keep every name below those prefixes, so the mapping is a prefix rename
(:class:`OriginalKeys`). Loading is strict: keys of modules a model leaves out on purpose are
passed as *unused* and returned by name, never dropped silently; any other difference raises
``CheckpointMismatchError`` naming the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from .dense_clip import CheckpointMismatchError

__all__ = ["CheckpointMismatchError", "OriginalKeys"]

_SHOWN = 8


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
    """The prefix renames of one model: ``prefixes`` = ((original, ours), ...), the longest
    original prefix first where one extends another."""

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
        """Load an original-format checkpoint strictly into ``model``; return the ``unused``
        keys it holds (original names of modules the model leaves out on purpose).

        Raises CheckpointMismatchError naming missing keys, unexpected keys and shape
        mismatches.
        """
        state = self.unwrap(checkpoint)
        unused = set(unused)
        expected = model.state_dict()
        mapped = {self.from_original(k): v for k, v in state.items() if k not in unused}
        missing = [self.to_original(key) for key in expected if key not in mapped]
        unexpected = [
            key for key in state if key not in unused and self.from_original(key) not in expected
        ]
        shapes = [
            f"{self.to_original(key)} {tuple(value.shape)} (model {tuple(expected[key].shape)})"
            for key, value in mapped.items()
            if key in expected and tuple(value.shape) != tuple(expected[key].shape)
        ]
        problems = []
        if missing:
            problems.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {_listing(unexpected)}")
        if shapes:
            problems.append(f"shape mismatches: {_listing(shapes)}")
        if problems:
            raise CheckpointMismatchError("; ".join(problems))
        model.load_state_dict(mapped, strict=True)
        return sorted(key for key in state if key in unused)
