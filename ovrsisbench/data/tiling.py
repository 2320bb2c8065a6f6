"""Where square tiles lie in a large source image (the windows; ``converters.pairs`` cuts them).

Light to import (no numpy): the dataset registry names each dataset's default tiling, and the
command line reads the registry at start-up.

Edge modes, for a side of length L, tile T and stride S:

- ``drop``: windows at 0, S, 2S, ... that lie fully inside; the remainder is dropped (ISPRS
  Potsdam in the paper: 6000 px -> 23 tiles of 256);
- ``clamp``: the same grid plus one last window aligned to the border (mmseg's iSAID converter;
  mmseg's ISPRS converters only with T = S = 512: they step by the tile size whatever their
  stride setting); a side shorter than T gets one window, padded;
- ``pad``: the grid continues until the side is covered; the last window is padded.

Padding is image 0 and label 255. Tiles are named ``{base}_{y0}_{y1}_{x0}_{x1}`` (the window in
source pixels, y1 = y0 + T, x1 = x0 + T even where padded).
"""

from __future__ import annotations

from dataclasses import dataclass

from ovrsisbench.choices import EDGE_MODES
from ovrsisbench.errors import UserError


@dataclass(frozen=True)
class Tiling:
    """``tile=None``: whole images. Otherwise square tiles of ``tile`` px every ``stride`` px."""

    tile: int | None = None
    stride: int | None = None
    edge: str | None = None

    def __post_init__(self) -> None:
        if self.tile is None:
            if self.stride is not None or self.edge is not None:
                raise UserError("--stride and --edge need a tile size (--tile N with N > 0)")
            return
        if self.tile <= 0 or self.stride is None or self.stride <= 0:
            raise UserError(f"tile and stride must be positive, got {self.tile}, {self.stride}")
        if self.edge not in EDGE_MODES:
            raise UserError(f"unknown edge mode '{self.edge}' (use {', '.join(EDGE_MODES)})")

    def to_json(self) -> dict:
        return {"tile": self.tile, "stride": self.stride, "edge": self.edge}

    def starts(self, length: int) -> list[int]:
        """Window starts along one side of ``length`` px."""
        tile, stride = self.tile, self.stride
        assert tile is not None and stride is not None
        if self.edge == "drop":
            return list(range(0, length - tile + 1, stride))
        if length <= tile:
            return [0]
        grid = list(range(0, length - tile, stride))
        if self.edge == "clamp":
            return grid + [length - tile]
        return grid + [len(grid) * stride]  # pad: the next grid window covers the rest

    def windows(self, height: int, width: int) -> list[tuple[int, int]]:
        """(y0, x0) of every window, row by row."""
        return [(y, x) for y in self.starts(height) for x in self.starts(width)]

    def tile_stem(self, base: str, y0: int, x0: int) -> str:
        assert self.tile is not None
        return f"{base}_{y0}_{y0 + self.tile}_{x0}_{x0 + self.tile}"
