"""Prepare throughput: output images/s of `prepare potsdam` next to the floor of only reading the
same inputs and writing the same number of tiles, measured side by side in one run (target
ratio >= 0.7).

The inputs are generated ISPRS Potsdam tiles in the raw official layout (2_Ortho_RGB/ GeoTIFFs
and 5_Labels_all/ RGB colour labels). The floor reads both TIFFs with the same reader and writes
every image tile and a label tile (cut from the label's first band: no palette decoding) with the
same PNG writer, in the engine's process pool (`make_pool`, one source tile per task;
none for 1 worker, as the engine). Everything else prepare does is the overhead: the palette
decoding, label checks, the label round trip, histograms, the journal, the verification pass
and meta.json. Every run starts its own pool (none for 1 worker) after the forkserver is up, and
writes into a fresh folder; the best of --repeats is kept, the two interleaved.

Usage: python bench/prepare.py [--tiles 4] [--size 2048] [--tile 256] [--workers 1 2]
    [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.transform import from_origin
from tabulate import tabulate

from ovrsisbench.data.converters.isprs import BOUNDARY
from ovrsisbench.data.converters.pairs import cut_pair
from ovrsisbench.data.converters.potsdam import PotsdamConverter
from ovrsisbench.data.converters.workers import make_pool
from ovrsisbench.data.layout import read_rgb, write_png
from ovrsisbench.data.prepare import PrepareSettings, prepare
from ovrsisbench.data.registry import REGISTRY
from ovrsisbench.data.tiling import Tiling

TARGET = 0.7
COLOURS = np.array(REGISTRY["potsdam"].palette, np.uint8)  # ISPRS order
# muted photo tints per class: road grey, roof, grass, tree, car, clutter
TINTS = np.array(
    [[150, 150, 145], [170, 110, 90], [110, 140, 80], [60, 95, 50], [40, 60, 140], [120, 105, 90]],
    np.float32,
)


# --- the generated download ------------------------------------------------------------------


def tile_ids(count: int) -> list[str]:
    """Real Potsdam tile ids, alternating train and val."""
    train, val = PotsdamConverter.train_ids, PotsdamConverter.val_ids
    ids = [i for pair in zip(train, val, strict=False) for i in pair]
    if count > len(ids):
        raise SystemExit(f"--tiles must be <= {len(ids)}")
    return ids[:count]


def _smooth(rng: np.random.Generator, size: int, cell: int, channels: int) -> np.ndarray:
    """A smooth random field in 0..1, (size, size, channels): a coarse grid resized bicubically."""
    side = max(2, size // cell)
    planes = []
    for _ in range(channels):
        coarse = Image.fromarray(rng.integers(0, 256, (side, side), np.uint8))
        planes.append(np.asarray(coarse.resize((size, size), Image.BICUBIC), np.float32))
    return np.stack(planes, axis=-1) / 255


def make_label(rng: np.random.Generator, size: int) -> np.ndarray:
    """Class ids in blocky regions: a coarse grid of blocks, buildings and a few cars on top."""
    block = 64
    n = -(-size // block)
    ids = rng.choice([0, 0, 2, 2, 3, 5], (n, n)).astype(np.uint8)
    label = np.repeat(np.repeat(ids, block, 0), block, 1)[:size, :size]
    for _ in range(size // 100):  # buildings
        y, x = rng.integers(0, size - 32, 2)
        h, w = rng.integers(32, 200, 2)
        label[y : y + h, x : x + w] = 1
    for _ in range(size // 40):  # cars
        y, x = rng.integers(0, size - 12, 2)
        label[y : y + 10, x : x + 20] = 4
    return label


def make_tile(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, colour label), both (H, W, 3) uint8: a photo-like image and its ISPRS colours."""
    label = make_label(rng, size)
    shade = 0.6 + 0.8 * _smooth(rng, size, 256, 1)  # large-scale lighting
    texture = 0.85 + 0.3 * _smooth(rng, size, 8, 3)  # fine texture
    image = TINTS[label] * shade * texture + rng.normal(0, 6, (size, size, 3)).astype(np.float32)
    colours = COLOURS[label]
    edges = np.zeros((size, size), bool)  # a few black boundary pixels: some class edges
    edges[1:] |= label[1:] != label[:-1]
    edges[:, 1:] |= label[:, 1:] != label[:, :-1]
    edges &= rng.random((size, size)) < 0.3
    colours[edges] = BOUNDARY
    return np.clip(image, 0, 255).astype(np.uint8), colours


