"""The trainable ("new") part of RSKT-Seg: cost embedding, RS-Fusion, RS-Transfer decoder.

Re-implemented from the official code (LiBingyu01/RSKT-Seg ``RSKT_Decoder.py``,
``RSKT_Upsample.py`` and ``EfficientAggregator/``) with the same module structure, so that
``RSKTDecoder().state_dict()`` has exactly the official keys below the checkpoint prefix
``sem_seg_head.predictor.transformer.`` and :func:`build_top_level_convs` gives the seven
projection convs the official meta-architecture holds at its top level (``upsample1`` ...
``dino_down_sample``).

Shapes (h, w = the CLIP cost grid, 24 x 24 for both released backbones; T classes; C = text and
dense-CLIP width, 512 for ViT-B/16 and 768 for ViT-L/14@336; D = ``hidden_dim`` = 128):

- cost embedding: CLIP cost (B, 4, T, h, w) and DINO cost (B, 1, T, h, w) -> (B, D, T, h, w);
- N x :class:`EffAggregatorLayer`: SET over the h*w tokens of each class map, then CET across
  the T classes at each location of a 2x2-average-pooled grid -> (B, D, T, h, w);
- decoder on the B*T maps: (D, h, w) -> (64, 2h, 2w) -> (32, 4h, 4w) -> logits (B, T, 4h, 4w).

Initialisation follows the official code: the aggregator blocks use trunc-normal(0.02) Linears,
unit/zero LayerNorms and normal(0, sqrt(2 / fan_out)) convs; everything else keeps PyTorch's
default initialisation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..common.catseg_head import (
    NUM_ROTATIONS,
    Up,
    clip_upsamplers,
    dino_projections,
    guidance_projections,
    separate_sigmoid_fusion,
)

#: The cost-embedding variants of the official ``FUSION_TYPE`` (the released configs use
#: ``simple_separate``).
FUSION_TYPES = ("simple_separate", "simple_concatenation", "simple_mean")

#: Names (and official registration order) of the projection convs of the meta-architecture.
TOP_LEVEL_CONV_NAMES = (
    "upsample1",
    "upsample2",
    "upsample1_remote",
    "upsample2_remote",
    "dino_decod_proj1",
    "dino_decod_proj2",
    "dino_down_sample",
)


# -- RS-Fusion: the efficient aggregator --------------------------------------------------------
def _init_aggregator_weights(module: nn.Module) -> None:
    """The official ``_init_weights`` of the aggregator's attention, MLP and blocks."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
        fan_out //= module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _to_heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, N, C) -> (B, heads, N, C / heads)."""
    batch, tokens, channels = x.shape
    return x.reshape(batch, tokens, num_heads, channels // num_heads).transpose(1, 2)


def _from_heads(x: Tensor) -> Tensor:
    """(B, heads, N, d) -> (B, N, heads * d)."""
    batch, heads, tokens, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim)


