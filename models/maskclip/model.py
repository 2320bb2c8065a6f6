"""The MaskCLIP network: dense CLIP features scored against a text classifier by cosine."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..common.dense_clip import DenseCLIP
from ..common.text import NameEmbeddings, max_over_synonyms

#: LayerNorm epsilon of MaskCLIP's mmseg ViT (``norm_cfg=dict(type='LN', eps=1e-6)``).
MMSEG_LN_EPS = 1e-6


def use_mmseg_numerics(visual: nn.Module) -> None:
    """Run an open_clip image tower as MaskCLIP's mmseg port does: exact GELU, LN eps 1e-6.

    MaskCLIP's ViT-B/16 config (``act_cfg=dict(type='GELU')``, LN eps 1e-6) differs from
    how CLIP was trained (QuickGELU, eps 1e-5); its text embeddings came from the original
    CLIP package, so the text tower is left as it is.
    """
    for module in visual.modules():
        if isinstance(module, nn.LayerNorm):
            module.eps = MMSEG_LN_EPS
    for block in visual.transformer.resblocks:
        block.mlp.gelu = nn.GELU()


class MaskCLIP(NameEmbeddings):
    """Per-pixel class scores: cosine of L2-normalised dense features and text embeddings.

    Scores are raw cosines (no temperature), reduced to one per class by the max over its
    synonyms, then upsampled bilinearly to the input size.
    """

    def __init__(self, clip: DenseCLIP, mode: str = "maskclip") -> None:
        super().__init__()
        self.clip = clip
        self.mode = mode

    def forward(self, images: Tensor) -> Tensor:
        """(B, K, H, W) scores for CLIP-normalised images (B, 3, H, W)."""
        if not self.num_classes:
            raise RuntimeError("MaskCLIP has no classifier; call set_classifier first")
        height, width = images.shape[-2:]
        features = F.normalize(self.clip.encode_dense(images, self.mode).float(), dim=1)
        scores = torch.einsum("bdhw,nd->bnhw", features, self.text_embeddings)
        scores = max_over_synonyms(scores, self.class_index, self.num_classes)
        ph, pw = self.clip.patch_size
        grid_size = (scores.shape[-2] * ph, scores.shape[-1] * pw)
        scores = F.interpolate(scores, size=grid_size, mode="bilinear", align_corners=False)
        return scores[..., :height, :width]
