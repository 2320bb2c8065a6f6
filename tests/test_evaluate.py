"""Evaluation engine: exact counts, batch invariance, resume, interruption, failure isolation."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from tests_helpers import run_toy  # noqa: I001

from ovrsisbench.data.layout import open_dataset
from ovrsisbench.evaluation import EvalSettings, Evaluator
from ovrsisbench.leaderboard import build
from ovrsisbench.metrics import compute_scores
from ovrsisbench.protocol import load_protocol
from ovrsisbench.registry import create_adapter
from ovrsisbench.results import RECORD_KEYS, ResultStore


def make_evaluator(model, data_root, results, batch_size=4, checkpoint_seconds=30.0, **options):
    adapter = create_adapter(model, **options)
    adapter.load(None, "cpu")
    return Evaluator(
        adapter,
        model,
        load_protocol("demo"),
        data_root,
        ResultStore(results),
        EvalSettings(batch_size=batch_size, checkpoint_seconds=checkpoint_seconds),
    )


def brute_force_confusion(adapter, data_root, entry) -> np.ndarray:
    dataset = open_dataset(data_root, entry.dataset)
    vocabulary = entry.vocabulary
    adapter.set_vocabulary(vocabulary.prompts())
    lookup = vocabulary.lookup_table()
    k = len(vocabulary.classes)
    matrix = np.zeros((k, k), dtype=np.int64)
    for stem in dataset.stems(entry.split):
        image = torch.from_numpy(dataset.read_image(stem)).permute(2, 0, 1)[None].float() / 255
        pred = adapter.predict(image)[0].argmax(0).numpy()
        label = lookup[dataset.read_label(stem)]
        valid = label != 255
        np.add.at(matrix, (label[valid], pred[valid]), 1)
    return matrix


def test_records_hold_exact_counts_and_all_keys(synthetic_root, tmp_path, toy_adapters):
    evaluator = make_evaluator(f"{toy_adapters}:ColourAdapter", synthetic_root, tmp_path)
    outcomes = evaluator.run(list(evaluator.protocol.evaluation))
    assert [o.status for o in outcomes] == ["done", "done"]
    for outcome, entry in zip(outcomes, evaluator.protocol.evaluation, strict=True):
        record = json.loads(outcome.path.read_text())
        assert set(RECORD_KEYS) <= set(record)
        assert record["absent_class_policy"] == "exclude-absent"
        matrix = np.array(record["confusion"], dtype=np.int64)
        np.testing.assert_array_equal(
            matrix, brute_force_confusion(evaluator.adapter, synthetic_root, entry)
        )
        recomputed = compute_scores(matrix)
        assert record["metrics"] == recomputed.summary()
        assert record["per_class"]["iou"] == recomputed.iou
        assert record["classes"] == entry.vocabulary.names()
        assert record["num_images"] == len(
            open_dataset(synthetic_root, entry.dataset).stems(entry.split)
        )
        assert record["params"] == {"total": 12, "trainable": 12}
        assert record["timing"]["ms_per_image"] > 0


def test_batch_size_does_not_change_results(synthetic_root, tmp_path, toy_adapters):
    matrices = []
    for batch_size in (1, 3, 8):
        evaluator = make_evaluator(
            f"{toy_adapters}:ColourAdapter", synthetic_root, tmp_path / str(batch_size), batch_size
        )
        matrices.append(
            [o.record["confusion"] for o in evaluator.run(list(evaluator.protocol.evaluation))]
        )
    assert matrices[0] == matrices[1] == matrices[2]


def test_rerun_skips_and_leaves_records_untouched(synthetic_root, tmp_path, toy_adapters):
    model = f"{toy_adapters}:ColourAdapter"
    first = make_evaluator(model, synthetic_root, tmp_path).run(
        list(load_protocol("demo").evaluation)
    )
    before = {o.path: (o.path.read_bytes(), o.path.stat().st_mtime_ns) for o in first}
    second = make_evaluator(model, synthetic_root, tmp_path).run(
        list(load_protocol("demo").evaluation)
    )
    assert [o.status for o in second] == ["skipped", "skipped"]
    assert {o.path: (o.path.read_bytes(), o.path.stat().st_mtime_ns) for o in second} == before
    # another option value is another key: it is evaluated, not skipped
    third = make_evaluator(model, synthetic_root, tmp_path, gain=2.0).run(
        list(load_protocol("demo").evaluation)
    )
    assert [o.status for o in third] == ["done", "done"]


class StopAfter:
    """Progress sink that interrupts the run after ``limit`` images (like Ctrl-C)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.seen = limit, 0

    def start(self, dataset, total, done):
        pass

    def advance(self, count):
        self.seen += count
        if self.seen >= self.limit:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_to_identical_counts(synthetic_root, tmp_path, toy_adapters):
    model = f"{toy_adapters}:ColourAdapter"
    entries = list(load_protocol("demo").evaluation)
    reference = make_evaluator(model, synthetic_root, tmp_path / "whole").run(entries)

    interrupted = make_evaluator(
        model, synthetic_root, tmp_path / "cut", batch_size=2, checkpoint_seconds=0.0
    )
    stopper = StopAfter(5)
    with pytest.raises(KeyboardInterrupt):
        interrupted.run(entries, stopper)
    partials = list((tmp_path / "cut").rglob("*.partial.json"))
    assert len(partials) == 1
    assert json.loads(partials[0].read_text())["num_images"] == stopper.seen >= 5

    class Recorder(StopAfter):
        def start(self, dataset, total, done):
            self.starts.append(done)

    recorder = Recorder(10**9)
    recorder.starts = []
    resumed = make_evaluator(model, synthetic_root, tmp_path / "cut").run(entries, recorder)
    assert recorder.starts == [stopper.seen, 0]  # continued where it stopped, not from zero
    assert [o.record["confusion"] for o in resumed] == [o.record["confusion"] for o in reference]
    assert [o.record["num_images"] for o in resumed] == [o.record["num_images"] for o in reference]
    assert not list((tmp_path / "cut").rglob("*.partial.json"))