class DWConv(nn.Module):
    """Depthwise 7x7 conv over the token grid: (B, H*W, C) -> (B, H*W, C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, stride=1, padding=3, groups=dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        batch, _, channels = x.shape
        x = x.transpose(1, 2).reshape(batch, channels, height, width)
        return self.dwconv(x).flatten(2).transpose(1, 2)


class GatedMlp(nn.Module):
    """``fc3(ReLU6(fc1(x)) * fc2(x))``, hidden width ``3 * dim``.

    SET variant (``spatial=True``): followed by a depthwise 7x7 conv (``dwconv``) on the grid.
    CET variant: followed by a ReLU6 instead (the branch output is clipped to [0, 6]).
    """

    def __init__(self, dim: int, spatial: bool) -> None:
        super().__init__()
        hidden = 3 * dim
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(dim, hidden)
        self.fc3 = nn.Linear(hidden, dim)
        self.dwconv = DWConv(dim) if spatial else None
        self.apply(_init_aggregator_weights)

    def forward(self, x: Tensor, height: int = 0, width: int = 0) -> Tensor:
        x = self.fc3(F.relu6(self.fc1(x)) * self.fc2(x))
        if self.dwconv is not None:
            return self.dwconv(x, height, width)
        return F.relu6(x)


class SpatialAttention(nn.Module):
    """SET attention over the H*W tokens of one map, with spatially reduced keys and values.

    q = Linear(2D -> D)([x; g]) on every token; k = Linear(2D -> D)(LN(sr_k([x; g]))) and
    v = Linear(D -> D)(LN(sr_v(x))) on the (H / r) * (W / r) tokens of a stride-r conv;
    softmax attention with ``num_heads`` heads, then ``proj``. (``sr_ratio=1``: k, v from the
    full-resolution tokens, no ``sr_*`` / ``norm_*`` modules.)
    """

    def __init__(self, dim: int, num_heads: int = 8, sr_ratio: int = 2) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(2 * dim, dim)
        self.k = nn.Linear(2 * dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr_k = nn.Conv2d(2 * dim, 2 * dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm_k = nn.LayerNorm(2 * dim)
            self.sr_v = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm_v = nn.LayerNorm(dim)
        self.apply(_init_aggregator_weights)

    def forward(self, x: Tensor, guidance: Tensor, height: int, width: int) -> Tensor:
        """x, guidance (B, H*W, D) -> (B, H*W, D)."""
        batch, tokens, channels = x.shape
        xg = torch.cat([x, guidance], dim=-1)
        q = _to_heads(self.q(xg), self.num_heads)
        if self.sr_ratio > 1:
            grid = xg.transpose(1, 2).reshape(batch, 2 * channels, height, width)
            k_in = self.norm_k(self.sr_k(grid).flatten(2).transpose(1, 2))
            grid = x.transpose(1, 2).reshape(batch, channels, height, width)
            v_in = self.norm_v(self.sr_v(grid).flatten(2).transpose(1, 2))
        else:
            k_in, v_in = xg, x
        k = _to_heads(self.k(k_in), self.num_heads)
        v = _to_heads(self.v(v_in), self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(_from_heads(out))


class ClassAttention(nn.Module):
    """CET attention across the T class tokens: q, k from [z; g], v from z, full softmax."""

    def __init__(self, dim: int, num_heads: int = 8) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(2 * dim, dim)
        self.k = nn.Linear(2 * dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.apply(_init_aggregator_weights)

    def forward(self, z: Tensor, guidance: Tensor) -> Tensor:
        """z, guidance (L, T, D) -> (L, T, D)."""
        zg = torch.cat([z, guidance], dim=-1)
        q = _to_heads(self.q(zg), self.num_heads)
        k = _to_heads(self.k(zg), self.num_heads)
        v = _to_heads(self.v(z), self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(_from_heads(out))


class SpatialBlock(nn.Module):
    """Pre-norm SET block: ``x + attn(LN1(x), g)``, then ``x + mlp(LN2(x))`` (g not normalised)."""

    def __init__(self, dim: int, num_heads: int = 8, sr_ratio: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = SpatialAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = GatedMlp(dim, spatial=True)
        self.apply(_init_aggregator_weights)

    def forward(self, x: Tensor, guidance: Tensor) -> Tensor:
        """x, guidance (B', D, H, W) -> (B', D, H, W); each of the B' maps on its own."""
        batch, channels, height, width = x.shape
        x = x.flatten(2).transpose(1, 2)
        guidance = guidance.flatten(2).transpose(1, 2)
        x = x + self.attention(self.norm1(x), guidance, height, width)
        x = x + self.mlp(self.norm2(x), height, width)
        return x.transpose(1, 2).reshape(batch, channels, height, width)


class ClassBlock(nn.Module):
    """Pre-norm CET block: ``z + attn(LN1(z), g)``, then ``z + mlp(LN2(z))`` (ReLU6 MLP)."""

    def __init__(self, dim: int, num_heads: int = 8) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = ClassAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = GatedMlp(dim, spatial=False)
        self.apply(_init_aggregator_weights)

    def forward(self, z: Tensor, guidance: Tensor) -> Tensor:
        """z, guidance (L, T, D) -> (L, T, D)."""
        z = z + self.attention(self.norm1(z), guidance)
        return z + self.mlp(self.norm2(z))


class SpatialFusionBlock(nn.Module):
    """SET (Spatial Enhancement Transformer); the official ``SptialFusionBlock``."""

    def __init__(self, dim: int, num_heads: int = 8, sr_ratio: int = 2) -> None:
        super().__init__()
        self.sa = SpatialBlock(dim, num_heads, sr_ratio)

    def forward(self, x: Tensor, guidance: Tensor) -> Tensor:
        """x (B*T, D, H, W), appearance guidance (B*T, D, H, W) -> (B*T, D, H, W)."""
        return self.sa(x, guidance)


