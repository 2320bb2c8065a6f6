"""SED's gradual-fusion decoder (the ``Aggregator`` of SED ``sed/modeling/transformer/model.py``
with the released configs ``configs/convnext{B,L}_768.yaml``; spec ``baselines.md`` 6).

Module names are the original's, so ``SEDDecoder().state_dict()`` has exactly the keys below the
checkpoint prefix ``sem_seg_head.predictor.transformer.``. The released configs set
``TEXT_GUIDANCE_DIM 0`` (no ``text_guidance_projection``, class attention without guidance) and
``CNEXT_TYPE "V1"``; only that path is built.

Shapes (h, w = the cost grid, 24 x 24 at 768 px; T classes; P = 80 templates):

- cost: cosine (B, P, T, h, w) -> ``conv1`` (7x7, P -> 128) per class -> (B*T, 128, h, w);
- skip guidance: res4 / res3 / res2 (detached by the caller) -> Conv3x3 + ReLU -> 32 / 16 / 8
  channels at 2h / 4h / 8h; cost guidance: the cost (B*T, P, h, w) through a chain of
  ConvTranspose(k2, s2) + ReLU -> 32 @ 2h, 16 @ 4h, 8 @ 8h;
- three ``SEDUp`` stages 128 -> 64 -> 32 -> 16 (2h, 4h, 8h); before each, an auxiliary head
  (``head0/1/2``, Conv3x3 -> 1) reads the *detached* features; ``head`` gives the logits at 8h
  (192 x 192 at 768 px).

Category early rejection (``TEST.FAST_INFERENCE``, evaluation only): before each stage, only
the classes that are among the top-k of some pixel of the auxiliary logits go on; the rest get
probability 0 (``fast_conv_decoder``; the original indexes the (B*T) axis with a per-class mask,
which is right for one image at a time, so images are decoded one by one here).

Initialisation: PyTorch's defaults everywhere (the original defines no ``_init_weights``), the
ConvNeXt blocks' layer scale at 1.0 (``ConvNextBlock(in_channels, kernel_size, 0.0, 1.0)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..common.catseg_head import ClassTransformerLayer, Up, cosine_cost, guidance_projections
from ..common.norm import DecayedLayerNorm


class SEDOutputs(NamedTuple):
    """The decoder's logits (B, T, 8h, 8w) and the auxiliary ones of ``head0``, ``head1``,
    ``head2`` ((B, T, h, w), (B, T, 2h, 2w), (B, T, 4h, 4w)), all trained (SED's four losses)."""

    logits: Tensor
    aux: tuple[Tensor, Tensor, Tensor]


class ConvNextBlock(nn.Module):
    """A ConvNeXt V1 block on (N, C, H, W): depthwise ``kernel`` x ``kernel`` conv, LayerNorm,
    Linear C -> 4C, GELU, Linear 4C -> C, layer scale ``gamma``, residual (no drop path)."""

    def __init__(self, dim: int, kernel: int = 9, layer_scale: float = 1.0) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=kernel, padding=kernel // 2, groups=dim)
        self.norm = DecayedLayerNorm(dim)  # SED convnext.py LayerNorm, channels_last
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class SEDUp(Up):
    """One gradual-fusion stage (the original ``Up``): ``cnext`` on every class map, class
    attention ``attention`` (no text guidance, no padding tokens), then the family's ``Up``:
    ``up`` = ConvTranspose(C -> C - g, k2, s2), concat [skip guidance g (shared by the classes),
    cost guidance g (per class)], ``conv`` = DoubleConv(C + g -> out)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        guidance_channels: int,
        nheads: int = 4,
        attention_type: str = "linear",
        pooling_size: int | Sequence[int] | None = (2, 2),
        kernel: int = 9,
    ) -> None:
        super().__init__(in_channels, out_channels, guidance_channels, sources=2)
        self.cnext = ConvNextBlock(in_channels, kernel)
        self.attention = ClassTransformerLayer(
            in_channels, 0, nheads, attention_type, pooling_size, pad_len=0
        )

    def forward(self, x: Tensor, skip: Tensor, cost: Tensor) -> Tensor:  # type: ignore[override]
        """x (B*T, C, H, W), skip (B, g, 2H, 2W), cost (B*T, g, 2H, 2W) -> (B*T, out, 2H, 2W)."""
        x = self.cnext(x)
        rows, channels, height, width = x.shape
        x = x.view(skip.shape[0], -1, channels, height, width).transpose(1, 2)
        x = self.attention(x, None).transpose(1, 2).reshape(rows, channels, height, width)
        return super().forward(x, [skip, cost])


def any_pixel_topk(logits: Tensor, k: int) -> Tensor:
    """Boolean (T,) mask of the classes among the ``k`` highest of some pixel of the logits
    (1, T, h, w) (the original ``get_valid_idx_from_mask``)."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return torch.bincount(top.flatten(), minlength=logits.shape[1]) > 0


class SEDDecoder(nn.Module):
    """SED's ``Aggregator`` as released (see the module docstring).

    Args:
        guidance_dims: channels of res4, res3, res2 (B 512/256/128, L 768/384/192).
        prompt_channels: P, the number of templates (80).
        hidden_dim: ``conv1``'s output (HIDDEN_DIMS 128).
        decoder_dims: the three stages' outputs (DECODER_DIMS 64, 32, 16).
        guidance_proj_dims: skip and cost guidance widths (DECODER_GUIDANCE_PROJ_DIMS 32, 16, 8).
        kernel: the ConvNeXt blocks' depthwise kernel (KERNEL_SIZE 9).
    """

    def __init__(
        self,
        guidance_dims: Sequence[int] = (512, 256, 128),
        prompt_channels: int = 80,
        *,
        hidden_dim: int = 128,
        decoder_dims: Sequence[int] = (64, 32, 16),
        guidance_proj_dims: Sequence[int] = (32, 16, 8),
        nheads: int = 4,
        pooling_size: int | Sequence[int] | None = (2, 2),
        attention_type: str = "linear",
        kernel: int = 9,
    ) -> None:
        super().__init__()
        # Registration order = the original state-dict order.
        self.conv1 = nn.Conv2d(prompt_channels, hidden_dim, kernel_size=7, stride=1, padding=3)
        self.decoder_guidance_projection = guidance_projections(guidance_dims, guidance_proj_dims)
        cost_dims = (prompt_channels, *guidance_proj_dims[:-1])
        self.decoder_corr_guidance_projection = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(d, dp, kernel_size=2, stride=2), nn.ReLU())
            for d, dp in zip(cost_dims, guidance_proj_dims, strict=True)
        )
        dims = (hidden_dim, *decoder_dims)
        for index in range(3):
            stage = SEDUp(
                dims[index],
                dims[index + 1],
                guidance_proj_dims[index],
                nheads,
                attention_type,
                pooling_size,
                kernel,
            )
            self.add_module(f"decoder{index + 1}", stage)
        for index, dim in enumerate(dims[:3]):
            self.add_module(f"head{index}", nn.Conv2d(dim, 1, kernel_size=3, padding=1))
        self.head = nn.Conv2d(dims[3], 1, kernel_size=3, padding=1)

    @property
    def stages(self) -> list[tuple[nn.Module, SEDUp]]:
        """(auxiliary head, stage) pairs in decoding order."""
        return [(getattr(self, f"head{i}"), getattr(self, f"decoder{i + 1}")) for i in range(3)]

    def _inputs(
        self, img_feats: Tensor, text_feats: Tensor, guidance: Sequence[Tensor]
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """The embedded cost (B*T, D, h, w), the projected skip guidance [(B, g_i, ...)] and the
        cost guidance [(B*T, g_i, ...)] of each stage."""
        cost = cosine_cost(img_feats, text_feats)  # (B, P, T, h, w)
        batch, prompts, classes, height, width = cost.shape
        cost = cost.transpose(1, 2).reshape(batch * classes, prompts, height, width)
        skips = [
            proj(g) for proj, g in zip(self.decoder_guidance_projection, guidance, strict=True)
        ]
        chained, current = [], cost
        for proj in self.decoder_corr_guidance_projection:
            current = proj(current)
            chained.append(current)
        return self.conv1(cost), skips, chained

    def forward(
        self, img_feats: Tensor, text_feats: Tensor, guidance: Sequence[Tensor]
    ) -> SEDOutputs:
        """Logits of every class and stage.

        Args:
            img_feats: the dense CLIP embedding (B, C, h, w).
            text_feats: unit text embeddings (B, T, P, C).
            guidance: res4, res3, res2 of the image tower (at 2h, 4h, 8h), detached.
        """
        batch = img_feats.shape[0]

        def per_image(maps: Tensor) -> Tensor:  # (B*T, 1, H, W) -> (B, T, H, W)
            return maps.view(batch, -1, *maps.shape[-2:])

        x, skips, costs = self._inputs(img_feats, text_feats, guidance)
        aux = []
        for (aux_head, stage), skip, cost in zip(self.stages, skips, costs, strict=True):
            aux.append(per_image(aux_head(x.detach())))
            x = stage(x, skip, cost)
        return SEDOutputs(per_image(self.head(x)), tuple(aux))

    def early_rejection(
        self, img_feats: Tensor, text_feats: Tensor, guidance: Sequence[Tensor], topk: int
    ) -> Tensor:
        """Probabilities (B, T, 8h, 8w) with category early rejection at ``topk`` (see the
        module docstring): rejected classes are 0, the others the sigmoid of the logits."""
        return torch.cat(
            [
                self._reject(
                    img_feats[b : b + 1],
                    text_feats[b : b + 1],
                    [g[b : b + 1] for g in guidance],
                    topk,
                )
                for b in range(img_feats.shape[0])
            ]
        )

    def _reject(
        self, img_feats: Tensor, text_feats: Tensor, guidance: Sequence[Tensor], topk: int
    ) -> Tensor:
        x, skips, costs = self._inputs(img_feats, text_feats, guidance)
        kept = torch.arange(x.shape[0], device=x.device)  # original class ids still decoded
        for (aux_head, stage), skip, cost in zip(self.stages, skips, costs, strict=True):
            valid = any_pixel_topk(aux_head(x).transpose(0, 1), topk)
            x, kept = x[valid], kept[valid]
            x = stage(x, skip, cost[kept])
        probabilities = self.head(x).sigmoid()[:, 0]
        out = probabilities.new_zeros(text_feats.shape[1], *probabilities.shape[-2:])
        return out.index_copy(0, kept, probabilities)[None]
