"""GSNet's original checkpoints (detectron2 ``.pth``) <-> our module names.

The original nests modules as ``sem_seg_head.predictor.{clip_model, transformer}`` with
``dino_model`` (registered first) and five projection convs at the top level; we keep every name
below those prefixes, so the mapping is a prefix rename (:class:`..common.checkpoint.OriginalKeys`,
strict: missing, unexpected and mis-shaped keys are named in the original names).
"""

from __future__ import annotations

from ..common.checkpoint import CheckpointMismatchError, OriginalKeys

__all__ = [
    "DINO_PREFIX",
    "KEYS",
    "PREFIXES",
    "CheckpointMismatchError",
    "from_original",
    "load_original",
    "to_original",
    "unwrap",
]

#: Original prefix of the DINO weights (a released checkpoint may leave them to RSIB.pth).
DINO_PREFIX = "dino_model."
#: original prefix -> ours.
PREFIXES = (
    ("sem_seg_head.predictor.clip_model.", "clip."),
    ("sem_seg_head.predictor.transformer.", "decoder."),
    (DINO_PREFIX, "dino."),
)
KEYS = OriginalKeys(PREFIXES)
from_original = KEYS.from_original
to_original = KEYS.to_original
unwrap = KEYS.unwrap
load_original = KEYS.load
