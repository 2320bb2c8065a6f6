"""``ovrsisbench demo`` end to end, with the RSKT-Seg demo training cut to a few iterations."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from ovrsisbench.adapters.rsktseg import DEMO_TRAINING, RSKTSegAdapter
from ovrsisbench.demo import run_demo


@pytest.fixture
def short_demo_training(monkeypatch):
    settings = {**DEMO_TRAINING.settings, "max_iters": 3, "warmup_iters": 1}
    monkeypatch.setattr(
        RSKTSegAdapter, "demo_training", dataclasses.replace(DEMO_TRAINING, settings=settings)
    )


def records(out) -> dict[str, dict]:
    return {
        str(path.relative_to(out)): json.loads(path.read_text())
        for path in sorted((out / "results" / "records").rglob("*.json"))
    }


def test_demo_trains_evaluates_and_reruns_without_redoing(short_demo_training, tmp_path):
    console = Console(record=True, width=250)
    assert run_demo(tmp_path, console)
    text = console.export_text()
    assert "trained on synthetic-source for 3 iterations" in text
    assert re.search(r"loss \d\.\d{3} -> \d\.\d{3}", text)
    first = records(tmp_path)
    # every built-in with demo options (untrained) and the trained rsktseg, on both datasets
    from ovrsisbench.registry import builtin_adapters

    in_demo = [name for name, cls in builtin_adapters().items() if cls.demo_options is not None]
    by_model = sorted((r["model"], r["weights_sha256"] is not None) for r in first.values())
    assert len(first) == 2 * (len(in_demo) + 1) and by_model.count(("rsktseg", True)) == 4
    weights = tmp_path / "train" / "rsktseg" / "final.safetensors"
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    trained = [r for r in first.values() if r["weights_sha256"] == sha]
    assert len(trained) == 2
    # training-only options are not part of the records: the weights stand for them
    assert all("train_size" not in r["options"] for r in first.values())
    rows = list(csv.DictReader((tmp_path / "results" / "leaderboard.csv").open()))
    models = [row["model"] for row in rows]
    assert models.count("rsktseg") == 2 and models.count("maskclip") == 1
    # the trained row says where its weights come from; no tiny model is called vit-b
    labels = {row["weights"] for row in rows if row["model"] == "rsktseg"}
    assert f"{sha[:12]} (run rsktseg)" in labels
    assert {row["config"] for row in rows} == {"backbone=tiny"}
    # it ends with the report, its prediction grids drawn from the maps the records list
    page = tmp_path / "report" / "index.html"
    assert f"report: {page}" in text and text.rstrip().endswith(str(page))
    html = page.read_text()
    for dataset in ("synthetic-source", "synthetic-target"):
        assert f'src="figures/qualitative-{dataset}.svg"' in html
    assert all(len(r["predictions"]["files"]) == 4 for r in first.values())

    again = Console(record=True, width=80)
    assert run_demo(tmp_path, again)  # the same folder: training and records are reused
    assert records(tmp_path) == first
    text = again.export_text()
    table = text[text.index("SYNTHETIC leaderboard") : text.index("synthetic records:")]
    assert max(len(line) for line in table.splitlines()) <= 80, table
    assert f"{sha[:12]} (run rsktseg)" in table and "synthetic-target" in table


def test_without_out_the_demo_removes_its_temporary_folder(monkeypatch):
    """What the user cannot find again is removed (its size said); --out keeps everything."""
    import ovrsisbench.demo as demo

    used = []

    def fake_demo(root, console, stop_on_signals, keep):
        used.append((root, keep))
        (root / "data").mkdir()
        (root / "data" / "file.bin").write_bytes(b"x" * 3_000_000)
        return True, Path("/elsewhere/index.html")

    monkeypatch.setattr(demo, "_run_demo", fake_demo)
    console = Console(record=True, width=200)
    assert run_demo(None, console)
    [(root, keep)] = used
    assert not keep and not root.exists()
    text = console.export_text()
    assert f"removed the temporary folder {root} (3 MB" in text and "--out DIR" in text
    assert text.rstrip().endswith("report: /elsewhere/index.html")  # the report is kept: last
