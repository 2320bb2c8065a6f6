"""The command line: help texts, one-line errors with exit code 2, run/validate/leaderboard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PLUGINS

COMMANDS = [
    ["--help"],
    ["prepare", "--help"],
    ["run", "--help"],
    ["train", "--help"],
    ["leaderboard", "--help"],
    ["adapters", "list", "--help"],
    ["adapters", "validate", "--help"],
    ["adapters", "info", "--help"],
    ["datasets", "list", "--help"],
    ["demo", "--help"],
]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_every_command_has_help(cli, args):
    result = cli(*args)
    assert result.code == 0 and "Usage" in result.out


def test_help_shows_defaults_written_in_the_help_text(cli):
    """Rich would swallow an unescaped "[default: ...]" as markup."""
    text = " ".join(cli("prepare", "--help").out.split())
    assert "[default: per dataset, see README]" in text
    assert "[default: $OVRSISBENCH_DATA or ./data]" in text


def toy_run(model: str, data_root, results, *extra: str) -> list[str]:
    """Arguments of `ovrsisbench run` for a toy adapter on the synthetic demo protocol."""
    return [
        "run", "--model", f"toy_adapters:{model}", "--protocol", "demo",
        "--data-root", str(data_root), "--results", str(results), "--device", "cpu", *extra,
    ]  # fmt: skip


def assert_user_error(result, *fragments: str) -> None:
    assert result.code == 2, (result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_user_mistakes_are_one_line(cli, tmp_path, synthetic_root):
    bad_yaml = tmp_path / "broken.yaml"
    bad_yaml.write_text("name: [unclosed\n")
    assert_user_error(
        cli("run", "--model", "no-such-model", "--data-root", synthetic_root),
        "unknown model 'no-such-model'",
    )
    assert_user_error(cli("run", "--model", "x:Y", "--protocol", "nope"), "nope")
    assert_user_error(
        cli("run", "--model", "no_module_here:Thing", "--protocol", "demo"),
        "cannot import adapter module 'no_module_here'",
    )
    assert_user_error(cli("leaderboard", "--protocol", str(bad_yaml)), "broken.yaml")
    assert_user_error(
        cli("datasets", "list", "--data-root", tmp_path / "missing"), "does not exist"
    )
    assert_user_error(cli("prepare", "mars", "--src", tmp_path), "unknown dataset 'mars'")
    assert_user_error(cli("prepare", "loveda", "--src", tmp_path / "nowhere"), "does not exist")
    data = ["--data-root", tmp_path / "data"]
    assert_user_error(cli("prepare", "loveda", "--src", tmp_path, *data), "no loveda image/label")
    assert_user_error(
        cli("prepare", "vdd", "--src", tmp_path, "--source", "x"),
        "'x' is not one of 'raw', 'archive'",
    )
    assert_user_error(cli("prepare", "vdd", "--src", tmp_path, "--tile", "-1"), "--tile")
    assert_user_error(cli("prepare", "vdd", "--src", tmp_path, "--stride", "8"), "need a tile")
    assert_user_error(cli("prepare", "vdd", "--src", tmp_path, "--workers", "0"), "--workers")
    assert_user_error(
        cli("prepare", "vdd", "--src", tmp_path, "--tile", "8", "--edge", "wrap"),
        "'wrap' is not one of 'drop', 'clamp', 'pad'",
    )
    assert_user_error(cli("prepare", "vdd", "--src", tmp_path, "-o", "x=1"), "unknown option(s) x")
    assert_user_error(
        cli("prepare", "potsdam", "--src", tmp_path, "-o", "labels=blurry"), "labels='blurry'"
    )
    assert_user_error(cli("prepare", "all", "--src", tmp_path, "--tile", "8"), "one dataset")
    assert not (tmp_path / "data").exists()
    assert_user_error(cli("leaderboard", "--format", "xls"), "'xls' is not one of 'table'")
    assert_user_error(
        cli("run", "--model", "maskclip", "--device", "tpu"), "'tpu' is not one of 'cpu', 'cuda'"
    )
    assert_user_error(cli("run", "--model", "maskclip", "-o", "arch"), "KEY=VALUE")
    assert_user_error(
        cli("run", "--model", "maskclip", "-o", "colour=red", "--protocol", "demo"),
        "has no option colour",
    )
    assert_user_error(cli("train", "--model", "maskclip", "--protocol", "dlrsd"), "not trainable")


def test_run_writes_records_prints_table_and_leaderboard(
    cli, tmp_path, synthetic_root, toy_adapters
):
    args = toy_run("ColourAdapter", synthetic_root, tmp_path)
    first = cli(*args)
    assert first.code == 0, first.err
    assert "synthetic-source" in first.out and "done" in first.out
    records = sorted((tmp_path / "records").rglob("*.json"))
    assert len(records) == 2
    assert (tmp_path / "leaderboard.md").exists() and (tmp_path / "leaderboard.csv").exists()
    second = cli(*args)
    assert second.code == 0 and "skipped" in second.out

    board = cli("leaderboard", "--protocol", "demo", "--results", tmp_path, "--format", "csv")
    assert board.code == 0 and "toy_adapters:ColourAdapter" in board.out


def test_run_defaults_to_the_models_own_protocol(cli, tmp_path, synthetic_root, toy_adapters):
    args = toy_run("OwnProtocolAdapter", synthetic_root, tmp_path)
    args.remove("--protocol"), args.remove("demo")
    result = cli(*args)
    assert result.code == 0, result.err
    records = [json.loads(path.read_text()) for path in (tmp_path / "records").rglob("*.json")]
    assert {r["protocol"] for r in records} == {"demo"} and len(records) == 2


def test_an_evaluation_only_protocol_cannot_train(cli, tmp_path, synthetic_root):
    result = cli(
        "train", "--model", "rsktseg", "--backbone", "tiny", "--protocol", "segearth",
        "--data-root", synthetic_root, "--out", tmp_path / "out", "--device", "cpu",
    )  # fmt: skip
    assert_user_error(result, "protocol 'segearth'", "evaluation-only")


def test_run_exit_code_says_something_failed(cli, tmp_path, synthetic_root, toy_adapters):
    result = cli(*toy_run("FailingAdapter", synthetic_root, tmp_path))
    assert result.code == 1
    assert "simulated adapter failure" in result.err


def test_leaderboard_with_reference_marks_published_rows(cli, tmp_path):
    board = ["leaderboard", "--protocol", "isaid", "--with-reference", "--results", tmp_path]
    result = cli(*board, "--format", "csv")
    assert result.code == 0
    lines = result.out.strip().splitlines()
    assert len(lines) == 15 and all('"published (' in line for line in lines[1:])
    out = tmp_path / "board.md"
    assert cli(*board, "--out", out).code == 0
    assert "published" in out.read_text()


@pytest.mark.parametrize(
    ("adapter", "breach"),
    [
        ("WrongShapeAdapter", "wrong shape"),
        ("NaNAdapter", "non-finite values"),
        ("DeafAdapter", "set_vocabulary is ignored"),
    ],
)
def test_validate_names_each_breach(cli, toy_adapters, adapter, breach):
    result = cli("adapters", "validate", f"toy_adapters:{adapter}")
    assert result.code == 1
    assert breach in result.out
    assert "breaks the contract" in result.err


def test_validate_accepts_a_good_third_party_adapter(cli, toy_adapters):
    result = cli("adapters", "validate", "toy_adapters:ColourAdapter")
    assert result.code == 0, result.out
    assert "passed all" in result.out


def test_datasets_list_shows_counts(cli, synthetic_root):
    result = cli("datasets", "list", "--data-root", synthetic_root)
    assert result.code == 0
    assert "synthetic-source" in result.out and "synthetic-target" in result.out


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, synthetic_root):
    env = {**os.environ, "PYTHONPATH": f"{PLUGINS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def command(results: Path, model: str) -> list[str]:
        return [sys.executable, "-m", "ovrsisbench"] + toy_run(
            model, synthetic_root, results, "--batch-size", "1", "--checkpoint-seconds", "0"
        )

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        command(killed, "SlowAdapter"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not list(killed.rglob("*.partial.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    for path in killed.rglob("*.json"):
        json.loads(path.read_text())  # never a truncated JSON file
    assert list(killed.rglob("*.partial.json")), "the run was not interrupted half-way"

    whole = tmp_path / "whole"
    for results in (killed, whole):
        subprocess.run(command(results, "SlowAdapter"), env=env, check=True, capture_output=True)

    def matrices(results: Path) -> dict[str, list]:
        return {
            p.name: json.loads(p.read_text())["confusion"]
            for p in (results / "records").rglob("*.json")
        }

    assert matrices(killed) == matrices(whole) and len(matrices(whole)) == 2
    assert not list(killed.rglob("*.partial.json"))


def test_ctrl_c_is_one_line_and_exit_code_130(cli, monkeypatch, synthetic_root, tmp_path):
    from ovrsisbench.evaluation import Evaluator

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Evaluator, "run", ctrl_c)
    result = cli(
        "run", "--model", "maskclip", "--backbone", "tiny", "--protocol", "demo",
        "--data-root", synthetic_root, "--results", tmp_path,
    )  # fmt: skip
    assert result.code == 130
    assert result.err.strip().startswith(
        "error: interrupted (run, prepare and demo --out DIR resume"
    )


def test_run_with_a_missing_data_root_is_a_user_error(cli, tmp_path):
    result = cli(
        "run",
        "--model",
        "maskclip",
        "--backbone",
        "tiny",
        "--protocol",
        "demo",
        "--data-root",
        tmp_path / "absent",
        "--results",
        tmp_path,
    )
    assert_user_error(result, "data root", "does not exist")


def test_adapters_list_and_info(cli):
    listed = cli("adapters", "list")
    assert listed.code == 0 and "maskclip" in listed.out and "built-in" in listed.out
    info = cli("adapters", "info", "maskclip", "--backbone", "vit-b", "--json")
    assert info.code == 0
    counts = json.loads(info.out)
    assert set(counts) == {"total", "trainable", "groups"}
    assert set(counts["groups"]) == {"clip", "head"}
    assert all(set(group) == {"total", "trainable"} for group in counts["groups"].values())
    assert counts["total"] == sum(g["total"] for g in counts["groups"].values())
    assert counts["trainable"] == 0  # training-free: every CLIP weight frozen
    larger = json.loads(cli("adapters", "info", "maskclip", "--backbone", "vit-l", "--json").out)
    assert larger["total"] > counts["total"]
    table = cli("adapters", "info", "maskclip")
    assert table.code == 0 and "clip" in table.out and "all" in table.out


def test_leaderboard_policy_recomputes_from_the_matrices(
    cli, tmp_path, synthetic_root, toy_adapters
):
    from ovrsisbench.metrics import compute_scores

    assert cli(*toy_run("ColourAdapter", synthetic_root, tmp_path)).code == 0
    board = cli(
        "leaderboard",
        "--protocol",
        "demo",
        "--results",
        tmp_path,
        "--format",
        "csv",
        "--policy",
        "mmseg",
    )
    assert board.code == 0
    header, row = board.out.strip().splitlines()
    values = dict(zip(header.split(","), row.split(","), strict=True))
    record = next(
        json.loads(p.read_text())
        for p in (tmp_path / "records").rglob("*.json")
        if json.loads(p.read_text())["dataset"] == "synthetic-target"
    )
    expected = compute_scores(record["confusion"], "mmseg").miou
    assert float(values["synthetic-target mIoU"]) == pytest.approx(expected)
    assert_user_error(
        cli("leaderboard", "--protocol", "demo", "--policy", "pangaea"),
        "'pangaea' is not one of 'exclude-absent', 'mmseg'",
    )


def test_long_errors_stay_on_one_line_in_a_narrow_terminal(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    result = cli("run", "--model", "a_rather_long_module_name_that_does_not_exist:SomeClass")
    assert_user_error(result, "a_rather_long_module_name_that_does_not_exist")


def test_partial_run_still_writes_the_leaderboard(cli, tmp_path, synthetic_root, toy_adapters):
    result = cli(
        *toy_run("ColourAdapter", synthetic_root, tmp_path, "--datasets", "synthetic-source")
    )
    assert result.code == 0, result.err
    assert "toy_adapters:ColourAdapter" in (tmp_path / "leaderboard.md").read_text()
    assert (
        cli("leaderboard", "--protocol", "dlrsd", "--with-reference", "--results", tmp_path).code
        == 0
    )


@pytest.mark.parametrize(
    ("adapter", "message"),
    [("UnloadableAdapter", "NotImplementedError"), ("PickyAdapter", "needs a config file")],
)
def test_adapters_that_cannot_load_are_named_not_tracebacks(
    cli, tmp_path, synthetic_root, toy_adapters, adapter, message
):
    validated = cli("adapters", "validate", f"toy_adapters:{adapter}")
    assert validated.code == 1 and message in validated.out and "Traceback" not in validated.err
    assert_user_error(cli(*toy_run(adapter, synthetic_root, tmp_path)), message)


def test_corrupt_weights_are_a_one_line_error(cli, tmp_path):
    weights = tmp_path / "broken.pt"
    weights.write_bytes(b"not a checkpoint")
    result = cli("adapters", "validate", "maskclip", "--backbone", "tiny", "--weights", weights)
    assert result.code == 1 and "broken.pt" in result.out
