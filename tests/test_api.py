"""``ovrsisbench.evaluate``: the one evaluation entry point (run, demo and train --eval call it),
the records it writes, and the weights hash it keys them by (the adapter's)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

import ovrsisbench
from ovrsisbench import api
from ovrsisbench.errors import UserError
from ovrsisbench.models.gsnet.checkpoint import to_original
from ovrsisbench.models.gsnet.model import CONFIGS, GSNet
from ovrsisbench.registry import create_adapter
from ovrsisbench.results import RECORD_KEYS

# the fields of a record that differ between two evaluations of the same inputs
VOLATILE = ("created",)


def stable(record: dict) -> dict:
    """``record`` without its creation time and measured speed."""
    kept = {key: value for key, value in record.items() if key not in VOLATILE}
    kept["timing"] = {k: v for k, v in record["timing"].items() if k != "ms_per_image"}
    return kept


def test_evaluate_writes_the_records_run_writes(cli, toy_adapters, synthetic_root, tmp_path):
    model = f"{toy_adapters}:ColourAdapter"
    ran = cli(
        "run", "--model", model, "--protocol", "demo", "--data-root", synthetic_root,
        "--results", tmp_path / "cli", "--device", "cpu", "-o", "gain=2.0",
    )  # fmt: skip
    assert ran.code == 0, ran.err
    evaluation = ovrsisbench.evaluate(
        model,
        "demo",
        data_root=synthetic_root,
        results=tmp_path / "api",
        device="cpu",
        options={"gain": 2.0},
    )
    assert [o.status for o in evaluation.outcomes] == ["done", "done"]
    by_cli = sorted((tmp_path / "cli" / "records").rglob("*.json"))
    by_api = sorted((tmp_path / "api" / "records").rglob("*.json"))
    assert [p.relative_to(tmp_path / "cli") for p in by_cli] == [
        p.relative_to(tmp_path / "api") for p in by_api
    ]
    written = [json.loads(path.read_text()) for path in by_api]
    assert [stable(r) for r in evaluation.records] == [stable(r) for r in written]
    assert [stable(json.loads(p.read_text())) for p in by_cli] == [stable(r) for r in written]
    for record in written:  # the schema lists every key the evaluator writes, in order
        assert tuple(record) == RECORD_KEYS

    table = evaluation.table()
    assert list(table.columns) == ["dataset", "status", "mIoU", "fwIoU", "mACC", "pACC", "images"]
    assert table["mIoU"].tolist() == [r["metrics"]["mIoU"] for r in written]

    again = ovrsisbench.evaluate(
        model, "demo", data_root=synthetic_root, results=tmp_path / "api", options={"gain": 2.0}
    )
    assert [o.status for o in again.outcomes] == ["skipped", "skipped"]
    assert again.records == written


def test_evaluate_takes_an_adapter_instance_and_a_dataset_subset(
    toy_adapters, synthetic_root, tmp_path
):
    adapter = create_adapter(f"{toy_adapters}:ColourAdapter", gain=3.0)
    evaluation = ovrsisbench.evaluate(
        adapter,
        "demo",
        datasets="synthetic-target",
        data_root=synthetic_root,
        results=tmp_path,
        device="cpu",
    )
    [record] = evaluation.records
    assert record["model"] == "colour" and record["options"] == {"gain": 3.0}
    assert record["dataset"] == "synthetic-target"
    with pytest.raises(UserError, match="options belong to the adapter instance"):
        ovrsisbench.evaluate(adapter, "demo", data_root=synthetic_root, options={"gain": 1.0})
    with pytest.raises(UserError, match="batch_size must be at least 1"):
        ovrsisbench.evaluate(adapter, "demo", data_root=synthetic_root, batch_size=0)
    with pytest.raises(UserError, match="does not exist"):
        ovrsisbench.evaluate(adapter, "demo", data_root=tmp_path / "missing")


def test_run_and_train_eval_go_through_evaluate(
    cli, toy_adapters, synthetic_root, tmp_path, monkeypatch
):
    calls = []
    original = api.evaluate

    def spy(model, protocol=None, **arguments):
        calls.append((model, arguments.get("weights")))
        return original(model, protocol, **arguments)

    monkeypatch.setattr(api, "evaluate", spy)
    common = ["--protocol", "demo", "--data-root", synthetic_root, "--device", "cpu"]
    ran = cli("run", "--model", f"{toy_adapters}:ColourAdapter", *common, "--results", tmp_path)
    assert ran.code == 0, ran.err
    out = tmp_path / "trained"
    trained = cli(
        "train", "--model", f"{toy_adapters}:ToyTrainable", *common, "--results", tmp_path,
        "--out", out, "--max-iters", "2", "--batch-size", "2", "--workers", "0", "--eval",
    )  # fmt: skip
    assert trained.code == 0, trained.err
    assert calls == [
        (f"{toy_adapters}:ColourAdapter", None),
        (f"{toy_adapters}:ToyTrainable", out / "final.safetensors"),
    ]


def test_the_default_weights_hash_is_the_file_given_to_load(toy_adapters, synthetic_root, tmp_path):
    """An adapter that does not hash its weights itself is keyed by the file it was loaded from."""
    weights = tmp_path / "colour.bin"
    weights.write_bytes(b"first")
    model = f"{toy_adapters}:ColourAdapter"
    arguments = {"datasets": ["synthetic-source"], "data_root": synthetic_root, "device": "cpu"}
    first = ovrsisbench.evaluate(model, "demo", results=tmp_path, weights=weights, **arguments)
    assert first.records[0]["weights_sha256"] == hashlib.sha256(b"first").hexdigest()
    weights.write_bytes(b"second")
    second = ovrsisbench.evaluate(model, "demo", results=tmp_path, weights=weights, **arguments)
    assert second.outcomes[0].status == "done"
    assert second.records[0]["weights_sha256"] == hashlib.sha256(b"second").hexdigest()


def _save_dino(network: GSNet, path) -> None:
    """``network``'s DINO weights as an RSIB.pth (a DINO training checkpoint's layout)."""
    state = {f"backbone.{k}": v for k, v in network.dino.state_dict().items()}
    torch.save({"teacher": state}, path)


def test_a_changed_side_file_makes_a_new_record(synthetic_root, tmp_path):
    """GSNet's weights are its checkpoint plus RSIB.pth when the checkpoint holds no DINO: a
    new RSIB.pth alone is other weights, so a rerun evaluates again instead of skipping."""
    torch.manual_seed(0)
    network = GSNet(CONFIGS["tiny"])
    state = {
        to_original(k): v for k, v in network.state_dict().items() if not k.startswith("dino.")
    }
    checkpoint = tmp_path / "model_0029999.pth"
    torch.save({"model": state}, checkpoint)
    _save_dino(network, tmp_path / "RSIB.pth")
    options = {"backbone": "tiny", "inference": "whole", "weights_dir": str(tmp_path)}
    arguments = {
        "datasets": ["synthetic-source"],
        "data_root": synthetic_root,
        "results": tmp_path / "results",
        "device": "cpu",
        "weights": checkpoint,
        "options": options,
    }
    first = ovrsisbench.evaluate("gsnet", "demo", **arguments)
    assert first.outcomes[0].status == "done", first.outcomes[0].error
    torch.manual_seed(1)
    _save_dino(GSNet(CONFIGS["tiny"]), tmp_path / "RSIB.pth")
    second = ovrsisbench.evaluate("gsnet", "demo", **arguments)
    assert second.outcomes[0].status == "done", second.outcomes[0].error
    hashes = {first.records[0]["weights_sha256"], second.records[0]["weights_sha256"]}
    assert len(hashes) == 2 and hashlib.sha256(checkpoint.read_bytes()).hexdigest() not in hashes
    assert len(list((tmp_path / "results" / "records").rglob("*.json"))) == 2
    assert first.records[0]["weights_origin"] == {"file": checkpoint.name}
