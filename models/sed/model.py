"""SED (Xie et al., CVPR 2024; xb534/SED; spec ``baselines.md`` 6).

Input: CLIP-normalised images (B, 3, H, W), squashed (bilinear, aspect ratio lost) to
``clip_size`` (768: SED's ``clip_resolution``), and unit text embeddings (T, P, C) with the
P = 80 ImageNet templates kept apart (``embed_classes``). The ConvNeXt CLIP gives res2..res5 and
the dense CLIP embedding at stride 32 (``clip.dense_features``); res4, res3, res2 are detached
(SED ``sed_model.py``: ``fusion_features`` are ``clone().detach()``), so the image tower learns
only through the dense embedding; the decoder (``head.SEDDecoder``) returns logits at stride 4
(192 x 192 at 768 px) and three auxiliary logits.

Module names follow the original state dict (``checkpoint.PREFIXES``): ``clip``, ``transformer``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..common.catseg_clip import squash
from ..common.catseg_head import set_pooling
from ..common.text import IMAGENET_TEMPLATES, get_tokenizer
from .clip import (
    TINY_SED_CLIP,
    build_sed_clip,
    dense_features,
    stage_channels,
    template_embeddings,
)
from .head import SEDDecoder, SEDOutputs


@dataclass(frozen=True)
class SEDConfig:
    """One SED variant; ``CONFIGS`` holds the released ones and a tiny test one (defaults: the
    released values of ``configs/convnext{B,L}_768.yaml``)."""

    clip_arch: str | dict[str, Any]  # open_clip name (clip.RELEASED) or a tiny config dict
    clip_size: int = 768  # the squashed encoder input (SED's clip_resolution)
    templates: tuple[str, ...] = IMAGENET_TEMPLATES  # PROMPT_ENSEMBLE_TYPE "imagenet"
    hidden_dim: int = 128  # HIDDEN_DIMS
    decoder_dims: tuple[int, int, int] = (64, 32, 16)  # DECODER_DIMS
    guidance_proj_dims: tuple[int, int, int] = (32, 16, 8)  # DECODER_GUIDANCE_PROJ_DIMS
    nheads: int = 4  # NUM_HEADS
    pooling_size: tuple[int, int] = (2, 2)  # POOLING_SIZES (training; eval.sh: [1,1])
    attention_type: str = "linear"  # ATTENTION_TYPE
    kernel: int = 9  # KERNEL_SIZE [9, 9, 9]
    size_divisibility: int = 32  # MASK_FORMER.SIZE_DIVISIBILITY (training only; -1 at test)


CONFIGS: dict[str, SEDConfig] = {
    "convnext-b": SEDConfig("convnext_base_w_320"),  # configs/convnextB_768.yaml
    "convnext-l": SEDConfig("convnext_large_d_320"),  # configs/convnextL_768.yaml
    # random and small, for tests and the demo: 256 px -> an 8 x 8 cost grid, 64 x 64 logits
    "tiny": SEDConfig(TINY_SED_CLIP, clip_size=256),
}


class SED(nn.Module):
    """The SED network (see the module docstring); random weights until loaded."""

    def __init__(self, config: SEDConfig, device: torch.device | str = "cpu") -> None:
        """``device="meta"`` builds without memory (parameter counts, key checks)."""
        super().__init__()
        self.config = config
        self.clip = build_sed_clip(config.clip_arch, device)
        res2, res3, res4, _ = stage_channels(self.clip.visual)
        with torch.device(device):
            self.transformer = SEDDecoder(
                (res4, res3, res2),
                len(config.templates),
                hidden_dim=config.hidden_dim,
                decoder_dims=config.decoder_dims,
                guidance_proj_dims=config.guidance_proj_dims,
                nheads=config.nheads,
                pooling_size=config.pooling_size,
                attention_type=config.attention_type,
                kernel=config.kernel,
            )
        self.set_trainable()

    def set_trainable(self) -> None:
        """The original ``CLIP_FINETUNE "full"``: every CLIP parameter whose name contains
        ``visual`` trains (the whole image tower), the rest of CLIP (text tower, logit scale) is
        frozen; the decoder trains."""
        self.requires_grad_(True)
        self.clip.requires_grad_(False)
        self.clip.visual.requires_grad_(True)

    def set_pooling(self, pooling_size: int | Sequence[int] | None) -> None:
        """The class attention's pooling: (2, 2) in training, (1, 1) in the official
        evaluation (``eval.sh``: ``POOLING_SIZES [1,1]``)."""
        set_pooling(self.transformer, pooling_size)

    def embed_classes(self, classes: Sequence[Sequence[str]]) -> Tensor:
        """Unit text embeddings (T, P, C) of ``classes`` (synonyms per class) in the config's
        templates, synonyms averaged per template; the text tower is frozen, so no gradient."""
        device = next(self.clip.parameters()).device
        tokenizer = get_tokenizer(self.config.clip_arch)
        with torch.no_grad():
            return template_embeddings(
                self.clip.encode_text, tokenizer, classes, self.config.templates, device
            )

    def encode_image(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The dense CLIP embedding (B, C, h, w) of CLIP-normalised ``images`` and the detached
        decoder guidance [res4, res3, res2]."""
        stages, dense = dense_features(self.clip.visual, squash(images, self.config.clip_size))
        return dense, [stage.detach() for stage in stages[2::-1]]

    @staticmethod
    def _per_image(text: Tensor, batch: int) -> Tensor:
        return F.normalize(text, dim=-1).unsqueeze(0).expand(batch, -1, -1, -1)

    def forward(self, images: Tensor, text: Tensor) -> SEDOutputs:
        """Logits (B, T, clip_size / 4, ...) and the auxiliary logits of CLIP-normalised
        ``images`` (B, 3, H, W) for the text embeddings (T, P, C)."""
        dense, guidance = self.encode_image(images)
        return self.transformer(dense, self._per_image(text, images.shape[0]), guidance)

    def probabilities(self, images: Tensor, text: Tensor, topk: int | None = None) -> Tensor:
        """Sigmoid scores (B, T, clip_size / 4, ...); with ``topk``, category early rejection
        (``TEST.FAST_INFERENCE``; rejected classes score 0)."""
        if topk is None:
            return self(images, text).logits.sigmoid()
        dense, guidance = self.encode_image(images)
        per_image = self._per_image(text, images.shape[0])
        return self.transformer.early_rejection(dense, per_image, guidance, topk)
