"""The unified layout: meta.json validation, PreparedDataset reading, DatasetWriter, atomic io."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovrsisbench.data import layout
from ovrsisbench.data.layout import (
    META_FILE,
    DatasetMeta,
    DatasetWriter,
    PreparedDataset,
    list_datasets,
    open_dataset,
    read_meta,
)
from ovrsisbench.errors import DataError, UserError
from ovrsisbench.io import atomic_write_bytes, atomic_write_text, atomic_writer

CLASSES = ["background", "building", "road"]


def _sample(height: int = 8, width: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    label = rng.integers(0, len(CLASSES), (height, width), dtype=np.uint8)
    label[0, 0] = 255
    return image, label


def _writer(directory: Path, **kwargs) -> DatasetWriter:
    return DatasetWriter(
        directory,
        directory.name,
        CLASSES,
        source={"kind": "test"},
        converter_version="1",
        tiling={"scheme": "none"},
        **kwargs,
    )


def _make_dataset(root: Path, name: str = "toy", n: int = 4) -> PreparedDataset:
    writer = _writer(root / name)
    for index in range(n):
        writer.add(f"s{index}", *_sample(seed=index), split="val" if index == n - 1 else "train")
    writer.finalize()
    return open_dataset(root, name)


def _at(path: Path) -> str:
    """A regex matching a message that starts with ``path``."""
    return "^" + re.escape(str(path))


def _files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


def _meta_json(**changes) -> dict:
    data = {
        "name": "toy",
        "classes": list(CLASSES),
        "ignore_index": 255,
        "splits": {"train": 1, "val": 1, "all": 2},
        "source": {},
        "converter_version": "1",
        "tiling": {},
        "created": "2024-05-01T12:00:00+00:00",
    }
    data.update(changes)
    return data


# --- round trip -------------------------------------------------------------------------------


def test_writer_reader_round_trip(tmp_path):
    dataset = _make_dataset(tmp_path, n=4)
    assert dataset.name == "toy" and dataset.directory == tmp_path / "toy"
    assert dataset.meta.classes == CLASSES
    assert dataset.meta.splits == {"train": 3, "val": 1, "all": 4}
    assert dataset.meta.source == {"kind": "test"} and dataset.meta.tiling == {"scheme": "none"}
    assert dataset.split_names() == ["all", "train", "val"]
    assert dataset.stems("all") == ["s0", "s1", "s2", "s3"]
    assert dataset.stems("train") == ["s0", "s1", "s2"]
    assert dataset.stems("val") == ["s3"]
    for index, stem in enumerate(dataset.stems("all")):
        image, label = _sample(seed=index)
        assert dataset.image_path(stem) == tmp_path / "toy" / "images" / f"{stem}.png"
        np.testing.assert_array_equal(dataset.read_image(stem), image)
        np.testing.assert_array_equal(dataset.read_label(stem), label)
        with Image.open(dataset.label_path(stem)) as saved:
            assert saved.mode == "L"
        dataset.check_sample(stem)


def test_meta_round_trip_keeps_extra_keys(tmp_path):
    writer = _writer(tmp_path / "toy", extra={"palette": "isprs", "unmatched_pixels": 3})
    writer.add("a", *_sample())
    meta = writer.finalize()
    assert read_meta(tmp_path / "toy") == meta
    assert meta.extra == {"palette": "isprs", "unmatched_pixels": 3}
    assert json.loads((tmp_path / "toy" / META_FILE).read_text())["palette"] == "isprs"
    assert DatasetMeta.from_json(meta.to_json(), tmp_path) == meta


def test_meta_created_is_utc_iso(tmp_path):
    writer = _writer(tmp_path / "toy")
    meta = writer.finalize()
    assert meta.created.endswith("+00:00")
    assert meta.splits == {"all": 0}


def test_list_datasets_sorted_and_skips_unprepared(tmp_path):
    _make_dataset(tmp_path, "zeta", n=1)
    _make_dataset(tmp_path, "alpha", n=1)
    (tmp_path / "not-a-dataset").mkdir()
    assert [d.name for d in list_datasets(tmp_path)] == ["alpha", "zeta"]


# --- meta.json validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": 5}, "name"),
        ({"name": ""}, "name"),
        ({"classes": "abc"}, "classes"),
        ({"classes": []}, "classes"),
        ({"classes": ["a", "a"]}, "classes"),
        ({"classes": ["a", ""]}, "classes"),
        ({"classes": ["a", 3]}, "classes"),
        ({"classes": [f"c{i}" for i in range(256)]}, "classes"),
        ({"ignore_index": 0}, "ignore_index"),
        ({"ignore_index": True}, "ignore_index"),
        ({"splits": {"train": 1}}, "splits"),
        ({"splits": {"all": -1}}, "splits"),
        ({"splits": {"all": 1.5}}, "splits"),
        ({"splits": []}, "splits"),
        ({"source": []}, "source"),
        ({"converter_version": 1}, "converter_version"),
        ({"tiling": None}, "tiling"),
        ({"created": "yesterday"}, "created"),
        ({"created": 2024}, "created"),
    ],
)
def test_meta_validation_names_file_and_field(tmp_path, changes, field):
    path = tmp_path / META_FILE
    with pytest.raises(DataError, match=_at(path) + f": .*'{field}'"):
        DatasetMeta.from_json(_meta_json(**changes), path)


def test_meta_validation_missing_field_and_non_object(tmp_path):
    data = _meta_json()
    del data["tiling"]
    with pytest.raises(DataError, match="missing field.*tiling"):
        DatasetMeta.from_json(data, tmp_path / META_FILE)
    with pytest.raises(DataError, match="expected a JSON object"):
        DatasetMeta.from_json([1, 2], tmp_path / META_FILE)


def test_meta_accepts_255_classes_and_z_suffix(tmp_path):
    data = _meta_json(classes=[f"c{i}" for i in range(255)], created="2024-05-01T12:00:00Z")
    assert len(DatasetMeta.from_json(data, tmp_path).classes) == 255


def test_read_meta_missing_and_invalid_json(tmp_path):
    with pytest.raises(DataError, match=_at(tmp_path / META_FILE) + ": missing"):
        read_meta(tmp_path)
    (tmp_path / META_FILE).write_text("{not json")
    with pytest.raises(DataError, match=_at(tmp_path / META_FILE) + ": invalid JSON"):
        read_meta(tmp_path)


def test_list_datasets_raises_on_broken_meta(tmp_path):
    _make_dataset(tmp_path, "good", n=1)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / META_FILE).write_text("[]")
    with pytest.raises(DataError, match=_at(tmp_path / "broken" / META_FILE)):
        list_datasets(tmp_path)


# --- opening ------------------------------------------------------------------------------------


def test_open_dataset_errors(tmp_path):
    with pytest.raises(UserError, match=re.escape(f"data root {tmp_path / 'nope'} does not exist")):
        open_dataset(tmp_path / "nope", "toy")
    with pytest.raises(UserError, match=re.escape(f"data root {tmp_path / 'nope'} does not exist")):
        list_datasets(tmp_path / "nope")
    with pytest.raises(UserError, match=r"'toy' is not prepared under .*ovrsisbench prepare toy"):
        open_dataset(tmp_path, "toy")
    with pytest.raises(UserError, match="invalid dataset name"):
        open_dataset(tmp_path, "../toy")


def test_unknown_split_lists_available(tmp_path):
    dataset = _make_dataset(tmp_path)
    with pytest.raises(UserError, match=r"unknown split 'test'.*available: all, train, val"):
        dataset.stems("test")


@pytest.mark.parametrize(
    ("content", "remove_label", "problem"),
    [
        ("s3\nghost\n", False, "stem 'ghost' has no image"),
        ("s3\n", True, "stem 's3' has no label"),
        ("s3\ns3\n", False, "stem 's3' is listed twice"),
    ],
)
def test_bad_split_file_names_file_and_stem(tmp_path, content, remove_label, problem):
    dataset = _make_dataset(tmp_path)
    split_file = tmp_path / "toy" / "splits" / "val.txt"
    split_file.write_text(content)
    if remove_label:
        dataset.label_path("s3").unlink()
    with pytest.raises(DataError, match=_at(split_file) + f": {problem}"):
        PreparedDataset(dataset.directory).stems("val")


def test_all_split_needs_image_and_label(tmp_path):
    dataset = _make_dataset(tmp_path)
    (tmp_path / "toy" / "images" / "s0.png").unlink()
    (tmp_path / "toy" / "labels" / "s1.png").unlink()
    assert PreparedDataset(dataset.directory).stems("all") == ["s2", "s3"]


def test_image_path_errors(tmp_path):
    dataset = _make_dataset(tmp_path)
    with pytest.raises(DataError, match="images: no image for stem 'ghost'"):
        dataset.image_path("ghost")
    images = tmp_path / "toy" / "images"
    (images / "s0.jpg").write_bytes((images / "s0.png").read_bytes())
    with pytest.raises(DataError, match="second image for stem 's0'"):
        PreparedDataset(dataset.directory).image_path("s1")


def test_image_index_listed_once(tmp_path, monkeypatch):
    dataset = _make_dataset(tmp_path)
    calls = []
    original = layout._list_files
    monkeypatch.setattr(
        layout, "_list_files", lambda folder: calls.append(folder) or original(folder)
    )
    for stem in dataset.stems("all") * 3:
        dataset.image_path(stem)
    assert calls.count(tmp_path / "toy" / "images") == 1


def test_image_found_whatever_its_extension(tmp_path):
    dataset = _make_dataset(tmp_path)
    images = tmp_path / "toy" / "images"
    image, _ = _sample(seed=0)
    (images / "s0.png").unlink()
    Image.fromarray(image).save(images / "s0.TIFF", format="TIFF")
    reopened = PreparedDataset(dataset.directory)
    assert reopened.image_path("s0") == images / "s0.TIFF"
    np.testing.assert_array_equal(reopened.read_image("s0"), image)
    reopened.check_sample("s0")


# --- reading images -------------------------------------------------------------------------------


def _replace_image(dataset: PreparedDataset, stem: str, image: Image.Image, suffix: str) -> Path:
    dataset.image_path(stem).unlink()
    path = dataset.directory / "images" / f"{stem}{suffix}"
    image.save(path)
    return path


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_read_image_converts_to_rgb(tmp_path, mode):
    dataset = _make_dataset(tmp_path, n=1)
    rgb = Image.fromarray(_sample()[0])
    _replace_image(dataset, "s0", rgb.convert(mode), ".png")
    image = PreparedDataset(dataset.directory).read_image("s0")
    assert image.shape == (8, 10, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, np.array(rgb.convert(mode).convert("RGB")))


def test_read_image_single_band_tiff(tmp_path):
    dataset = _make_dataset(tmp_path, n=1)
    grey = Image.fromarray(_sample()[0][..., 0])
    _replace_image(dataset, "s0", grey, ".tif")
    image = PreparedDataset(dataset.directory).read_image("s0")
    np.testing.assert_array_equal(image, np.repeat(np.array(grey)[..., None], 3, axis=2))


def test_read_image_rejects_16_bit(tmp_path):
    dataset = _make_dataset(tmp_path, n=1)
    deep = Image.fromarray(np.full((8, 10), 1000, dtype=np.uint16))
    path = _replace_image(dataset, "s0", deep, ".png")
    with pytest.raises(DataError, match=_at(path) + ": unsupported image mode"):
        PreparedDataset(dataset.directory).read_image("s0")


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_truncated_image_named_in_error(tmp_path, suffix):
    dataset = _make_dataset(tmp_path, n=1)
    path = _replace_image(dataset, "s0", Image.fromarray(_sample(64, 64)[0]), suffix)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=_at(path) + ": cannot read image"):
        PreparedDataset(dataset.directory).read_image("s0")


def test_garbage_image_named_in_error(tmp_path):
    dataset = _make_dataset(tmp_path, n=1)
    path = dataset.image_path("s0")
    path.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=_at(path) + ": cannot read image"):
        dataset.read_image("s0")
    with pytest.raises(DataError, match=_at(path) + ": cannot read image"):
        dataset.check_sample("s0")


# --- reading labels -------------------------------------------------------------------------------


def test_palette_label_read_as_indices(tmp_path):
    dataset = _make_dataset(tmp_path, n=1)
    label = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    paletted = Image.fromarray(label, mode="L").convert("P")
    paletted.putpalette([200, 10, 10, 10, 200, 10, 10, 10, 200] + [77] * (3 * 253))
    paletted.save(dataset.label_path("s0"))
    with Image.open(dataset.label_path("s0")) as saved:
        assert saved.mode == "P"
    np.testing.assert_array_equal(dataset.read_label("s0"), label)


def test_rgb_label_rejected(tmp_path):
    dataset = _make_dataset(tmp_path, n=1)
    path = dataset.label_path("s0")
    Image.fromarray(_sample()[0]).save(path)
    with pytest.raises(DataError, match=_at(path) + ": label must be single-channel.*got mode RGB"):
        dataset.read_label("s0")


def test_label_values_out_of_range(tmp_path):
    dataset = _make_dataset(tmp_path, n=1)
    path = dataset.label_path("s0")
    Image.fromarray(np.array([[0, 3], [7, 255]], dtype=np.uint8)).save(path)
    with pytest.raises(
        DataError, match=_at(path) + r": label values \[3, 7\] are not class ids 0..2"
    ):
        dataset.read_label("s0")


def test_truncated_label_named_in_error(tmp_path):
    dataset = _make_dataset(tmp_path, n=1)
    path = dataset.label_path("s0")
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8) + np.arange(64, dtype=np.uint8) % 3).save(
        path
    )
    path.write_bytes(path.read_bytes()[:80])
    with pytest.raises(DataError, match=_at(path) + ": cannot read label"):
        dataset.read_label("s0")


def test_missing_label_named_in_error(tmp_path):
    dataset = _make_dataset(tmp_path, n=1)
    dataset.label_path("s0").unlink()
    with pytest.raises(DataError, match=_at(dataset.label_path("s0")) + ": cannot read label"):
        dataset.read_label("s0")


def test_size_mismatch_names_both_files(tmp_path):
    dataset = _make_dataset(tmp_path, n=1)
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(dataset.label_path("s0"))
    image_path, label_path = dataset.image_path("s0"), dataset.label_path("s0")
    pattern = _at(image_path) + re.escape(f" (8x10) and {label_path} (5x5)")
    with pytest.raises(DataError, match=pattern):
        dataset.check_sample("s0")
    with pytest.raises(DataError, match=pattern):
        dataset.read_sample("s0")


# --- writing --------------------------------------------------------------------------------------


def test_image_file_bytes_copied_unchanged(tmp_path):
    source = tmp_path / "raw" / "photo.JPG"
    source.parent.mkdir()
    image, label = _sample(16, 16)
    Image.fromarray(image).save(source, format="JPEG", quality=70)
    writer = _writer(tmp_path / "toy")
    writer.add("p", source, label)
    writer.finalize()
    dataset = PreparedDataset(tmp_path / "toy")
    assert dataset.image_path("p") == tmp_path / "toy" / "images" / "p.JPG"
    assert dataset.image_path("p").read_bytes() == source.read_bytes()
    assert dataset.read_image("p").shape == (16, 16, 3)


@pytest.mark.parametrize("stem", ["a/b", ".hidden", "", " padded", "line\nbreak", "back\\slash"])
def test_writer_rejects_unsafe_stems(tmp_path, stem):
    with pytest.raises(UserError, match="invalid stem"):
        _writer(tmp_path / "toy").add(stem, *_sample())


def test_writer_rejects_bad_samples(tmp_path):
    writer = _writer(tmp_path / "toy")
    image, label = _sample()
    writer.add("a", image, label)
    with pytest.raises(UserError, match="stem 'a' added twice"):
        writer.add("a", image, label)
    with pytest.raises(UserError, match="split 'all' is implicit"):
        writer.add("b", image, label, split="all")
    labels = tmp_path / "toy" / "labels"
    with pytest.raises(DataError, match=_at(labels / "b.png") + ": label must be a 2-D uint8"):
        writer.add("b", image, label.astype(np.int64))
    with pytest.raises(DataError, match=_at(labels / "b.png") + ": label values \\[9\\]"):
        writer.add("b", image, np.full_like(label, 9))
    with pytest.raises(DataError, match="image must be an \\(H, W, 3\\) uint8 array"):
        writer.add("b", image[..., 0], label)
    with pytest.raises(DataError, match=re.escape(f"(8x10) and {labels / 'b.png'} (8x9)")):
        writer.add("b", image, label[:, :9])
    with pytest.raises(DataError, match="photo.gif: unsupported image type"):
        writer.add("b", tmp_path / "photo.gif", label)


def test_writer_rejects_invalid_meta(tmp_path):
    with pytest.raises(DataError, match="field 'classes' has duplicate names"):
        DatasetWriter(tmp_path / "x", "x", ["a", "a"], source={}, converter_version="1", tiling={})
    with pytest.raises(ValueError, match="clash"):
        _writer(tmp_path / "toy", extra={"classes": []})


def test_rewrite_removes_meta_first_and_leftovers_at_finalize(tmp_path):
    dataset = _make_dataset(tmp_path, n=4)
    (dataset.directory / "images" / ".s9.png.abc.tmp").write_bytes(b"half")
    writer = _writer(tmp_path / "toy")
    assert not (dataset.directory / META_FILE).exists()
    writer.add("s0", *_sample(seed=0), split="train")
    writer.finalize()
    assert [p.relative_to(dataset.directory).as_posix() for p in _files(dataset.directory)] == [
        "images/s0.png",
        "labels/s0.png",
        "meta.json",
        "splits/train.txt",
    ]


def test_writes_leave_no_temp_files(tmp_path):
    _make_dataset(tmp_path, n=3)
    assert not [path for path in _files(tmp_path) if path.name.startswith(".")]


# --- atomic io ------------------------------------------------------------------------------------


def test_atomic_write_replaces_and_cleans_up(tmp_path):
    path = tmp_path / "sub" / "note.txt"
    atomic_write_text(path, "first\n")
    atomic_write_bytes(path, b"second\n")
    assert path.read_bytes() == b"second\n"
    assert _files(tmp_path) == [path]


def test_interrupted_atomic_write_keeps_old_file(tmp_path):
    path = tmp_path / "label.png"
    atomic_write_bytes(path, b"old")

    class Interrupted(Exception):
        pass

    def explode():
        raise Interrupted

    with pytest.raises(Interrupted), atomic_writer(path) as handle:
        handle.write(b"half a fi")
        explode()
    assert path.read_bytes() == b"old"
    assert _files(tmp_path) == [path]


def test_atomic_writes_get_ordinary_file_permissions(tmp_path):
    import os

    from ovrsisbench.io import atomic_write_text

    target = tmp_path / "record.json"
    atomic_write_text(target, "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_dataset_in_another_datasets_folder_is_refused(tmp_path):
    import shutil

    from ovrsisbench.data.converters.synthetic import generate_synthetic_benchmark
    from ovrsisbench.data.layout import open_dataset
    from ovrsisbench.errors import DataError

    generate_synthetic_benchmark(tmp_path)
    shutil.copytree(tmp_path / "synthetic-source", tmp_path / "elsewhere")
    with pytest.raises(DataError, match="names dataset 'synthetic-source'.*folder of 'elsewhere'"):
        open_dataset(tmp_path, "elsewhere")
