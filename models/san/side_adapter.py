"""SAN's side adapter network (spec ``baselines.md`` 5), following MendelXu/SAN
``san/model/side_adapter/side_adapter.py`` (``RegionwiseSideAdapterNetwork``, ``MLPMaskDecoder``),
``san/model/side_adapter/timm_wrapper.py`` (``vit_w240n6d8_patch16``) and ``san/model/layers.py``
(``AddFusion``, ``LayerNorm``, ``MLP``).

- ``vit_model``: a timm ViT without CLS token, final norm or head: ``patch_embed`` (timm
  ``PatchEmbed``), ``pos_embed`` (1, g*g, C) for the ``image_size`` grid (40 x 40 at 640 px),
  bicubically resized to the input's grid, and ``blocks`` (timm ``Block``: qkv bias, MLP ratio
  4, GELU, LayerNorm eps 1e-6), so that state-dict keys are the original's. Initialised as timm
  initialises a ViT (``pos_embed`` truncated normal 0.02, ``init_weights_vit_timm`` on every
  Linear); the released model starts from random weights (MendelXu/SAN#48).
- ``query_embed`` / ``query_pos_embed`` (1, Q, C), N(0, 0.02), prepended to the patch tokens;
  ``x + pos`` enters block 1 and every later block (not the output of the last one).
- ``fusion_layers["layer_i"]``: before block 1 (i = 0) or after block i, the CLIP map of the
  mapped layer goes through a LayerNorm over channels (eps 1e-6) and a 1x1 conv (detectron2's
  ``c2_xavier_fill``: Kaiming-uniform with a = 1, zero bias), is resized bilinearly to the side
  grid and added to the patch tokens.
- ``mask_decoder`` on the outputs after the deep-supervision blocks: query MLP (Linear, ReLU),
  pixel and attention-bias MLPs (1x1 convs, ReLU); masks = query . pixel (B, Q, h, w); attention
  bias per CLIP head = query . attention map, rescaled by a learnable Linear(1, 1)
  -> (B, heads, Q, h, w). The released configs use one bias for all recognition blocks
  (``ATTN_BIAS.NUM_LAYERS 1``), the only case built here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block, init_weights_vit_timm
from torch import Tensor, nn

from ..common.norm import DecayedLayerNorm


class AddFusion(nn.Module):
    """Project a CLIP map (B, C_clip, h', w') to the side width and add it to the patch tokens."""

    def __init__(self, clip_width: int, width: int) -> None:
        super().__init__()
        self.input_proj = nn.Sequential(
            DecayedLayerNorm(clip_width, channels_first=True), nn.Conv2d(clip_width, width, 1)
        )
        nn.init.kaiming_uniform_(self.input_proj[1].weight, a=1)
        nn.init.zeros_(self.input_proj[1].bias)

    def forward(self, patches: Tensor, clip_map: Tensor, grid: tuple[int, int]) -> Tensor:
        mapped = F.interpolate(
            self.input_proj(clip_map), size=grid, mode="bilinear", align_corners=False
        )
        return patches + mapped.flatten(2).transpose(1, 2)


class MLP(nn.Module):
    """``num_layers`` affine maps (Linear, or 1x1 convs for maps) with ReLU between them."""

    def __init__(
        self, in_dim: int, hidden: int, out_dim: int, num_layers: int, dense: bool = False
    ) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        affine = (lambda i, o: nn.Conv2d(i, o, 1)) if dense else nn.Linear
        self.layers = nn.ModuleList(affine(i, o) for i, o in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x: Tensor) -> Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MLPMaskDecoder(nn.Module):
    """Mask logits (B, Q, h, w) and attention biases (B, heads, Q, h, w) from the query tokens
    (B, Q, C) and the patch map (B, C, h, w) of one side-network layer."""

    def __init__(
        self, width: int, heads: int, embed: int = 256, hidden: int = 256, num_layers: int = 3
    ) -> None:
        super().__init__()
        self.heads = heads
        self.query_mlp = MLP(width, hidden, embed, num_layers)
        self.pix_mlp = MLP(width, hidden, embed, num_layers, dense=True)
        self.attn_mlp = MLP(width, hidden, embed * heads, num_layers, dense=True)
        self.bias_scaling = nn.Linear(1, 1)

    def forward(self, query: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        query = self.query_mlp(query)
        pixels = self.pix_mlp(x)
        batch, channels, height, width = pixels.shape
        masks = torch.einsum("bqc,bchw->bqhw", query, pixels)
        attn = self.attn_mlp(x).reshape(batch, self.heads, channels, height, width)
        bias = torch.einsum("bqc,bnchw->bnqhw", query, attn)
        return masks, self.bias_scaling(bias[..., None]).squeeze(-1)


class SideViT(nn.Module):
    """The timm ViT of the side network, reduced to what SAN keeps (see the module docstring)."""

    def __init__(
        self, width: int, depth: int, heads: int, patch_size: int = 16, image_size: int = 640
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(
            image_size, patch_size, 3, width, output_fmt="NHWC", strict_img_size=False
        )
        grid = self.patch_embed.grid_size
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], width))
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.Sequential(
            *(Block(width, heads, 4.0, qkv_bias=True, norm_layer=norm) for _ in range(depth))
        )
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for name, module in self.named_modules():
            init_weights_vit_timm(module, name)

    def positions(self, grid: tuple[int, int]) -> Tensor:
        """The positional embedding (1, h*w, C) for a (h, w) patch grid."""
        source = self.patch_embed.grid_size
        if tuple(grid) == tuple(source):
            return self.pos_embed
        pos = self.pos_embed.reshape(1, *source, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=grid, mode="bicubic", align_corners=False)
        return pos.flatten(2).transpose(1, 2)


class SideAdapterNetwork(nn.Module):
    """SAN's ``RegionwiseSideAdapterNetwork`` (see the module docstring).

    ``fusion_map`` maps a side index (0 = before block 1, i = after block i) to the CLIP layer
    it reads (0 = after ``ln_pre``, i = after CLIP block i); ``deep_supervision`` lists the side
    blocks whose outputs are decoded in training (only the last one at evaluation).
    """

    def __init__(
        self,
        clip_width: int,
        clip_heads: int,
        fusion_map: Mapping[int, int],
        deep_supervision: Sequence[int],
        width: int = 240,
        depth: int = 8,
        heads: int = 6,
        num_queries: int = 100,
        patch_size: int = 16,
        image_size: int = 640,
        decoder_dim: int = 256,
    ) -> None:
        super().__init__()
        self.vit_model = SideViT(width, depth, heads, patch_size, image_size)
        self.query_embed = nn.Parameter(torch.zeros(1, num_queries, width))
        self.query_pos_embed = nn.Parameter(torch.zeros(1, num_queries, width))
        nn.init.normal_(self.query_embed, std=0.02)
        nn.init.normal_(self.query_pos_embed, std=0.02)
        self.fusion_map = dict(fusion_map)
        self.fusion_layers = nn.ModuleDict(
            {f"layer_{side}": AddFusion(clip_width, width) for side in self.fusion_map}
        )
        self.mask_decoder = MLPMaskDecoder(width, clip_heads, decoder_dim, decoder_dim)
        self.deep_supervision = tuple(deep_supervision)
        self.num_queries = num_queries

    def _fuse(self, index: int, x: Tensor, clip_maps: Mapping[int, Tensor], grid) -> Tensor:
        if index not in self.fusion_map:
            return x
        queries, patches = x[:, : self.num_queries], x[:, self.num_queries :]
        fusion = self.fusion_layers[f"layer_{index}"]
        return torch.cat([queries, fusion(patches, clip_maps[self.fusion_map[index]], grid)], 1)

    def forward(
        self, images: Tensor, clip_maps: Mapping[int, Tensor], deep_supervision: bool = False
    ) -> list[tuple[Tensor, Tensor]]:
        """(masks (B, Q, h, w), attention bias (B, heads, Q, h, w)) after each deep-supervision
        block (``deep_supervision``) or after the last one; ``images`` (B, 3, H, W) with sides
        divisible by the patch size, ``clip_maps`` the CLIP layers named in ``fusion_map``."""
        vit = self.vit_model
        x = vit.patch_embed(images)
        grid = (x.shape[1], x.shape[2])
        x = x.flatten(1, 2)
        batch = x.shape[0]
        pos = torch.cat(
            [self.query_pos_embed.expand(batch, -1, -1), vit.positions(grid).expand(batch, -1, -1)],
            dim=1,
        )
        x = torch.cat([self.query_embed.expand(batch, -1, -1), x], dim=1) + pos
        x = self._fuse(0, x, clip_maps, grid)
        decoded = self.deep_supervision if deep_supervision else self.deep_supervision[-1:]
        outputs = []
        for index, block in enumerate(vit.blocks, start=1):
            x = self._fuse(index, block(x), clip_maps, grid)
            if index in decoded:
                patches = x[:, self.num_queries :].transpose(1, 2).reshape(batch, -1, *grid)
                outputs.append(self.mask_decoder(x[:, : self.num_queries], patches))
            if index < len(vit.blocks):
                x = x + pos
        return outputs
