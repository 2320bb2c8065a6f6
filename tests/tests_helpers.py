"""Helpers shared by several test modules."""

from __future__ import annotations

from pathlib import Path

from ovrsisbench import evaluate
from ovrsisbench.evaluation import EvalSettings, Evaluator, Outcome
from ovrsisbench.protocol import load_protocol
from ovrsisbench.results import ResultStore


def run_toy(module: str, data_root: Path, results: Path, datasets=None, **options) -> list[Outcome]:
    """Evaluate the toy ColourAdapter on the demo protocol (``ovrsisbench.evaluate``)."""
    model = f"{module}:ColourAdapter"
    return evaluate(
        model, "demo", datasets=datasets, data_root=data_root, results=results, options=options
    ).outcomes


def source_miou(adapter, data_root: Path, results: Path) -> float:
    """mIoU (percent) of a loaded ``adapter`` on the demo protocol's training domain, held-out
    images (synthetic-source, val)."""
    protocol = load_protocol("demo")
    evaluator = Evaluator(
        adapter, adapter.name, protocol, data_root, ResultStore(results), EvalSettings()
    )
    [outcome] = evaluator.run(protocol.select(["synthetic-source"]))
    assert outcome.status == "done", outcome.error
    return outcome.record["metrics"]["mIoU"]


def spec_keys(name: str) -> dict[str, tuple[int, ...]]:
    """(original key -> shape) rows of a key list in tests/data (``key [shape] numel`` lines,
    ``#`` comments), in file order."""
    keys = {}
    for line in (Path(__file__).parent / "data" / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split()[:2]
            keys[key] = tuple(int(v) for v in shape.strip("[]").split(",") if v)
    return keys


def batched_and_sequential(model, images, text):
    """Outputs of a rotation model with its four rotations in one batch, then in four passes."""
    import torch

    with torch.no_grad():
        batched = model(images, text)
        model.batched_rotations = False
        try:
            sequential = model(images, text)
        finally:
            model.batched_rotations = True
    return batched, sequential


#: the toy models of the report's tests: three rows on the demo protocol
REPORT_MODELS = (
    "toy_adapters:ColourAdapter",
    "toy_adapters:DeafAdapter",
    "toy_adapters:NoopAdapter",
)
