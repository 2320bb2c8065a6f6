"""Cat-Seg's released checkpoints (detectron2 ``model_base.pth`` / ``model_large.pth``) <-> our
module names: ``sem_seg_head.predictor.clip_model.`` is our ``clip.`` (split q/k/v as the
original), ``sem_seg_head.predictor.transformer.`` our ``aggregator.``; ``upsample1`` and
``upsample2`` sit at the top level in both (spec ``param_counts.md`` 2.4). OVRS's
``*_ours.py`` model keeps the same names."""

from __future__ import annotations

from ..common.checkpoint import CheckpointMismatchError, OriginalKeys

__all__ = ["KEYS", "PREFIXES", "CheckpointMismatchError"]

#: original prefix -> ours.
PREFIXES = (
    ("sem_seg_head.predictor.clip_model.", "clip."),
    ("sem_seg_head.predictor.transformer.", "aggregator."),
)
KEYS = OriginalKeys(PREFIXES)
