"""RSKT-Seg (Li et al., AAAI-26): the whole network, following the official code
(LiBingyu01/RSKT-Seg ``RSKT_Seg/RSKT_Seg.py``; spec ``rsktseg.md`` sections 3-5).

Input: CLIP-normalised images padded to a multiple of 32 (B, 3, H, W) and L2-normalised text
embeddings (T, C). Each encoder gets the whole padded image squashed (bilinear, aspect ratio
lost) to its own size: CLIP 384 [336], RemoteCLIP 768, DINO 384. CLIP runs on the image and its
three quarter-turn rotations as ONE batch (the official code makes four calls; the outputs are
the same); the four dense maps, rotated back, give four cosine cost channels; DINO's last block,
projected, gives a fifth. Hooked CLIP, RemoteCLIP and DINO blocks feed the decoder's two
upsampling stages. Output: logits (B, T, 4h, 4w) on the 24x24 cost grid's 96x96.

Module names follow the original state dict (``checkpoint.PREFIXES``): ``clip``,
``remoteclip`` (only the blocks its hooks need), ``decoder``, ``dino`` and the seven top-level
projection convs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..common.catseg_clip import (
    TINY_CATSEG_CONFIG,
    build_catseg_clip,
    build_remoteclip,
    encode_text,
    remote_hooks,
    rotated_dense_forward,
    squash,
)
from ..common.catseg_head import cosine_cost, rotated_cosine_cost
from ..common.rsib import RSIB_CONFIG, TINY_RSIB_CONFIG, build_rsib, rsib_intermediate
from ..common.split_attention import set_clip_finetune_attention
from .checkpoint import PREFIXES
from .head import (
    TOP_LEVEL_CONV_NAMES,
    RSKTDecoder,
    build_top_level_convs,
    project_encoder_features,
)

#: A tiny OpenAI-style ViT/32 standing in for RemoteCLIP in tests (128 px -> 4x4 grid).
TINY_REMOTE_CONFIG: dict[str, Any] = {
    "embed_dim": 24,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 128, "layers": 4, "width": 32, "head_width": 16, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@dataclass(frozen=True)
class RSKTSegConfig:
    """One RSKT-Seg variant; ``CONFIGS`` holds the released ones and a tiny test one."""

    clip_arch: str | dict[str, Any]
    clip_size: int
    clip_hooks: tuple[int, int]
    num_layers: int
    remote_arch: str | dict[str, Any] = "ViT-B-32-quickgelu"
    remote_size: int = 768
    remote_hooks: tuple[int, int] = (3, 7)
    remote_quick_gelu: bool = True  # the official code; RemoteCLIP's own loader uses GELU
    dino_config: dict[str, Any] = field(default_factory=lambda: dict(RSIB_CONFIG))
    dino_size: int = 384
    dino_indices: tuple[int, int, int] = (3, 7, 11)
    fusion: str = "simple_separate"
    size_divisibility: int = 32


CONFIGS: dict[str, RSKTSegConfig] = {
    # configs/vitb_384_*.yaml: N=3 (the released DLRSD checkpoint needs N=5: given by its keys)
    "vit-b": RSKTSegConfig("ViT-B-16-quickgelu", 384, (3, 7), num_layers=3),
    # configs/vitl_336_*.yaml: N=2
    "vit-l": RSKTSegConfig("ViT-L-14-336-quickgelu", 336, (7, 15), num_layers=2),
    # random and small, for tests and the demo: same grids ratios (CLIP 4x4, DINO 8x8)
    "tiny": RSKTSegConfig(
        TINY_CATSEG_CONFIG,
        64,
        (1, 2),
        num_layers=1,
        remote_arch=TINY_REMOTE_CONFIG,
        remote_size=128,
        remote_hooks=(1, 2),
        dino_config=dict(TINY_RSIB_CONFIG),
        dino_size=64,
        dino_indices=(1, 2, 3),
    ),
}


class RSKTSeg(nn.Module):
    """The RSKT-Seg network (see the module docstring); random weights until loaded."""

    def __init__(
        self,
        config: RSKTSegConfig,
        batched_rotations: bool = True,
        device: torch.device | str = "cpu",
    ) -> None:
        """``device="meta"`` builds without memory (parameter counts, key checks)."""
        super().__init__()
        self.config = config
        self.batched_rotations = batched_rotations
        self.clip = build_catseg_clip(config.clip_arch, device)
        depth = max(config.remote_hooks) + 1
        self.remoteclip = build_remoteclip(
            depth, config.remote_arch, device, quick_gelu=config.remote_quick_gelu
        )
        clip_dim = self.clip.text_projection.shape[1]
        with torch.device(device):
            self.decoder = RSKTDecoder(clip_dim, config.num_layers, fusion=config.fusion)
            convs = build_top_level_convs(
                clip_width=self.clip.visual.transformer.width,
                clip_dim=clip_dim,
                remote_width=self.remoteclip.visual.transformer.width,
                dino_width=config.dino_config["embed_dim"],
            )
        for name in TOP_LEVEL_CONV_NAMES[:4]:
            self.add_module(name, convs[name])
        self.dino = build_rsib(config.dino_config, device)
        for name in TOP_LEVEL_CONV_NAMES[4:]:
            self.add_module(name, convs[name])
        self.set_trainable()

    def set_trainable(self) -> None:
        """The official fine-tuning: CLIP q/v attention weights (image and text), every new
        module; RemoteCLIP and DINO frozen (spec 7.1)."""
        self.requires_grad_(True)
        set_clip_finetune_attention(self.clip)
        self.remoteclip.requires_grad_(False)
        self.dino.requires_grad_(False)

    def unused_original_keys(self) -> list[str]:
        """Original checkpoint keys of the RemoteCLIP parts not built (they never affect the
        output): its text tower, the blocks after the last hook, ``ln_post`` and ``proj``."""
        prefix = next(old for old, new in PREFIXES if new == "remoteclip.")
        return [prefix + key for key in self.remoteclip.unused_keys]

    def encode_text(self, tokens: Tensor) -> Tensor:
        """L2-normalised text embeddings (T, C) of prompt token ids (T, context_length)."""
        return F.normalize(encode_text(self.clip, tokens), dim=-1)

    def clip_dense(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Dense maps of the four rotations (each (B, C, h, w), not rotated back) and the hooked
        blocks of the unrotated pass, from CLIP-sized images."""
        return rotated_dense_forward(
            self.clip, images, self.config.clip_hooks, self.batched_rotations
        )

    def forward(self, images: Tensor, text: Tensor) -> Tensor:
        """Logits (B, T, 4h, 4w) of CLIP-normalised, padded ``images`` (B, 3, H, W) for the
        L2-normalised ``text`` embeddings (T, C)."""
        config = self.config
        dense, clip_blocks = self.clip_dense(squash(images, config.clip_size))
        remote_blocks = remote_hooks(
            self.remoteclip, squash(images, config.remote_size), config.remote_hooks
        )
        dino_blocks = rsib_intermediate(
            self.dino, squash(images, config.dino_size), config.dino_indices
        )
        convs = dict(self.named_children())
        stage1, stage2, dino_map = project_encoder_features(
            convs, clip_blocks, remote_blocks, dino_blocks
        )
        per_image = text[None, :, None, :].expand(images.shape[0], -1, -1, -1)  # (B, T, 1, C)
        clip_cost = rotated_cosine_cost(dense, per_image)
        dino_cost = cosine_cost(dino_map, per_image)
        return self.decoder(clip_cost, dino_cost, dense[0], per_image, stage1, stage2)