class ClassFusionBlock(nn.Module):
    """CET (Class Enhancement Transformer): class attention on a 2x2-average-pooled grid.

    The block's output (which contains the pooled input as its residual) is upsampled
    bilinearly (align_corners=True) and added to the input, so the identity path appears twice,
    exactly as in the official code.
    """

    def __init__(self, dim: int, num_heads: int = 8, pooling_size: int = 2) -> None:
        super().__init__()
        self.sa = ClassBlock(dim, num_heads)
        self.pool = nn.AvgPool2d(pooling_size)

    def forward(self, x: Tensor, guidance: Tensor) -> Tensor:
        """x (B, D, T, H, W), text guidance (B, T, D) -> (B, D, T, H, W)."""
        batch, channels, classes, height, width = x.shape
        identity = x.transpose(1, 2).reshape(batch * classes, channels, height, width)
        pooled = self.pool(identity)
        hp, wp = pooled.shape[-2:]
        # (B*T, D, Hp, Wp) -> (B*Hp*Wp, T, D): one sequence of T class tokens per location.
        z = pooled.reshape(batch, classes, channels, hp, wp).permute(0, 3, 4, 1, 2)
        z = z.reshape(batch * hp * wp, classes, channels)
        g = guidance[:, None, None].expand(batch, hp, wp, classes, guidance.shape[-1])
        z = self.sa(z, g.reshape(batch * hp * wp, classes, -1))
        z = z.reshape(batch, hp, wp, classes, channels).permute(0, 3, 4, 1, 2)
        z = z.reshape(batch * classes, channels, hp, wp)
        z = F.interpolate(z, size=(height, width), mode="bilinear", align_corners=True)
        out = identity + z
        return out.reshape(batch, classes, channels, height, width).transpose(1, 2)


class EffAggregatorLayer(nn.Module):
    """One RS-Fusion layer: SET on each class map, then CET across classes.

    Built by the official decoder with ``hidden_dim`` only, so 8 heads and spatial reduction
    ratio 2 (the config keys ``NUM_HEADS`` / ``POOLING_SIZES`` do not reach it).
    """

    def __init__(self, hidden_dim: int = 128, num_heads: int = 8, sr_ratio: int = 2) -> None:
        super().__init__()
        self.spatial_fusion = SpatialFusionBlock(hidden_dim, num_heads, sr_ratio)
        self.class_fusion = ClassFusionBlock(hidden_dim, num_heads)

    def forward(self, x: Tensor, appearance_guidance: Tensor, text_guidance: Tensor) -> Tensor:
        """x (B, D, T, H, W), appearance guidance (B, D, H, W), text guidance (B, T, D).

        Returns (B, D, T, H, W).
        """
        batch, channels, classes, height, width = x.shape
        x = x.transpose(1, 2).reshape(batch * classes, channels, height, width)
        guidance = appearance_guidance.repeat_interleave(classes, dim=0)
        x = self.spatial_fusion(x, guidance)
        x = x.reshape(batch, classes, channels, height, width).transpose(1, 2)
        return self.class_fusion(x, text_guidance)


