"""Protocols and vocabularies: packaged files, lookup tables, hashing and validation errors."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from ovrsisbench.data.native import NATIVE_CLASSES, SYNTHETIC_CLASSES
from ovrsisbench.data.registry import DATASETS
from ovrsisbench.errors import DataError, UserError
from ovrsisbench.protocol import (
    list_protocols,
    list_vocabularies,
    load_protocol,
    load_vocabulary,
)

PAPER_ORDER = ["dlrsd", "isaid", "loveda", "potsdam", "uavid", "udd5", "vaihingen", "vdd"]
V1_COUNTS = {
    "dlrsd": 17, "isaid": 15, "potsdam": 6, "vaihingen": 6,
    "uavid": 8, "udd5": 5, "loveda": 8, "vdd": 7,
}  # fmt: skip

UAVID_MERGED = {
    "dataset": "uavid",
    "description": "test vocabulary",
    "native_classes": list(NATIVE_CLASSES["uavid"]),
    "classes": [
        {"name": "background", "prompts": ["background"], "native": [0]},
        {"name": "building", "prompts": ["building"], "native": [1]},
        {"name": "road", "prompts": ["road"], "native": [2]},
        {"name": "car", "prompts": ["car", "vehicle"], "native": [5, 6]},
    ],
}


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# -- packaged files ----------------------------------------------------------------------------
def test_packaged_protocols_load():
    assert {"dlrsd", "isaid", "demo"} <= set(list_protocols())
    for name in list_protocols():
        protocol = load_protocol(name)
        assert protocol.name == name == protocol.path.stem
        assert protocol.description


@pytest.mark.parametrize("source", ["dlrsd", "isaid"])
def test_v1_protocols_follow_the_paper(source):
    protocol = load_protocol(source)
    assert (protocol.train.dataset, protocol.train.split) == (source, "train")
    assert protocol.train.vocabulary.name == source
    assert [e.dataset for e in protocol.evaluation] == PAPER_ORDER
    assert {e.split for e in protocol.evaluation} == {"all"}
    assert all(e.vocabulary.name == e.dataset for e in protocol.evaluation)


def test_demo_protocol_is_synthetic():
    protocol = load_protocol("demo")
    assert "SYNTHETIC" in protocol.description
    assert (protocol.train.dataset, protocol.train.split) == ("synthetic-source", "train")
    assert [(e.dataset, e.split) for e in protocol.evaluation] == [
        ("synthetic-source", "val"),
        ("synthetic-target", "all"),
    ]
    for entry in protocol.evaluation:
        vocabulary = entry.vocabulary
        assert "SYNTHETIC" in vocabulary.description
        assert vocabulary.names() == list(SYNTHETIC_CLASSES[entry.dataset])


def test_every_vocabulary_matches_its_dataset():
    names = list_vocabularies()
    assert set(DATASETS) <= set(names)
    for name in names:
        vocabulary = load_vocabulary(name)
        assert vocabulary.name == name
        assert vocabulary.description and "\n" not in vocabulary.description
        if vocabulary.dataset in NATIVE_CLASSES:
            assert vocabulary.native_classes == NATIVE_CLASSES[vocabulary.dataset]


@pytest.mark.parametrize(("dataset", "count"), V1_COUNTS.items())
def test_v1_class_counts(dataset, count):
    assert len(load_vocabulary(dataset).classes) == count


def test_v1_prompts_keep_the_json_spelling():
    assert load_vocabulary("loveda").prompts()[:2] == [["no-data"], ["Background"]]
    assert load_vocabulary("potsdam").prompts()[-1] == ["Clutter/background"]
    assert load_vocabulary("uavid").prompts()[5:7] == [["Moving car"], ["Static car"]]


# -- lookup tables -----------------------------------------------------------------------------
def test_isaid_background_is_ignored():
    table = load_vocabulary("isaid").lookup_table()
    assert table.shape == (256,) and table.dtype == np.uint8
    assert table[0] == 255 and table[255] == 255
    assert list(table[1:16]) == list(range(15))


def test_loveda_clean_ignores_no_data():
    table = load_vocabulary("loveda-clean").lookup_table()
    assert table[0] == 255
    assert list(table[1:8]) == list(range(7))
    assert set(table[8:]) == {255}


def test_uavid_merged_car():
    vocabulary = load_vocabulary("uavid-merged-car")
    table = vocabulary.lookup_table()
    car = vocabulary.names().index("car")
    assert table[5] == table[6] == car
    assert vocabulary.names() == [
        "background", "building", "road", "car", "tree", "low vegetation", "human",
    ]  # fmt: skip
    assert sorted(set(table[:8])) == list(range(7))


@pytest.mark.parametrize("name", ["potsdam-no-clutter", "vaihingen-no-clutter"])
def test_no_clutter_variants(name):
    table = load_vocabulary(name).lookup_table()
    assert list(table[:6]) == [0, 1, 2, 3, 4, 255]


# -- dataset check and selection ---------------------------------------------------------------
def test_check_dataset():
    vocabulary = load_vocabulary("vdd")
    vocabulary.check_dataset(list(NATIVE_CLASSES["vdd"]), "data/vdd/meta.json")
    with pytest.raises(DataError, match="^data/vdd/meta.json: ") as info:
        vocabulary.check_dataset(["other", "wall"], "data/vdd/meta.json")
    assert str(vocabulary.path) in str(info.value)


def test_select():
    protocol = load_protocol("dlrsd")
    assert protocol.select(None) == list(protocol.evaluation)
    assert [e.dataset for e in protocol.select(["vdd", "isaid"])] == ["isaid", "vdd"]
    with pytest.raises(UserError, match="'nope'.*dlrsd, isaid, loveda"):
        protocol.select(["nope"])
    with pytest.raises(UserError, match="at least one"):
        protocol.select([])


# -- hashing -----------------------------------------------------------------------------------
def test_hash_ignores_formatting_and_follows_prompts(tmp_path):
    packaged = load_vocabulary("loveda")
    data = yaml.safe_load(packaged.path.read_text())
    data["description"] = "reformatted copy"
    text = "# a comment\n" + yaml.safe_dump(data, sort_keys=True, default_flow_style=False)
    (tmp_path / "copy.yaml").write_text(text)
    assert load_vocabulary(tmp_path / "copy.yaml").sha256 == packaged.sha256

    data["classes"][1]["prompts"] = ["background area"]
    renamed = write_yaml(tmp_path / "renamed.yaml", data)
    assert load_vocabulary(renamed).sha256 != packaged.sha256


# -- SegEarth-OV's settings --------------------------------------------------------------------
#: configs/cls_<dataset>.txt, cfg_<dataset>.py of likyoo/SegEarth-OV (spec baselines.md 7):
#: the prompt names of each class in order, the background class index and threshold
SEGEARTH = {
    "loveda": (
        [["background"], ["building", "roof", "house"], ["road"], ["water"], ["barren"],
         ["forest"], ["agricultural"]], 0, 0.3),
    "isaid": (
        [["background"], ["ship"], ["store tank"], ["baseball diamond"], ["tennis court"],
         ["basketball court"], ["ground track field"], ["bridge"], ["large vehicle"],
         ["small vehicle"], ["helicopter"], ["swimming pool"], ["roundabout"],
         ["soccer ball field"], ["plane"], ["harbor"]], 0, 0.4),
    "potsdam": (
        [["road", "parking lot"], ["building"], ["low vegetation"], ["tree"], ["car"],
         ["clutter", "background"]], 5, 0.1),
    "vaihingen": (
        [["impervious surface"], ["building"], ["low vegetation"], ["tree"], ["car"],
         ["clutter"]], 5, 0.1),
    "uavid": (
        [["background"], ["building"], ["road"], ["car"], ["tree"], ["vegetation"], ["human"]],
        0, 0.3),
    "udd5": ([["vegetation"], ["building"], ["road"], ["vehicle"], ["background"]], 4, 0.4),
    "vdd": (
        [["background"], ["facade"], ["road"], ["vegetation"], ["vehicle"], ["roof"], ["water"]],
        0, 0.3),
}  # fmt: skip


@pytest.mark.parametrize("dataset", sorted(SEGEARTH))
def test_segearth_vocabularies_follow_its_class_files(dataset):
    prompts, index, threshold = SEGEARTH[dataset]
    vocabulary = load_vocabulary(f"{dataset}-segearth")
    assert vocabulary.prompts() == prompts
    assert (vocabulary.background.index, vocabulary.background.threshold) == (index, threshold)
    record = vocabulary.background_record()
    assert record == {"class": vocabulary.names()[index], "index": index, "threshold": threshold}


def test_segearth_protocol_is_evaluation_only():
    protocol = load_protocol("segearth")
    assert protocol.train is None
    assert [e.dataset for e in protocol.evaluation] == PAPER_ORDER
    assert {e.split for e in protocol.evaluation} == {"all"}
    names = {e.dataset: e.vocabulary.name for e in protocol.evaluation}
    assert names == {d: ("dlrsd" if d == "dlrsd" else f"{d}-segearth") for d in PAPER_ORDER}


def test_native_label_spaces_of_segearth_files():
    # LoveDA: no-data ignored; iSAID: background scored; UAVid: both cars merged
    assert load_vocabulary("loveda-segearth").lookup_table()[0] == 255
    assert load_vocabulary("isaid-segearth").lookup_table()[0] == 0
    uavid = load_vocabulary("uavid-segearth").lookup_table()
    assert uavid[5] == uavid[6] == 3


def test_v1_vocabulary_hash_is_stable():
    # records name vocabularies by this hash: changing how it is computed orphans every record
    expected = "49788febe490bca2dc29e2a2cdd10be06d529b625c2a6ead26b66304be7432a7"
    assert load_vocabulary("dlrsd").sha256 == expected


def test_background_rule_enters_the_hash(tmp_path):
    packaged = load_vocabulary("potsdam-segearth")
    data = yaml.safe_load(packaged.path.read_text())
    data["background"]["threshold"] = 0.2
    changed = load_vocabulary(write_yaml(tmp_path / "changed.yaml", data))
    assert changed.sha256 != packaged.sha256
    del data["background"]
    without = load_vocabulary(write_yaml(tmp_path / "without.yaml", data))
    assert without.background is None and without.background_record() is None
    assert without.sha256 not in (changed.sha256, packaged.sha256)


# -- protocol and vocabulary files given by path -----------------------------------------------
def test_protocol_path_with_local_vocabularies(tmp_path):
    write_yaml(tmp_path / "vocab" / "uavid-mine.yaml", UAVID_MERGED)
    local_vdd = {**yaml.safe_load(load_vocabulary("vdd").path.read_text()), "description": "mine"}
    write_yaml(tmp_path / "vocab" / "vdd.yaml", local_vdd)
    protocol_file = write_yaml(
        tmp_path / "mine.yaml",
        {
            "name": "mine",
            "description": "local protocol",
            "train": {"dataset": "dlrsd", "split": "train", "vocabulary": "dlrsd"},
            "evaluation": [
                {"dataset": "uavid", "split": "all", "vocabulary": "uavid-mine"},
                {"dataset": "vdd", "split": "val", "vocabulary": "vdd"},
            ],
        },
    )
    protocol = load_protocol(str(protocol_file))
    assert protocol.path == protocol_file
    uavid, vdd = protocol.evaluation
    assert uavid.vocabulary.prompts()[3] == ["car", "vehicle"]
    assert vdd.vocabulary.description == "mine"  # local file shadows the packaged one
    assert protocol.train.vocabulary.path == load_vocabulary("dlrsd").path


# -- validation errors -------------------------------------------------------------------------
_DELETE = object()


def _edit(data: dict, path: tuple, value) -> dict:
    data = copy.deepcopy(data)
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


VOCAB_ERRORS = [
    (("dataset",), _DELETE, "missing key 'dataset'"),
    (("colour",), "red", "unknown key 'colour'"),
    (("classes", 1, "synonyms"), ["x"], r"class 1: unknown key 'synonyms'"),
    (("classes", 2, "prompts"), [], r"class 2 \('road'\): prompts: expected a non-empty list"),
    (("classes", 2, "prompts"), [""], r"class 2 \('road'\): prompts: expected a non-empty string"),
    (("classes", 2, "name"), "building", r"class 2 \('building'\): duplicate class name"),
    (("classes", 2, "native"), [2, 1], r"class 2 \('road'\): native id 1 already covered"),
    (("classes", 3, "native"), [9], r"class 3 \('car'\): native id 9 out of range 0\.\.7"),
    (("classes", 3, "native"), ["5"], r"class 3 \('car'\): native id '5' is not an integer"),
    (("classes", 3, "native"), [], r"class 3 \('car'\): native: expected a non-empty list"),
    (("classes",), [], "classes: expected a non-empty list"),
    (("dataset",), "uavidd", "unknown dataset 'uavidd'; known: dlrsd"),
    (("native_classes", 0), "clutter", "native_classes: .* differ from the native classes"),
    (("background",), "road", "background: expected a mapping with keys class, threshold"),
    (("background",), {"class": "car"}, "background: missing key 'threshold'"),
    (("background",), {"class": "sky", "threshold": 0.3}, "class 'sky' is not a scored class"),
    (("background",), {"class": "car", "threshold": "0.3"}, "threshold must be a number"),
    (("background",), {"class": "car", "threshold": 1.5}, r"threshold 1\.5 is not a probability"),
]


@pytest.mark.parametrize(("path", "value", "message"), VOCAB_ERRORS)
def test_vocabulary_errors_name_the_file(tmp_path, path, value, message):
    file = write_yaml(tmp_path / "bad.yaml", _edit(UAVID_MERGED, path, value))
    with pytest.raises(UserError, match=message) as info:
        load_vocabulary(file)
    assert str(info.value).startswith(f"{file}: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dataset: uavid\nclasses: [a, b\n", r"invalid YAML at line 3"),
        ("dataset: uavid\ndataset: vdd\n", r"invalid YAML at line 2.*duplicate key 'dataset'"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_malformed_yaml(tmp_path, text, message):
    file = tmp_path / "bad.yaml"
    file.write_text(text)
    with pytest.raises(UserError, match=message) as info:
        load_vocabulary(file)
    assert str(info.value).startswith(f"{file}: ")
    assert "\n" not in str(info.value)


def test_missing_files_and_unknown_names(tmp_path):
    missing = re.escape(f"{tmp_path / 'none.yaml'}: no such file")
    with pytest.raises(UserError, match=missing):
        load_vocabulary(tmp_path / "none.yaml")
    with pytest.raises(UserError, match=missing):
        load_protocol(tmp_path / "none.yaml")
    with pytest.raises(UserError, match="unknown vocabulary 'nope'; known: .*loveda-clean"):
        load_vocabulary("nope")
    with pytest.raises(UserError, match="unknown protocol 'nope'; known: demo, dlrsd, isaid"):
        load_protocol("nope")


GOOD_ENTRY = {"dataset": "uavid", "split": "all", "vocabulary": "uavid"}
PROTOCOL = {
    "name": "p",
    "description": "test protocol",
    "train": {"dataset": "dlrsd", "split": "train", "vocabulary": "dlrsd"},
    "evaluation": [GOOD_ENTRY],
}
PROTOCOL_ERRORS = [
    (("evaluation",), _DELETE, "missing key 'evaluation'"),
    (("evaluation",), [], "evaluation: expected a non-empty list"),
    (("evaluation", 0, "vocabulary"), "nope", "evaluation 0: unknown vocabulary 'nope'; known"),
    (("evaluation", 0, "vocabulary"), "x/y.yaml", "evaluation 0: vocabulary 'x/y.yaml' must be"),
    (("evaluation", 0, "vocabulary"), "vdd", "evaluation 0: vocabulary 'vdd' .* for dataset 'vdd'"),
    (("evaluation", 0, "dataset"), "nope", "evaluation 0: dataset: unknown dataset 'nope'"),
    (("evaluation", 0, "split"), "test", "evaluation 0: unknown split 'test'"),
    (("evaluation", 0, "extra"), 1, "evaluation 0: unknown key 'extra'"),
    (("evaluation",), [GOOD_ENTRY, GOOD_ENTRY], "evaluation lists dataset 'uavid' twice"),
    (("train", "dataset"), "isaid", "train: vocabulary 'dlrsd' .* not 'isaid'"),
    (("name",), "", "name: expected a non-empty string"),
]


@pytest.mark.parametrize(("path", "value", "message"), PROTOCOL_ERRORS)
def test_protocol_errors_name_the_file(tmp_path, path, value, message):
    file = write_yaml(tmp_path / "bad.yaml", _edit(PROTOCOL, path, value))
    with pytest.raises(UserError, match=message) as info:
        load_protocol(file)
    assert str(info.value).startswith(f"{file}: ")


def test_errors_in_a_local_vocabulary_name_that_file(tmp_path):
    bad = write_yaml(tmp_path / "vocab" / "uavid.yaml", _edit(UAVID_MERGED, ("classes",), []))
    protocol = write_yaml(tmp_path / "p.yaml", PROTOCOL)
    with pytest.raises(UserError, match="classes: expected a non-empty list") as info:
        load_protocol(protocol)
    assert str(info.value).startswith(f"{bad}: ")
