"""OVRS (caoql98/OVRS ``*_ours.py``: the published method; spec ``baselines.md`` 3).

Cat-Seg with two changes:

- rotation-aggregated cost: the CLIP-sized image and its three quarter-turns are encoded
  densely (one batch here; the same outputs as the original's four passes), the three turned
  maps are rotated back, and the four cosine costs are stacked (4P channels) into ``conv1``
  (4P -> 128); the Swin guidance and the hooked blocks come from the unrotated pass;
- guided upsampling (:class:`GuidedUp`): each decoder stage re-weights its guidance by a
  channel attention and a spatial attention computed from the class-averaged upsampled
  features, ``g' = ca * g + sa * g + g`` (no sigmoid), before the concatenation.

Everything else (CLIP, aggregator layers, checkpoint names, training) is Cat-Seg's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..catseg.model import CatSeg, CatSegConfig
from ..common.catseg_clip import rotated_dense_forward
from ..common.catseg_head import NUM_ROTATIONS, CatSegAggregator, Up, rotated_cosine_cost


class GuidedUp(Up):
    """OVRS's decoder stage: Cat-Seg's ``Up`` plus ``cconv`` = Conv1x1(in - g -> g) (channel
    attention from the global average) and ``sconv`` = Conv1x1(1 -> 1) (spatial attention from
    the channel mean), both on the upsampled features averaged over the classes."""

    def __init__(self, in_channels: int, out_channels: int, guidance_channels: int) -> None:
        super().__init__(in_channels, out_channels, guidance_channels)
        self.cconv = nn.Conv2d(in_channels - guidance_channels, guidance_channels, 1)
        self.sconv = nn.Conv2d(1, 1, 1)

    def reweight(self, x: Tensor, guidance: Tensor) -> Tensor:
        mean = x.unflatten(0, (guidance.shape[0], -1)).mean(dim=1)  # (B, in - g, 2H, 2W)
        channel = self.cconv(mean.mean(dim=(2, 3), keepdim=True))  # (B, g, 1, 1)
        spatial = self.sconv(mean.mean(dim=1, keepdim=True))  # (B, 1, 2H, 2W)
        return channel * guidance + spatial * guidance + guidance


class OVRSAggregator(CatSegAggregator):
    """The CAT-Seg aggregator on the rotation-aggregated cost, with :class:`GuidedUp` stages;
    ``img_feats`` is the list of the four rotated dense maps (not rotated back)."""

    up_class = GuidedUp

    def __init__(self, *args, prompt_channels: int = 1, **kwargs) -> None:
        super().__init__(*args, prompt_channels=NUM_ROTATIONS * prompt_channels, **kwargs)

    def correlation(self, img_feats: list[Tensor], text_feats: Tensor) -> Tensor:
        return rotated_cosine_cost(img_feats, text_feats)


class OVRS(CatSeg):
    """The OVRS network (see the module docstring); ``CatSeg``'s configs and names."""

    aggregator_class = OVRSAggregator

    def __init__(
        self,
        config: CatSegConfig,
        batched_rotations: bool = True,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(config, device)
        self.batched_rotations = batched_rotations

    def clip_features(self, images: Tensor) -> tuple[list[Tensor], Tensor, list[Tensor]]:
        dense, blocks = rotated_dense_forward(
            self.clip, images, self.config.clip_hooks, self.batched_rotations
        )
        return dense, dense[0], blocks
