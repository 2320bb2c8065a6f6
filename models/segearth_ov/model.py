"""The SegEarth-OV network (CVPR 2025, training-free; spec ``baselines.md`` 7).

Followed from likyoo/SegEarth-OV ``segearth_segmentor.py`` (``forward_feature``,
``compute_padsize``, ``postprocess_result``) and ``open_clip/transformer.py``
(``VisionTransformer.forward`` with ``model_type='SegEarth'``, ``interpolate_pos_encoding``).

Per crop (CLIP-normalised, at most the window size): zero-padded on all sides, centred, to a
multiple of the patch; blocks 1..L-1 as usual, the last one replaced by SegEarth's attention
(``dense_clip.segearth_attention``), ``ln_post`` and ``proj`` on every token; the patch map
upsampled x16 by SimFeatUp guided by the padded crop (or bilinearly); per-pixel cosine with the
L2-normalised name embeddings, plus ``cls_bias`` times the cosine of the CLS output (global-bias
alleviation, lambda = -0.3); the padding cropped away. Scores stay per prompt name:
``class_probabilities`` turns window-averaged logits into per-class probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..common.dense_clip import TINY_VIT_CONFIG, DenseCLIP, build_clip, model_config
from ..common.text import NameEmbeddings, max_over_synonyms
from .upsampler import SimFeatUp

#: SegEarth-OV's pixel statistics (``SegDataPreProcessor``, RGB, 0-255 scale): CLIP's, rounded.
PIXEL_MEAN_255 = (122.771, 116.746, 104.094)
PIXEL_STD_255 = (68.501, 66.632, 70.323)
CLS_BIAS = -0.3  # cls_token_lambda of configs/base_config.py
LOGIT_SCALE = 50.0  # SegEarthSegmentation's logit_scale


@dataclass(frozen=True)
class SegEarthConfig:
    """A CLIP (open_clip name or config dict) and the SimFeatUp layer's key width and radius."""

    clip_arch: str | dict[str, Any]
    key_dim: int = 32
    radius: int = 5

    @property
    def embed_dim(self) -> int:
        """Width of the joint image-text space (the upsampled features' channels)."""
        return model_config(self.clip_arch)["embed_dim"]


CONFIGS: dict[str, SegEarthConfig] = {
    "vit-b": SegEarthConfig("ViT-B-16"),  # clip_type 'CLIP', vit_type 'ViT-B/16': the paper's
    "vit-l": SegEarthConfig("ViT-L-14"),  # vit_type 'ViT-L-14' (224 px); no released upsampler
    # tests and the demo: a 32-d random CLIP and a 3 x 3 filter (the original's is 11 x 11),
    # so that a 448 x 448 image (9 windows) takes about half a second on one CPU core
    "tiny": SegEarthConfig(TINY_VIT_CONFIG, key_dim=8, radius=1),
}


def segearth_pos_embed(pos: Tensor, grid: Sequence[int], size: Sequence[int]) -> Tensor:
    """SegEarth's ``interpolate_pos_encoding``: the (1 + gh*gw, C) embedding resized bicubically
    by the scale factors ``(side + 0.1) / pretrained side`` (which also set the sampling
    positions), CLS kept; unchanged when the grids agree."""
    if tuple(grid) == tuple(size):
        return pos
    patch = pos[1:].reshape(1, grid[0], grid[1], -1).permute(0, 3, 1, 2).float()
    scale = ((size[0] + 0.1) / grid[0], (size[1] + 0.1) / grid[1])
    patch = F.interpolate(patch, scale_factor=scale, mode="bicubic", align_corners=False)
    if tuple(patch.shape[-2:]) != tuple(size):
        raise ValueError(f"positional embedding resized to {tuple(patch.shape[-2:])}, not {size}")
    return torch.cat([pos[:1], patch.flatten(2)[0].T.to(pos.dtype)])


