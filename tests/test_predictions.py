"""Saved predictions (``--save-predictions``): exact maps of the first images, listed in the
record, kept exact through resume and when added to an existing record."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_evaluate import StopAfter  # noqa: I001

from ovrsisbench import evaluate
from ovrsisbench.data.layout import open_dataset
from ovrsisbench.errors import UserError
from ovrsisbench.evaluation import EvalSettings, Evaluator
from ovrsisbench.io import file_sha256
from ovrsisbench.palette import class_colours
from ovrsisbench.predictions import parse_request, saved_maps
from ovrsisbench.protocol import load_protocol
from ovrsisbench.registry import create_adapter
from ovrsisbench.results import ResultStore


def run(model, data_root, results, maps, **kwargs):
    return evaluate(
        model, "demo", data_root=data_root, results=results, save_predictions=maps, **kwargs
    ).outcomes


def maps_of(outcome) -> dict[str, bytes]:
    return {
        stem: path.read_bytes() for stem, path in saved_maps(outcome.path, outcome.record).items()
    }


def test_saved_maps_recount_to_the_record_matrix(synthetic_root, tmp_path, toy_adapters):
    outcomes = run(f"{toy_adapters}:ColourAdapter", synthetic_root, tmp_path, "all", batch_size=3)
    for outcome, entry in zip(outcomes, load_protocol("demo").evaluation, strict=True):
        dataset = open_dataset(synthetic_root, entry.dataset)
        stems = dataset.stems(entry.split)
        listed = outcome.record["predictions"]
        assert listed["requested"] == "all"
        assert [item["image"] for item in listed["files"]] == stems  # evaluation order
        lookup = entry.vocabulary.lookup_table()
        k = len(entry.vocabulary.classes)
        matrix = np.zeros((k, k), dtype=np.int64)
        for item, (stem, path) in zip(
            listed["files"], saved_maps(outcome.path, outcome.record).items(), strict=True
        ):
            assert path.parent.name == outcome.path.stem + ".predictions"
            assert item["sha256"] == file_sha256(path)
            image = Image.open(path)
            assert image.mode == "P"
            palette = np.asarray(image.getpalette()[: 3 * k]).reshape(-1, 3)
            assert [tuple(c) for c in palette] == class_colours(entry.vocabulary)
            pred = np.asarray(image)
            label = lookup[dataset.read_label(stem)]
            valid = label != 255
            np.add.at(matrix, (label[valid], pred[valid]), 1)
        assert matrix.tolist() == outcome.record["confusion"]


def test_the_first_n_images_of_each_split(synthetic_root, tmp_path, toy_adapters):
    outcomes = run(f"{toy_adapters}:ColourAdapter", synthetic_root, tmp_path, 2)
    for outcome, entry in zip(outcomes, load_protocol("demo").evaluation, strict=True):
        stems = open_dataset(synthetic_root, entry.dataset).stems(entry.split)
        listed = outcome.record["predictions"]
        assert listed["requested"] == 2
        assert [item["image"] for item in listed["files"]] == stems[:2]
        assert "first 2 images" in listed["selection"]
        folder = outcome.path.parent / (outcome.path.stem + ".predictions")
        assert sorted(p.stem for p in folder.iterdir()) == sorted(stems[:2])


def test_without_the_option_records_list_no_predictions(synthetic_root, tmp_path, toy_adapters):
    outcomes = run(f"{toy_adapters}:ColourAdapter", synthetic_root, tmp_path, None)
    assert all(o.record["predictions"] is None for o in outcomes)
    assert not list(tmp_path.rglob("*.predictions"))


def test_an_existing_record_gains_the_maps_it_lacks(synthetic_root, tmp_path, toy_adapters):
    model = f"{toy_adapters}:BatchMixingAdapter"  # scores depend on the batch companions
    fresh = run(model, synthetic_root, tmp_path / "fresh", 3, batch_size=2)
    first = run(model, synthetic_root, tmp_path / "later", None, batch_size=2)
    second = run(model, synthetic_root, tmp_path / "later", 3, batch_size=2)
    assert [o.status for o in second] == ["done", "done"]
    third = run(model, synthetic_root, tmp_path / "later", 2, batch_size=2)
    assert [o.status for o in third] == ["skipped", "skipped"]  # 3 saved cover 2 asked for
    for before, after, reference in zip(first, second, fresh, strict=True):
        after_record = json.loads(after.path.read_text())
        assert after_record["confusion"] == before.record["confusion"]
        assert after_record["created"] == before.record["created"]  # the same record, extended
        assert after_record["predictions"] == reference.record["predictions"]
        assert maps_of(after) == maps_of(reference)


def test_resumed_runs_save_the_same_maps(synthetic_root, tmp_path, toy_adapters):
    model = f"{toy_adapters}:ColourAdapter"
    reference = run(model, synthetic_root, tmp_path / "whole", "all", batch_size=2)

    interrupt(model, synthetic_root, tmp_path / "cut", after=3)
    starts = Starts()
    resumed = run(model, synthetic_root, tmp_path / "cut", "all", batch_size=2, progress=starts)
    assert starts.done[0] >= 3 and starts.done[1] == 0  # continued where it stopped
    for got, expected in zip(resumed, reference, strict=True):
        assert got.record["predictions"] == expected.record["predictions"]
        assert got.record["confusion"] == expected.record["confusion"]
        assert maps_of(got) == maps_of(expected)


def interrupt(model, data_root, results, after):
    """A run with every map asked for, stopped (like Ctrl-C) after ``after`` images."""
    adapter = create_adapter(model)
    adapter.load(None, "cpu")
    settings = EvalSettings(batch_size=2, checkpoint_seconds=0.0, save_predictions="all")
    protocol = load_protocol("demo")
    evaluator = Evaluator(adapter, model, protocol, data_root, ResultStore(results), settings)
    with pytest.raises(KeyboardInterrupt):
        evaluator.run(list(protocol.evaluation), StopAfter(after))


class Starts(StopAfter):
    """Progress sink that records where each dataset starts."""

    def __init__(self):
        super().__init__(10**9)
        self.done = []

    def start(self, dataset, total, done):
        self.done.append(done)


def test_a_checkpoint_without_its_maps_is_not_resumed(synthetic_root, tmp_path, toy_adapters):
    model = f"{toy_adapters}:ColourAdapter"
    interrupt(model, synthetic_root, tmp_path, after=3)
    [folder] = tmp_path.rglob("*.predictions")
    shutil.rmtree(folder)  # the maps of the images the checkpoint counted are gone
    starts = Starts()
    outcomes = run(model, synthetic_root, tmp_path, "all", batch_size=2, progress=starts)
    assert starts.done == [0, 0] and [o.status for o in outcomes] == ["done", "done"]
    assert all(len(maps_of(o)) == o.record["num_images"] for o in outcomes)


def test_a_changed_map_is_saved_again(synthetic_root, tmp_path, toy_adapters):
    model = f"{toy_adapters}:ColourAdapter"
    [first, _] = run(model, synthetic_root, tmp_path, 2)
    before = maps_of(first)
    stem, path = next(iter(saved_maps(first.path, first.record).items()))
    path.write_bytes(b"not the map")
    again = run(model, synthetic_root, tmp_path, 2)
    assert [o.status for o in again] == ["done", "skipped"]  # evaluated again, then exact
    assert maps_of(again[0]) == before
    assert json.loads(first.path.read_text())["created"] == first.record["created"]


def test_maps_are_added_only_to_a_record_whose_counts_they_reproduce(
    synthetic_root, tmp_path, toy_adapters
):
    model = f"{toy_adapters}:BatchMixingAdapter"  # scores depend on the batch companions
    [first, _] = run(model, synthetic_root, tmp_path, None, batch_size=2)
    other = run(model, synthetic_root, tmp_path, 1, batch_size=1)
    assert other[0].status == "failed"
    assert "counted other pixels than this record" in other[0].error
    assert str(first.path) in other[0].error
    assert json.loads(first.path.read_text()) == first.record  # untouched
    assert not list(tmp_path.rglob("*.partial.json"))


def test_a_map_that_was_not_written_fails_the_dataset(
    synthetic_root, tmp_path, toy_adapters, monkeypatch
):
    import ovrsisbench.predictions as predictions

    monkeypatch.setattr(predictions, "save_map", lambda *args: None)  # writes nothing
    outcomes = run(f"{toy_adapters}:ColourAdapter", synthetic_root, tmp_path, 1)
    assert [o.status for o in outcomes] == ["failed", "failed"]
    assert "saved prediction missing" in outcomes[0].error


@pytest.mark.parametrize("text", ["-1", "some", "2.5"])
def test_bad_requests_are_refused(text):
    with pytest.raises(UserError, match="save_predictions"):
        parse_request(text)


def test_requests_parse():
    assert [parse_request(t) for t in ("3", " ALL ", "0", None, 4)] == [3, "all", None, None, 4]


def test_listed_paths_never_leave_the_record_folder(tmp_path):
    record_path = tmp_path / "r.json"
    files = [
        {"image": "a", "path": "r.predictions/a.png", "sha256": "0"},
        {"image": "b", "path": "../b.png", "sha256": "0"},
        {"image": "c", "path": "/etc/passwd", "sha256": "0"},
        {"image": "d", "path": 5, "sha256": "0"},
    ]
    maps = saved_maps(record_path, {"predictions": {"files": files}})
    assert maps == {"a": tmp_path / "r.predictions" / "a.png"}
    assert saved_maps(Path("x.json"), {"predictions": None}) == {}


def test_the_cli_option(cli, synthetic_root, tmp_path, toy_adapters):
    arguments = ["run", "--model", f"{toy_adapters}:ColourAdapter", "--protocol", "demo"]
    arguments += ["--data-root", str(synthetic_root), "--results", str(tmp_path)]
    result = cli(*arguments, "--save-predictions", "many")
    assert result.code == 2 and "save_predictions must be a number of images or 'all'" in result.err
    result = cli(*arguments, "--save-predictions", "1")
    assert result.code == 0, result.err
    assert len(list(tmp_path.rglob("*.predictions/*.png"))) == 2
