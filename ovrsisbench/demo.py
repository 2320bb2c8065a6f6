"""``ovrsisbench demo``: the whole pipeline, offline, on a generated SYNTHETIC benchmark.

It generates a small seeded two-domain benchmark in the unified layout, evaluates every
built-in adapter that offers tiny random ``demo_options`` on the ``demo`` protocol, trains
those with ``demo_training`` on the source domain for a short schedule and evaluates them
again, and writes result records (with the predicted maps of a few images), a leaderboard and
the HTML report. It proves the pipeline, not accuracy.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from ovrsisbench.api import evaluate
from ovrsisbench.checkpoints import latest_checkpoint
from ovrsisbench.data.converters.synthetic import generate_synthetic_benchmark
from ovrsisbench.display import TaskProgress, make_progress
from ovrsisbench.evaluation import Outcome
from ovrsisbench.leaderboard import build, print_leaderboard, write_leaderboards
from ovrsisbench.protocol import Protocol, load_protocol
from ovrsisbench.registry import create_adapter, find_adapter, list_adapters
from ovrsisbench.report import write_report
from ovrsisbench.results import ResultStore
from ovrsisbench.train import LOG_FILE, TrainSettings, seed_everything, train

DEMO_PROTOCOL = "demo"
DEMO_SEED = 0
#: images of each split whose predicted maps the demo keeps (the report's prediction grids)
DEMO_SAVED_PREDICTIONS = 4


@dataclass
class DemoTrainResult:
    """A demo training run: the adapter options and weights it made, and the loss of its first
    and last log line."""

    options: dict[str, Any]
    weights: Path
    iterations: int
    first_loss: float
    last_loss: float


def train_demo_model(
    name: str,
    protocol: Protocol,
    data_root: Path,
    out: Path,
    progress: Any = None,
    stop_on_signals: bool = False,
) -> DemoTrainResult:
    """Train the tiny model of the built-in trainable adapter ``name`` as its ``demo_training``
    says (seeded: the same run every time on one machine) on ``protocol.train`` into ``out``;
    a run found there is continued (or, when finished, reused)."""
    cls = find_adapter(name).cls
    training = cls.demo_training
    if training is None or cls.demo_options is None:
        raise ValueError(f"adapter '{name}' has no demo training")
    seed_everything(DEMO_SEED)
    options = {**cls.demo_options, **training.options}
    adapter = create_adapter(name, **options)
    adapter.load(None, torch.device("cpu"))
    settings = TrainSettings(
        **training.settings, seed=DEMO_SEED, workers=0, checkpoint_every=10**9, log_every=10
    )
    resume = latest_checkpoint(out) is not None  # a rerun, or one after Ctrl-C, in --out
    result = train(adapter, protocol, data_root, out, settings, resume, progress, stop_on_signals)
    losses = [json.loads(line)["loss"] for line in (out / LOG_FILE).read_text().splitlines()]
    return DemoTrainResult(options, result.checkpoint, result.iterations, losses[0], losses[-1])


def _evaluate(
    name: str,
    label: str,
    options: dict[str, Any],
    protocol: Protocol,
    root: Path,
    progress: Any,
    console: Console,
    weights: Path | None = None,
) -> list[Outcome]:
    """Evaluate the built-in ``name`` with ``options`` (from ``weights``, if given) on the whole
    protocol on the CPU, into ``root``'s results, printing each failed dataset."""
    sink = TaskProgress(progress, f"synthetic · {label} · ")
    evaluation = evaluate(
        name,
        protocol,
        data_root=root / "data",
        results=root / "results",
        device="cpu",
        weights=weights,
        options=options,
        save_predictions=DEMO_SAVED_PREDICTIONS,
        progress=sink,
    )
    for outcome in evaluation.failed:
        console.print(
            f"[red]failed[/red] {label} on {outcome.dataset}: {outcome.error}",
            markup=True,
            highlight=False,
        )
    return evaluation.outcomes


