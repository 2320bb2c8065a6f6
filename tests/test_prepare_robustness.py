"""``prepare`` under bad inputs, interruption, reruns and parallel workers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rawfixtures import loveda
from rawfixtures.common import assert_prepared, expected_tiles
from rawfixtures.isprs import write_potsdam_raw

from ovrsisbench.data.converters import engine
from ovrsisbench.data.converters.potsdam import PotsdamConverter
from ovrsisbench.data.prepare import PrepareSettings, prepare
from ovrsisbench.errors import DataError


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden state included) with its bytes, meta.json aside."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "meta.json"
    }


def _meta_without_times(root: Path) -> dict:
    meta = json.loads((root / "meta.json").read_text())
    meta.pop("created")
    meta["source"].pop("src")
    meta["prepare"].pop("fingerprint")  # it covers the paths of the download
    return meta


def _potsdam(tmp_path: Path, fixture=None, data: str = "data", **settings):
    """Prepare the Potsdam fixture (16 px tiles, one worker unless ``settings`` say otherwise)."""
    fixture = fixture or write_potsdam_raw(tmp_path / "raw")
    settings = PrepareSettings(**{"tile": 16, "workers": 1, **settings})
    outcome = prepare("potsdam", fixture.src, tmp_path / data, settings=settings)
    return fixture, outcome[0].report


def test_truncated_image_is_named_and_can_be_skipped(cli, tmp_path):
    fixture = loveda.write_raw(tmp_path / "raw")
    victim = sorted((fixture.src / "Train").rglob("images_png/*.png"))[0]
    assert victim.stem in fixture.expected
    victim.write_bytes(victim.read_bytes()[:200])
    args = ["prepare", "loveda", "--src", fixture.src, "--data-root", tmp_path / "data"]

    failed = cli(*args, "--workers", "1")
    assert failed.code == 2
    relative = victim.relative_to(fixture.src).as_posix()
    assert f"in {fixture.src}: {relative}: cannot read image" in failed.err
    assert "--skip-bad" in failed.err
    assert not (tmp_path / "data" / "loveda" / "meta.json").exists()

    skipped = cli(*args, "--workers", "1", "--skip-bad")
    assert skipped.code == 0, skipped.err
    expected = {k: v for k, v in fixture.expected.items() if k != victim.stem}
    meta = assert_prepared(tmp_path / "data", "loveda", expected)
    bad = meta["verification"]["bad_inputs"]
    assert [entry["path"] for entry in bad] == [relative]
    assert "cannot read image" in bad[0]["problem"]


def test_label_of_another_size_is_a_bad_input(tmp_path):
    fixture = write_potsdam_raw(tmp_path / "raw")
    label = next(fixture.src.rglob("top_potsdam_2_13_label.tif"))
    with rasterio.open(label) as source:
        profile, bands = source.profile, source.read()
    profile.update(height=bands.shape[1] - 3)
    with rasterio.open(label, "w", **profile) as target:
        target.write(bands[:, :-3])
    with pytest.raises(DataError) as failure:
        prepare("potsdam", fixture.src, tmp_path / "data", settings=PrepareSettings(workers=1))
    message = str(failure.value)
    assert "2_Ortho_RGB/top_potsdam_2_13_RGB.tif (64x77)" in message
    assert f"{label.relative_to(fixture.src).as_posix()} (61x77)" in message
    assert "differ in size" in message


class _Interrupt:
    """Wraps ``convert_pair``: lets ``calls`` pairs through, then raises KeyboardInterrupt."""

    def __init__(self, calls: int) -> None:
        self.calls = calls
        self.real = engine.convert_pair

    def __call__(self, job):
        if self.calls == 0:
            raise KeyboardInterrupt
        self.calls -= 1
        return self.real(job)


def test_interrupted_run_resumes_without_redoing_and_matches_a_clean_run(tmp_path, monkeypatch):
    fixture, clean = _potsdam(tmp_path, data="clean")
    monkeypatch.setattr(engine, "convert_pair", _Interrupt(1))
    with pytest.raises(KeyboardInterrupt):
        _potsdam(tmp_path, fixture)
    out = tmp_path / "data" / "potsdam"
    assert not (out / "meta.json").exists()
    finished = {p: p.stat().st_mtime_ns for p in (out / "labels").iterdir()}
    assert finished
    # a kill in the middle of a journal line, and a temp file of an unfinished write
    with open(out / ".prepare" / "journal.jsonl", "a") as journal:
        journal.write('{"stem": "top_potsdam_3_1')
    (out / "images" / ".top_potsdam_3_14_0_16_0_16.png.x.tmp").write_bytes(b"half")

    monkeypatch.setattr(engine, "convert_pair", engine.convert_pair.real)
    _, report = _potsdam(tmp_path, fixture)
    assert (report.resumed, report.converted) == (1, 2)
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # not written again
    assert _tree(out) == _tree(tmp_path / "clean" / "potsdam")
    assert _meta_without_times(out) == _meta_without_times(tmp_path / "clean" / "potsdam")
    assert clean.converted == 3


def test_second_run_is_up_to_date_and_a_changed_input_is_converted_again(tmp_path):
    fixture, _ = _potsdam(tmp_path)
    out = tmp_path / "data" / "potsdam"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    files = _tree(out)
    _, again = _potsdam(tmp_path, fixture)
    assert again.up_to_date
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before

    image = next(fixture.src.rglob("top_potsdam_2_10_RGB.tif"))
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    _, changed = _potsdam(tmp_path, fixture)
    assert not changed.up_to_date and changed.converted == 3  # the journal is gone once done
    assert _tree(out) == files


def test_other_settings_rewrite_the_dataset_and_remove_stale_tiles(tmp_path):
    fixture, _ = _potsdam(tmp_path)
    _, report = _potsdam(tmp_path, fixture, tile=32)
    assert not report.up_to_date
    assert_prepared(tmp_path / "data", "potsdam", expected_tiles(fixture.expected, 32))


def test_two_workers_write_the_same_files_as_one(tmp_path):
    fixture, _ = _potsdam(tmp_path, data="one")
    _potsdam(tmp_path, fixture, data="two", workers=2)
    assert _tree(tmp_path / "one") == _tree(tmp_path / "two")
    assert _meta_without_times(tmp_path / "one" / "potsdam") == _meta_without_times(
        tmp_path / "two" / "potsdam"
    )


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_tolerance_snaps_near_colours_and_strict_mode_counts_them(tmp_path):
    converter = PotsdamConverter({"tolerance": 4, "labels": "eroded"})
    label = np.array([[[252, 255, 0], [255, 255, 255], [9, 222, 221], [0, 0, 0]]], np.uint8)
    path = tmp_path / "label.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=4, height=1, count=3, dtype="uint8"
    ) as target:
        target.write(label.transpose(2, 0, 1))
    near = converter.codec().decode(path)
    assert near.label.tolist() == [[4, 0, 255, 255]]
    assert (near.snapped, near.unmatched) == (1, 1)
    assert near.unmatched_values == {"(9, 222, 221)": 1}
    strict = PotsdamConverter({"labels": "eroded"}).codec().decode(path)
    assert strict.label.tolist() == [[255, 0, 255, 255]]
    assert (strict.snapped, strict.unmatched) == (0, 2)
    full = PotsdamConverter().codec().decode(path)  # black is a boundary of eroded labels only
    assert full.label.tolist() == [[255, 0, 255, 255]]
    assert full.unmatched_values == {"(252, 255, 0)": 1, "(9, 222, 221)": 1, "(0, 0, 0)": 1}


def test_a_tiff_with_other_bands_than_declared_is_a_bad_input(tmp_path):
    fixture = write_potsdam_raw(tmp_path / "raw")
    image = next(fixture.src.rglob("top_potsdam_2_10_RGB.tif"))
    with rasterio.open(image) as source:
        profile, bands = source.profile, source.read()
    profile.update(count=4)
    with rasterio.open(image, "w", **profile) as target:
        target.write(np.concatenate([bands, bands[:1]]))
    with pytest.raises(
        DataError, match=r"top_potsdam_2_10_RGB.tif: 4 bands, expected 3 \(R, G, B\)"
    ):
        prepare("potsdam", fixture.src, tmp_path / "data", settings=PrepareSettings(workers=1))


def test_tiles_larger_than_every_image_are_an_error_not_an_empty_dataset(tmp_path):
    fixture = write_potsdam_raw(tmp_path / "raw")  # images < 256 px: the default drops them all
    with pytest.raises(DataError, match="into no output.*smaller than the 256 px tile"):
        prepare("potsdam", fixture.src, tmp_path / "data", settings=PrepareSettings(workers=1))
    assert not (tmp_path / "data" / "potsdam" / "meta.json").exists()


def test_only_the_wanted_archives_are_extracted(tmp_path):
    """A folder above the download: other zips there (DSM, the participants' labels) stay shut."""
    fixture = write_potsdam_raw(tmp_path / "raw" / "Potsdam", archives=True)
    distractor = fixture.src / "5_Labels_for_participants.zip"
    assert distractor.exists()
    settings = PrepareSettings(tile=16, workers=1)
    report = prepare("potsdam", tmp_path / "raw", tmp_path / "data", settings=settings)[0].report
    assert report.meta.source["archives"] == ["Potsdam/2_Ortho_RGB.zip", "Potsdam/5_Labels_all.zip"]


@pytest.mark.parametrize(
    ("download", "src", "data"),
    [
        ("raw", "raw", "raw/data"),  # the data root inside --src
        ("raw", "raw", "raw"),  # the data root is --src
        ("data/potsdam", "data/potsdam", "data"),  # the download in the dataset's own folder
        ("data/potsdam", "data", "data"),  # ... and --src the data root
    ],
)
def test_outputs_inside_the_download_are_not_read_as_inputs(tmp_path, download, src, data):
    """Wherever the outputs lie relative to --src, they are never inputs: reruns are up to date."""
    fixture = write_potsdam_raw(tmp_path / download)
    settings = PrepareSettings(tile=0, workers=1)  # whole tiles: outputs named like inputs
    first = prepare("potsdam", tmp_path / src, tmp_path / data, settings=settings)[0].report
    again = prepare("potsdam", tmp_path / src, tmp_path / data, settings=settings)[0].report
    assert not first.up_to_date and again.up_to_date
    assert_prepared(tmp_path / data, "potsdam", fixture.expected)


def test_symlinked_folders_in_the_download_are_followed(tmp_path):
    fixture = loveda.write_raw(tmp_path / "elsewhere")
    (tmp_path / "raw").mkdir()
    for split in ("Train", "Val"):
        (tmp_path / "raw" / split).symlink_to(fixture.src / split, target_is_directory=True)
    (tmp_path / "raw" / "loop").symlink_to(tmp_path / "raw", target_is_directory=True)
    prepare("loveda", tmp_path / "raw", tmp_path / "data", settings=PrepareSettings(workers=1))
    assert_prepared(tmp_path / "data", "loveda", fixture.expected)


def test_archive_import_lists_split_only_names_and_hashes_every_file(cli, tmp_path):
    from rawfixtures.ovsisbench import _SPLIT_ONLY, write_ovsisbench

    fixture = write_ovsisbench(tmp_path / "OVSISBench", datasets=["dlrsd"])["dlrsd"]
    data = tmp_path / "data"
    args = ["prepare", "dlrsd", "--source", "archive", "--src", fixture.src, "--data-root", data]
    result = cli(*args, "--workers", "1")
    assert result.code == 0, result.err
    assert "1 name(s) only in DLRSD_split" in " ".join(result.err.split())
    meta = json.loads((data / "dlrsd" / "meta.json").read_text())
    assert meta["archive"] == {"split_only_stems": [_SPLIT_ONLY["dlrsd"]], "unlabelled_images": []}
    listed = dict(
        reversed(line.split("  ", 1))
        for line in (data / "dlrsd" / "source.sha256").read_text().splitlines()
    )
    files = {
        f"{folder}/{stem}.png"
        for stem, folders in fixture.notes["label_files"].items()
        for folder in [folders[0].rsplit("/", 1)[0]]
    }
    assert files <= set(listed)
    for relative, digest in listed.items():
        assert hashlib.sha256((fixture.src / relative).read_bytes()).hexdigest() == digest
    assert len(listed) == 2 * meta["splits"]["all"]


def test_a_whole_archive_file_is_not_extracted_again_when_up_to_date(tmp_path, monkeypatch):
    from rawfixtures.ovsisbench import write_ovsisbench

    import ovrsisbench.data.prepare as prepare_module

    src = write_ovsisbench(tmp_path / "OVSISBench", datasets=["vdd", "udd5"], archive="zip")[
        "vdd"
    ].src
    settings = PrepareSettings(workers=1)
    first = prepare("all", src, tmp_path / "data", "archive", settings)
    assert [o.dataset for o in first if o.report] == ["udd5", "vdd"]

    def no_extraction(*args, **kwargs):
        raise AssertionError("extracted again")

    monkeypatch.setattr(prepare_module, "extract_archive", no_extraction)
    again = prepare("all", src, tmp_path / "data", "archive", settings)
    assert [o.dataset for o in again if o.report and o.report.up_to_date] == ["udd5", "vdd"]


def test_udd6_beside_udd5_is_never_imported(tmp_path):
    from rawfixtures import udd5

    fixture = udd5.write_raw(tmp_path / "raw")
    twin = tmp_path / "raw" / "UDD6"
    shutil.copytree(fixture.src / "UDD5", twin)  # same layout, other class order
    for image in twin.rglob("*.JPG"):
        image.rename(image.with_name(f"udd6_{image.name}"))
    for label in twin.rglob("*.png"):
        label.rename(label.with_name(f"udd6_{label.name}"))
    with zipfile.ZipFile(tmp_path / "raw" / "UDD6.zip", "w") as zf:  # members without UDD6/
        for path in twin.rglob("*"):
            zf.write(path, path.relative_to(twin).as_posix().replace("udd6_", "zip6_"))
    report = prepare("udd5", fixture.src, tmp_path / "data", settings=PrepareSettings(workers=1))
    assert report[0].report.meta.source["archives"] == []
    assert_prepared(tmp_path / "data", "udd5", fixture.expected)


def test_verification_catches_a_file_changed_after_writing(tmp_path, monkeypatch):
    real = engine._verify_all

    def corrupt_then_verify(out, outputs, *args):
        path = out / "labels" / f"{outputs[0].stem}.png"
        label = np.array(Image.open(path))
        Image.fromarray(np.where(label == 0, 1, 0).astype(np.uint8)).save(path)
        return real(out, outputs, *args)

    monkeypatch.setattr(engine, "_verify_all", corrupt_then_verify)
    with pytest.raises(DataError, match="verification of .* failed: .*pixel counts differ"):
        _potsdam(tmp_path)
    assert not (tmp_path / "data" / "potsdam" / "meta.json").exists()


def test_default_rules_for_the_published_counts():
    """Potsdam 6000 px tiles -> 23 x 23 = 529 patches (38 tiles: 20,102); DLRSD 80/20 per scene."""
    from ovrsisbench.data.converters.dlrsd import DLRSDConverter, _split

    assert len(PotsdamConverter().default_tiling.windows(6000, 6000)) == 529
    assert 38 * 529 == 20_102
    assert [_split(f"harbor{n:02d}") for n in (0, 79, 80, 99)] == ["train", "train", "val", "val"]
    assert DLRSDConverter().default_tiling.tile is None


def test_archive_images_without_a_label_are_listed_not_mispaired(tmp_path):
    from rawfixtures.ovsisbench import write_ovsisbench

    fixture = write_ovsisbench(tmp_path / "OVSISBench", datasets=["vdd"])["vdd"]
    labels = sorted((fixture.src / "VDD" / "gt").glob("*.png"))
    labels[0].rename(labels[0].with_name("renamed.png"))  # same counts, one name differs
    settings = PrepareSettings(workers=1)
    report = prepare("vdd", fixture.src, tmp_path / "data", "archive", settings)[0].report
    assert report.meta.extra["archive"]["unlabelled_images"] == [f"VDD/src/{labels[0].stem}.JPG"]
    assert report.meta.extra["orphans"] == ["VDD/gt/renamed.png"]
    expected = {k: v for k, v in fixture.expected.items() if k != labels[0].stem}
    assert_prepared(tmp_path / "data", "vdd", expected)
