"""``ovrsisbench demo``: the whole pipeline, offline, on a generated SYNTHETIC benchmark.

It generates a small seeded two-domain benchmark in the unified layout, evaluates every
built-in adapter that offers tiny random ``demo_options`` on the ``demo`` protocol, writes
result records and a leaderboard. It proves the pipeline, not accuracy.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from rich.console import Console

from ovrsisbench.adapter import create_adapter, list_adapters
from ovrsisbench.data.converters.synthetic import generate_synthetic_benchmark
from ovrsisbench.display import RichProgress, frame_table, make_progress
from ovrsisbench.evaluate import EvalSettings, Evaluator
from ovrsisbench.leaderboard import build, write_leaderboards
from ovrsisbench.protocol import load_protocol
from ovrsisbench.results import ResultStore

DEMO_PROTOCOL = "demo"


def run_demo(out: Path | None, console: Console) -> bool:
    """Run the demo into ``out`` (a new temp folder when None); True when nothing failed."""
    root = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="ovrsisbench-demo-"))
    data_root, results_dir = root / "data", root / "results"
    console.print(f"[bold]SYNTHETIC demo[/bold] in {root} (generated data: proves the pipeline)")
    names = generate_synthetic_benchmark(data_root)
    console.print(f"synthetic datasets generated: {', '.join(names)}")

    protocol = load_protocol(DEMO_PROTOCOL)
    store = ResultStore(results_dir)
    device = torch.device("cpu")
    torch.manual_seed(0)
    failed = False
    with make_progress() as progress:
        for entry in list_adapters()[0]:
            if entry.origin != "built-in" or entry.cls.demo_options is None:
                continue
            adapter = create_adapter(entry.name, **entry.cls.demo_options)
            adapter.load(None, device)
            evaluator = Evaluator(
                adapter, entry.name, protocol, data_root, store, EvalSettings(device=device)
            )
            sink = RichProgress(progress, f"synthetic · {entry.name} · ")
            for outcome in evaluator.run(list(protocol.evaluation), sink):
                if outcome.status == "failed":
                    failed = True
                    console.print(
                        f"[red]failed[/red] {entry.name} on {outcome.dataset}: {outcome.error}",
                        markup=True,
                    )
    write_leaderboards(results_dir, [protocol])
    title = "SYNTHETIC leaderboard (tiny random models on generated data)"
    console.print(frame_table(build(protocol, results_dir), title))
    console.print(f"\nsynthetic records: {store.records_dir}\nleaderboard: {results_dir}")
    return not failed
