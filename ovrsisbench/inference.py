"""Shared test-time geometry for adapters: normalisation, resizing, sliding windows, whole image.

Device-agnostic torch (``resize_like_pil`` goes through PIL on the CPU, as detectron2 does).
``fn`` below maps a (B, 3, h, w) batch to (B, K, h', w') scores; outputs at another resolution
than their input are resized bilinearly to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

ScoreFn = Callable[[Tensor], Tensor]


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Per-channel ``(images - mean) / std`` for (B, C, H, W) images."""
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def resize_to(images: Tensor, size: int | Sequence[int]) -> Tensor:
    """Bilinear resize (``align_corners=False``) of (B, C, H, W) to ``size``; no-op if equal."""
    size = _pair(size)
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def long_side_size(size: Sequence[int], long_side: int) -> tuple[int, int]:
    """(H, W) rescaled, aspect kept, so that the longer side is ``long_side`` (mmseg keep_ratio)."""
    scale = long_side / max(size)
    return int(size[0] * scale + 0.5), int(size[1] * scale + 0.5)


def _starts(length: int, window: int, stride: int) -> list[int]:
    """Window origins covering ``length``; the last window is clamped to the border."""
    count = math.ceil(max(length - window, 0) / stride) + 1
    return sorted({min(i * stride, length - window) for i in range(count)})


def slide_inference(
    images: Tensor,
    fn: ScoreFn,
    window: int | Sequence[int],
    stride: int | Sequence[int],
    num_classes: int,
    pad_small: bool = True,
) -> Tensor:
    """Average ``fn`` over overlapping windows; returns (B, num_classes, H, W).

    Windows are clamped to the borders; along a side shorter than the window, the image is
    zero-padded at the bottom/right (zero is the mean colour of normalised images) and the
    padding cropped away, or, with ``pad_small=False``, the window shrinks to that side
    (mmseg's ``slide_inference``: "the small patch will be used to decode without padding").
    """
    (wh, ww), (sh, sw) = _pair(window), _pair(stride)
    height, width = images.shape[-2:]
    if not pad_small:
        wh, ww = min(wh, height), min(ww, width)
    padded = F.pad(images, (0, max(ww - width, 0), 0, max(wh - height, 0)))
    ph, pw = padded.shape[-2:]
    total = images.new_zeros(images.shape[0], num_classes, ph, pw)
    count = images.new_zeros(1, 1, ph, pw)
    for top in _starts(ph, wh, sh):
        for left in _starts(pw, ww, sw):
            crop = padded[..., top : top + wh, left : left + ww]
            total[..., top : top + wh, left : left + ww] += resize_to(fn(crop), (wh, ww))
            count[..., top : top + wh, left : left + ww] += 1
    return (total / count)[..., :height, :width]


def whole_inference(images: Tensor, fn: ScoreFn, size: int | Sequence[int]) -> Tensor:
    """Resize to ``size``, apply ``fn`` once, resize the scores back to the input size."""
    return resize_to(fn(resize_to(images, size)), images.shape[-2:])


def shortest_edge_size(size: Sequence[int], short: int, max_size: int) -> tuple[int, int]:
    """(H, W) after detectron2's ``ResizeShortestEdge(short, max_size)``: the shorter side becomes
    ``short`` unless the longer would then exceed ``max_size``; rounded half up."""
    height, width = size
    scale = short / min(height, width)
    new_h, new_w = (short, scale * width) if height < width else (scale * height, short)
    if max(new_h, new_w) > max_size:
        rescale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * rescale, new_w * rescale
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_like_pil(images: Tensor, size: int | Sequence[int]) -> Tensor:
    """Resize (B, C, H, W) images on the 0-255 scale exactly as detectron2's test-time
    ``ResizeTransform`` does: each image as 8-bit through PIL's bilinear filter (PIL is exact
    here; torch's antialiased bilinear differs by one level on many pixels). Returns float
    0-255 values on the input's device."""
    import numpy as np
    from PIL import Image

    height, width = _pair(size)
    if tuple(images.shape[-2:]) == (height, width):
        return images.round().clamp(0, 255)
    pixels = images.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    resized = [
        np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
        for image in pixels
    ]
    out = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2)
    return out.to(images.device, torch.float32)


def pad_to_multiple(images: Tensor, multiple: int, value: float = 0.0) -> Tensor:
    """Pad (B, C, H, W) at the bottom/right so both sides are multiples of ``multiple``
    (detectron2's ImageList padding)."""
    height, width = images.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not pad_h and not pad_w:
        return images
    return F.pad(images, (0, pad_w, 0, pad_h), value=value)


def catseg_slide_inference(
    images: Tensor,
    fn: ScoreFn,
    out_size: Sequence[int] | None = None,
    size: int = 640,
    window: int = 384,
    overlap: float = 0.333,
    activation: Callable[[Tensor], Tensor] = torch.sigmoid,
) -> Tensor:
    """The Cat-Seg family's sliding window (CAT-Seg ``inference_sliding_window``), image by image
    of (B, 3, H, W): resize to ``size`` x ``size`` (aspect ratio not kept); ``window`` crops with
    stride ``int(window * (1 - overlap))`` (2 x 2 for the defaults) plus a global view (the image
    resized to ``window``), all through ``fn`` as one batch; each output resized to ``window``,
    then ``activation``; the crops folded and divided by their overlap count, averaged with the
    global output resized to ``size``; finally resized to ``out_size`` (default: H x W).
    Returns (B, K, *out_size)."""
    out_size = tuple(images.shape[-2:]) if out_size is None else _pair(out_size)
    stride = int(window * (1 - overlap))
    unfold = torch.nn.Unfold(window, stride=stride)
    fold = torch.nn.Fold((size, size), window, stride=stride)
    count = fold(unfold(images.new_ones(1, 1, size, size)))
    scores = []
    for image in images:
        crops = unfold(resize_to(image[None], size))[0].T.reshape(
            -1, image.shape[0], window, window
        )
        views = torch.cat([crops, resize_to(image[None], window)])
        out = activation(resize_to(fn(views), window))
        folded = fold(out[:-1].flatten(1).T[None]) / count
        merged = (folded + resize_to(out[-1:], size)) / 2
        scores.append(resize_to(merged, out_size))
    return torch.cat(scores)