def test_a_failing_dataset_does_not_stop_the_others(synthetic_root, tmp_path, toy_adapters):
    root = tmp_path / "data"
    shutil.copytree(synthetic_root / "synthetic-source", root / "synthetic-source")
    evaluator = make_evaluator(f"{toy_adapters}:ColourAdapter", root, tmp_path / "results")
    outcomes = evaluator.run(list(evaluator.protocol.evaluation))
    assert [o.status for o in outcomes] == ["done", "failed"]
    assert "synthetic-target" in outcomes[1].error and "not prepared" in outcomes[1].error


def test_corrupt_image_is_reported_by_path(synthetic_root, tmp_path, toy_adapters):
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    dataset = open_dataset(root, "synthetic-target")
    victim = dataset.image_path(dataset.stems("all")[3])
    victim.write_bytes(victim.read_bytes()[:40])
    evaluator = make_evaluator(f"{toy_adapters}:ColourAdapter", root, tmp_path / "results")
    outcomes = evaluator.run(list(evaluator.protocol.evaluation))
    assert [o.status for o in outcomes] == ["done", "failed"]
    assert str(victim) in outcomes[1].error
    assert not list((tmp_path / "results").rglob("synthetic-target*.json"))


def test_adapter_errors_and_bad_shapes_fail_the_dataset(synthetic_root, tmp_path, toy_adapters):
    for name, message in (
        ("FailingAdapter", "simulated adapter failure"),
        ("WrongShapeAdapter", "returned scores of shape"),
    ):
        evaluator = make_evaluator(f"{toy_adapters}:{name}", synthetic_root, tmp_path / name)
        outcomes = evaluator.run(list(evaluator.protocol.evaluation))
        assert all(o.status == "failed" and message in o.error for o in outcomes)


