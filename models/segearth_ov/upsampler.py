"""SimFeatUp, SegEarth-OV's x16 feature upsampler (spec ``baselines.md`` 7), in plain PyTorch.

Followed from likyoo/SegEarth-OV ``simfeatup_dev/upsamplers.py`` (``JBUOne``,
``JBULearnedRange``) and FeatUp's ``AdaptiveConv`` (mhamilton723/FeatUp
``featup/adaptive_conv_cuda``): one joint-bilateral layer, shared by four x2 stages, then
``0.1 * Conv1x1(Dropout2d(x)) + x``. Per stage, with the guidance image average-pooled to
twice the source's size: a range kernel (softmax over the 11 x 11 neighbourhood of
``exp(range_temp) * <proj(g_neighbour), proj(g_centre)>``) times a spatial Gaussian with a
learnable sigma, renormalised, plus ``0.1 * fixup_proj([kernel, guidance])``; the source,
upsampled bicubically and reflect-padded by the radius, is filtered with that per-pixel kernel.

FeatUp's CUDA filter is replaced by :func:`adaptive_conv`, a shift-and-accumulate over the
kernel's taps over small tiles of the output (channels x rows): nothing beyond the output is
held (an unfold of a 224 x 224 crop's 512 channels would hold ~3 G values). Module and
parameter names match the original's state dict (``up.range_proj.0.weight``,
``fixup_proj.1.bias``...).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Channels and output rows filtered at once by ``adaptive_conv``: the tile accumulated over the
#: taps (128 x 8 rows x 224 x 4 bytes = 0.9 MB) stays in the CPU's cache, which measured 1.6x
#: faster than whole-map channel chunks on the project's CPU (bench/model_speed.py).
DEFAULT_CHUNK = 128
DEFAULT_ROWS = 8


def _taps(padded: Tensor, size: tuple[int, int], diameter: int) -> Iterator[Tensor]:
    """The ``diameter**2`` shifted (B, C, h, w) views of a padded map, row-major (tap ``i*d+j``
    is offset (i, j)), the order of ``F.unfold`` and of FeatUp's kernels."""
    height, width = size
    for i in range(diameter):
        for j in range(diameter):
            yield padded[:, :, i : i + height, j : j + width]


def adaptive_conv(
    padded: Tensor, kernel: Tensor, chunk: int = DEFAULT_CHUNK, rows: int = DEFAULT_ROWS
) -> Tensor:
    """Per-pixel filtering (FeatUp ``AdaptiveConv``): ``out[b, c, y, x] = sum_ij
    kernel[b, i*d + j, y, x] * padded[b, c, y + i, x + j]`` for a (B, C, h + d - 1, w + d - 1)
    map and a (B, d*d, h, w) kernel, accumulated tap by tap over tiles of ``chunk`` channels
    and ``rows`` output rows."""
    taps = kernel.shape[1]
    diameter = round(taps**0.5)
    height, width = kernel.shape[-2], kernel.shape[-1]
    weights = kernel.to(padded.dtype).unsqueeze(2)  # (B, d*d, 1, h, w)
    out = padded.new_zeros(padded.shape[0], padded.shape[1], height, width)
    for start in range(0, padded.shape[1], chunk):
        for top in range(0, height, rows):
            bottom = min(top + rows, height)
            tile = out[:, start : start + chunk, top:bottom]
            source = padded[:, start : start + chunk, top : bottom + diameter - 1]
            for tap, shifted in enumerate(_taps(source, (bottom - top, width), diameter)):
                tile.addcmul_(shifted, weights[:, tap, :, top:bottom])
    return out


class JointBilateralLayer(nn.Module):
    """One x2 joint-bilateral upsampling step (the original's ``JBULearnedRange``)."""

    def __init__(self, guidance_dim: int = 3, key_dim: int = 32, radius: int = 5) -> None:
        super().__init__()
        self.radius = radius
        self.diameter = 2 * radius + 1
        taps = self.diameter**2
        self.range_temp = nn.Parameter(torch.tensor(0.0))
        self.range_proj = nn.Sequential(
            nn.Conv2d(guidance_dim, key_dim, 1),
            nn.GELU(),
            nn.Dropout2d(0.1),
            nn.Conv2d(key_dim, key_dim, 1),
        )
        self.fixup_proj = nn.Sequential(
            nn.Conv2d(guidance_dim + taps, taps, 1),
            nn.GELU(),
            nn.Dropout2d(0.1),
            nn.Conv2d(taps, taps, 1),
        )
        self.sigma_spatial = nn.Parameter(torch.tensor(1.0))
        self.chunk = DEFAULT_CHUNK

    def _pad(self, x: Tensor) -> Tensor:
        return F.pad(x, [self.radius] * 4, mode="reflect")

    def range_kernel(self, guidance: Tensor) -> Tensor:
        """(B, d*d, H, W): softmax over the taps of the scaled key similarities."""
        keys = self.range_proj(guidance)
        size = (keys.shape[-2], keys.shape[-1])
        similarity = torch.stack(
            [(shifted * keys).sum(1) for shifted in _taps(self._pad(keys), size, self.diameter)],
            dim=1,
        )
        temperature = self.range_temp.exp().clamp(1e-4, 1e4)
        return F.softmax(temperature * similarity, dim=1)

    def spatial_kernel(self) -> Tensor:
        """(1, d*d, 1, 1) Gaussian of the tap offsets on a [-1, 1] grid."""
        grid = torch.linspace(-1, 1, self.diameter, device=self.sigma_spatial.device)
        squared = grid.square()
        distance = (squared[:, None] + squared[None, :]).reshape(1, -1, 1, 1)
        return torch.exp(-distance / (2 * self.sigma_spatial**2))

    def forward(self, source: Tensor, guidance: Tensor) -> Tensor:
        """Upsample ``source`` (B, C, h, w) to ``guidance``'s size (B, 3, H, W)."""
        kernel = self.range_kernel(guidance) * self.spatial_kernel()
        kernel = kernel / kernel.sum(1, keepdim=True).clamp(1e-7)
        kernel = kernel + 0.1 * self.fixup_proj(torch.cat([kernel, guidance], dim=1))
        size = (guidance.shape[-2], guidance.shape[-1])
        high = F.interpolate(source, size=size, mode="bicubic", align_corners=False)
        return adaptive_conv(self._pad(high), kernel, self.chunk)


class SimFeatUp(nn.Module):
    """x16 upsampler: ``up`` applied four times (x2 each), then a 0.1-scaled 1x1 fix-up
    (the original's ``JBUOne``; 293,729 parameters for 512-d features)."""

    STAGES = 4

    def __init__(self, dim: int, key_dim: int = 32, radius: int = 5) -> None:
        super().__init__()
        self.up = JointBilateralLayer(3, key_dim, radius)
        self.fixup_proj = nn.Sequential(nn.Dropout2d(0.2), nn.Conv2d(dim, dim, 1))

    def forward(self, source: Tensor, guidance: Tensor) -> Tensor:
        """(B, C, h, w) features and their (B, 3, 16h, 16w) normalised image -> (B, C, 16h, 16w)."""
        for _ in range(self.STAGES):
            height, width = source.shape[-2:]
            small = F.adaptive_avg_pool2d(guidance, (2 * height, 2 * width))
            source = self.up(source, small)
        return 0.1 * self.fixup_proj(source) + source
