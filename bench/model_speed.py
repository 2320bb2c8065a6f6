"""RSKT-Seg network speed on CPU: parameters, GFLOPs per image, ms/image of whole-image inference
next to the machine's matmul peak measured in the same run (target ratio >= 0.5), and the CLIP
rotations run as one batch next to four sequential passes (same weights, same input).

The network is built with random weights (torch seeded; no checkpoint needed) and timed
directly, batch 1 under `torch.inference_mode()`: a CLIP-normalised --size x --size image
(640: what the official whole-image protocol feeds it for 256-px patches, shortest edge 640),
padded to a multiple of 32, and --classes L2-normalised text embeddings (17: DLRSD). The network
squashes the input to its encoders' own sizes (CLIP 384 [336 for vit-l], four rotations;
RemoteCLIP 768; DINO 384), so the cost hardly depends on --size. FLOPs are counted by torch's
FlopCounterMode over one forward (a multiply-add counts as 2 FLOPs). Times are the median of
--repeats after one warm-up; the matmul peak is the best of several fp32 2048^3 `torch.mm`.

Usage: python bench/model_speed.py [--backbone vit-b|vit-l|tiny] [--size 640] [--classes 17]
    [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tabulate import tabulate
from torch.utils.flop_counter import FlopCounterMode

from ovrsisbench.adapters.rsktseg import CLIP_MEAN_255, CLIP_STD_255
from ovrsisbench.inference import normalize, pad_to_multiple
from ovrsisbench.models.rsktseg.model import CONFIGS, RSKTSeg

TARGET = 0.5
MATMUL_SIZE = 2048
MATMUL_REPEATS = 10


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_gflops(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def matmul_peak() -> float:
    """GFLOP/s of the best of several fp32 square `torch.mm` (2 n^3 FLOPs each)."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=generator) for _ in range(2))
    out = torch.empty(MATMUL_SIZE, MATMUL_SIZE)
    torch.mm(a, b, out=out)  # warm-up
    best = float("inf")
    for _ in range(MATMUL_REPEATS):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * MATMUL_SIZE**3 / best / 1e9


def rotation_times(
    model: RSKTSeg, images: torch.Tensor, repeats: int
) -> tuple[dict[bool, float], float]:
    """Median seconds of `clip_dense` batched (True) and sequential (False), interleaved, and
    the max abs difference of their outputs (the four dense maps and the hooked blocks)."""
    outputs = {}
    for batched in (True, False):  # warm-up, and the outputs to compare
        model.batched_rotations = batched
        dense, blocks = model.clip_dense(images)
        outputs[batched] = [*dense, *blocks]
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeats):
        for batched in (True, False):
            model.batched_rotations = batched
            start = time.perf_counter()
            model.clip_dense(images)
            times[batched].append(time.perf_counter() - start)
    model.batched_rotations = True
    difference = max(
        (a - b).abs().max().item() for a, b in zip(outputs[True], outputs[False], strict=True)
    )
    return {key: statistics.median(value) for key, value in times.items()}, difference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=sorted(CONFIGS), default="vit-b")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--classes", type=int, default=17)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = CONFIGS[args.backbone]

    torch.manual_seed(0)
    model = RSKTSeg(config, batched_rotations=True, device="cpu").eval()
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)

    images255 = torch.rand(1, 3, args.size, args.size) * 255
    images = pad_to_multiple(
        normalize(images255, CLIP_MEAN_255, CLIP_STD_255), config.size_divisibility
    )
    width = model.clip.text_projection.shape[1]
    text = F.normalize(torch.randn(args.classes, width), dim=-1)
    clip_images = F.interpolate(
        images, size=(config.clip_size, config.clip_size), mode="bilinear", align_corners=False
    )

    with torch.inference_mode():
        gflops = count_gflops(lambda: model(images, text))
        clip_gflops = count_gflops(lambda: model.clip_dense(clip_images))
        seconds = median_seconds(lambda: model(images, text), args.repeats)
        peak = matmul_peak()
        rotations, difference = rotation_times(model, clip_images, args.repeats)

    achieved = gflops / seconds
    print(
        f"RSKT-Seg {args.backbone}, random weights, {tuple(images.shape[-2:])} input, "
        f"T={args.classes}, batch 1, CPU, torch threads {torch.get_num_threads()} "
        f"(of {os.cpu_count()} CPUs), median of {args.repeats} after one warm-up"
    )
    print()
    print(
        tabulate(
            [
                ["total", f"{total:,}", f"{total / 1e6:.1f}"],
                ["trainable", f"{trainable:,}", f"{trainable / 1e6:.1f}"],
            ],
            headers=["parameters", "count", "M"],
            disable_numparse=True,
            colalign=("left", "right", "right"),
        )
    )
    print()
    print(
        tabulate(
            [
                ["GFLOPs per image (FlopCounterMode, multiply-add = 2)", f"{gflops:.3f}"],
                ["GFLOPs of the CLIP part (clip_dense, four rotations)", f"{clip_gflops:.3f}"],
                ["ms per image", f"{seconds * 1e3:.1f}"],
                ["achieved GFLOP/s", f"{achieved:.1f}"],
                [f"matmul peak GFLOP/s (fp32 {MATMUL_SIZE}^3 torch.mm)", f"{peak:.1f}"],
                [f"achieved / peak (target {TARGET})", f"{achieved / peak:.2f}"],
            ],
            headers=["whole-image inference", "value"],
            disable_numparse=True,
            colalign=("left", "right"),
        )
    )
    print()
    print(
        tabulate(
            [
                [
                    "batched (one pass of 4)" if batched else "sequential (4 passes)",
                    f"{rotations[batched] * 1e3:.1f}",
                    f"{clip_gflops / rotations[batched]:.1f}",
                ]
                for batched in (True, False)
            ],
            headers=[f"clip_dense, {config.clip_size}x{config.clip_size}", "ms", "GFLOP/s"],
            disable_numparse=True,
            colalign=("left", "right", "right"),
        )
    )
    print(
        f"sequential / batched: {rotations[False] / rotations[True]:.2f} "
        f"(>1: batching helps); max abs difference of the outputs: {difference:.2e}"
    )


if __name__ == "__main__":
    main()
