"""``ovrsisbench submit`` / ``verify`` and submitted rows on the leaderboard: a genuine
submission verifies and shows up, every kind of tampering is rejected with its reason, and
verification never imports the code a submission names."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from launch import environment

from ovrsisbench.evaluation import EvalSettings, Evaluator
from ovrsisbench.io import json_sha256
from ovrsisbench.metrics import compute_scores
from ovrsisbench.protocol import load_protocol
from ovrsisbench.registry import create_adapter
from ovrsisbench.results import ResultStore
from ovrsisbench.submission import SUBMISSION_SCHEMA, verify_submission


def evaluate(results: Path, data_root: Path, maps: int | None = None, **options) -> None:
    adapter = create_adapter("maskclip", backbone="tiny", **options)
    adapter.load(None, "cpu")
    protocol = load_protocol("demo")
    settings = EvalSettings(save_predictions=maps)
    evaluator = Evaluator(adapter, "maskclip", protocol, data_root, ResultStore(results), settings)
    assert all(o.status == "done" for o in evaluator.run(list(protocol.evaluation)))


@pytest.fixture(scope="module")
def results(synthetic_root, tmp_path_factory) -> Path:
    """Records of the tiny MaskCLIP on both demo datasets."""
    folder = tmp_path_factory.mktemp("results")
    evaluate(folder, synthetic_root)
    return folder


@pytest.fixture(scope="module")
def genuine(results) -> dict:
    """A submission as ``ovrsisbench submit`` writes it (built in-process)."""
    from ovrsisbench.submission import build_submission

    return json.loads(json.dumps(build_submission("maskclip", results)))


def rehash(submission: dict) -> dict:
    """Record hashes matching the (edited) records: only the deeper checks can object."""
    for item in submission["records"]:
        item["sha256"] = json_sha256(item["record"])
    return submission


def recompute(record: dict) -> None:
    """Metrics and per-class counts consistent with the record's (edited) matrix."""
    matrix = np.asarray(record["confusion"])
    scores = compute_scores(matrix, record["absent_class_policy"])
    record["metrics"] = scores.summary()
    record["per_class"] = {
        "iou": scores.iou,
        "acc": scores.acc,
        "gt_pixels": matrix.sum(axis=1).tolist(),
        "pred_pixels": matrix.sum(axis=0).tolist(),
    }


def problems(submission: dict) -> str:
    return "\n".join(verify_submission(submission).problems)


# -- submit ---------------------------------------------------------------------------------------
def test_submission_contents(genuine, results):
    assert genuine["schema"] == SUBMISSION_SCHEMA
    adapter = genuine["adapter"]
    assert adapter["name"] == "maskclip" and adapter["origin"] == "built-in"
    assert adapter["version"] and adapter["source_url"].startswith("https://")
    assert adapter["licence"] and adapter["options"]["backbone"] == "tiny"
    assert adapter["params"]["total"] > 0 and adapter["inference"]
    assert [e["dataset"] for e in genuine["protocol"]["evaluation"]] == [
        "synthetic-source",
        "synthetic-target",
    ]
    stored = {p.name: json.loads(p.read_text()) for p in (results / "records").rglob("*.json")}
    assert sorted(json_sha256(r) for r in stored.values()) == sorted(
        item["sha256"] for item in genuine["records"]
    )
    assert "packages" in genuine["environment"]
    assert verify_submission(genuine).verified


def test_saved_prediction_maps_stay_behind(synthetic_root, tmp_path):
    """Their paths name files of the local results folder; a submission holds no files."""
    from ovrsisbench.submission import build_submission

    evaluate(tmp_path, synthetic_root, maps=1)
    assert all(
        json.loads(path.read_text())["predictions"]["files"]
        for path in (tmp_path / "records").rglob("*.json")
    )
    submission = json.loads(json.dumps(build_submission("maskclip", tmp_path)))
    assert [item["record"]["predictions"] for item in submission["records"]] == [None, None]
    assert verify_submission(submission).verified


