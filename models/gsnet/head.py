"""GSNet's trainable head "RIPD": CLIP-DINO cost fusion, Cat-Seg aggregation, two-source decoder.

Re-implemented from the description of the original code (yecy749/GSNet ``RIPD.py``: the cost
embedding ``corr_fusion_embed_seperate`` and the decoder stage ``FusionUP``; ``FusionAgg.py``:
Cat-Seg's ``AggregatorLayer``; spec ``baselines.md`` 1.4 and 4) with the original module names,
so that ``RIPD().state_dict()`` has exactly the original keys below the checkpoint prefix
``sem_seg_head.predictor.transformer.`` (``param_counts.md`` 3.4).

Shapes (h, w = the CLIP cost grid, 24 x 24 for ViT-B/16 at 384; T classes; C = the text and dense
CLIP width, 512; D = ``hidden_dim`` = 128):

- cost embedding: CLIP cost (B, 1, T, h, w) and DINO cost (B, 1, T, h, w), each 7x7-convolved to
  D channels and squashed by a sigmoid, concatenated, 7x7-convolved to D, sigmoid, plus the
  CLIP embedding -> (B, D, T, h, w);
- ``num_layers`` Cat-Seg aggregator layers (Swin over each class map, linear attention across
  the classes) -> (B, D, T, h, w);
- decoder on the B*T maps: two ``Up`` stages (the original ``FusionUP``), each concatenating
  the projected CLIP and DINO guidance, (D, h, w) -> (64, 2h, 2w) -> (32, 4h, 4w) -> logits
  (B, T, 4h, 4w).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..common.catseg_head import (
    AggregatorLayer,
    Up,
    guidance_projections,
    separate_sigmoid_fusion,
)


class RIPD(nn.Module):
    """GSNet's head (checkpoint prefix ``sem_seg_head.predictor.transformer.``) in its released
    configuration (``FUSION_TYPE "query_guided"``, both cost maps on, one template).

    Args:
        clip_dim: C, width of the text embeddings, the dense CLIP map and the DINO map after
            ``dino_down_sample`` (512 for ViT-B/16).
        num_layers: number of Cat-Seg aggregator layers (2).
        hidden_dim: D, width of the cost embedding and the aggregator (128).
        num_heads, window_size, pooling_size, attention_type, pad_len: of every
            ``AggregatorLayer`` (4, 12, (2, 2) in training, "linear", 256).
        feature_resolution: the cost grid (h, w) the Swin windows are laid out on (24, 24).
        decoder_dims: output widths of the two decoder stages (64, 32).
        decoder_guidance_dims: widths of the stage-1 / stage-2 guidance maps of either source
            (``upsample1``/``dino_decod_proj1`` and ``upsample2``/``dino_decod_proj2``: 256, 128).
        decoder_guidance_proj_dims: their widths after the per-source 3x3 projections (32, 16).
    """

    def __init__(
        self,
        clip_dim: int = 512,
        num_layers: int = 2,
        hidden_dim: int = 128,
        *,
        num_heads: int = 4,
        feature_resolution: tuple[int, int] = (24, 24),
        window_size: int = 12,
        pooling_size: tuple[int, int] = (2, 2),
        attention_type: str = "linear",
        pad_len: int = 256,
        decoder_dims: tuple[int, int] = (64, 32),
        decoder_guidance_dims: tuple[int, int] = (256, 128),
        decoder_guidance_proj_dims: tuple[int, int] = (32, 16),
    ) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.pad_len = pad_len
        # Registration order = the original state-dict order (param_counts.md 3.4).
        self.layers = nn.ModuleList(
            AggregatorLayer(
                hidden_dim=hidden_dim,
                text_guidance_dim=hidden_dim,
                appearance_guidance_dim=hidden_dim,
                nheads=num_heads,
                input_resolution=tuple(feature_resolution),
                pooling_size=tuple(pooling_size),
                window_size=window_size,
                attention_type=attention_type,
                pad_len=pad_len,
            )
            for _ in range(num_layers)
        )
        self.conv1 = nn.Conv2d(1, hidden_dim, kernel_size=7, stride=1, padding=3)
        self.conv2 = nn.Conv2d(1, hidden_dim, kernel_size=7, stride=1, padding=3)
        self.fusion_corr = nn.Conv2d(2 * hidden_dim, hidden_dim, kernel_size=7, padding=3)
        self.guidance_projection = nn.Sequential(
            nn.Conv2d(clip_dim, hidden_dim, kernel_size=3, stride=1, padding=1), nn.ReLU()
        )
        self.text_guidance_projection = nn.Sequential(nn.Linear(clip_dim, hidden_dim), nn.ReLU())
        self.CLIP_decoder_guidance_projection = guidance_projections(
            decoder_guidance_dims, decoder_guidance_proj_dims
        )
        self.DINO_decoder_guidance_projection = guidance_projections(
            decoder_guidance_dims, decoder_guidance_proj_dims
        )
        # the original FusionUP: CLIP and DINO guidance
        self.Fusiondecoder1 = Up(hidden_dim, decoder_dims[0], decoder_guidance_proj_dims[0], 2)
        self.Fusiondecoder2 = Up(decoder_dims[0], decoder_dims[1], decoder_guidance_proj_dims[1], 2)
        self.head = nn.Conv2d(decoder_dims[1], 1, kernel_size=3, stride=1, padding=1)

    def embed_costs(self, clip_cost: Tensor, dino_cost: Tensor) -> Tensor:
        """CLIP and DINO costs (B, 1, T, h, w) -> (B, D, T, h, w), class by class."""
        batch, _, classes = clip_cost.shape[:3]
        clip, dino = (cost.transpose(1, 2).flatten(0, 1) for cost in (clip_cost, dino_cost))
        embed = separate_sigmoid_fusion(self.conv1, self.conv2, self.fusion_corr, clip, dino)
        return embed.unflatten(0, (batch, classes)).transpose(1, 2)

    def forward(
        self,
        clip_cost: Tensor,
        dino_cost: Tensor,
        appearance: Tensor,
        text: Tensor,
        clip_guidance: Sequence[Tensor],
        dino_guidance: Sequence[Tensor],
    ) -> Tensor:
        """Logits (B, T, 4h, 4w) of every class.

        Args:
            clip_cost: (B, 1, T, h, w) cosine cost of the dense CLIP map; h, w multiples of the
                Swin window and the class-attention pooling.
            dino_cost: (B, 1, T, h, w) cosine cost of ``dino_down_sample``'s map.
            appearance: (B, C, h, w) dense CLIP map (before normalisation): the Swin guidance
                through ``guidance_projection``.
            text: (B, T, P, C) text embeddings (P = 1 template); averaged over P and
                re-normalised for the class-attention guidance (``text_guidance_projection``).
            clip_guidance: ``upsample1`` (B, 256, 2h, 2w) and ``upsample2`` (B, 128, 4h, 4w)
                outputs.
            dino_guidance: ``dino_decod_proj1`` (B, 256, 2h, 2w) and ``dino_decod_proj2``
                (B, 128, 4h, 4w) outputs.
        """
        batch, _, classes, height, width = clip_cost.shape
        if classes > self.pad_len:
            raise ValueError(f"at most {self.pad_len} classes per forward pass, got {classes}")
        x = self.embed_costs(clip_cost, dino_cost)
        appearance_guidance = self.guidance_projection(appearance)
        text = text.mean(dim=-2)
        text_guidance = self.text_guidance_projection(text / text.norm(dim=-1, keepdim=True))
        clip_g = [
            proj(g)
            for proj, g in zip(self.CLIP_decoder_guidance_projection, clip_guidance, strict=True)
        ]
        dino_g = [
            proj(g)
            for proj, g in zip(self.DINO_decoder_guidance_projection, dino_guidance, strict=True)
        ]

        for layer in self.layers:
            x = layer(x, appearance_guidance, text_guidance)

        x = x.transpose(1, 2).reshape(batch * classes, self.hidden_dim, height, width)
        x = self.Fusiondecoder1(x, [clip_g[0], dino_g[0]])
        x = self.Fusiondecoder2(x, [clip_g[1], dino_g[1]])
        x = self.head(x)
        return x.reshape(batch, classes, x.shape[-2], x.shape[-1])
