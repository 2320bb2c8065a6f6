"""``prepare X --source archive``: the OVSISBench archive (spec section 10) -> unified layout."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rawfixtures.common import IGNORE, assert_prepared, check_pixels, run_prepare
from rawfixtures.ovsisbench import (
    ALL,
    FOLDERS,
    V1_CLASSES,
    add_orphan_label,
    native_from_v1,
    split_folders,
    write_bad_label,
    write_ovsisbench,
)

from ovrsisbench.data.native import NATIVE_CLASSES


@pytest.fixture(scope="module")
def ovs(tmp_path_factory):
    """All eight datasets in one OVSISBench root (written once; never modified)."""
    return write_ovsisbench(tmp_path_factory.mktemp("ovs") / "OVSISBench")


def _prepare(cli, name: str, src: Path, data_root: Path, *extra: str, code: int = 0):
    return run_prepare(cli, name, src, data_root, "--source", "archive", *extra, code=code)


def _check(data_root: Path, name: str, fixture) -> dict:
    """Every pixel, the splits, byte-identical images and the archive-specific meta."""
    meta = assert_prepared(data_root, name, fixture.expected)
    assert meta["name"] == name
    assert meta["classes"] == list(NATIVE_CLASSES[name])
    assert meta["source"]["kind"] == "archive"
    assert meta["tiling"]["tile"] is None
    for stem, data in fixture.notes["image_bytes"].items():
        if stem not in fixture.expected:
            continue
        suffix = Path(fixture.notes["image_files"][stem]).suffix
        out = data_root / name / "images" / f"{stem}{suffix}"
        assert out.read_bytes() == data, out
    verification = meta["verification"]
    assert verification["unmatched_pixels"] == 0
    assert not verification.get("unmatched_by_file")
    check_pixels(meta, fixture.expected, NATIVE_CLASSES[name])
    return meta


def _hidden(data_root: Path) -> list[Path]:
    return [path for path in data_root.rglob("*") if path.name.startswith(".")]


# --- the generator on its own ---------------------------------------------------------------


def test_fixture_files_decode_to_what_they_claim(ovs):
    for name in ALL:
        fixture = ovs[name]
        root = fixture.notes["root"]
        image_dir, label_dir, suffix = FOLDERS[name]
        for stem, item in fixture.expected.items():
            image_file = root / fixture.notes["image_files"][stem]
            assert image_file.suffix == suffix
            assert image_file.read_bytes() == fixture.notes["image_bytes"][stem]
            with Image.open(image_file) as image:
                assert image.format == ("JPEG" if suffix.lower() == ".jpg" else "PNG")
                np.testing.assert_array_equal(np.array(image.convert("RGB")), item.image)
            for relative in fixture.notes["label_files"][stem]:
                with Image.open(root / relative) as label:
                    assert label.mode == "L"
                    v1 = np.array(label)
                values = set(np.unique(v1).tolist())
                assert values <= set(range(V1_CLASSES[name])) | {IGNORE}
                assert IGNORE in values
                np.testing.assert_array_equal(native_from_v1(name, v1), item.label)
                assert v1.shape == item.image.shape[:2]
            assert item.source_label == fixture.notes["label_files"][stem][0]
        if name == "isaid":
            labels = np.concatenate([i.label.ravel() for i in fixture.expected.values()])
            assert labels[labels != IGNORE].min() == 1 and labels.max() == IGNORE
        splits = {item.split for item in fixture.expected.values()}
        if name in ("dlrsd", "isaid"):
            assert splits == {"train", "val", None}
            folders = split_folders(name)
            all_stems = {p.stem for p in (root / label_dir).glob("*.png")}
            val_stems = {p.stem for p in (root / folders["val"][1]).glob("*.png")}
            assert val_stems - all_stems  # a split-only stem
            assert all_stems - val_stems - {p.stem for p in (root / folders["train"][1]).iterdir()}
        else:
            assert splits == {None}
    ovs_label = ovs["potsdam"].notes["root"] / "Potsdam/OVS_label/top_potsdam_7_8_3_4.png"
    with Image.open(ovs_label) as image:
        shifted = np.array(image)
    expected = ovs["potsdam"].expected["top_potsdam_7_8_3_4"].label
    np.testing.assert_array_equal(shifted, ((expected.astype(int) + 1) % 256).astype(np.uint8))


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_fixture_archive_holds_the_same_files(tmp_path, kind):
    plain = write_ovsisbench(tmp_path / "plain", datasets=("udd5", "isaid"))
    packed = write_ovsisbench(tmp_path / "packed", datasets=("udd5", "isaid"), archive=kind)
    src = packed["udd5"].src
    assert src == tmp_path / f"packed.{kind}" and src.is_file()
    assert not (tmp_path / "packed").exists()
    want = {
        p.relative_to(tmp_path / "plain").as_posix(): p.read_bytes()
        for p in (tmp_path / "plain").rglob("*")
        if p.is_file()
    }
    if kind == "zip":
        with zipfile.ZipFile(src) as archive:
            got = {name: archive.read(name) for name in archive.namelist()}
    else:
        with tarfile.open(src) as archive:
            got = {m.name: archive.extractfile(m).read() for m in archive if m.isfile()}
    assert got == want
    assert "UDD5/all/src/DJI_0001.JPG" in got
    for name in ("udd5", "isaid"):
        assert packed[name].expected.keys() == plain[name].expected.keys()
        for stem, item in packed[name].expected.items():
            np.testing.assert_array_equal(item.label, plain[name].expected[stem].label)
        with Image.open(io.BytesIO(got["iSAID/D2masks/P0003_0_64_0_64.png"])) as label:
            assert label.mode == "L"


def test_fixture_corruptions(tmp_path):
    fixtures = write_ovsisbench(tmp_path / "ovs", datasets=("vaihingen", "dlrsd"))
    orphan = add_orphan_label(fixtures["vaihingen"])
    assert (tmp_path / "ovs" / orphan).is_file()
    assert not list((tmp_path / "ovs/Vaihingen/imgs").glob(Path(orphan).stem + ".*"))
    stem, relative = write_bad_label(fixtures["dlrsd"], "dlrsd")
    assert relative == f"DLRSD/D2masks/{stem}.png" and stem not in fixtures["dlrsd"].expected
    with Image.open(tmp_path / "ovs" / relative) as label:
        assert label.mode == "L" and np.array(label).max() == IGNORE
        assert V1_CLASSES["dlrsd"] in np.unique(np.array(label))


# --- prepare --source archive ---------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_prepare_each_dataset(cli, ovs, tmp_path, name):
    _prepare(cli, name, ovs[name].notes["root"], tmp_path / "data")
    _check(tmp_path / "data", name, ovs[name])
    assert not [p for p in (tmp_path / "data").iterdir() if p.name in ALL and p.name != name]


def test_prepare_is_idempotent(cli, ovs, tmp_path):
    for _ in range(2):
        _prepare(cli, "udd5", ovs["udd5"].notes["root"], tmp_path / "data")
    _check(tmp_path / "data", "udd5", ovs["udd5"])


def test_prepare_all_at_once(cli, ovs, tmp_path):
    _prepare(cli, "all", ovs["vdd"].notes["root"], tmp_path / "data")
    for name in ALL:
        _check(tmp_path / "data", name, ovs[name])


@pytest.mark.parametrize("split_folder", ["imgs", "images"])
def test_split_folder_spellings(cli, tmp_path, split_folder):
    fixtures = write_ovsisbench(
        tmp_path / "ovs", datasets=("isaid", "dlrsd"), split_folder=split_folder
    )
    assert (tmp_path / "ovs" / f"iSAID_split/val/{split_folder}").is_dir()
    for name in ("isaid", "dlrsd"):
        _prepare(cli, name, tmp_path / "ovs", tmp_path / "data")
        meta = _check(tmp_path / "data", name, fixtures[name])
        assert meta["splits"] == {"all": 5, "train": 2, "val": 2}


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_prepare_from_packed_archive(cli, tmp_path, kind):
    fixtures = write_ovsisbench(tmp_path / "OVSISBench", archive=kind)
    src = fixtures["potsdam"].src
    before = src.read_bytes()
    data = tmp_path / "data"
    _prepare(cli, "all", src, data)
    for name in ALL:
        _check(data, name, fixtures[name])
    assert src.read_bytes() == before
    assert _hidden(data) == []  # no temporary extraction folder left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["data", src.name])


def test_orphan_label_is_dropped_and_listed(cli, tmp_path):
    fixtures = write_ovsisbench(tmp_path / "ovs", datasets=("vaihingen",))
    orphan = add_orphan_label(fixtures["vaihingen"])
    _prepare(cli, "vaihingen", tmp_path / "ovs", tmp_path / "data")
    meta = _check(tmp_path / "data", "vaihingen", fixtures["vaihingen"])
    assert Path(orphan).stem in str(meta["orphans"])
    assert len(meta["orphans"]) == 1
    assert meta["verification"]["bad_inputs"] == []


@pytest.mark.parametrize("name", ["vaihingen", "isaid", "dlrsd"])
def test_out_of_range_label_value(cli, tmp_path, name):
    fixtures = write_ovsisbench(tmp_path / "ovs", datasets=(name,))
    stem, relative = write_bad_label(fixtures[name], name)
    data = tmp_path / "data"
    result = _prepare(cli, name, tmp_path / "ovs", data, code=2)
    assert "error:" in result.err
    assert relative in result.err.replace("\\", "/")
    assert not (data / name / "meta.json").exists()

    _prepare(cli, name, tmp_path / "ovs", data, "--skip-bad")
    meta = _check(data, name, fixtures[name])
    bad = meta["verification"]["bad_inputs"]
    assert len(bad) == 1
    assert relative in bad[0]["path"].replace("\\", "/")
    assert bad[0]["problem"]
    assert not list((data / name / "images").glob(f"{stem}.*"))
    assert not (data / name / "labels" / f"{stem}.png").exists()
