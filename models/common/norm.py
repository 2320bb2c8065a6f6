"""A LayerNorm that detectron2-style optimiser builders do not recognise as a norm layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DecayedLayerNorm(nn.Module):
    """LayerNorm over the channels, of channels-last inputs (..., C) or, with
    ``channels_first``, of maps (B, C, H, W); weight and bias as ``nn.LayerNorm``'s.

    Deliberately not an ``nn.LayerNorm``: the originals' own LayerNorm classes (SAN's
    ``LayerNorm2d``, SED's ConvNeXt ``LayerNorm``) are plain modules, so detectron2's optimiser
    builder, which exempts norm layers by type, gives their weights weight decay, and
    ``models.common.optim.detectron2_param_groups`` does the same with this one."""

    def __init__(self, channels: int, eps: float = 1e-6, channels_first: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps
        self.channels_first = channels_first

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_first:
            x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2) if self.channels_first else x
