"""Starting weights for training RSKT-Seg: the three pretrained encoders, head random.

As the official code: OpenAI CLIP (q/k/v split from the fused in-projection), RemoteCLIP
ViT-B/32 (its open_clip state dict; the parts RSKT-Seg never runs are dropped by name) and the
DINO "RSIB" ViT-B/8 (``teacher`` entry, ``module.``/``backbone.`` prefixes stripped), every one
loaded strictly.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from ..common.catseg_clip import load_remoteclip_weights
from ..common.rsib import load_rsib_checkpoint
from ..common.split_attention import load_split_from_fused
from .model import RSKTSeg

#: Files RSKT-Seg's encoders come from, and where users get them.
REMOTECLIP_FILE = "RemoteCLIP-ViT-B-32.pt"
REMOTECLIP_SOURCE = "https://huggingface.co/chendelong/RemoteCLIP"


def load_pretrained_encoders(
    model: RSKTSeg,
    clip: Mapping[str, Tensor],
    remoteclip: Mapping[str, Tensor],
    rsib: Mapping,
) -> list[str]:
    """Load the three encoders' state dicts (fused or split names) into ``model``; return the
    RemoteCLIP keys dropped as unused. Every load is strict (``CheckpointMismatchError``)."""
    load_split_from_fused(model.clip, clip)
    dropped = load_remoteclip_weights(model.remoteclip, remoteclip)
    load_rsib_checkpoint(rsib, model.dino)
    model.set_trainable()
    return dropped
