"""Original SAN checkpoints (detectron2 ``.pth``: ``{"model": state}``, e.g. the released
``san_vit_b_16.pth`` / ``san_vit_large_14.pth``) <-> our module names.

The key names follow the module attributes of MendelXu/SAN ``san/model/san.py`` and
``san/model/clip_utils/`` (cross-checked with open-mmlab/mmsegmentation
``tools/model_converters/san2mmseg.py``). The original splits one open_clip CLIP across three
modules that hold the same tensors without copying them:

- ``clip_visual_extractor``: ``conv1``, ``class_embedding``, ``positional_embedding``,
  ``ln_pre`` and CLIP blocks ``0..k-1`` as ``resblocks.0..k-1`` (k = ``feature_layer``);
- ``clip_rec_head``: CLIP blocks ``k..L-1`` renumbered ``resblocks.0..L-k-1``, ``ln_post``,
  ``proj``;
- ``ov_classifier``: the text tower (``transformer``, ``token_embedding``,
  ``positional_embedding``, ``ln_final``, ``text_projection``), ``logit_scale``, ``bg_embed``,
  and ``attn_mask`` (registered there as a persistent buffer, unlike in open_clip).

Each CLIP tensor therefore has exactly one original key: there are no duplicates to reconcile,
and the mapping onto our single ``clip`` module is one-to-one. Our names: ``clip.`` (open_clip
``CLIP``), ``side_adapter_network.`` (the original's, unchanged) and ``bg_embed``. Two original
entries are derived state, not weights, and are reported as unused: ``ov_classifier.attn_mask``
(the causal mask open_clip rebuilds) and ``criterion.empty_weight`` (the class weights of the
training vocabulary's loss).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from ..common.checkpoint import CheckpointMismatchError, OriginalKeys
from ..common.dense_clip import model_config
from .model import SANConfig

__all__ = ["CLASS_EMBEDDING_KEY", "UNUSED_KEYS", "CheckpointMismatchError", "keys", "load"]

#: Original entries that are not weights of the network (see the module docstring).
UNUSED_KEYS = ("ov_classifier.attn_mask", "criterion.empty_weight")
#: The CLIP class embedding, whose width tells the backbone of a checkpoint.
CLASS_EMBEDDING_KEY = "clip_visual_extractor.class_embedding"


def keys(config: SANConfig) -> OriginalKeys:
    """The original <-> our key renames of ``config``'s network."""
    depth = model_config(config.clip_arch)["vision_cfg"]["layers"]
    split = config.feature_layer
    ours = "clip.visual.transformer.resblocks."
    blocks = [(f"clip_visual_extractor.resblocks.{i}.", f"{ours}{i}.") for i in range(split)]
    blocks += [
        (f"clip_rec_head.resblocks.{i}.", f"{ours}{split + i}.") for i in range(depth - split)
    ]
    return OriginalKeys(
        (
            *blocks,
            ("clip_rec_head.ln_post.", "clip.visual.ln_post."),
            ("clip_rec_head.proj", "clip.visual.proj"),
            ("clip_visual_extractor.", "clip.visual."),
            ("ov_classifier.bg_embed", "bg_embed"),
            ("ov_classifier.", "clip."),
        )
    )


def load(network: nn.Module, checkpoint: Mapping) -> list[str]:
    """Load an original-format (or our) checkpoint strictly into a ``SAN``; returns the
    ``UNUSED_KEYS`` it held. Raises ``CheckpointMismatchError`` naming the bad keys."""
    return keys(network.config).load(network, checkpoint, UNUSED_KEYS)