def test_vocabulary_must_match_the_prepared_classes(synthetic_root, tmp_path, toy_adapters):
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    meta_path = root / "synthetic-target" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["classes"][3] = "truck"
    meta_path.write_text(json.dumps(meta))
    evaluator = make_evaluator(f"{toy_adapters}:ColourAdapter", root, tmp_path / "results")
    outcomes = evaluator.run(list(evaluator.protocol.evaluation))
    assert outcomes[1].status == "failed" and str(meta_path) in outcomes[1].error


def test_interrupt_inside_a_batch_never_double_counts(
    synthetic_root, tmp_path, toy_adapters, monkeypatch
):
    from ovrsisbench.metrics import ConfusionMatrix

    model = f"{toy_adapters}:ColourAdapter"
    entries = list(load_protocol("demo").evaluation)
    reference = make_evaluator(model, synthetic_root, tmp_path / "whole").run(entries)

    original, calls = ConfusionMatrix.update, {"n": 0}

    def update_then_interrupt(self, pred, label):
        calls["n"] += 1
        if calls["n"] == 5:  # 2nd image of the 3rd batch (sizes 64,64 | 80 | 64,64 | 80)
            raise KeyboardInterrupt
        original(self, pred, label)

    monkeypatch.setattr(ConfusionMatrix, "update", update_then_interrupt)
    cut = make_evaluator(model, synthetic_root, tmp_path / "cut", checkpoint_seconds=0.0)
    with pytest.raises(KeyboardInterrupt):
        cut.run(entries)
    monkeypatch.setattr(ConfusionMatrix, "update", original)
    resumed = make_evaluator(model, synthetic_root, tmp_path / "cut").run(entries)
    assert [o.record["confusion"] for o in resumed] == [o.record["confusion"] for o in reference]


def test_nan_and_integer_scores_fail_the_dataset(synthetic_root, tmp_path, toy_adapters):
    evaluator = make_evaluator(f"{toy_adapters}:NaNAdapter", synthetic_root, tmp_path)
    outcomes = evaluator.run(list(evaluator.protocol.evaluation))
    assert all(o.status == "failed" and "NaN or infinite" in o.error for o in outcomes)


def test_split_count_must_match_meta(synthetic_root, tmp_path, toy_adapters):
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    dataset = open_dataset(root, "synthetic-target")
    dataset.label_path(dataset.stems("all")[0]).unlink()
    evaluator = make_evaluator(f"{toy_adapters}:ColourAdapter", root, tmp_path / "results")
    outcome = evaluator.run(list(evaluator.protocol.evaluation))[1]
    assert (
        outcome.status == "failed" and "says split 'all' has 24 images, found 23" in outcome.error
    )


def test_a_changed_dataset_invalidates_the_checkpoint(synthetic_root, tmp_path, toy_adapters):
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    model = f"{toy_adapters}:ColourAdapter"
    entries = list(load_protocol("demo").evaluation)
    cut = make_evaluator(model, root, tmp_path / "cut", batch_size=2, checkpoint_seconds=0.0)
    with pytest.raises(KeyboardInterrupt):
        cut.run(entries, StopAfter(3))
    meta_path = root / "synthetic-source" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["created"] = "2030-01-01T00:00:00+00:00"  # re-prepared: same names, maybe new pixels
    meta_path.write_text(json.dumps(meta))

    class Recorder(StopAfter):
        def start(self, dataset, total, done):
            self.starts.append(done)

    recorder = Recorder(10**9)
    recorder.starts = []
    make_evaluator(model, root, tmp_path / "cut").run(entries, recorder)
    assert recorder.starts == [0, 0]  # started over instead of merging stale counts