def test_cli_submit_then_verify(cli, results, synthetic_root, tmp_path):
    out = tmp_path / "maskclip-demo.json"
    done = cli("submit", "--model", "maskclip", "--out", out, "--results", results)
    assert done.code == 0, done.err
    assert "written" in done.out and json.loads(out.read_text())["schema"] == SUBMISSION_SCHEMA
    checked = cli("verify", out, "--data-root", synthetic_root, "--check-labels")
    assert checked.code == 0, checked.out
    assert "VERIFIED" in checked.out and "note:" not in checked.out


def test_submit_needs_complete_and_unambiguous_records(cli, synthetic_root, tmp_path):
    results = tmp_path / "results"
    evaluate(results, synthetic_root, seed=0)
    one = results / "records" / "demo" / "maskclip"
    only_source = tmp_path / "partial"
    shutil.copytree(results, only_source)
    for path in (only_source / "records").rglob("synthetic-target*.json"):
        path.unlink()
    missing = cli(
        "submit", "--model", "maskclip", "--out", tmp_path / "x.json", "--results", only_source
    )
    assert missing.code == 2 and "no complete set of records" in missing.err
    assert one.is_dir()

    evaluate(results, synthetic_root, seed=1)  # other random weights: a second configuration
    args = ("submit", "--model", "maskclip", "--out", tmp_path / "s.json", "--results", results)
    ambiguous = cli(*args)
    assert ambiguous.code == 2 and "several complete configurations" in ambiguous.err
    assert "weights=" in ambiguous.err
    picked = cli(*args, "-o", "seed=1")
    assert picked.code == 0, picked.err
    assert json.loads((tmp_path / "s.json").read_text())["adapter"]["options"]["seed"] == 1
    unknown = cli("submit", "--model", "nope", "--out", tmp_path / "n.json", "--results", results)
    assert unknown.code == 2


# -- tampering ------------------------------------------------------------------------------------
def edited_metric(s: dict) -> None:
    s["records"][0]["record"]["metrics"]["mIoU"] += 0.5
    rehash(s)


def removed_dataset(s: dict) -> None:
    del s["records"][1]


def changed_class_list(s: dict) -> None:
    s["records"][0]["record"]["classes"][1] = "skyscraper"
    rehash(s)


def negative_count(s: dict) -> None:
    s["records"][1]["record"]["confusion"][0][1] = -5
    rehash(s)


def wrong_hash(s: dict) -> None:
    s["records"][0]["sha256"] = "0" * 64


def edited_record_keeping_its_hash(s: dict) -> None:
    record = s["records"][0]["record"]
    record["confusion"][0][0] += 100
    recompute(record)  # consistent numbers, but no longer the record that was hashed


def changed_vocabulary_hash(s: dict) -> None:
    s["records"][0]["record"]["vocabulary"]["sha256"] = "f" * 64
    rehash(s)


def stale_protocol(s: dict) -> None:
    s["protocol"]["evaluation"][0]["split"] = "train"


def inconsistent_row_sums(s: dict) -> None:
    s["records"][0]["record"]["per_class"]["gt_pixels"][0] += 1
    rehash(s)


def wrong_shape(s: dict) -> None:
    s["records"][0]["record"]["confusion"].pop()
    rehash(s)


def other_model_record(s: dict) -> None:
    s["records"][1]["record"]["model"] = "rsktseg"
    rehash(s)


def unknown_schema(s: dict) -> None:
    s["schema"] = "ovrsisbench.submission/99"


def duplicated_dataset(s: dict) -> None:
    s["records"][1] = copy.deepcopy(s["records"][0])


def malformed_environment(s: dict) -> None:
    s["records"][0]["record"]["environment"] = {"data": {"version": "raw"}}
    rehash(s)


def overflowing_counts(s: dict) -> None:
    """Cells whose int64 row sums would wrap around to the true ones."""
    for item in s["records"]:
        row = item["record"]["confusion"][0]
        for column in range(4):
            row[column] += 2**62
        item["record"]["metrics"]["mIoU"] = 1e15
    rehash(s)


