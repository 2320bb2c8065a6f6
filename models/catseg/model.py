"""Cat-Seg (cvlab-kaist/CAT-Seg, CVPR 2024 code; spec ``baselines.md`` 1.2-1.4 and 2).

Input: CLIP-normalised images (B, 3, H, W) and L2-normalised text embeddings (T, C). The image is
squashed (bilinear, aspect ratio lost) to the CLIP size (384 for ViT-B/16, 336 for
ViT-L/14@336: a 24 x 24 grid); the dense CLIP map gives the cosine cost with the text and the
Swin guidance; the raw outputs of two hooked blocks, through ``upsample1`` (ConvTranspose 2x)
and ``upsample2`` (4x), guide the two decoder stages. Output: logits (B, T, 4h, 4w).

Module names follow the original state dict (``checkpoint.PREFIXES``): ``clip``,
``aggregator``, ``upsample1``, ``upsample2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..common.catseg_clip import (
    TINY_CATSEG_CONFIG,
    build_catseg_clip,
    dense_forward,
    encode_text,
    squash,
)
from ..common.catseg_head import CatSegAggregator, clip_upsamplers, set_pooling
from ..common.split_attention import set_clip_finetune_attention


@dataclass(frozen=True)
class CatSegConfig:
    """One Cat-Seg variant; ``CONFIGS`` holds the released ones and a tiny test one."""

    clip_arch: str | dict[str, Any]
    clip_size: int
    clip_hooks: tuple[int, int]
    num_layers: int = 2  # NUM_LAYERS
    window_size: int = 12  # WINDOW_SIZES
    pooling_size: tuple[int, int] = (2, 2)  # POOLING_SIZES (training; evaluation (1, 1))
    attention_type: str = "linear"  # ATTENTION_TYPE
    pad_len: int = 256  # the Aggregator's default
    size_divisibility: int = 32  # MODEL.MASK_FORMER.SIZE_DIVISIBILITY (whole-image inference)


CONFIGS: dict[str, CatSegConfig] = {
    # configs/vitb_384.yaml
    "vit-b": CatSegConfig("ViT-B-16-quickgelu", 384, (3, 7)),
    # configs/vitl_336.yaml
    "vit-l": CatSegConfig("ViT-L-14-336-quickgelu", 336, (7, 15)),
    # random and small, for tests and the demo: 64 px -> a 4x4 grid, 2x2 windows shifted by 1,
    # classes padded to 32 only (256 would make the tiny model's class attention its main cost)
    "tiny": CatSegConfig(TINY_CATSEG_CONFIG, 64, (1, 2), window_size=2, pad_len=32),
}


class CatSeg(nn.Module):
    """The Cat-Seg network (see the module docstring); random weights until loaded.

    Subclasses change the aggregator (``aggregator_class``) and the CLIP features it gets
    (:meth:`clip_features`).
    """

    aggregator_class: type[CatSegAggregator] = CatSegAggregator

    def __init__(self, config: CatSegConfig, device: torch.device | str = "cpu") -> None:
        """``device="meta"`` builds without memory (parameter counts, key checks)."""
        super().__init__()
        self.config = config
        self.clip = build_catseg_clip(config.clip_arch, device)
        visual = self.clip.visual
        clip_dim = self.clip.text_projection.shape[1]
        width = visual.transformer.width
        grid = config.clip_size // visual.patch_size[0]
        with torch.device(device):
            self.aggregator = self.aggregator_class(
                clip_dim,
                clip_dim,
                num_layers=config.num_layers,
                pooling_size=config.pooling_size,
                feature_resolution=(grid, grid),
                window_size=config.window_size,
                attention_type=config.attention_type,
                pad_len=config.pad_len,
            )
            # the hooked blocks (B, width, h, w) -> (B, 256, 2h, 2w) / (B, 128, 4h, 4w)
            for name, conv in clip_upsamplers(width).items():
                self.add_module(name, conv)
        self.set_trainable()

    def set_trainable(self) -> None:
        """The original ``CLIP_FINETUNE "attention"``: CLIP q/v attention weights of both
        towers and every new module train (spec ``baselines.md`` 1.6)."""
        self.requires_grad_(True)
        set_clip_finetune_attention(self.clip)

    def set_pooling(self, pooling_size: int | Sequence[int] | None) -> None:
        """The class aggregation's pooling: (2, 2) in training, (1, 1) in the official
        evaluation scripts (``POOLING_SIZES``)."""
        set_pooling(self.aggregator, pooling_size)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """L2-normalised text embeddings (T, C) of prompt token ids (T, context_length)."""
        return F.normalize(encode_text(self.clip, tokens), dim=-1)

    def clip_features(self, images: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """From CLIP-sized images: what the cost is computed from (the dense map), the
        appearance guidance (the same map) and the two hooked blocks."""
        dense, blocks = dense_forward(self.clip, images, self.config.clip_hooks)
        return dense, dense, blocks

    def forward(self, images: Tensor, text: Tensor) -> Tensor:
        """Logits (B, T, 4h, 4w) of CLIP-normalised ``images`` (B, 3, H, W) for the
        L2-normalised ``text`` embeddings (T, C)."""
        cost_features, appearance, blocks = self.clip_features(
            squash(images, self.config.clip_size)
        )
        per_image = text[None, :, None, :].expand(images.shape[0], -1, -1, -1)  # (B, T, 1, C)
        guidance = [self.upsample1(blocks[0]), self.upsample2(blocks[1])]
        return self.aggregator(cost_features, per_image, appearance, guidance)
