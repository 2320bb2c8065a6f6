"""SAN (Side Adapter Network, Xu et al., CVPR 2023): the whole network, following MendelXu/SAN
``san/model/san.py``, ``san/model/clip_utils/visual.py`` (``FeatureExtractor``,
``RecWithAttnbiasHead``), ``san/model/clip_utils/classifier.py`` (``LearnableBgOvClassifier``),
``san/config.py`` and ``configs/san_clip_vit_*res4_coco.yaml`` (spec ``baselines.md`` 5).

Input: CLIP-normalised images (B, 3, H, W) with sides divisible by ``size_divisibility`` (32),
and L2-normalised text embeddings (T, D), one per class name.

- CLIP (open_clip ``ViT-B-16`` / ``ViT-L-14-336``, OpenAI weights, QuickGELU) sees the image
  downscaled bilinearly by ``clip_resolution`` (0.5 / 0.7; ``F.interpolate`` with that scale
  factor). Feature extraction (``FeatureExtractor``): ``conv1`` (a remainder smaller than a patch
  is dropped, as the strided conv does), CLS token, the positional embedding resized bicubically
  to the grid (trainable, ``CLIP_FROZEN_EXCLUDE: positional_embedding``), ``ln_pre`` = layer 0,
  then blocks 1..``feature_layer`` (9 / 18). The original reads open_clip 2.16 attributes
  (``input_patchnorm``, ``patchnorm_pre_ln``) that open_clip 3.x no longer has; both are off
  for the OpenAI models, so the forward is written here over open_clip 3.x's modules
  (``conv1``, ``class_embedding``, ``positional_embedding``, ``ln_pre``, ``resblocks``,
  ``ln_post``, ``proj``) without them.
- Side adapter network (:mod:`.side_adapter`) on the full-resolution image, fed the CLIP layers
  of ``fusion_map``; mask logits (B, Q, H/16, W/16) and attention biases (B, heads, Q, h, w)
  after the deep-supervision blocks (training) or the last block (evaluation).
- Recognition (``RecWithAttnbiasHead``, ``REC_CROSS_ATTN False``, ``SOS_TOKEN_FORMAT
  cls_token``, ``REC_DOWNSAMPLE_METHOD max``): Q copies of the layer-``feature_layer`` CLS token
  are prepended to [CLS, patches] and the remaining 3 / 6 frozen CLIP blocks run with an
  additive attention mask (the same in every block): SOS -> patches = the bias, adaptively
  max-pooled to the CLIP grid; SOS -> itself 0; SOS -> other SOS and SOS -> CLS -100; CLS and
  patches -> SOS -100; CLS and patches -> CLS and patches 0. The SOS outputs go through
  ``ln_post`` and ``proj`` and are L2-normalised.
- Classifier: the text rows and a learnable background ("void") embedding ``bg_embed``
  (N(0, D^-1/2)), L2-normalised, times CLIP's ``logit_scale.exp()``: class logits
  (B, Q, T + 1), void last. The original sizes ``bg_embed`` by the text width, equal to the
  embedding width D in both released models; D is used here (the tiny CLIP has them differ).

What trains: the side adapter network, CLIP's (image) positional embedding and ``bg_embed``;
the rest of CLIP, text tower included, is frozen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..common.catseg_clip import TINY_CATSEG_CONFIG
from ..common.dense_clip import build_clip, embed_tokens, run_block, tokens_to_map
from .side_adapter import SideAdapterNetwork

#: The additive attention-mask value that blocks a pair of tokens in the recognition blocks.
BLOCKED = -100.0


@dataclass(frozen=True)
class SANConfig:
    """One SAN variant (``MODEL.SAN`` and ``MODEL.SIDE_ADAPTER`` of the original configs)."""

    clip_arch: str | dict[str, Any]  # open_clip model name (tokenizer, tags) or config dict
    feature_layer: int  # FEATURE_LAST_LAYER_IDX: CLIP blocks run before recognition
    fusion_map: tuple[tuple[int, int], ...]  # FUSION_MAP as (side index, CLIP layer) pairs
    clip_resolution: float  # CLIP_RESOLUTION: CLIP input scale
    side_width: int = 240  # vit_w240n6d8_patch16
    side_depth: int = 8
    side_heads: int = 6
    side_image_size: int = 640  # IMAGE_SIZE: the grid of the side positional embedding
    num_queries: int = 100
    deep_supervision: tuple[int, ...] = (7, 8)
    decoder_dim: int = 256  # ATTN_BIAS.EMBED_CHANNELS = MLP_CHANNELS
    patch_size: int = 16
    size_divisibility: int = 32


CONFIGS: dict[str, SANConfig] = {
    "vit-b": SANConfig("ViT-B-16", 9, ((0, 0), (1, 3), (2, 6), (3, 9)), 0.5),
    "vit-l": SANConfig("ViT-L-14-336", 18, ((0, 0), (1, 6), (2, 12), (3, 18)), 0.7),
    # tests and the demo: CLIP 4 x 32 (2 heads), recognition on its last 2 blocks, a 3-block
    # side network of width 32 with 8 queries
    "tiny": SANConfig(
        TINY_CATSEG_CONFIG,
        2,
        ((0, 0), (1, 1), (2, 2)),
        0.5,
        side_width=32,
        side_depth=3,
        side_heads=2,
        side_image_size=64,
        num_queries=8,
        deep_supervision=(2, 3),
        decoder_dim=16,
    ),
}


def recognition_mask(bias: Tensor, length: int) -> Tensor:
    """The additive attention mask (N, Q + 1 + L, Q + 1 + L) of the recognition blocks for
    attention biases (N, Q, L) of the Q SOS tokens to the L patches (see the module docstring)."""
    count, queries = bias.shape[:2]
    size = queries + 1 + length
    base = bias.new_zeros(size, size)
    base[:, :queries] = BLOCKED
    base[:queries, queries] = BLOCKED
    diagonal = torch.arange(queries, device=bias.device)
    base[diagonal, diagonal] = 0
    mask = base.expand(count, -1, -1).clone()
    mask[:, :queries, queries + 1 :] = bias
    return mask


def semantic_scores(class_logits: Tensor, mask_logits: Tensor) -> Tensor:
    """Per-class maps (B, K, H, W) from class logits (B, Q, K + 1) and mask logits
    (B, Q, H, W): softmax over the classes with the void column dropped, times the mask
    sigmoid, summed over the queries (the original ``semantic_inference``)."""
    probabilities = class_logits.float().softmax(-1)[..., :-1]
    return torch.einsum("bqc,bqhw->bchw", probabilities, mask_logits.float().sigmoid())


class SAN(nn.Module):
    """SAN (see the module docstring); ``device="meta"`` builds without memory."""

    def __init__(self, config: SANConfig, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.config = config
        self.clip = build_clip(config.clip_arch, None, device, quick_gelu=True)
        visual = self.clip.visual
        blocks = visual.transformer.resblocks
        if not 0 < config.feature_layer < len(blocks):
            raise ValueError(f"feature_layer must be in 1..{len(blocks) - 1}")
        with torch.device(device):
            self.side_adapter_network = SideAdapterNetwork(
                clip_width=visual.conv1.out_channels,
                clip_heads=blocks[0].attn.num_heads,
                fusion_map=dict(config.fusion_map),
                deep_supervision=config.deep_supervision,
                width=config.side_width,
                depth=config.side_depth,
                heads=config.side_heads,
                num_queries=config.num_queries,
                patch_size=config.patch_size,
                image_size=config.side_image_size,
                decoder_dim=config.decoder_dim,
            )
            embed_dim = visual.proj.shape[1]
            self.bg_embed = nn.Parameter(torch.empty(1, embed_dim))
        nn.init.normal_(self.bg_embed, std=embed_dim**-0.5)
        self.set_trainable()

    def set_trainable(self) -> None:
        """Freeze CLIP except its image positional embedding; the rest trains."""
        self.requires_grad_(True)
        self.clip.requires_grad_(False)
        self.clip.visual.positional_embedding.requires_grad_(True)

    # -- CLIP ---------------------------------------------------------------------------------
    def encode_image(self, images: Tensor) -> tuple[dict[int, Tensor], Tensor, tuple[int, int]]:
        """CLIP layers 0..``feature_layer`` of CLIP-sized ``images``: the maps (B, C, h, w) the
        side network reads, the tokens (B, 1 + h*w, C) after the last of them, and the grid."""
        visual = self.clip.visual
        ph, pw = visual.patch_size
        images = images[..., : images.shape[-2] // ph * ph, : images.shape[-1] // pw * pw]
        x, grid = embed_tokens(visual, images)
        wanted = set(self.side_adapter_network.fusion_map.values())
        maps = {0: tokens_to_map(x, grid)} if 0 in wanted else {}
        blocks = visual.transformer.resblocks[: self.config.feature_layer]
        for index, block in enumerate(blocks, start=1):
            x = run_block(block, x)
            if index in wanted:
                maps[index] = tokens_to_map(x, grid)
        return maps, x, grid

    def recognise(self, tokens: Tensor, grid: tuple[int, int], bias: Tensor) -> Tensor:
        """Unit mask embeddings (B, Q, D) from the layer-``feature_layer`` tokens and the
        attention biases (B, heads, Q, h, w) of the side network."""
        visual = self.clip.visual
        batch, heads, queries = bias.shape[:3]
        length = grid[0] * grid[1]
        pooled = F.adaptive_max_pool2d(bias.flatten(1, 2), grid)
        mask = recognition_mask(pooled.reshape(batch * heads, queries, length), length)
        x = torch.cat([tokens[:, :1].expand(-1, queries, -1), tokens], dim=1)
        for block in visual.transformer.resblocks[self.config.feature_layer :]:
            x = run_block(block, x, mask)
        return F.normalize(visual.ln_post(x[:, :queries]) @ visual.proj, dim=-1)

    def classifier(self, text: Tensor) -> Tensor:
        """The (T + 1, D) classifier: unit text rows and the void embedding, normalised, times
        CLIP's logit scale."""
        rows = torch.cat([text, self.bg_embed.to(text.dtype)])
        return self.clip.logit_scale.exp() * F.normalize(rows, dim=-1)

    # -- the whole network --------------------------------------------------------------------
    def forward(self, images: Tensor, text: Tensor) -> list[tuple[Tensor, Tensor]]:
        """(mask logits (B, Q, H/16, W/16), class logits (B, Q, T + 1)) per decoded side block:
        the deep-supervision blocks in training, the last block at evaluation."""
        clip_input = F.interpolate(
            images, scale_factor=self.config.clip_resolution, mode="bilinear", align_corners=False
        )
        maps, tokens, grid = self.encode_image(clip_input)
        decoded = self.side_adapter_network(images, maps, deep_supervision=self.training)
        weights = self.classifier(text)
        return [(masks, self.recognise(tokens, grid, bias) @ weights.T) for masks, bias in decoded]
