"""Network speed on CPU of one model (--model): parameters, GFLOPs per image,
ms/image of the model's own test protocol next to the machine's matmul peak measured in the same
run (target ratio >= 0.5), and, for the rotation models (RSKT-Seg, OVRS), the CLIP rotations run
as one batch next to four sequential passes (same weights, same input). --compare adds RSKT-Seg
and Cat-Seg side by side: ms/image and their ratio under each model's original protocol
(RSKT-Seg whole image, Cat-Seg sliding window) and under one common protocol (whole image).

Networks are built with random weights (torch seeded; no checkpoint needed) and timed directly,
batch 1 under `torch.inference_mode()`, on a --size x --size image (640: what the official
protocols see for 256-px patches, shortest edge 640) and --classes L2-normalised text
embeddings (17: DLRSD). Protocols (`ovrsisbench.adapters.catseg_family`): ``whole`` =
CLIP-normalised, padded to a multiple of 32, one forward (the network squashes the input to its
encoders' sizes: CLIP 384 [336 for vit-l], RemoteCLIP 768, DINO 384), sigmoid; ``slide`` = 640 x
640, four 384 windows at stride 256 plus the global view in one forward of 5, sigmoid, folded
and averaged. Cat-Seg and OVRS pool the class aggregation by 1 as their evaluation does. FLOPs
are counted by torch's FlopCounterMode over one protocol call (a multiply-add counts as 2
FLOPs). Times are the median of --repeats after one warm-up; the matmul peak is the best of
several fp32 2048^3 `torch.mm`.

SAN, SED and SegEarth-OV are timed through their adapters' ``predict`` (each model's own test
protocol, ``ovrsisbench.adapters.san|sed|segearth_ov``) on a network built by the adapter with
random weights, the --classes names embedded by its text encoder: SAN one pass at shortest edge 640
(CLIP at 0.5x / 0.7x), SED the image squashed to 768x768, SegEarth-OV the long side resized to 448
and 224 windows at stride 112 through the SimFeatUp upsampler.

Usage: python bench/model_speed.py [--model rsktseg|catseg|ovrs|gsnet|san|sed|segearth_ov]
    [--backbone vit-b|vit-l|convnext-b|convnext-l|tiny] [--size 640] [--classes 17] [--repeats 3]
    [--threads N] [--compare]
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

from ovrsisbench.adapters.catseg_family import CLIP_MEAN_255, CLIP_STD_255
from ovrsisbench.inference import catseg_slide_inference, normalize, pad_to_multiple
from ovrsisbench.models.catseg.model import CONFIGS as CATSEG_CONFIGS
from ovrsisbench.models.catseg.model import CatSeg
from ovrsisbench.models.gsnet.model import CONFIGS as GSNET_CONFIGS
from ovrsisbench.models.gsnet.model import GSNet
from ovrsisbench.models.ovrs.model import OVRS
from ovrsisbench.models.rsktseg.model import CONFIGS as RSKTSEG_CONFIGS
from ovrsisbench.models.rsktseg.model import RSKTSeg
from ovrsisbench.registry import create_adapter

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


def rotated_clip(model: torch.nn.Module, images: torch.Tensor):
    """The four rotated dense CLIP maps and the hooked blocks of a rotation model."""
    if isinstance(model, RSKTSeg):
        return model.clip_dense(images)
    dense, _, blocks = model.clip_features(images)
    return dense, blocks


#: network class, configs, name and original test protocol of each model.
MODELS = {
    "rsktseg": (RSKTSeg, RSKTSEG_CONFIGS, "RSKT-Seg", "whole"),
    "catseg": (CatSeg, CATSEG_CONFIGS, "Cat-Seg", "slide"),
    "ovrs": (OVRS, CATSEG_CONFIGS, "OVRS", "slide"),
    "gsnet": (GSNet, GSNET_CONFIGS, "GSNet", "slide"),
}


#: models timed through their adapter's own protocol: name, default backbone, protocol
ADAPTER_MODELS = {
    "san": ("SAN", "vit-b", "single pass"),
    "sed": ("SED", "convnext-b", "squash to 768"),
    "segearth_ov": ("SegEarth-OV", "vit-b", "224/112 sliding window"),
}


def adapter_protocol(
    model: str, backbone: str, images01: torch.Tensor, classes: int
) -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    """The adapter's network (random weights, seeded) and a call of its ``predict``."""
    adapter = create_adapter(model, backbone=backbone)
    torch.manual_seed(0)
    adapter.use_network(adapter.build("cpu").eval())
    adapter.set_vocabulary([[f"class {index}"] for index in range(classes)])
    return adapter.network, lambda: adapter.predict(images01)