def _miou(outcomes: list[Outcome]) -> str:
    return ", ".join(
        f"{o.dataset} {o.record['metrics']['mIoU']:.1f}" for o in outcomes if o.record is not None
    )


def run_demo(out: Path | None, console: Console, stop_on_signals: bool = False) -> bool:
    """Run the demo into ``out``, or into a temporary folder that is removed at the end, also
    after a failure or Ctrl-C (its size is reported); True when nothing failed.
    ``stop_on_signals``: Ctrl-C ends the training step in progress and saves a checkpoint, from
    which a rerun into the same ``out`` continues (command-line use, see ``ovrsisbench.train``)."""
    if out is not None:
        ok, page = _run_demo(Path(out), console, stop_on_signals, keep=True)
    else:
        with tempfile.TemporaryDirectory(prefix="ovrsisbench-demo-") as folder:
            try:
                ok, page = _run_demo(Path(folder), console, stop_on_signals, keep=False)
            finally:
                size = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
                console.print(
                    f"removed the temporary folder {folder} ({size / 1e6:.0f} MB of generated "
                    "data, records and checkpoints); keep them with --out DIR",
                    highlight=False,
                    soft_wrap=True,
                )
    console.print(f"report: {page}", highlight=False, soft_wrap=True)
    return ok


def _run_demo(root: Path, console: Console, stop_on_signals: bool, keep: bool) -> tuple[bool, Path]:
    """The demo in ``root``: whether nothing failed, and the report's page."""
    data_root, results_dir = root / "data", root / "results"
    console.print(
        f"[bold]SYNTHETIC demo[/bold] in {root} (generated data: proves the pipeline)",
        soft_wrap=True,
    )
    names = generate_synthetic_benchmark(data_root)
    console.print(f"synthetic datasets generated: {', '.join(names)}")

    protocol = load_protocol(DEMO_PROTOCOL)
    store = ResultStore(results_dir)
    torch.manual_seed(DEMO_SEED)
    outcomes: list[Outcome] = []
    with make_progress(Console(stderr=True)) as progress:
        for entry in list_adapters()[0]:
            cls = entry.cls
            if entry.origin != "built-in" or cls.demo_options is None:
                continue
            context = (protocol, root, progress, console)
            untrained = _evaluate(entry.name, entry.name, cls.demo_options, *context)
            outcomes += untrained
            if cls.demo_training is None:
                continue
            console.print(f"{entry.name}: {cls.demo_training.reason}", highlight=False)
            trained = train_demo_model(
                entry.name,
                protocol,
                data_root,
                root / "train" / entry.name,
                progress,
                stop_on_signals,
            )
            label = f"{entry.name} (trained)"
            after = _evaluate(entry.name, label, trained.options, *context, trained.weights)
            outcomes += after
            console.print(
                f"{entry.name} trained on {protocol.train.dataset} for {trained.iterations} "
                f"iterations: loss {trained.first_loss:.3f} -> {trained.last_loss:.3f}; "
                f"mIoU untrained {_miou(untrained)}; trained {_miou(after)}",
                highlight=False,
                soft_wrap=True,
            )
    write_leaderboards(results_dir, [protocol])
    title = "SYNTHETIC leaderboard (tiny random models on generated data)"
    print_leaderboard(console, build(protocol, results_dir), title)
    # without --out everything else goes with the temporary folder; the report is kept
    report_dir = (
        root / "report" if keep else Path(tempfile.mkdtemp(prefix="ovrsisbench-demo-report-"))
    )
    page = write_report(DEMO_PROTOCOL, results_dir, report_dir, data_root=data_root)
    if keep:
        console.print(
            f"\nsynthetic records: {store.records_dir}\nleaderboard: {results_dir}",
            highlight=False,
            soft_wrap=True,
        )
    return not any(outcome.status == "failed" for outcome in outcomes), page