def huge_metric(s: dict) -> None:
    s["records"][0]["record"]["metrics"]["mIoU"] = 10**400
    rehash(s)


def metric_as_text(s: dict) -> None:
    s["records"][0]["record"]["metrics"]["mIoU"] = "17.7"
    rehash(s)


def unhashable_dataset(s: dict) -> None:
    s["records"][0]["record"]["dataset"] = {}
    rehash(s)


def float_counts(s: dict) -> None:
    s["records"][0]["record"]["confusion"][0][0] = 3.0
    rehash(s)


def boolean_count(s: dict) -> None:
    s["records"][0]["record"]["num_images"] = True
    rehash(s)


def mixed_data_sources(s: dict) -> None:
    s["records"][1]["record"]["environment"]["data"]["version"]["source"] = "archive"
    rehash(s)


def invented_data_source(s: dict) -> None:
    for item in s["records"]:
        item["record"]["environment"]["data"]["version"]["source"] = "ours (raw data)"
    rehash(s)


def markdown_in_the_name(s: dict) -> None:
    name = "x\n| 1 | fake | | ours (raw data) | 99.00"
    s["adapter"]["name"] = name
    for item in s["records"]:
        item["record"]["model"] = name
    rehash(s)


def options_not_an_object(s: dict) -> None:
    s["adapter"]["options"] = ["arch", "tiny"]


TAMPERING = {
    overflowing_counts: "must hold integers from 0 to",
    huge_metric: "mIoU",
    metric_as_text: "mIoU",
    unhashable_dataset: "dataset, split or vocabulary malformed",
    float_counts: "must hold integers from 0 to",
    boolean_count: "num_images must be a positive integer",
    mixed_data_sources: "mix data sources",
    invented_data_source: "unknown data source",
    markdown_in_the_name: "adapter.name",
    options_not_an_object: "adapter.options",
    malformed_environment: "environment must be a JSON object",
    edited_metric: "mIoU",
    removed_dataset: "no record for synthetic-target",
    changed_class_list: "class list differs",
    negative_count: "must hold integers from 0 to",
    wrong_hash: "SHA-256 differs",
    edited_record_keeping_its_hash: "SHA-256 differs",
    changed_vocabulary_hash: "vocabulary hash differs",
    stale_protocol: "differs from our definition of the protocol",
    inconsistent_row_sums: "gt_pixels are not the matrix's row sums",
    wrong_shape: "must be 5 x 5",
    other_model_record: "is of model 'rsktseg'",
    unknown_schema: "unknown 'ovrsisbench.submission/99'",
    duplicated_dataset: "appears twice",
}


@pytest.mark.parametrize("tamper", list(TAMPERING), ids=lambda f: f.__name__)
def test_tampering_is_rejected_with_its_reason(genuine, tamper):
    submission = copy.deepcopy(genuine)
    tamper(submission)
    found = problems(submission)
    assert TAMPERING[tamper] in found, found


def test_cli_rejects_with_every_problem_and_exit_code_1(cli, genuine, tmp_path):
    submission = copy.deepcopy(genuine)
    edited_metric(submission)
    negative_count(submission)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(submission))
    result = cli("verify", path, "--data-root", tmp_path / "no-data")
    assert result.code == 1
    assert "REJECTED" in result.out and "mIoU" in result.out and "integers from 0" in result.out
    malformed = tmp_path / "malformed.json"
    malformed.write_text('{"schema": "ovrsisbench.submission/1", "records": [')
    broken = cli("verify", malformed)
    assert broken.code == 1 and "malformed JSON" in broken.out
    absent = cli("verify", tmp_path / "absent.json")
    assert absent.code == 2 and "does not exist" in absent.err


