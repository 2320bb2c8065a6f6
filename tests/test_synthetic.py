"""The synthetic two-domain benchmark: layout, content, variable sizes, determinism, speed."""

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest

from ovrsisbench.data.converters.synthetic import SYNTHETIC_DATASETS, generate_synthetic_benchmark
from ovrsisbench.data.layout import META_FILE, list_datasets
from ovrsisbench.errors import UserError


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every file except meta.json, whose ``created`` time differs between runs."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != META_FILE
    }


def _metas_without_time(root: Path) -> dict[str, dict]:
    metas = {}
    for path in sorted(root.rglob(META_FILE)):
        data = json.loads(path.read_text())
        del data["created"]
        metas[path.parent.name] = data
    return metas


def test_generates_two_prepared_datasets(tmp_path):
    names = generate_synthetic_benchmark(tmp_path)
    assert names == ["synthetic-source", "synthetic-target"] == list(SYNTHETIC_DATASETS)
    datasets = list_datasets(tmp_path)
    assert [d.name for d in datasets] == names
    for dataset in datasets:
        assert dataset.meta.classes == SYNTHETIC_DATASETS[dataset.name]
        assert dataset.meta.source["kind"] == "synthetic" and dataset.meta.source["seed"] == 0
        assert dataset.meta.splits == {"train": 18, "val": 6, "all": 24}
        assert len(dataset.stems("train")) == 18 and len(dataset.stems("val")) == 6
        assert not set(dataset.stems("train")) & set(dataset.stems("val"))


def test_content_varies_in_size_classes_and_has_unlabelled_pixels(tmp_path):
    generate_synthetic_benchmark(tmp_path)
    for dataset in list_datasets(tmp_path):
        samples = [dataset.read_sample(stem) for stem in dataset.stems("all")]
        assert {label.shape for _, label in samples} == {(64, 64), (48, 80)}
        assert {label.shape for _, label in samples[-6:]} == {(64, 64), (48, 80)}  # val has both
        values = np.unique(np.concatenate([label.ravel() for _, label in samples]))
        assert values.tolist() == [*range(len(dataset.meta.classes)), 255]
        assert all(image.dtype == np.uint8 and image.std() > 5 for image, _ in samples)


def test_classes_have_distinct_colours(tmp_path):
    generate_synthetic_benchmark(tmp_path)
    dataset = list_datasets(tmp_path)[0]
    pixels = {cls: [] for cls in range(len(dataset.meta.classes))}
    for stem in dataset.stems("all"):
        image, label = dataset.read_sample(stem)
        for cls in pixels:
            pixels[cls].append(image[label == cls])
    means = np.array([np.concatenate(p).mean(axis=0) for p in pixels.values()])
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert distances[~np.eye(len(means), dtype=bool)].min() > 30


def test_deterministic_bytes(tmp_path):
    generate_synthetic_benchmark(tmp_path / "a", seed=3)
    generate_synthetic_benchmark(tmp_path / "b", seed=3)
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    assert _metas_without_time(tmp_path / "a") == _metas_without_time(tmp_path / "b")
    generate_synthetic_benchmark(tmp_path / "a", seed=3)  # regenerating in place is idempotent
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    generate_synthetic_benchmark(tmp_path / "c", seed=4)
    assert _hashes(tmp_path / "c") != _hashes(tmp_path / "a")


def test_fast(tmp_path):
    started = time.perf_counter()
    generate_synthetic_benchmark(tmp_path)
    assert time.perf_counter() - started < 2.0


def test_custom_count_and_size(tmp_path):
    generate_synthetic_benchmark(tmp_path, num_images=3, size=16)
    dataset = list_datasets(tmp_path)[1]
    assert dataset.meta.splits == {"train": 2, "val": 1, "all": 3}
    assert dataset.read_label(dataset.stems("all")[2]).shape == (12, 20)


@pytest.mark.parametrize("kwargs", [{"seed": -1}, {"num_images": 1}, {"size": 8}])
def test_bad_parameters(tmp_path, kwargs):
    with pytest.raises(UserError, match="synthetic benchmark needs"):
        generate_synthetic_benchmark(tmp_path, **kwargs)
