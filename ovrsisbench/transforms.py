"""Train-time augmentations of one image and its label map, as detectron2 applies them.

Every transform is a callable ``(image, label, rng) -> (image, label)`` on numpy arrays: the image
uint8 (H, W, 3) RGB, the label uint8 (H, W) of class ids (255 = ignore), and a
``numpy.random.Generator`` that supplies all the randomness (the output is a function of the
inputs and the generator's state). ``Compose`` chains them with one generator.

The set is the Cat-Seg family's training pipeline (MaskFormer's semantic dataset mapper, used by
Cat-Seg, GSNet and RSKT-Seg; spec ``rsktseg.md`` 7.3):

1. ``ResizeShortestEdge``: detectron2's size rule; the image through PIL's bilinear filter (the
   8-bit path of detectron2's ``ResizeTransform``), the label with PyTorch's ``nearest`` (the
   mapper reads labels as float64, which sends them down ``ResizeTransform``'s torch path);
2. ``RandomCrop``: detectron2's ``RandomCrop_CategoryAreaConstraint`` with an absolute crop
   size (``single_category_max_area=1.0``, the family's setting, is a plain random crop);
3. ``ColorAugSSD``: the SSD photometric jitter of detectron2/MaskFormer (``ColorAugSSDTransform``:
   brightness, then contrast / saturation / hue in one of two orders, each with probability 0.5,
   8-bit HSV in OpenCV's convention, computed here in numpy);
4. ``RandomFlip``: horizontal with probability 0.5;
5. ``PadTo``: bottom/right padding to a fixed size, image 128, label 255.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ovrsisbench.inference import shortest_edge_size

Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]

IGNORE_LABEL = 255


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _check(image: np.ndarray, label: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    if label.dtype != np.uint8 or label.shape != image.shape[:2]:
        raise ValueError(
            f"expected a uint8 (H, W) label matching the image {image.shape[:2]}, "
            f"got {label.dtype} {label.shape}"
        )


# -- resizing ---------------------------------------------------------------------------------
def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 to ``size`` (h, w) with PIL's bilinear filter (detectron2, 8-bit images)."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image.copy()
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def resize_label(label: np.ndarray, size: tuple[int, int], method: str = "torch") -> np.ndarray:
    """(H, W) uint8 label to ``size`` (h, w) by nearest neighbour: ``"torch"`` is PyTorch's
    ``nearest`` (source index ``floor(dst * in / out)``, what detectron2 does to the float64
    labels of MaskFormer's mapper), ``"pil"`` PIL's (``floor((dst + 0.5) * in / out)``, what it
    does to uint8 labels). Either way no new label value can appear."""
    height, width = size
    if label.shape == (height, width):
        return label.copy()
    if method == "torch":
        tensor = torch.from_numpy(np.ascontiguousarray(label))[None, None]
        return F.interpolate(tensor, size=(height, width), mode="nearest")[0, 0].numpy()
    if method == "pil":
        return np.asarray(Image.fromarray(label).resize((width, height), Image.NEAREST))
    raise ValueError(f"unknown label resize method {method!r} (torch, pil)")


class ResizeShortestEdge:
    """detectron2's ``ResizeShortestEdge``: the shorter side becomes a length drawn from
    ``short_edge_length`` ("choice": one of the values; "range": an integer in [min, max]),
    unless the longer side would then exceed ``max_size``; a drawn length of 0 leaves the pair
    unchanged."""

    def __init__(
        self,
        short_edge_length: int | Sequence[int],
        max_size: int = sys.maxsize,
        sample_style: str = "choice",
        label_method: str = "torch",
    ) -> None:
        lengths = (short_edge_length,) if isinstance(short_edge_length, int) else short_edge_length
        self.short_edge_length = tuple(int(length) for length in lengths)
        if sample_style not in ("choice", "range"):
            raise ValueError(f"sample_style must be 'choice' or 'range', got {sample_style!r}")
        if sample_style == "range" and len(self.short_edge_length) != 2:
            raise ValueError("sample_style 'range' needs (min, max) short edge lengths")
        if not self.short_edge_length:
            raise ValueError("at least one short edge length is needed")
        if label_method not in ("torch", "pil"):
            raise ValueError(f"unknown label resize method {label_method!r} (torch, pil)")
        self.max_size = int(max_size)
        self.sample_style = sample_style
        self.label_method = label_method

    def __repr__(self) -> str:
        return (
            f"ResizeShortestEdge({self.short_edge_length}, max_size={self.max_size}, "
            f"sample_style={self.sample_style!r}, label_method={self.label_method!r})"
        )

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        _check(image, label)
        if self.sample_style == "range":
            low, high = self.short_edge_length
            short = int(rng.integers(low, high + 1))
        else:
            short = int(self.short_edge_length[rng.integers(len(self.short_edge_length))])
        if short == 0:
            return image, label
        size = shortest_edge_size(image.shape[:2], short, self.max_size)
        return resize_image(image, size), resize_label(label, size, self.label_method)


# -- cropping, flipping, padding ----------------------------------------------------------------
class RandomCrop:
    """A random ``size`` (h, w) window (clamped to the image: smaller images are kept whole), as
    detectron2's ``RandomCrop_CategoryAreaConstraint`` with an "absolute" crop: with
    ``single_category_max_area < 1`` up to 10 windows are drawn until one holds more than one
    category (``ignore_label`` not counted) and no category covers that share of it or more; the
    last drawn window is kept otherwise. At 1.0 (the default) it is a plain random crop."""

    def __init__(
        self,
        size: int | Sequence[int],
        single_category_max_area: float = 1.0,
        ignore_label: int | None = IGNORE_LABEL,
    ) -> None:
        self.size = _pair(size)
        if min(self.size) < 1:
            raise ValueError(f"crop size must be positive, got {self.size}")
        self.single_category_max_area = float(single_category_max_area)
        self.ignore_label = ignore_label

    def __repr__(self) -> str:
        return (
            f"RandomCrop({self.size}, single_category_max_area={self.single_category_max_area}, "
            f"ignore_label={self.ignore_label})"
        )

    def _window(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int]:
        crop_h, crop_w = min(self.size[0], height), min(self.size[1], width)
        top = int(rng.integers(height - crop_h + 1))
        left = int(rng.integers(width - crop_w + 1))
        return top, left

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        _check(image, label)
        height, width = label.shape
        crop_h, crop_w = min(self.size[0], height), min(self.size[1], width)
        if self.single_category_max_area >= 1.0:
            top, left = self._window(height, width, rng)
        else:
            for _ in range(10):
                top, left = self._window(height, width, rng)
                window = label[top : top + crop_h, left : left + crop_w]
                values, counts = np.unique(window, return_counts=True)
                if self.ignore_label is not None:
                    counts = counts[values != self.ignore_label]
                if len(counts) > 1 and counts.max() < counts.sum() * self.single_category_max_area:
                    break
        rows, cols = slice(top, top + crop_h), slice(left, left + crop_w)
        return image[rows, cols], label[rows, cols]


class RandomFlip:
    """Flip the pair left-right (``horizontal``) or upside-down with probability ``prob``."""

    def __init__(self, prob: float = 0.5, horizontal: bool = True) -> None:
        self.prob = float(prob)
        self.horizontal = bool(horizontal)

    def __repr__(self) -> str:
        return f"RandomFlip(prob={self.prob}, horizontal={self.horizontal})"

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        _check(image, label)
        if rng.random() < self.prob:
            axis = 1 if self.horizontal else 0
            return np.flip(image, axis), np.flip(label, axis)
        return image, label


class PadTo:
    """Pad at the bottom/right to exactly ``size`` (h, w): the image with ``image_value``, the
    label with ``label_value``. A larger side is cut at the bottom/right (what the original
    mapper's ``F.pad`` with a negative padding does; after a crop to ``size`` it never happens)."""

    def __init__(
        self, size: int | Sequence[int], image_value: int = 128, label_value: int = IGNORE_LABEL
    ) -> None:
        self.size = _pair(size)
        self.image_value = int(image_value)
        self.label_value = int(label_value)

    def __repr__(self) -> str:
        return f"PadTo({self.size}, image_value={self.image_value}, label_value={self.label_value})"

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        _check(image, label)
        height, width = self.size
        out_image = np.full((height, width, 3), self.image_value, dtype=np.uint8)
        out_label = np.full((height, width), self.label_value, dtype=np.uint8)
        keep_h, keep_w = min(height, label.shape[0]), min(width, label.shape[1])
        out_image[:keep_h, :keep_w] = image[:keep_h, :keep_w]
        out_label[:keep_h, :keep_w] = label[:keep_h, :keep_w]
        return out_image, out_label


# -- colour -----------------------------------------------------------------------------------
_HSV_SHIFT = 12
_HUE_RANGE = 180  # OpenCV's 8-bit hue: degrees / 2
_SATURATION_DIV = np.array(
    [0] + [round((255 << _HSV_SHIFT) / i) for i in range(1, 256)], dtype=np.int64
)
_HUE_DIV = np.array(
    [0] + [round((_HUE_RANGE << _HSV_SHIFT) / (6 * i)) for i in range(1, 256)], dtype=np.int64
)
#: For each hue sector, which of (v, p, q, t) are blue, green, red.
_SECTORS = np.array([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])


def bgr_to_hsv(image: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) BGR to 8-bit HSV in OpenCV's convention (``COLOR_BGR2HSV``: hue in
    [0, 180), saturation and value in [0, 255]), with its fixed-point arithmetic."""
    b, g, r = (image[..., i].astype(np.int64) for i in range(3))
    value = np.maximum(np.maximum(b, g), r)
    diff = value - np.minimum(np.minimum(b, g), r)
    half = 1 << (_HSV_SHIFT - 1)
    saturation = (diff * _SATURATION_DIV[value] + half) >> _HSV_SHIFT
    hue = np.where(value == r, g - b, np.where(value == g, b - r + 2 * diff, r - g + 4 * diff))
    hue = (hue * _HUE_DIV[diff] + half) >> _HSV_SHIFT
    hue = np.where(hue < 0, hue + _HUE_RANGE, hue)
    return np.stack([hue, saturation, value], axis=-1).clip(0, 255).astype(np.uint8)


#: Pixels per step of OpenCV's vectorised 8-bit HSV -> BGR loop on AVX2 machines (4 x 8 floats);
#: the last ``width % 32`` pixels of each row take its scalar loop.
OPENCV_HSV_BLOCK = 32


def _fused_one_minus(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float32 ``1 - a * b`` rounded once, as the fused multiply-add of OpenCV's build: the
    float64 product of two float32 numbers is exact."""
    return (1.0 - a.astype(np.float64) * b.astype(np.float64)).astype(np.float32)


def hsv_to_bgr(image: np.ndarray, block: int | None = OPENCV_HSV_BLOCK) -> np.ndarray:
    """(..., W, 3) 8-bit HSV (OpenCV's convention) back to uint8 BGR exactly as OpenCV's
    ``COLOR_HSV2BGR`` (4.x, 5.x; checked on every (h < 180, s, v)) computes it row by row: the
    first ``W - W % block`` pixels of a row through its vectorised loop (float32 sector
    arithmetic, x 255 truncated), the rest through its scalar loop (x 255 rounded).
    ``block`` is the vector loop's step (32 with AVX2); None sends every pixel down the vector
    loop (so does any width that is a multiple of ``block``, such as the 384-px crops)."""
    one = np.float32(1.0)
    hue = image[..., 0].astype(np.float32) * np.float32(6.0 / _HUE_RANGE)
    saturation = image[..., 1].astype(np.float32) * np.float32(1.0 / 255.0)
    value = image[..., 2].astype(np.float32) * np.float32(1.0 / 255.0)

    def sector_colours(sector: np.ndarray, fraction: np.ndarray) -> np.ndarray:
        table = np.stack(
            [
                value,
                value * (one - saturation),
                value * _fused_one_minus(saturation, fraction),
                value * _fused_one_minus(saturation, one - fraction),
            ],
            axis=-1,
        )
        order = _SECTORS[sector]  # (..., 3): table index of b, g, r
        return np.take_along_axis(table, order, axis=-1) * np.float32(255.0)

    # vector loop: sector = trunc(h) mod 6 in float arithmetic, truncating conversion
    whole = np.trunc(hue)
    sector = (whole - np.trunc(whole * np.float32(1.0 / 6.0)) * np.float32(6.0)).astype(np.int64)
    vector = np.trunc(sector_colours(np.clip(sector, 0, 5), hue - whole))
    width = image.shape[-2]
    if block is None or width % block == 0:
        return vector.clip(0, 255).astype(np.uint8)
    # scalar loop: floor-based sector, grey when s == 0, rounding conversion (half to even)
    floor = np.floor(hue)
    scalar = sector_colours(floor.astype(np.int64) % 6, hue - floor)
    scalar = np.rint(np.where((saturation == 0)[..., None], value[..., None] * 255, scalar))
    tail = np.arange(width) >= width - width % block
    out = np.where(tail[:, None], scalar, vector)
    return out.clip(0, 255).astype(np.uint8)


def _scale(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``values * alpha + beta`` in float32, clipped to [0, 255] and truncated to uint8."""
    out = values.astype(np.float32) * np.float32(alpha) + np.float32(beta)
    return np.clip(out, 0, 255).astype(np.uint8)


class ColorAugSSD:
    """The SSD colour jitter (detectron2/MaskFormer ``ColorAugSSDTransform`` for RGB input):
    on the BGR image, brightness (add a uniform offset in +-``brightness_delta``), then either
    contrast, saturation, hue or saturation, hue, contrast (even odds); each step happens with
    probability 0.5. Contrast multiplies the pixels by a uniform factor in ``contrast_range``;
    saturation multiplies 8-bit HSV saturation by a factor in ``saturation_range``; hue adds an
    integer in +-``hue_delta`` to 8-bit HSV hue, modulo 180. Every step rounds to uint8
    (clip, truncate) as the original does. The label is untouched."""

    def __init__(
        self,
        brightness_delta: float = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
    ) -> None:
        self.brightness_delta = float(brightness_delta)
        self.contrast_range = (float(contrast_range[0]), float(contrast_range[1]))
        self.saturation_range = (float(saturation_range[0]), float(saturation_range[1]))
        self.hue_delta = int(hue_delta)

    def __repr__(self) -> str:
        return (
            f"ColorAugSSD(brightness_delta={self.brightness_delta}, "
            f"contrast_range={self.contrast_range}, saturation_range={self.saturation_range}, "
            f"hue_delta={self.hue_delta})"
        )

    @staticmethod
    def _coin(rng: np.random.Generator) -> bool:
        return bool(rng.integers(2))

    def _brightness(self, bgr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self._coin(rng):
            delta = self.brightness_delta
            return _scale(bgr, beta=rng.uniform(-delta, delta))
        return bgr

    def _contrast(self, bgr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self._coin(rng):
            return _scale(bgr, alpha=rng.uniform(*self.contrast_range))
        return bgr

    def _saturation(self, bgr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self._coin(rng):
            hsv = bgr_to_hsv(bgr)
            hsv[..., 1] = _scale(hsv[..., 1], alpha=rng.uniform(*self.saturation_range))
            return hsv_to_bgr(hsv)
        return bgr

    def _hue(self, bgr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self._coin(rng):
            hsv = bgr_to_hsv(bgr)
            shift = int(rng.integers(-self.hue_delta, self.hue_delta + 1))
            hsv[..., 0] = (hsv[..., 0].astype(np.int64) + shift) % _HUE_RANGE
            return hsv_to_bgr(hsv)
        return bgr

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        _check(image, label)
        bgr = self._brightness(np.ascontiguousarray(image[..., ::-1]), rng)
        if self._coin(rng):
            steps = (self._contrast, self._saturation, self._hue)
        else:
            steps = (self._saturation, self._hue, self._contrast)
        for step in steps:
            bgr = step(bgr, rng)
        return np.ascontiguousarray(bgr[..., ::-1]), label


# -- composition ------------------------------------------------------------------------------
class Compose:
    """Apply ``transforms`` in order with one generator; returns C-contiguous arrays."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __repr__(self) -> str:
        inner = ", ".join(repr(transform) for transform in self.transforms)
        return f"Compose([{inner}])"

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        _check(image, label)
        for transform in self.transforms:
            image, label = transform(image, label, rng)
        return np.ascontiguousarray(image), np.ascontiguousarray(label)


def catseg_train_transform(size: int = 384, max_size: int = 1333) -> Compose:
    """The Cat-Seg family's training pipeline (spec ``rsktseg.md`` 7.3) for square crops of
    ``size``: resize the short edge to ``size`` (long edge at most ``max_size``), random
    ``size`` x ``size`` crop, SSD colour jitter, horizontal flip, pad to ``size`` (128 / 255)."""
    return Compose(
        [
            ResizeShortestEdge((size,), max_size, "choice"),
            RandomCrop((size, size), single_category_max_area=1.0),
            ColorAugSSD(),
            RandomFlip(0.5, horizontal=True),
            PadTo(size, image_value=128, label_value=IGNORE_LABEL),
        ]
    )