def test_local_data_checks_counts_and_labels(cli, genuine, synthetic_root, tmp_path):
    """Consistent but false numbers pass the data-only checks; the prepared data catch them:
    a wrong image count, and (reading the labels) ground-truth pixels moved between classes."""
    miscounted = copy.deepcopy(genuine)
    miscounted["records"][0]["record"]["num_images"] += 1
    rehash(miscounted)
    moved = copy.deepcopy(genuine)
    matrix = moved["records"][1]["record"]["confusion"]
    matrix[0][0], matrix[1][0] = matrix[0][0] - 10, matrix[1][0] + 10
    recompute(moved["records"][1]["record"])
    rehash(moved)
    for submission, needs_labels, expected in (
        (miscounted, False, "7 images stated, the split has 6"),
        (moved, True, "ground-truth pixels per class differ"),
    ):
        assert verify_submission(submission).verified
        path = tmp_path / "s.json"
        path.write_text(json.dumps(submission))
        flags = ["--check-labels"] if needs_labels else []
        result = cli("verify", path, "--data-root", synthetic_root, *flags)
        assert result.code == 1 and expected in result.out, result.out
    elsewhere = cli("verify", tmp_path / "s.json", "--data-root", tmp_path)
    assert elsewhere.code == 0 and "not prepared under" in elsewhere.out


# -- never importing submitted code ---------------------------------------------------------------
@pytest.mark.parametrize("model", ["evil_module:Evil", "no_such_package.anywhere:Thing"])
def test_verify_never_imports_submitted_code(genuine, tmp_path, model):
    """A submission naming a module that, imported, would leave a marker file verifies purely
    on its data; a changed record still fails on its data alone."""
    marker = tmp_path / "imported"
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "evil_module.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\nclass Evil: pass\n"
    )
    submission = copy.deepcopy(genuine)
    submission["adapter"]["name"] = submission["adapter"]["origin"] = model
    for item in submission["records"]:
        item["record"]["model"] = model
    rehash(submission)
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(submission))
    edited_metric(submission)
    submission["records"][0]["sha256"] = json_sha256(submission["records"][0]["record"])
    bad.write_text(json.dumps(submission))
    env = environment(PYTHONPATH=str(plugins))
    run = [sys.executable, "-m", "ovrsisbench", "verify", "--data-root", str(tmp_path / "none")]
    verified = subprocess.run([*run, str(good)], env=env, capture_output=True, text=True)
    rejected = subprocess.run([*run, str(bad)], env=env, capture_output=True, text=True)
    assert verified.returncode == 0 and "VERIFIED" in verified.stdout, verified.stdout
    assert rejected.returncode == 1 and "mIoU" in rejected.stdout, rejected.stdout
    assert not marker.exists()
    assert "evil_module" not in sys.modules


# -- the leaderboard ------------------------------------------------------------------------------
def test_verified_submissions_are_submitted_rows_and_others_are_refused(cli, genuine, tmp_path):
    results = tmp_path / "results"
    folder = results / "submissions"
    folder.mkdir(parents=True)
    (folder / "genuine.json").write_text(json.dumps(genuine))
    tampered = copy.deepcopy(genuine)
    edited_metric(tampered)
    (folder / "tampered.json").write_text(json.dumps(tampered))
    (folder / "broken.json").write_text("{")

    board = cli("leaderboard", "--protocol", "demo", "--results", results, "--format", "csv")
    assert board.code == 0, board.err
    lines = board.out.strip().splitlines()
    assert len(lines) == 2 and "submitted (synthetic data)" in lines[1]
    assert lines[1].split(",")[1] == "maskclip"
    assert "tampered.json: refused:" in board.err and "mIoU" in board.err
    assert "broken.json: refused: malformed JSON" in board.err

    from ovrsisbench.leaderboard import write_leaderboards

    write_leaderboards(results, [load_protocol("demo")])
    markdown = (results / "leaderboard.md").read_text()
    assert "submitted (synthetic data)" in markdown and "## Refused submissions" in markdown
    assert "tampered.json: refused" in markdown


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"schema": NaN}', "NaN is not a JSON number"),
        ('{"schema": Infinity}', "Infinity is not a JSON number"),
        ("[" * 100_000 + "]" * 100_000, "malformed JSON"),
        ('{"n": ' + "9" * 5000 + "}", "malformed JSON"),
        ("[1, 2]", "submission: must be a JSON object"),
    ],
    ids=["nan", "infinity", "deep", "huge-integer", "not-an-object"],
)
def test_hostile_json_is_rejected_not_a_traceback(tmp_path, text, expected):
    from ovrsisbench.submission import read_submission

    path = tmp_path / "hostile.json"
    path.write_text(text)
    verdict = read_submission(path)
    assert not verdict.verified and expected in verdict.problems[0], verdict.problems


