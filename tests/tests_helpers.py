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


def add_saved_predictions(results: Path, data_root: Path, count: int) -> None:
    """Give every record under ``results`` the ``predictions`` of its first ``count`` images,
    as ``evaluate(..., save_predictions=N)`` writes them: the argmax of the record's model as
    indexed PNGs beside the record, listed with their SHA-256 (until the evaluator does it)."""
    import hashlib
    import json

    import numpy as np
    import torch

    from ovrsisbench.data.layout import open_dataset
    from ovrsisbench.io import atomic_write_bytes
    from ovrsisbench.palette import class_colours, indexed_png
    from ovrsisbench.registry import create_adapter

    protocol = load_protocol("demo")
    for path, record in ResultStore(results).iter_records():
        vocabulary = next(
            e.vocabulary for e in protocol.evaluation if e.dataset == record["dataset"]
        )
        adapter = create_adapter(record["model"], **record["options"])
        adapter.load(None, "cpu")
        adapter.set_vocabulary(vocabulary.prompts())
        dataset = open_dataset(data_root, record["dataset"])
        files = []
        for stem in dataset.stems(record["split"])[:count]:
            image = torch.from_numpy(dataset.read_image(stem)).permute(2, 0, 1)[None] / 255.0
            with torch.no_grad():
                label_map = adapter.predict(image.float()).argmax(1)[0].numpy().astype(np.uint8)
            data = indexed_png(label_map, class_colours(vocabulary))
            relative = f"{path.stem}.predictions/{stem}.png"
            atomic_write_bytes(path.parent / relative, data)
            files.append(
                {"image": stem, "path": relative, "sha256": hashlib.sha256(data).hexdigest()}
            )
        selection = f"the first {count} images of the split in file-name order"
        record["predictions"] = {"requested": count, "selection": selection, "files": files}
        atomic_write_bytes(path, (json.dumps(record, indent=1) + "\n").encode())
