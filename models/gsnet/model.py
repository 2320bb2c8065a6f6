"""GSNet (Ye, Zhuge, Zhang; AAAI 2025): the whole network, following the original code
(yecy749/GSNet ``gs_net/GSNet.py``, ``GSNetPredictor.py``, ``RIPD.py``; spec ``baselines.md`` 4).

A "generalist" CLIP branch (Cat-Seg-B: OpenAI CLIP ViT-B/16 at 384, dense last block, blocks 3
and 7 hooked) and a frozen "specialist" DINO branch (the RSIB ViT-B/8 at 384: blocks 3, 7 and 11,
0-based, after the final LayerNorm). Input: CLIP-normalised images (B, 3, H, W), squashed
(bilinear, aspect ratio lost) to each encoder's size (both 384; a no-op for the official 384
crops and windows), and L2-normalised text embeddings (T, C).

- CLIP: dense map (B, 512, 24, 24) -> the CLIP cost; block 3 -> ``upsample1`` (256 @ 48^2) and
  block 7 -> ``upsample2`` (128 @ 96^2), the CLIP decoder guidance.
- DINO: block 11 -> ``dino_down_sample`` = Conv2d(768 -> 512, k2, s2) (24^2, "DINO in text
  space") -> the DINO cost; block 3 -> ``dino_decod_proj1`` = Conv1x1(768 -> 256) @ 48^2 and
  block 7 -> ``dino_decod_proj2`` = ConvTranspose2d(768 -> 128, k2, s2) @ 96^2, the DINO decoder
  guidance.
- ``decoder`` (the original ``RIPD``, :mod:`.head`) -> logits (B, T, 4h, 4w) = (B, T, 96, 96).

Module names follow the original state dict: ``dino`` (``dino_model.``, registered first as in
the original), ``clip`` (``sem_seg_head.predictor.clip_model.``), ``decoder``
(``sem_seg_head.predictor.transformer.``) and the five top-level projection convs under their
original names. The original code has no ViT-L configuration (``dino_down_sample`` is hard-coded
to 768 -> 512, the ViT-B text width), so none is offered here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
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
from ..common.catseg_head import (
    clip_upsamplers,
    cosine_cost,
    dino_projections,
    set_pooling,
)
from ..common.rsib import RSIB_CONFIG, TINY_RSIB_CONFIG, build_rsib, rsib_intermediate
from ..common.split_attention import set_clip_finetune_attention
from .head import RIPD

#: The original's top-level projection convs, in registration order.
TOP_LEVEL_CONV_NAMES = (
    "upsample1",
    "upsample2",
    "dino_decod_proj1",
    "dino_decod_proj2",
    "dino_down_sample",
)


@dataclass(frozen=True)
class GSNetConfig:
    """One GSNet variant; ``CONFIGS`` holds the released one and a tiny test one."""

    clip_arch: str | dict[str, Any]
    clip_size: int
    clip_hooks: tuple[int, int]
    dino_config: dict[str, Any] = field(default_factory=lambda: dict(RSIB_CONFIG))
    dino_size: int = 384
    dino_indices: tuple[int, int, int] = (3, 7, 11)
    num_layers: int = 2  # NUM_LAYERS
    window_size: int = 12  # WINDOW_SIZES
    pooling_size: tuple[int, int] = (2, 2)  # POOLING_SIZES (training; evaluation (1, 1))
    size_divisibility: int = 32  # whole-image inference (padding, as RSKT-Seg)


CONFIGS: dict[str, GSNetConfig] = {
    # configs/vitb_384.yaml: CLIP ViT-B/16 @384, hooks [3, 7], 2 layers; RSIB ViT-B/8 @384
    "vit-b": GSNetConfig("ViT-B-16-quickgelu", 384, (3, 7)),
    # random and small, for tests and the demo: CLIP 4x4 grid, DINO 8x8, windows 2x2
    "tiny": GSNetConfig(
        TINY_CATSEG_CONFIG,
        64,
        (1, 2),
        dino_config=dict(TINY_RSIB_CONFIG),
        dino_size=64,
        dino_indices=(1, 2, 3),
        window_size=2,
    ),
}


class GSNet(nn.Module):
    """The GSNet network (see the module docstring); random weights until loaded."""

    def __init__(self, config: GSNetConfig, device: torch.device | str = "cpu") -> None:
        """``device="meta"`` builds without memory (parameter counts, key checks)."""
        super().__init__()
        self.config = config
        self.dino = build_rsib(config.dino_config, device)
        self.clip = build_catseg_clip(config.clip_arch, device)
        clip_dim = self.clip.text_projection.shape[1]
        grid = config.clip_size // self.clip.visual.patch_size[0]
        with torch.device(device):
            self.decoder = RIPD(
                clip_dim,
                config.num_layers,
                feature_resolution=(grid, grid),
                window_size=config.window_size,
                pooling_size=config.pooling_size,
            )
            convs = {
                **clip_upsamplers(self.clip.visual.transformer.width),
                **dino_projections(config.dino_config["embed_dim"], clip_dim),
            }
        for name in TOP_LEVEL_CONV_NAMES:
            self.add_module(name, convs[name])
        self.set_trainable()

    def set_trainable(self) -> None:
        """The original fine-tuning: CLIP q/v attention weights (image and text towers) and
        every new module train; DINO is frozen (``DINO_FINETUNE "freeze"``)."""
        self.requires_grad_(True)
        set_clip_finetune_attention(self.clip)
        self.dino.requires_grad_(False)

    def set_pooling(self, pooling_size: int | Sequence[int] | None) -> None:
        """The class aggregation's pooling: (2, 2) in training, (1, 1) in the official
        evaluation scripts (``POOLING_SIZES``)."""
        set_pooling(self.decoder, pooling_size)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """L2-normalised text embeddings (T, C) of prompt token ids (T, context_length)."""
        return F.normalize(encode_text(self.clip, tokens), dim=-1)

    def forward(self, images: Tensor, text: Tensor) -> Tensor:
        """Logits (B, T, 4h, 4w) of CLIP-normalised ``images`` (B, 3, H, W) for the
        L2-normalised ``text`` embeddings (T, C)."""
        config = self.config
        dense, clip_blocks = dense_forward(
            self.clip, squash(images, config.clip_size), config.clip_hooks
        )
        dino_blocks = rsib_intermediate(
            self.dino, squash(images, config.dino_size), config.dino_indices
        )
        clip_guidance = [self.upsample1(clip_blocks[0]), self.upsample2(clip_blocks[1])]
        dino_guidance = [
            self.dino_decod_proj1(dino_blocks[0]),
            self.dino_decod_proj2(dino_blocks[1]),
        ]
        dino_map = self.dino_down_sample(dino_blocks[2])
        per_image = text[None, :, None, :].expand(images.shape[0], -1, -1, -1)  # (B, T, 1, C)
        clip_cost = cosine_cost(dense, per_image)
        dino_cost = cosine_cost(dino_map, per_image)
        return self.decoder(clip_cost, dino_cost, dense, per_image, clip_guidance, dino_guidance)