def test_every_problem_is_reported_also_with_a_bad_adapter_block(genuine):
    submission = copy.deepcopy(genuine)
    submission["adapter"]["version"] = 3
    edited_metric(submission)
    found = problems(submission)
    assert "adapter.version" in found and "mIoU" in found


def test_a_module_class_adapter_submits_under_its_run_name(
    cli, toy_adapters, synthetic_root, tmp_path
):
    from tests_helpers import run_toy

    results = tmp_path / "results"
    assert all(o.status == "done" for o in run_toy(toy_adapters, synthetic_root, results))
    out = tmp_path / "toy.json"
    model = f"{toy_adapters}:ColourAdapter"
    done = cli("submit", "--model", model, "--out", out, "--results", results)
    assert done.code == 0, done.err
    submission = json.loads(out.read_text())
    assert submission["adapter"]["name"] == model and submission["adapter"]["origin"] == model
    assert verify_submission(submission).verified


def test_leaderboard_placement_duplicates_and_same_named_protocols(cli, genuine, tmp_path):
    """Copies of one submission make one row (the copy is refused); a protocol file reusing the
    name 'demo' with other entries gets no submitted row; cells cannot break the table."""
    results = tmp_path / "results"
    folder = results / "submissions"
    folder.mkdir(parents=True)
    (folder / "a.json").write_text(json.dumps(genuine))
    (folder / "b.json").write_text(json.dumps(genuine))
    (folder / "dangling.json").symlink_to(tmp_path / "nowhere.json")
    board = cli("leaderboard", "--protocol", "demo", "--results", results, "--format", "csv")
    assert board.code == 0, board.err
    assert board.out.count("submitted (synthetic data)") == 1
    assert "b.json: refused: the same records as a.json" in board.err
    assert "dangling.json: refused: unreadable" in board.err

    swapped = yaml_protocol(tmp_path, reverse=True)
    other = cli("leaderboard", "--protocol", swapped, "--results", results, "--format", "csv")
    assert other.code == 0, other.err
    assert "submitted" not in other.out

    from ovrsisbench.leaderboard import _markdown_cell

    assert _markdown_cell("a | b\n| c") == "a \\| b \\| c"


def yaml_protocol(folder: Path, reverse: bool) -> Path:
    """The demo protocol under its own name, its evaluation entries in another order."""
    from importlib import resources

    import yaml

    text = resources.files("ovrsisbench.protocols").joinpath("demo.yaml").read_text()
    data = yaml.safe_load(text)
    if reverse:
        data["evaluation"].reverse()
    path = folder / "demo-swapped.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_provenance_is_the_class_s_own_not_inherited():
    from ovrsisbench.adapters.maskclip import MaskCLIPAdapter
    from ovrsisbench.registry import AdapterEntry

    class MyCLIP(MaskCLIPAdapter):
        name = "my-clip"

    mine = AdapterEntry("my-clip", "my_module:MyCLIP", MyCLIP).provenance()
    assert mine["source_url"] is None and mine["licence"] is None
    builtin = AdapterEntry("maskclip", "built-in", MaskCLIPAdapter).provenance()
    assert builtin["source_url"] == MaskCLIPAdapter.source_url