def build(model: str, backbone: str) -> torch.nn.Module:
    """The network with random weights (seeded), in evaluation mode (pooling 1 for Cat-Seg,
    OVRS and GSNet, as their official evaluation)."""
    network_class, configs, _, _ = MODELS[model]
    torch.manual_seed(0)
    network = network_class(configs[backbone]).eval()
    if hasattr(network, "set_pooling"):
        network.set_pooling(1)
    return network


def protocol(
    network: torch.nn.Module, name: str, images255: torch.Tensor, text: torch.Tensor
) -> Callable[[], torch.Tensor]:
    """A call running the ``whole`` or ``slide`` test protocol of ``network`` on the images."""

    def logits(images: torch.Tensor) -> torch.Tensor:
        return network(normalize(images, CLIP_MEAN_255, CLIP_STD_255), text)

    if name == "whole":
        divisor = network.config.size_divisibility
        return lambda: logits(pad_to_multiple(images255, divisor)).sigmoid()
    return lambda: catseg_slide_inference(images255, logits)


def text_for(network: torch.nn.Module, classes: int) -> torch.Tensor:
    width = network.clip.text_projection.shape[1]
    generator = torch.Generator().manual_seed(1)
    return F.normalize(torch.randn(classes, width, generator=generator), dim=-1)


def rotation_times(
    model: torch.nn.Module, images: torch.Tensor, repeats: int
) -> tuple[dict[bool, float], float]:
    """Median seconds of the rotated CLIP passes batched (True) and sequential (False),
    interleaved, and the max abs difference of their outputs (the four dense maps and the
    hooked blocks)."""
    outputs = {}
    for batched in (True, False):  # warm-up, and the outputs to compare
        model.batched_rotations = batched
        dense, blocks = rotated_clip(model, images)
        outputs[batched] = [*dense, *blocks]
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeats):
        for batched in (True, False):
            model.batched_rotations = batched
            start = time.perf_counter()
            rotated_clip(model, images)
            times[batched].append(time.perf_counter() - start)
    model.batched_rotations = True
    difference = max(
        (a - b).abs().max().item() for a, b in zip(outputs[True], outputs[False], strict=True)
    )
    return {key: statistics.median(value) for key, value in times.items()}, difference


def table(rows: list[list[str]], headers: list[str]) -> str:
    align = ("left",) + ("right",) * (len(headers) - 1)
    return tabulate(rows, headers=headers, disable_numparse=True, colalign=align)


