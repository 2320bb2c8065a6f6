"""Harness overhead: images/s of `run` with a no-op adapter next to the floor of only decoding
the same images and labels, measured side by side in one run (target ratio >= 0.8).

The no-op adapter returns zero scores, so the harness part is everything else: loading, the
vocabulary lookup, batching, the argmax, the confusion matrix, checkpoints and the record.

Rows vary the reader threads (`run --workers`) and torch's intra-op threads: on a 2-core CPU
the no-op run is decode-bound, and torch's threads compete with the reader threads.

Usage: python bench/eval_overhead.py [--images 200] [--size 512] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

from ovrsisbench.data.layout import DatasetWriter, open_dataset
from ovrsisbench.evaluation import EvalSettings, Evaluator
from ovrsisbench.protocol import load_protocol
from ovrsisbench.results import ResultStore

# the toy no-op adapter lives with the test plug-ins
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "plugins"))
from toy_adapters import NoopAdapter  # noqa: E402

DATASET = "synthetic-target"  # the demo protocol's classes, so its vocabulary applies


def write_dataset(root: Path, count: int, size: int) -> None:
    classes = list(load_protocol("demo").evaluation[1].vocabulary.native_classes)
    rng = np.random.default_rng(0)
    writer = DatasetWriter(
        root / DATASET,
        DATASET,
        classes,
        source={"kind": "synthetic"},
        converter_version="bench",
        tiling={},
    )
    for index in range(count):
        label = rng.integers(0, len(classes), (size, size), dtype=np.uint8)
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        writer.add(f"img{index:05d}", image, label, split="val")
    writer.finalize()


def decode_floor(root: Path) -> float:
    dataset = open_dataset(root, DATASET)
    stems = dataset.stems("all")
    start = time.perf_counter()
    for stem in stems:
        dataset.read_image(stem)
        dataset.read_label(stem)
    return len(stems) / (time.perf_counter() - start)


def harness(root: Path, results: Path, workers: int) -> float:
    protocol = load_protocol("demo")
    adapter = NoopAdapter()
    adapter.load(None, "cpu")
    evaluator = Evaluator(
        adapter, "noop", protocol, root, ResultStore(results), EvalSettings(reader_threads=workers)
    )
    start = time.perf_counter()
    (outcome,) = evaluator.run(protocol.select([DATASET]))
    if outcome.status != "done":
        raise RuntimeError(outcome.error)
    return outcome.record["num_images"] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        write_dataset(root, args.images, args.size)
        decode_floor(root)  # warm the page cache
        rows = []
        default_threads = torch.get_num_threads()
        for torch_threads in sorted({default_threads, 1}, reverse=True):
            torch.set_num_threads(torch_threads)
            for workers in args.workers:
                floor = decode_floor(root)
                results = Path(tmp) / f"results-{workers}-{torch_threads}"
                ours = harness(root, results, workers)
                rows.append(
                    [workers, torch_threads, f"{floor:.1f}", f"{ours:.1f}", f"{ours / floor:.2f}"]
                )
        torch.set_num_threads(default_threads)
    print(
        f"{args.images} PNG images {args.size}x{args.size}, demo vocabulary (6 classes), "
        "no-op adapter, CPU"
    )
    print(
        tabulate(
            rows,
            headers=[
                "reader threads",
                "torch threads",
                "decode-only img/s",
                "harness img/s",
                "ratio",
            ],
        )
    )


if __name__ == "__main__":
    main()
