"""Shared inference geometry: normalisation, resizing, sliding windows, whole-image passes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ovrsisbench.inference import (
    _starts,
    long_side_size,
    normalize,
    resize_to,
    slide_inference,
    whole_inference,
)

WEIGHT = torch.randn(4, 3, 1, 1)


def per_pixel(images: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution: each output pixel depends on its own input pixel only."""
    return F.conv2d(images, WEIGHT)


def test_normalize_per_channel():
    images = torch.ones(2, 3, 4, 5)
    out = normalize(images, (0.5, 0.25, 1.0), (0.5, 0.25, 2.0))
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([1.0, 3.0, 0.0]))


def test_resize_to_is_a_no_op_at_the_same_size():
    images = torch.rand(1, 3, 7, 9)
    assert resize_to(images, (7, 9)) is images
    assert resize_to(images, 5).shape == (1, 3, 5, 5)


def test_long_side_size_keeps_the_aspect():
    assert long_side_size((256, 256), 448) == (448, 448)
    assert long_side_size((1080, 1280), 448) == (378, 448)
    assert long_side_size((1000, 500), 448) == (448, 224)


def test_window_origins_are_clamped_to_the_border():
    assert _starts(64, 64, 32) == [0]
    assert _starts(100, 64, 48) == [0, 36]
    assert _starts(130, 64, 32) == [0, 32, 64, 66]


def test_slide_equals_whole_when_the_window_covers_the_image():
    images = torch.randn(2, 3, 40, 50)
    expected = per_pixel(images)
    torch.testing.assert_close(slide_inference(images, per_pixel, 64, 32, 4), expected)
    torch.testing.assert_close(whole_inference(images, per_pixel, (40, 50)), expected)


@pytest.mark.parametrize("size", [(37, 53), (100, 131), (16, 16)])
def test_overlapping_windows_average_to_the_pointwise_result(size):
    images = torch.randn(1, 3, *size)
    out = slide_inference(images, per_pixel, window=16, stride=10, num_classes=4)
    assert out.shape == (1, 4, *size)
    torch.testing.assert_close(out, per_pixel(images))


def test_window_scores_at_another_resolution_are_resized():
    calls = []

    def coarse(crop):
        calls.append(tuple(crop.shape[-2:]))
        return torch.ones(crop.shape[0], 2, 3, 3)

    out = slide_inference(torch.rand(2, 3, 45, 29), coarse, (24, 16), 12, num_classes=2)
    assert out.shape == (2, 2, 45, 29)
    torch.testing.assert_close(out, torch.ones_like(out))
    assert set(calls) == {(24, 16)}


def test_whole_inference_runs_once_at_the_given_size():
    sizes = []

    def record(images):
        sizes.append(tuple(images.shape[-2:]))
        return per_pixel(images)

    out = whole_inference(torch.rand(1, 3, 33, 65), record, 32)
    assert sizes == [(32, 32)]
    assert out.shape == (1, 4, 33, 65)


def test_shortest_edge_size_follows_detectron2():
    from ovrsisbench.inference import shortest_edge_size

    assert shortest_edge_size((256, 256), 640, 2560) == (640, 640)
    assert shortest_edge_size((2160, 3840), 640, 2560) == (640, 1138)  # UAVid frame
    assert shortest_edge_size((100, 1000), 640, 2560) == (256, 2560)  # capped by the long side
    assert shortest_edge_size((3000, 4000), 640, 2560) == (640, 853)


def test_resize_like_pil_is_pil_bilinear_on_8_bit_images():
    import numpy as np
    from PIL import Image

    from ovrsisbench.inference import resize_like_pil

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(2, 40, 30, 3), dtype=np.uint8)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
    assert torch.equal(resize_like_pil(images, (40, 30)), images)
    for size in [(100, 75), (16, 12)]:  # up and down (PIL antialiases when shrinking)
        out = resize_like_pil(images, size)
        for index in range(2):
            want = Image.fromarray(pixels[index]).resize(size[::-1], Image.BILINEAR)
            got = out[index].permute(1, 2, 0).numpy().astype(np.uint8)
            np.testing.assert_array_equal(got, np.asarray(want))


def test_pad_to_multiple_pads_bottom_right_only():
    from ovrsisbench.inference import pad_to_multiple

    images = torch.ones(1, 3, 33, 64)
    padded = pad_to_multiple(images, 32)
    assert padded.shape == (1, 3, 64, 64)
    assert torch.equal(padded[..., :33, :], images) and padded[..., 33:, :].abs().sum() == 0
    assert pad_to_multiple(images[..., :32, :], 32).shape == (1, 3, 32, 64)
