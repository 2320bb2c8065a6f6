"""The dataset registry (``ovrsisbench.data.registry``): the one list of datasets and their facts,
read by the command line, the converters, ``prepare all`` and the archive importer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from rawfixtures import udd5
from rawfixtures.common import run_prepare

from ovrsisbench.data.converters import converter_classes
from ovrsisbench.data.converters.base import Converter
from ovrsisbench.data.native import KNOWN_CLASSES, NATIVE_CLASSES
from ovrsisbench.data.prepare import prepare
from ovrsisbench.data.registry import DATASETS, REGISTRY


def _modules_loaded_by(module: str) -> set[str]:
    """The modules a fresh interpreter holds after importing ``module``."""
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(run.stdout))


def test_importing_the_registry_imports_no_converter_and_no_numpy():
    """The command line reads it at start-up; converters are imported when used."""
    loaded = _modules_loaded_by("ovrsisbench.data.registry")
    assert "numpy" not in loaded
    assert not {m for m in loaded if m.startswith("ovrsisbench.data.converters")}


@pytest.mark.parametrize("name", DATASETS)
def test_each_entry_names_the_converter_of_that_dataset(name):
    spec = REGISTRY[name]
    cls = spec.converter_class()
    assert issubclass(cls, Converter) and cls.dataset == name and cls.kind == "raw"
    converter = cls()
    assert converter.spec is spec
    assert converter.classes == spec.classes and converter.default_tiling == spec.tiling


def test_the_registry_is_the_only_list_of_datasets(cli):
    assert DATASETS == ("dlrsd", "isaid", "potsdam", "vaihingen", "uavid", "udd5", "loveda", "vdd")
    assert list(converter_classes("raw")) == list(DATASETS)
    archived = [name for name, spec in REGISTRY.items() if spec.archive is not None]
    assert list(converter_classes("archive")) == archived
    for name, cls in converter_classes("archive").items():
        assert cls.dataset == name and cls.folders is REGISTRY[name].archive
    assert list(NATIVE_CLASSES) == list(DATASETS)
    assert all(KNOWN_CLASSES[name] == REGISTRY[name].classes for name in DATASETS)
    help_text = " ".join(cli("prepare", "--help").out.split())
    assert f"One of: {', '.join(DATASETS)}, or all" in help_text


def test_palettes_give_each_native_class_one_colour():
    coloured = {name for name, spec in REGISTRY.items() if spec.palette is not None}
    assert coloured == {"dlrsd", "isaid", "potsdam", "vaihingen", "uavid"}
    for name in coloured:
        palette = REGISTRY[name].palette
        assert len(palette) == len(set(palette)) == len(REGISTRY[name].classes), name
    assert REGISTRY["potsdam"].palette[5] == (255, 0, 0)  # clutter: red, spec section 4
    assert REGISTRY["uavid"].palette[6] == (192, 0, 192)  # static car in the V1 order


def test_prepare_all_looks_for_the_registry_folders(tmp_path):
    outcomes = prepare("all", tmp_path, tmp_path / "data")
    assert [outcome.dataset for outcome in outcomes] == list(DATASETS)
    for outcome in outcomes:
        folders = " or ".join(REGISTRY[outcome.dataset].raw_folders)
        assert outcome.skipped == f"no folder {folders} in {tmp_path}"
    assert REGISTRY["udd5"].raw_folders == ("udd5", "udd")


def test_meta_json_records_the_licence_of_the_data(cli, tmp_path):
    fixture = udd5.write_raw(tmp_path / "raw")
    run_prepare(cli, "udd5", fixture.src, tmp_path / "data")
    meta = json.loads((tmp_path / "data" / "udd5" / "meta.json").read_text())
    assert meta["source"]["licence"] == REGISTRY["udd5"].licence
    assert "non-commercial" in meta["source"]["licence"]