def test_differently_prepared_data_is_another_result(synthetic_root, tmp_path, toy_adapters):
    """Same model and dataset, but the data re-prepared from another source: not reused, and the
    leaderboard shows the two data versions on separate rows."""

    data = tmp_path / "data"
    shutil.copytree(synthetic_root, data)
    first = run_toy(toy_adapters, data, tmp_path / "results")
    again = run_toy(toy_adapters, data, tmp_path / "results")
    assert [o.status for o in again] == ["skipped", "skipped"]
    meta_path = data / "synthetic-target" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["source"]["kind"] = "archive"
    meta_path.write_text(json.dumps(meta))
    third = run_toy(toy_adapters, data, tmp_path / "results")
    assert [o.status for o in third] == ["skipped", "done"]
    version = third[1].record["environment"]["data"]["version"]
    assert version["source"] == "archive"
    assert version != first[1].record["environment"]["data"]["version"]
    frame = build(load_protocol("demo"), tmp_path / "results")
    assert sorted(frame["kind"]) == ["ours (archive data)", "ours (synthetic data)"]


def background_protocol(tmp_path, threshold: float):
    """The demo protocol with a rejection rule on synthetic-target (class 'background')."""
    import yaml

    target = load_protocol("demo").evaluation[1].vocabulary
    data = yaml.safe_load(target.path.read_text())
    data["background"] = {"class": "background", "threshold": threshold}
    (tmp_path / "vocab").mkdir(parents=True)
    (tmp_path / "vocab" / "target-rejecting.yaml").write_text(yaml.safe_dump(data))
    protocol = {
        "name": "rejecting",
        "description": "demo target with a background rule",
        "evaluation": [
            {"dataset": "synthetic-target", "split": "all", "vocabulary": "target-rejecting"}
        ],
    }
    (tmp_path / "rejecting.yaml").write_text(yaml.safe_dump(protocol))
    return load_protocol(tmp_path / "rejecting.yaml")


def test_vocabulary_background_rule_reaches_the_adapter_and_the_record(
    synthetic_root, tmp_path, toy_adapters
):
    import toy_adapters as toys

    class Rejecting(toys.ColourAdapter):
        """Colour scores; pixels whose best score is below the rule's threshold -> its class."""

        applies_background = True
        rule = None

        def set_background(self, rule):
            self.rule = rule

        def predict(self, images):
            scores = super().predict(images)
            if self.rule is not None:
                low = scores.amax(1) < self.rule.threshold
                scores[:, self.rule.index][low] = 2.0
            return scores

    protocol = background_protocol(tmp_path / "protocol", threshold=0.9)
    records = {}
    for adapter in (Rejecting(), toys.ColourAdapter()):
        adapter.load(None, "cpu")
        store = ResultStore(tmp_path / type(adapter).__name__)
        evaluator = Evaluator(adapter, "colour", protocol, synthetic_root, store, EvalSettings())
        (outcome,) = evaluator.run(list(protocol.evaluation))
        records[type(adapter).__name__] = json.loads(outcome.path.read_text())
    rule = {"class": "background", "index": 0, "threshold": 0.9}
    assert records["Rejecting"]["background_rule"] == {**rule, "applied": True}
    assert records["ColourAdapter"]["background_rule"] == {**rule, "applied": False}
    # the rule moved low-confidence pixels into class 0: more pixels predicted as background
    predicted = {name: r["per_class"]["pred_pixels"][0] for name, r in records.items()}
    assert predicted["Rejecting"] > predicted["ColourAdapter"]
    # a vocabulary without a rule resets it, and records say so
    adapter = Rejecting()
    adapter.load(None, "cpu")
    evaluator = make_evaluator(f"{toy_adapters}:ColourAdapter", synthetic_root, tmp_path / "none")
    evaluator.adapter = adapter
    evaluator.use_vocabulary(protocol.evaluation[0].vocabulary)
    assert adapter.rule is not None
    evaluator.use_vocabulary(load_protocol("demo").evaluation[1].vocabulary)
    assert adapter.rule is None
    (outcome, _) = evaluator.run(list(evaluator.protocol.evaluation))
    assert json.loads(outcome.path.read_text())["background_rule"] is None