def write_geotiff(path: Path, rgb: np.ndarray, row: int, col: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    transform = from_origin(366000 + 600 * col, 5810000 - 600 * row, 0.05, 0.05)  # 5 cm GSD
    profile = {
        "driver": "GTiff",
        "height": rgb.shape[0],
        "width": rgb.shape[1],
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": transform,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(rgb.transpose(2, 0, 1))


def write_download(src: Path, count: int, size: int) -> list[tuple[Path, Path]]:
    """The raw download; returns (image, label) paths per source tile."""
    rng = np.random.default_rng(0)
    pairs = []
    for tile_id in tile_ids(count):
        row, col = (int(part) for part in tile_id.split("_"))
        image, label = make_tile(rng, size)
        image_path = src / "2_Ortho_RGB" / f"top_potsdam_{tile_id}_RGB.tif"
        label_path = src / "5_Labels_all" / f"top_potsdam_{tile_id}_label.tif"
        write_geotiff(image_path, image, row, col)
        write_geotiff(label_path, label, row, col)
        pairs.append((image_path, label_path))
    return pairs


# --- the two contenders ----------------------------------------------------------------------


def floor_one(task: tuple[Path, Path, Path, int]) -> int:
    """Read one source pair and write its tiles: image tiles and first-band label tiles."""
    image_path, label_path, out, tile = task
    image = read_rgb(image_path)
    label = np.ascontiguousarray(read_rgb(label_path)[..., 0])
    tiling = Tiling(tile, tile, "drop")
    stem = Path(image_path).name.removesuffix("_RGB.tif")
    windows = tiling.windows(*label.shape)
    for y0, x0 in windows:
        name = f"{tiling.tile_stem(stem, y0, x0)}.png"
        image_tile, label_tile = cut_pair(tiling, image, label, y0, x0)
        write_png(out / "images" / name, image_tile, durable=False)
        write_png(out / "labels" / name, label_tile, durable=False)
    return len(windows)


def floor(pairs: list[tuple[Path, Path]], out: Path, tile: int, workers: int) -> int:
    tasks = [(image, label, out, tile) for image, label in pairs]
    pool = make_pool(workers, len(tasks))
    if pool is None:
        return sum(map(floor_one, tasks))
    with pool:
        return sum(pool.map(floor_one, tasks))


def prepare_run(src: Path, out: Path, tile: int, workers: int) -> int:
    settings = PrepareSettings(tile=tile, stride=tile, edge="drop", workers=workers)
    (outcome,) = prepare("potsdam", src, out, "raw", settings)
    return outcome.report.meta.splits["all"]


def timed(fn: Callable[[Path], int], scratch: Path) -> tuple[float, int]:
    """Seconds and output count of ``fn`` writing into a fresh folder (removed afterwards)."""
    out = Path(tempfile.mkdtemp(dir=scratch))
    start = time.perf_counter()
    count = fn(out)
    seconds = time.perf_counter() - start
    shutil.rmtree(out)
    return seconds, count


def _noop(_: int) -> None:
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=4)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src, scratch = Path(tmp) / "potsdam", Path(tmp) / "out"
        scratch.mkdir()
        pairs = write_download(src, args.tiles, args.size)
        for paths in pairs:  # warm the page cache
            for path in paths:
                read_rgb(path)
        warm = make_pool(2, 2)  # start the forkserver once, outside every timing
        if warm is not None:
            with warm:
                list(warm.map(_noop, range(2)))
        rows = []
        for workers in args.workers:
            best = {"floor": (float("inf"), 0), "prepare": (float("inf"), 0)}
            runs: dict[str, Callable[[Path], int]] = {
                "floor": lambda out, w=workers: floor(pairs, out, args.tile, w),
                "prepare": lambda out, w=workers: prepare_run(src, out, args.tile, w),
            }
            for _ in range(args.repeats):
                for name, fn in runs.items():
                    best[name] = min(best[name], timed(fn, scratch))
            (floor_s, floor_n), (ours_s, ours_n) = best["floor"], best["prepare"]
            if floor_n != ours_n:
                raise SystemExit(f"floor wrote {floor_n} tiles, prepare {ours_n}")
            floor_rate, ours_rate = floor_n / floor_s, ours_n / ours_s
            rows.append(
                [
                    workers,
                    args.tiles,
                    ours_n,
                    f"{floor_s:.2f}",
                    f"{ours_s:.2f}",
                    f"{floor_rate:.1f}",
                    f"{ours_rate:.1f}",
                    f"{ours_rate / floor_rate:.2f}",
                    TARGET,
                ]
            )
    print(
        f"{args.tiles} Potsdam tiles {args.size}x{args.size} (GeoTIFF), {args.tile} px tiles "
        f"(stride {args.tile}, drop), best of {args.repeats}, {os.cpu_count()} CPUs"
    )
    print(
        tabulate(
            rows,
            headers=[
                "workers",
                "source tiles",
                "output images",
                "floor s",
                "prepare s",
                "floor img/s",
                "prepare img/s",
                "ratio",
                "target",
            ],
        )
    )


if __name__ == "__main__":
    main()