# -- RS-Transfer decoder ------------------------------------------------------------------------
class RSKTDecoder(nn.Module):
    """RSKT-Seg's head: the official ``RSKT_Decoder`` (checkpoint prefix
    ``sem_seg_head.predictor.transformer.``) in its released configuration (rotations, RemoteCLIP
    and DINO all on, efficient aggregator).

    Args:
        clip_dim: C, width of the text embeddings and of the dense CLIP map (512 ViT-B/16,
            768 ViT-L/14@336).
        num_layers: N, number of :class:`EffAggregatorLayer` (3 / 2 in the ViT-B / ViT-L configs;
            the released checkpoints have 5, 3, 5, 2).
        hidden_dim: D, width of the cost embedding and the aggregator (128).
        fusion: how the CLIP and DINO costs are embedded, one of :data:`FUSION_TYPES`:
            ``simple_separate`` (released): ``conv1`` (4 -> D) and ``conv2`` (1 -> D), each
            7x7 + sigmoid, ``fusion_corr`` (2D -> D, 7x7) + sigmoid on their concatenation, plus
            the CLIP embedding; ``simple_concatenation``: ``conv1`` = Conv2d(5 -> D, 7x7) on the
            4 CLIP and the DINO cost, no sigmoid; ``simple_mean``: ``conv1`` = Conv2d(1 -> D, 7x7)
            on the channel mean of the 5 costs. The two alternatives have no ``conv2`` or
            ``fusion_corr``; their conv is named ``conv1`` as in the official code (which builds
            the 4-channel ``conv1`` first and then replaces it).
        decoder_dims: output widths of the two decoder stages.
        decoder_guidance_dims: widths of the stage-1 / stage-2 guidance maps (after the top-level
            convs), for every source.
        decoder_guidance_proj_dims: their widths after the per-source 3x3 projections.
    """

    def __init__(
        self,
        clip_dim: int = 512,
        num_layers: int = 3,
        hidden_dim: int = 128,
        fusion: str = "simple_separate",
        *,
        decoder_dims: tuple[int, int] = (64, 32),
        decoder_guidance_dims: tuple[int, int] = (256, 128),
        decoder_guidance_proj_dims: tuple[int, int] = (32, 16),
    ) -> None:
        super().__init__()
        if fusion not in FUSION_TYPES:
            raise ValueError(f"fusion must be one of {FUSION_TYPES}, not {fusion!r}")
        if hidden_dim <= decoder_guidance_proj_dims[0]:
            # the first decoder ConvTranspose2d has hidden_dim - guidance channels outputs
            raise ValueError(
                f"hidden_dim {hidden_dim} must exceed the stage-1 guidance width "
                f"{decoder_guidance_proj_dims[0]}"
            )
        self.clip_dim = clip_dim
        self.num_layers = num_layers
        self.hidden_dim = hidden_dim
        self.fusion = fusion
        # Registration order = the official state-dict order.
        self.layers = nn.ModuleList(EffAggregatorLayer(hidden_dim) for _ in range(num_layers))
        self.guidance_projection = nn.Sequential(
            nn.Conv2d(clip_dim, hidden_dim, kernel_size=3, stride=1, padding=1), nn.ReLU()
        )
        self.text_guidance_projection = nn.Sequential(nn.Linear(clip_dim, hidden_dim), nn.ReLU())
        self.CLIP_decoder_guidance_projection = guidance_projections(
            decoder_guidance_dims, decoder_guidance_proj_dims
        )
        cost_channels = {"simple_separate": NUM_ROTATIONS, "simple_concatenation": 5}
        self.conv1 = nn.Conv2d(cost_channels.get(fusion, 1), hidden_dim, kernel_size=7, padding=3)
        self.CLIP_decoder_guidance_projection_remote = guidance_projections(
            decoder_guidance_dims, decoder_guidance_proj_dims
        )
        if fusion == "simple_separate":
            self.conv2 = nn.Conv2d(1, hidden_dim, kernel_size=7, padding=3)
            self.fusion_corr = nn.Conv2d(2 * hidden_dim, hidden_dim, kernel_size=7, padding=3)
        self.DINO_decoder_guidance_projection = guidance_projections(
            decoder_guidance_dims, decoder_guidance_proj_dims
        )
        # the official RSKT_Upsample: CLIP, RemoteCLIP and DINO guidance
        self.Fusiondecoder1 = Up(hidden_dim, decoder_dims[0], decoder_guidance_proj_dims[0], 3)
        self.Fusiondecoder2 = Up(decoder_dims[0], decoder_dims[1], decoder_guidance_proj_dims[1], 3)
        self.head = nn.Conv2d(decoder_dims[1], 1, kernel_size=3, stride=1, padding=1)

    def embed_costs(self, clip_cost: Tensor, dino_cost: Tensor) -> Tensor:
        """CLIP cost (B, 4, T, h, w) and DINO cost (B, 1, T, h, w) -> (B, D, T, h, w)."""
        batch, _, classes, height, width = clip_cost.shape

        def per_class(cost: Tensor) -> Tensor:  # (B, P, T, h, w) -> (B*T, P, h, w)
            return cost.transpose(1, 2).reshape(batch * classes, -1, height, width)

        clip_cost, dino_cost = per_class(clip_cost), per_class(dino_cost)
        if self.fusion == "simple_separate":
            embed = separate_sigmoid_fusion(
                self.conv1, self.conv2, self.fusion_corr, clip_cost, dino_cost
            )
        elif self.fusion == "simple_concatenation":
            embed = self.conv1(torch.cat([clip_cost, dino_cost], dim=1))
        else:  # simple_mean
            embed = self.conv1(torch.cat([clip_cost, dino_cost], dim=1).mean(1, keepdim=True))
        return embed.reshape(batch, classes, -1, height, width).transpose(1, 2)

    def forward(
        self,
        clip_cost: Tensor,
        dino_cost: Tensor,
        appearance: Tensor,
        text: Tensor,
        stage1: Sequence[Tensor],
        stage2: Sequence[Tensor],
    ) -> Tensor:
        """Logits (B, T, 4h, 4w) of every class.

        Args:
            clip_cost: (B, 4, T, h, w) cosine costs of the four rotated CLIP passes
                (:func:`rotated_cosine_cost`); h, w even.
            dino_cost: (B, 1, T, h, w) cosine cost of ``dino_down_sample``'s map
                (:func:`cosine_cost`).
            appearance: (B, C, h, w) dense CLIP map of the unrotated pass (before
                normalisation); gives the SET guidance through ``guidance_projection``.
            text: (B, T, P, C) text embeddings (P = 1 template); averaged over P and
                re-normalised for the CET guidance (``text_guidance_projection``).
            stage1: [CLIP, RemoteCLIP, DINO] guidance, each (B, 256, 2h, 2w), i.e. the outputs of
                ``upsample1``, ``upsample1_remote``, ``dino_decod_proj1``.
            stage2: the same three at (B, 128, 4h, 4w) (``upsample2``, ``upsample2_remote``,
                ``dino_decod_proj2``).
        """
        batch, _, classes, height, width = clip_cost.shape
        x = self.embed_costs(clip_cost, dino_cost)
        appearance_guidance = self.guidance_projection(appearance)
        text = text.mean(dim=-2)
        text_guidance = self.text_guidance_projection(text / text.norm(dim=-1, keepdim=True))
        projections = (
            self.CLIP_decoder_guidance_projection,
            self.CLIP_decoder_guidance_projection_remote,
            self.DINO_decoder_guidance_projection,
        )
        guidance1 = [proj[0](g) for proj, g in zip(projections, stage1, strict=True)]
        guidance2 = [proj[1](g) for proj, g in zip(projections, stage2, strict=True)]

        for layer in self.layers:
            x = layer(x, appearance_guidance, text_guidance)

        x = x.transpose(1, 2).reshape(batch * classes, self.hidden_dim, height, width)
        x = self.Fusiondecoder1(x, guidance1)
        x = self.Fusiondecoder2(x, guidance2)
        x = self.head(x)
        return x.reshape(batch, classes, x.shape[-2], x.shape[-1])


