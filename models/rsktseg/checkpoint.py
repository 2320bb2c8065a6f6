"""The authors' released checkpoints (detectron2 ``.pth``) <-> our module names.

The original nests modules as ``sem_seg_head.predictor.{clip_model, clip_model_remote,
transformer}`` with ``dino_model`` and seven projection convs at the top level; we keep every
name below those prefixes (the CLIP towers already split q/k/v like the original), so the
mapping is a prefix rename. Keys of modules we do not build (RemoteCLIP's text tower and the
image blocks after the last hook, which never affect the output) are returned as *unused*, by
name, never dropped silently; any other difference fails and names the keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from torch import Tensor, nn

#: original prefix -> ours (RemoteCLIP first: its prefix extends CLIP's).
PREFIXES = (
    ("sem_seg_head.predictor.clip_model_remote.", "remoteclip."),
    ("sem_seg_head.predictor.clip_model.", "clip."),
    ("sem_seg_head.predictor.transformer.", "decoder."),
    ("dino_model.", "dino."),
)
_SHOWN = 8


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes differ from the model's (the message names them)."""


def _rename(key: str, pairs: Iterable[tuple[str, str]]) -> str:
    for old, new in pairs:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def from_original(key: str) -> str:
    """Our name of an original checkpoint key."""
    return _rename(key, PREFIXES)


def to_original(key: str) -> str:
    """The original name of one of our keys."""
    return _rename(key, ((new, old) for old, new in PREFIXES))


def unwrap(checkpoint: Mapping) -> Mapping[str, Tensor]:
    """The state dict, in original key names, of a detectron2 checkpoint (``{"model": ...}``),
    a bare original state dict, or one of ours (``RSKTSeg.state_dict()``, e.g. from training)."""
    model = checkpoint.get("model") if isinstance(checkpoint, Mapping) else None
    state = model if isinstance(model, Mapping) else checkpoint
    ours = tuple(new for _, new in PREFIXES)
    if isinstance(state, Mapping) and any(str(key).startswith(ours) for key in state):
        return {to_original(key): value for key, value in state.items()}
    return state


def num_layers(state: Mapping[str, Tensor]) -> int:
    """N, the number of aggregator layers in an original state dict."""
    found = {
        int(match.group(1))
        for key in state
        if (match := re.match(r"sem_seg_head\.predictor\.transformer\.layers\.(\d+)\.", key))
    }
    return max(found) + 1 if found else 0


def _listing(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _SHOWN else "")


def load_original(model: nn.Module, checkpoint: Mapping, unused: Iterable[str] = ()) -> list[str]:
    """Load an original-format checkpoint strictly into ``model``; return the ``unused`` keys
    it holds (original names of modules the model leaves out on purpose).

    Raises CheckpointMismatchError naming missing keys, unexpected keys and shape mismatches.
    """
    state = unwrap(checkpoint)
    unused = set(unused)
    expected = model.state_dict()
    mapped = {from_original(key): value for key, value in state.items() if key not in unused}
    missing = [to_original(key) for key in expected if key not in mapped]
    unexpected = [key for key in state if key not in unused and from_original(key) not in expected]
    shapes = [
        f"{to_original(key)} {tuple(value.shape)} (model {tuple(expected[key].shape)})"
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
