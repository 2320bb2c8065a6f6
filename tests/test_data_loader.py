"""SegmentationDataset items (layout, lookup, start) and the unbatched, ordered DataLoader."""

import gc
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ovrsisbench.data.layout import DatasetWriter, PreparedDataset
from ovrsisbench.data.loader import SegmentationDataset, make_loader
from ovrsisbench.errors import DataError

SIZES = [(8, 10), (12, 6), (8, 10), (5, 7)]


def _dataset(root: Path) -> PreparedDataset:
    writer = DatasetWriter(
        root / "toy",
        "toy",
        ["a", "b", "c"],
        source={"kind": "test"},
        converter_version="1",
        tiling={},
    )
    for index, (height, width) in enumerate(SIZES):
        image = np.full((height, width, 3), index, dtype=np.uint8)
        image[..., 1] = np.arange(width, dtype=np.uint8)
        label = (np.arange(height * width, dtype=np.uint8) % 3).reshape(height, width)
        label[-1, -1] = 255
        writer.add(f"s{index}", image, label, split="val" if index % 2 else "train")
    writer.finalize()
    return PreparedDataset(root / "toy")


def test_items_keep_resolution_and_layout(tmp_path):
    dataset = _dataset(tmp_path)
    samples = SegmentationDataset(dataset, "all")
    assert len(samples) == 4
    for index, (height, width) in enumerate(SIZES):
        item = samples[index]
        assert item["stem"] == f"s{index}"
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, height, width)
        assert item["label"].dtype == torch.uint8 and item["label"].shape == (height, width)
        image, label = dataset.read_sample(f"s{index}")
        np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), image)
        np.testing.assert_array_equal(item["label"].numpy(), label)


def test_lookup_maps_native_ids(tmp_path):
    lookup = np.full(256, 255, dtype=np.uint8)
    lookup[[0, 1, 2]] = [1, 255, 0]
    samples = SegmentationDataset(_dataset(tmp_path), "train", lookup=lookup)
    item = samples[0]
    native = samples.dataset.read_label("s0")
    np.testing.assert_array_equal(item["label"].numpy(), lookup[native])
    assert item["label"][-1, -1] == 255
    assert set(np.unique(item["label"].numpy())) == {0, 1, 255}


@pytest.mark.parametrize(
    "lookup",
    [np.zeros(256, dtype=np.uint8), np.arange(256, dtype=np.int64), np.arange(10, dtype=np.uint8)],
)
def test_bad_lookup_rejected(tmp_path, lookup):
    with pytest.raises(ValueError, match="lookup must be a \\(256,\\) uint8 array"):
        SegmentationDataset(_dataset(tmp_path), "all", lookup=lookup)


def test_start_skips_first_stems(tmp_path):
    dataset = _dataset(tmp_path)
    assert SegmentationDataset(dataset, "all", start=3).stems == ["s3"]
    assert SegmentationDataset(dataset, "val", start=1).stems == ["s3"]
    assert len(SegmentationDataset(dataset, "all", start=9)) == 0
    with pytest.raises(ValueError, match="start must be >= 0"):
        SegmentationDataset(dataset, "all", start=-1)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_yields_unbatched_items_in_order(tmp_path, num_workers):
    samples = SegmentationDataset(_dataset(tmp_path), "all")
    loader = make_loader(samples, num_workers=num_workers)
    assert not loader.pin_memory and not loader.persistent_workers
    items = list(loader)
    assert [item["stem"] for item in items] == ["s0", "s1", "s2", "s3"]
    assert [tuple(item["label"].shape) for item in items] == SIZES


def test_size_mismatch_is_data_error(tmp_path):
    dataset = _dataset(tmp_path)
    Image.fromarray(np.zeros((3, 3), dtype=np.uint8)).save(dataset.label_path("s1"))
    with pytest.raises(DataError, match=re.escape(f"{dataset.label_path('s1')} (3x3)")):
        SegmentationDataset(dataset, "all")[1]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_error_keeps_one_line_message(tmp_path, num_workers):
    dataset = _dataset(tmp_path)
    path = dataset.label_path("s2")
    path.write_bytes(path.read_bytes()[:45])
    loader = make_loader(SegmentationDataset(dataset, "all"), num_workers=num_workers)
    with pytest.raises(DataError) as caught:
        list(loader)
    assert str(caught.value).startswith(f"{path}: cannot read label")
    assert "\n" not in str(caught.value)
    started = time.perf_counter()
    del caught, loader
    gc.collect()
    assert time.perf_counter() - started < 2.0  # workers were shut down, not left to time out