# -- the meta-architecture's projection convs -----------------------------------------------------
def build_top_level_convs(
    clip_width: int = 768,
    clip_dim: int = 512,
    remote_width: int = 768,
    dino_width: int = 768,
) -> dict[str, nn.Module]:
    """The seven projection convs that the official ``RSKT_Seg`` holds at its top level.

    Returns them by name, in :data:`TOP_LEVEL_CONV_NAMES` order (the official registration order;
    the official meta-architecture registers ``dino_model`` between ``upsample2_remote`` and
    ``dino_decod_proj1``).

    Args:
        clip_width: residual-stream width of the CLIP image tower (768 ViT-B/16, 1024 ViT-L/14).
        clip_dim: C, the joint image-text width (512 / 768): ``dino_down_sample``'s output.
        remote_width: residual width of RemoteCLIP ViT-B/32 (768).
        dino_width: width of DINO ViT-B/8 (768).
    """
    remote = {f"{name}_remote": conv for name, conv in clip_upsamplers(remote_width).items()}
    return {**clip_upsamplers(clip_width), **remote, **dino_projections(dino_width, clip_dim)}


def project_encoder_features(
    convs: Mapping[str, nn.Module],
    clip_blocks: Sequence[Tensor],
    remote_blocks: Sequence[Tensor],
    dino_blocks: Sequence[Tensor],
) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """Apply the top-level convs as the official forward does (spec section 4).

    Args:
        convs: the modules of :func:`build_top_level_convs` by name (e.g. a model's
            ``dict(named_children())``).
        clip_blocks: raw CLIP tokens of the unrotated pass after blocks 3 and 7 (ViT-B/16;
            7 and 15 for ViT-L/14), each (B, clip_width, h, w).
        remote_blocks: RemoteCLIP's after blocks 3 and 7, each (B, remote_width, h, w).
        dino_blocks: DINO's blocks 3, 7 and 11 after the final LayerNorm, each
            (B, dino_width, 2h, 2w).

    Returns:
        ``stage1`` (3 x (B, 256, 2h, 2w)), ``stage2`` (3 x (B, 128, 4h, 4w)), both ordered
        CLIP, RemoteCLIP, DINO as :meth:`RSKTDecoder.forward` takes them, and the DINO map for
        the DINO cost, (B, C, h, w).
    """
    stage1 = [
        convs["upsample1"](clip_blocks[0]),
        convs["upsample1_remote"](remote_blocks[0]),
        convs["dino_decod_proj1"](dino_blocks[0]),
    ]
    stage2 = [
        convs["upsample2"](clip_blocks[1]),
        convs["upsample2_remote"](remote_blocks[1]),
        convs["dino_decod_proj2"](dino_blocks[1]),
    ]
    return stage1, stage2, convs["dino_down_sample"](dino_blocks[2])
