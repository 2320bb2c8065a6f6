"""Helpers shared by several test modules."""

from __future__ import annotations

from pathlib import Path

from ovrsisbench.adapter import create_adapter
from ovrsisbench.evaluate import EvalSettings, Evaluator, Outcome
from ovrsisbench.protocol import load_protocol
from ovrsisbench.results import ResultStore


def run_toy(module: str, data_root: Path, results: Path, datasets=None, **options) -> list[Outcome]:
    """Evaluate the toy ColourAdapter on the demo protocol."""
    model = f"{module}:ColourAdapter"
    adapter = create_adapter(model, **options)
    adapter.load(None, "cpu")
    protocol = load_protocol("demo")
    evaluator = Evaluator(adapter, model, protocol, data_root, ResultStore(results), EvalSettings())
    return evaluator.run(protocol.select(datasets))
