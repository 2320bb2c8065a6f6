"""Raw label files -> native class ids, with every unmatched pixel counted, never guessed.

Palettes and value tables are data (RGB order, never BGR). A pixel whose colour or value is in
no table becomes 255 and is counted as *unmatched*; colours or values the source itself uses for
"unlabelled" (ISPRS boundary black, DLRSD 0) also become 255 but are expected, not unmatched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from ovrsisbench.data.layout import IGNORE_INDEX, open_pil_image, read_rgb
from ovrsisbench.errors import DataError

RGB = tuple[int, int, int]
_UNMATCHED = 254  # internal marker; native class counts stay far below it
_ROWS_PER_CHUNK = 512
_REPORTED_VALUES = 5


@dataclass
class DecodedLabel:
    """A label in native ids, with how many raw pixels matched nothing (or only approximately)."""

    label: np.ndarray
    unmatched: int = 0
    unmatched_values: dict[str, int] = field(default_factory=dict)  # most frequent, as text
    snapped: int = 0  # off-palette pixels mapped to a colour within the tolerance


def _pack(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...) uint32 codes r + 256 g + 65536 b."""
    padded = np.zeros((*rgb.shape[:-1], 4), np.uint8)
    padded[..., :3] = rgb
    return padded.view("<u4")[..., 0]


def _colour_code(rgb: RGB) -> int:
    return rgb[0] + (rgb[1] << 8) + (rgb[2] << 16)


def _code_colour(code: int) -> RGB:
    return (code & 255, (code >> 8) & 255, code >> 16)


def _colour_text(code: int) -> str:
    return "({}, {}, {})".format(*_code_colour(code))


def _top_values(values: np.ndarray, counts: np.ndarray, show) -> dict[str, int]:
    order = np.argsort(-counts, kind="stable")[:_REPORTED_VALUES]
    return {show(int(values[i])): int(counts[i]) for i in order}


@dataclass(frozen=True)
class PaletteCodec:
    """Colour-coded labels (RGB PNG or TIFF): ``colours`` maps RGB -> native id.

    ``tolerance`` > 0 maps an off-palette colour to the nearest palette colour when every channel
    is within ``tolerance`` (counted as ``snapped``); 0 (default) is strict.
    """

    colours: dict[RGB, int]
    unlabelled: tuple[RGB, ...] = ()
    tolerance: int = 0

    @cached_property
    def _lut(self) -> np.ndarray:
        lut = np.full(1 << 24, _UNMATCHED, np.uint8)
        for rgb in self.unlabelled:
            lut[_colour_code(rgb)] = IGNORE_INDEX
        for rgb, native in self.colours.items():
            lut[_colour_code(rgb)] = native
        return lut

    def decode(self, path: Path) -> DecodedLabel:
        rgb = read_rgb(path)
        label = np.empty(rgb.shape[:2], np.uint8)
        off_codes = []
        for top in range(0, rgb.shape[0], _ROWS_PER_CHUNK):
            codes = _pack(rgb[top : top + _ROWS_PER_CHUNK])
            ids = label[top : top + _ROWS_PER_CHUNK]
            np.take(self._lut, codes, out=ids)
            off_codes.append(codes[ids == _UNMATCHED])
        off = label == _UNMATCHED
        if not off.any():
            return DecodedLabel(label)
        values, inverse, counts = np.unique(
            np.concatenate(off_codes), return_inverse=True, return_counts=True
        )
        snapped_ids = self._snap(values)
        label[off] = snapped_ids[inverse]  # row-major order, as the chunks were gathered
        unmatched = snapped_ids == IGNORE_INDEX
        return DecodedLabel(
            label,
            unmatched=int(counts[unmatched].sum()),
            unmatched_values=_top_values(values[unmatched], counts[unmatched], _colour_text),
            snapped=int(counts[~unmatched].sum()),
        )

    def _snap(self, codes: np.ndarray) -> np.ndarray:
        """Native id of the nearest palette colour within the tolerance for each code, else 255."""
        out = np.full(codes.shape, IGNORE_INDEX, np.uint8)
        if self.tolerance <= 0 or not self.colours:
            return out
        palette = np.array(list(self.colours), np.int32)
        ids = np.array(list(self.colours.values()), np.uint8)
        colours = np.array([_code_colour(int(c)) for c in codes], np.int32).reshape(-1, 3)
        distance = np.abs(colours[:, None, :] - palette[None, :, :]).max(axis=2)
        nearest = distance.argmin(axis=1)
        close = distance[np.arange(len(codes)), nearest] <= self.tolerance
        out[close] = ids[nearest[close]]
        return out


@dataclass(frozen=True)
class IndexCodec:
    """Single-channel index labels (mode L, or P read as indices): ``values`` maps raw -> native."""

    values: dict[int, int]
    unlabelled: tuple[int, ...] = ()

    @cached_property
    def _lut(self) -> np.ndarray:
        lut = np.full(256, _UNMATCHED, np.uint8)
        lut[list(self.unlabelled)] = IGNORE_INDEX
        for raw, native in self.values.items():
            lut[raw] = native
        return lut

    def decode(self, path: Path) -> DecodedLabel:
        return self.decode_array(read_index_label(path), path)

    def decode_array(self, raw: np.ndarray, path: Path) -> DecodedLabel:
        label = self._lut[raw]
        off = label == _UNMATCHED
        if not off.any():
            return DecodedLabel(label)
        values, counts = np.unique(raw[off], return_counts=True)
        label[off] = IGNORE_INDEX
        return DecodedLabel(label, int(counts.sum()), _top_values(values, counts, str))


def read_index_label(path: Path) -> np.ndarray:
    """A single-channel 8-bit label as raw values (palette indices for mode P, never colours)."""
    with open_pil_image(path, "label") as image:
        if image.mode not in ("L", "P"):
            raise DataError(
                f"{path}: expected a single-channel index label (mode L or P), "
                f"got mode {image.mode}"
            )
        return np.array(image)


@dataclass(frozen=True)
class IndexOrPaletteCodec:
    """Labels published either way (DLRSD): index values for mode L/P, colours otherwise."""

    index: IndexCodec
    palette: PaletteCodec

    def decode(self, path: Path) -> DecodedLabel:
        with open_pil_image(path, "label") as image:
            mode = image.mode
            raw = np.array(image) if mode in ("L", "P") else None
        return self.index.decode_array(raw, path) if raw is not None else self.palette.decode(path)
