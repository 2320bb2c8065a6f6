"""SED's checkpoints (detectron2 ``model_final.pth`` of xb534/SED) <-> our module names:
``sem_seg_head.predictor.clip_model.`` is our ``clip.`` (the whole open_clip ConvNeXt CLIP, text
tower included; open_clip 3.3 with timm 1.0 names every key as SED's open_clip with its timm
did: open_clip loads LAION's ConvNeXt checkpoints without renaming), and
``sem_seg_head.predictor.transformer.`` our ``transformer.`` (the decoder). Nothing else is
saved: SED deletes its Swin ``backbone`` and registers its pixel statistics as non-persistent
buffers (SED ``sed/sed_model.py``)."""

from __future__ import annotations

from ..common.checkpoint import CheckpointMismatchError, OriginalKeys

__all__ = ["KEYS", "PREFIXES", "CheckpointMismatchError"]

#: original prefix -> ours.
PREFIXES = (
    ("sem_seg_head.predictor.clip_model.", "clip."),
    ("sem_seg_head.predictor.transformer.", "transformer."),
)
KEYS = OriginalKeys(PREFIXES)
