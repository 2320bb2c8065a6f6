"""Training speed: ms per iteration of ``ovrsisbench train`` for RSKT-Seg, with the share of
each iteration spent waiting for data, measured in one run on generated SYNTHETIC data.

The trainer's own log (``log.jsonl``: ``data_seconds`` and ``step_seconds`` per logged
iteration) gives both numbers, so the loop's overhead is visible next to the model's work. The
``vit-b`` network has random weights (none can be downloaded here) and trains with the original
recipe (384 px crops); ``tiny`` trains as in the demo (``DEMO_TRAINING``: 64 px crops). Batch
sizes come from ``--batch-size``. The first logged iterations are warm-up and skipped.

Usage: python bench/train_speed.py [--configs tiny vit-b] [--iters 6 2] [--batch-size 4 1]
    [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from tabulate import tabulate

from ovrsisbench.adapters.rsktseg import DEMO_TRAINING
from ovrsisbench.data.converters.synthetic import generate_synthetic_benchmark
from ovrsisbench.models.rsktseg.model import CONFIGS, RSKTSeg
from ovrsisbench.protocol import load_protocol
from ovrsisbench.registry import create_adapter
from ovrsisbench.train import TrainSettings, train

WARMUP = 1  # logged iterations left out of the averages


def adapter_for(config: str, device: torch.device):
    """The rsktseg adapter with a ``config`` network (random weights for the full sizes)."""
    if config == "tiny":
        adapter = create_adapter("rsktseg", backbone=config, **DEMO_TRAINING.options)
        adapter.load(None, device)
    else:
        adapter = create_adapter("rsktseg", backbone=config)
        torch.manual_seed(0)
        adapter.use_network(RSKTSeg(CONFIGS[config]).to(device))
    return adapter


def measure(config: str, iters: int, batch: int, data_root: Path, device: torch.device) -> dict:
    adapter = adapter_for(config, device)
    settings = TrainSettings(
        max_iters=iters, batch_size=batch, log_every=1, checkpoint_every=iters + 1, workers=2
    )
    with tempfile.TemporaryDirectory() as out:
        train(adapter, load_protocol("demo"), data_root, Path(out), settings)
        lines = [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]
    kept = lines[WARMUP:] or lines
    wall = statistics.mean(1 / line["it_per_s"] for line in kept)
    step = statistics.mean(line["step_seconds"] for line in kept)
    data = statistics.mean(line["data_seconds"] for line in kept)
    return {
        "config": config,
        "batch": batch,
        "iterations timed": len(kept),
        "ms / iteration": 1000 * wall,
        "ms / image": 1000 * wall / batch,
        "step ms": 1000 * step,
        "data wait share": data / wall,
        "other share": (wall - step - data) / wall,  # logging, progress, loop bookkeeping
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "vit-b"])
    parser.add_argument("--iters", nargs="+", type=int, default=[30, 3])
    parser.add_argument("--batch-size", nargs="+", type=int, default=[4, 1])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as data:
        generate_synthetic_benchmark(Path(data), num_images=16, size=64)
        for config, iters, batch in zip(args.configs, args.iters, args.batch_size, strict=True):
            rows.append(measure(config, iters, batch, Path(data), device))
    print(
        f"RSKT-Seg training on SYNTHETIC data, device {device}, "
        f"torch threads {torch.get_num_threads()}, first {WARMUP} logged iteration(s) skipped"
    )
    print(tabulate(rows, headers="keys", floatfmt=".2f"))


if __name__ == "__main__":
    main()
