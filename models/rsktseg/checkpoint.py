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
from collections.abc import Mapping

from torch import Tensor

from ..common.checkpoint import CheckpointMismatchError, OriginalKeys

__all__ = [
    "PREFIXES",
    "CheckpointMismatchError",
    "from_original",
    "load_original",
    "num_layers",
    "to_original",
    "unwrap",
]

#: original prefix -> ours (RemoteCLIP first: its prefix extends CLIP's).
PREFIXES = (
    ("sem_seg_head.predictor.clip_model_remote.", "remoteclip."),
    ("sem_seg_head.predictor.clip_model.", "clip."),
    ("sem_seg_head.predictor.transformer.", "decoder."),
    ("dino_model.", "dino."),
)
KEYS = OriginalKeys(PREFIXES)
from_original = KEYS.from_original
to_original = KEYS.to_original
unwrap = KEYS.unwrap
load_original = KEYS.load


def num_layers(state: Mapping[str, Tensor]) -> int:
    """N, the number of aggregator layers in an original state dict."""
    found = {
        int(match.group(1))
        for key in state
        if (match := re.match(r"sem_seg_head\.predictor\.transformer\.layers\.(\d+)\.", key))
    }
    return max(found) + 1 if found else 0