def pad_centred(images: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Zero-pad (B, C, H, W) to multiples of ``multiple``, the extra pixel of an odd padding at
    the bottom/right (``compute_padsize``); returns the image and its (top, left) offset."""
    height, width = images.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    top, left = pad_h // 2, pad_w // 2
    return F.pad(images, (left, pad_w - left, top, pad_h - top)), (top, left)


def class_probabilities(
    logits: Tensor, class_index: Tensor, num_classes: int, logit_scale: float = LOGIT_SCALE
) -> Tensor:
    """``postprocess_result``: softmax of ``logit_scale * logits`` (B, N, ...) over all N prompt
    names, then the max over each class's names -> (B, K, ...)."""
    probabilities = torch.softmax(logit_scale * logits, dim=1)
    return max_over_synonyms(probabilities, class_index, num_classes)


def reject_background(probabilities: Tensor, index: int, threshold: float) -> Tensor:
    """Pixels whose highest probability is below ``threshold`` go to class ``index`` (its score
    becomes 1 + that probability, above every probability); the others are unchanged."""
    best = probabilities.amax(dim=1)
    raised = torch.where(best < threshold, 1 + best, probabilities[:, index])
    return torch.cat(
        [probabilities[:, :index], raised.unsqueeze(1), probabilities[:, index + 1 :]], dim=1
    )


class SegEarthOV(NameEmbeddings):
    """Per-name logits of CLIP-normalised crops (see the module docstring)."""

    def __init__(
        self, clip: DenseCLIP, upsampler: SimFeatUp | None, cls_bias: float = CLS_BIAS
    ) -> None:
        super().__init__()
        self.clip = clip
        self.upsampler = upsampler
        self.cls_bias = cls_bias

    def probabilities(self, logits: Tensor, logit_scale: float = LOGIT_SCALE) -> Tensor:
        """Per-class probabilities (B, K, ...) of per-name logits (B, N, ...)."""
        return class_probabilities(logits, self.class_index, self.num_classes, logit_scale)

    def upsample(self, features: Tensor, guidance: Tensor) -> Tensor:
        """(B, D, h, w) patch features -> (B, D, H, W) at the padded crop's size; SimFeatUp runs
        under fp16 autocast on CUDA half inputs, as the original."""
        if self.upsampler is None:
            size = guidance.shape[-2:]
            return F.interpolate(features, size=size, mode="bilinear", align_corners=False)
        half_cuda = guidance.is_cuda and guidance.dtype == torch.float16
        with torch.autocast("cuda", dtype=torch.float16, enabled=half_cuda):
            return self.upsampler(features, guidance).to(features.dtype)

    def forward(self, images: Tensor) -> Tensor:
        """(B, N, H, W) logits of CLIP-normalised crops (B, 3, H, W), one map per prompt name."""
        if not self.num_names:
            raise RuntimeError("SegEarthOV has no classifier; call set_classifier first")
        height, width = images.shape[-2:]
        padded, (top, left) = pad_centred(images, self.clip.patch_size[0])
        features = self.clip(padded, "segearth")
        dense = F.normalize(self.upsample(features.dense, padded), dim=1)
        text = self.text_embeddings.to(dense.dtype)
        logits = torch.einsum("bdhw,nd->bnhw", dense, text)
        if self.cls_bias:
            cls_logits = F.normalize(features.cls, dim=-1) @ text.T
            logits = logits + self.cls_bias * cls_logits[..., None, None]
        return logits[..., top : top + height, left : left + width]


def build_network(
    config: SegEarthConfig,
    clip_weights: str | None = None,
    upsampler: bool = True,
    cls_bias: float = CLS_BIAS,
    device: torch.device | str = "cpu",
) -> SegEarthOV:
    """SegEarth-OV with OpenAI-style CLIP weights from ``clip_weights`` (tag or file; None:
    random) and a random SimFeatUp (``upsampler=False``: bilinear); frozen, in eval mode."""
    clip = build_clip(config.clip_arch, clip_weights, device, quick_gelu=True)
    simfeatup = None
    if upsampler:
        with torch.device(device):
            simfeatup = SimFeatUp(config.embed_dim, config.key_dim, config.radius)
    network = SegEarthOV(DenseCLIP(clip, segearth_pos_embed), simfeatup, cls_bias)
    return network.eval().requires_grad_(False)