def compare(args: argparse.Namespace) -> None:
    """RSKT-Seg and Cat-Seg ms/image under each one's original protocol and a common one."""
    images255 = torch.rand(1, 3, args.size, args.size) * 255
    seconds = {}
    with torch.inference_mode():
        for model in ("rsktseg", "catseg"):
            network = build(model, args.backbone)
            text = text_for(network, args.classes)
            for name in ("whole", "slide"):
                call = protocol(network, name, images255, text)
                seconds[model, name] = median_seconds(call, args.repeats)
            del network
    rows = [
        [
            label,
            f"{seconds['rsktseg', rskt] * 1e3:.1f} ({rskt})",
            f"{seconds['catseg', cat] * 1e3:.1f} ({cat})",
            f"{seconds['rsktseg', rskt] / seconds['catseg', cat]:.2f}",
        ]
        for label, rskt, cat in (
            ("original protocols", "whole", "slide"),
            ("common protocol: whole image", "whole", "whole"),
            ("common protocol: sliding window", "slide", "slide"),
        )
    ]
    print()
    print(table(rows, ["ms per image", "RSKT-Seg", "Cat-Seg", "RSKT-Seg / Cat-Seg"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted({*MODELS, *ADAPTER_MODELS}), default="rsktseg")
    parser.add_argument("--backbone", default=None, help="default: vit-b (SED: convnext-b)")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--classes", type=int, default=17)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compare", action="store_true", help="RSKT-Seg vs Cat-Seg ms/image")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    images255 = torch.rand(1, 3, args.size, args.size) * 255
    if args.model in ADAPTER_MODELS:
        title, default_backbone, protocol_name = ADAPTER_MODELS[args.model]
        args.backbone = args.backbone or default_backbone
        model, call = adapter_protocol(args.model, args.backbone, images255 / 255, args.classes)
        rotates = False
    else:
        _, configs, title, protocol_name = MODELS[args.model]
        args.backbone = args.backbone or "vit-b"
        config = configs[args.backbone]
        model = build(args.model, args.backbone)
        text = text_for(model, args.classes)
        call = protocol(model, protocol_name, images255, text)
        clip_images = F.interpolate(
            normalize(images255, CLIP_MEAN_255, CLIP_STD_255),
            size=(config.clip_size, config.clip_size),
            mode="bilinear",
            align_corners=False,
        )
        rotates = hasattr(model, "batched_rotations")
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)

    with torch.inference_mode():
        gflops = count_gflops(call)
        seconds = median_seconds(call, args.repeats)
        peak = matmul_peak()
        if rotates:
            clip_gflops = count_gflops(lambda: rotated_clip(model, clip_images))
            rotations, difference = rotation_times(model, clip_images, args.repeats)

    achieved = gflops / seconds
    print(
        f"{title} {args.backbone}, random weights, {args.size}x{args.size} image, "
        f"{protocol_name} protocol, T={args.classes}, batch 1, CPU, torch threads "
        f"{torch.get_num_threads()} (of {os.cpu_count()} CPUs), median of {args.repeats} "
        "after one warm-up"
    )
    print()
    print(
        table(
            [
                ["total", f"{total:,}", f"{total / 1e6:.1f}"],
                ["trainable", f"{trainable:,}", f"{trainable / 1e6:.1f}"],
            ],
            ["parameters", "count", "M"],
        )
    )
    print()
    print(
        table(
            [
                ["GFLOPs per image (FlopCounterMode, multiply-add = 2)", f"{gflops:.3f}"],
                ["ms per image", f"{seconds * 1e3:.1f}"],
                ["achieved GFLOP/s", f"{achieved:.1f}"],
                [f"matmul peak GFLOP/s (fp32 {MATMUL_SIZE}^3 torch.mm)", f"{peak:.1f}"],
                [f"achieved / peak (target {TARGET})", f"{achieved / peak:.2f}"],
            ],
            [f"{protocol_name} inference", "value"],
        )
    )
    if rotates:
        print()
        print(
            table(
                [
                    [
                        "batched (one pass of 4)" if batched else "sequential (4 passes)",
                        f"{rotations[batched] * 1e3:.1f}",
                        f"{clip_gflops / rotations[batched]:.1f}",
                    ]
                    for batched in (True, False)
                ],
                [f"rotated CLIP, {config.clip_size}x{config.clip_size}", "ms", "GFLOP/s"],
            )
        )
        print(
            f"GFLOPs of the rotated CLIP passes: {clip_gflops:.3f}; sequential / batched: "
            f"{rotations[False] / rotations[True]:.2f} (>1: batching helps); max abs difference "
            f"of the outputs: {difference:.2e}"
        )
    if args.compare:
        del model
        compare(args)


if __name__ == "__main__":
    main()
