"""What a new user sees: --version, choices in --help and shell completion, "did you mean",
hints instead of empty answers, tables at 80 columns, progress lines without a terminal,
per-class results (`show`), and a start-up that imports no heavy module."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_cli import COMMANDS, assert_user_error, toy_run

import ovrsisbench

HELP_CHOICES = {
    ("run",): ["<cpu|cuda>", "<vit-b|vit-l|convnext-b|convnext-l|tiny>"],
    ("train",): ["<auto|bf16|off>", "<cpu|cuda>"],
    ("leaderboard",): ["<table|csv|md>", "<exclude-absent|mmseg>"],
    ("prepare",): ["<raw|archive>", "<drop|clamp|pad>"],
    ("show",): ["<exclude-absent|mmseg>"],
}


def test_version(cli):
    result = cli("--version")
    assert result.code == 0 and result.out == f"ovrsisbench {ovrsisbench.__version__}\n"


@pytest.mark.parametrize("command", list(HELP_CHOICES), ids=" ".join)
def test_help_lists_the_fixed_choices(cli, command):
    text = cli(*command, "--help").out
    for choices in HELP_CHOICES[command]:
        assert choices in text, text


@pytest.mark.parametrize("args", [*COMMANDS, ["show", "--help"]], ids=" ".join)
def test_help_has_no_markup_and_no_none_choice(cli, args):
    text = cli(*args).out
    assert "``" not in text and "\\[" not in text and "|None" not in text, text


def test_shell_completion_offers_the_choices(cli, monkeypatch):
    monkeypatch.setenv("_OVRSISBENCH_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "ovrsisbench leaderboard --format ")
    monkeypatch.setenv("COMP_CWORD", "3")
    assert cli().out.split() == ["table", "csv", "md"]
    monkeypatch.setenv("COMP_WORDS", "ovrsisbench prepare ")
    monkeypatch.setenv("COMP_CWORD", "2")
    assert "potsdam" in cli().out.split() and "all" in cli().out.split()


@pytest.mark.parametrize(
    ("args", "suggestion"),
    [
        (["run", "--model", "rsktsge", "--protocol", "demo"], "did you mean 'rsktseg'?"),
        (["run", "--model", "maskclip", "--protocol", "dlrds"], "did you mean 'dlrsd'?"),
        (["prepare", "potsdm", "--src", "."], "did you mean 'potsdam'?"),
        (
            ["run", "--model", "maskclip", "--protocol", "demo", "--datasets", "synthetic-sorce"],
            "did you mean 'synthetic-source'?",
        ),
    ],
)
def test_a_mistyped_name_gets_a_suggestion(cli, args, suggestion):
    assert_user_error(cli(*args), suggestion)


def test_adapters_list_says_what_each_model_is(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    result = cli("adapters", "list")
    assert result.code == 0
    from ovrsisbench.registry import builtin_adapters

    for name, cls in builtin_adapters().items():
        assert cls.description and "docstring" not in cls.description, name
        assert len(cls.description) <= 80 and name in result.out
    assert "docstring" not in result.out
    assert max(len(line) for line in result.out.splitlines()) <= 80


def test_import_of_the_command_line_stays_light():
    """`ovrsisbench --help` must not pay for torch or pandas (bench/cli_start.py times it)."""
    code = (
        "import sys, ovrsisbench.cli; "
        "print(sorted(m for m in ('torch', 'pandas', 'numpy', 'open_clip') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result


# -- hints instead of empty answers ---------------------------------------------------------------
def test_an_empty_leaderboard_names_the_protocols_that_have_records(
    cli, tmp_path, synthetic_root, toy_adapters
):
    assert cli(*toy_run("ColourAdapter", synthetic_root, tmp_path)).code == 0
    result = cli("leaderboard", "--results", tmp_path)  # the default protocol: dlrsd
    assert result.code == 0
    assert "no records of protocol dlrsd" in result.err and "--protocol demo" in result.err
    empty = cli("leaderboard", "--results", tmp_path / "nothing")
    assert empty.code == 0 and "no result records in" in empty.err


def test_datasets_list_hints_like_run(cli, tmp_path):
    missing = cli("datasets", "list", "--data-root", tmp_path / "absent")
    assert_user_error(missing, "give --data-root or $OVRSISBENCH_DATA")
    empty = cli("datasets", "list", "--data-root", tmp_path)
    assert empty.code == 0 and "ovrsisbench prepare DATASET --src PATH" in empty.out


# -- 80 columns -----------------------------------------------------------------------------------
def test_run_output_fits_80_columns_without_cutting_names(
    cli, monkeypatch, tmp_path, synthetic_root, toy_adapters
):
    monkeypatch.setenv("COLUMNS", "80")
    result = cli(*toy_run("ColourAdapter", synthetic_root, tmp_path))
    assert result.code == 0, result.err
    table = result.out[: result.out.index("records: ")]
    assert max(len(line) for line in table.splitlines()) <= 80, result.out
    assert "synthetic-source" in table and "synthetic-target" in table and "…" not in table
    folder = tmp_path / "records" / "demo" / "toy_adapters_ColourAdapter"
    assert f"records: {folder}" in result.out
    line = next(line for line in table.splitlines() if "synthetic-source" in line)
    numbers = [cell for cell in line.split("│")[3:-1]]
    assert all(cell.startswith(" ") and cell.endswith(" ") and cell.strip() for cell in numbers)
    assert all(cell[-2] != " " for cell in numbers)  # right-aligned
    # the progress without a terminal: one plain line per dataset at the end
    assert "toy_adapters:ColourAdapter · synthetic-source: 6/6 (100%)" in result.err


def test_leaderboard_table_fits_80_columns(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "80")
    args = ["leaderboard", "--protocol", "dlrsd", "--with-reference", "--results", tmp_path]
    result = cli(*args, "--format", "table")
    assert result.code == 0
    assert max(len(line) for line in result.out.splitlines()) <= 80, result.out
    assert "continued" in result.out and "RSKT-Seg" in result.out and "vaihingen" in result.out
    refused = cli(*args, "--format", "table", "--out", tmp_path / "x.md")
    assert_user_error(refused, "--format table is for the terminal")


# -- show -----------------------------------------------------------------------------------------
def test_show_prints_per_class_results_with_class_names(
    cli, monkeypatch, tmp_path, synthetic_root, toy_adapters
):
    monkeypatch.setenv("COLUMNS", "80")
    assert cli(*toy_run("ColourAdapter", synthetic_root, tmp_path)).code == 0
    model = "toy_adapters:ColourAdapter"
    result = cli("show", "--model", model, "--dataset", "synthetic-target", "--results", tmp_path)
    assert result.code == 0, result.err
    [path] = (tmp_path / "records").rglob("synthetic-target*.json")
    record = json.loads(path.read_text())
    assert f"record: {path}" in result.out and f"mIoU {record['metrics']['mIoU']:.2f}" in result.out
    lines = result.out.splitlines()
    for name, iou, acc in zip(
        record["classes"], record["per_class"]["iou"], record["per_class"]["acc"], strict=True
    ):
        row = next(line for line in lines if line.startswith(f"│ {name} "))
        cells = [cell.strip() for cell in row.split("│")[1:-1]]
        assert cells[1:3] == [
            "-" if iou is None else f"{iou:.2f}",
            "-" if acc is None else f"{acc:.2f}",
        ]
    table = result.out[result.out.index("┏") :]
    assert max(len(line) for line in table.splitlines()) <= 80
    same = cli("show", path, "--results", tmp_path)
    assert same.code == 0 and same.out == result.out


def test_show_recomputes_under_another_policy(cli, tmp_path, synthetic_root, toy_adapters):
    assert cli(*toy_run("ColourAdapter", synthetic_root, tmp_path)).code == 0
    [path] = (tmp_path / "records").rglob("synthetic-source*.json")
    from ovrsisbench.metrics import compute_scores

    record = json.loads(path.read_text())
    expected = compute_scores(record["confusion"], "mmseg")
    result = cli("show", path, "--policy", "mmseg")
    assert (
        result.code == 0 and f"mIoU {expected.miou:.2f}" in result.out and "(mmseg)" in result.out
    )


def test_show_says_what_exists_when_nothing_matches(cli, tmp_path, synthetic_root, toy_adapters):
    assert cli(*toy_run("ColourAdapter", synthetic_root, tmp_path)).code == 0
    base = ["show", "--results", tmp_path, "--dataset"]
    assert_user_error(
        cli(*base, "synthetic-source", "--model", "toy_adapters:ColorAdapter"),
        "did you mean 'toy_adapters:ColourAdapter'?",
    )
    assert_user_error(
        cli(*base, "synthetic-sauce", "--model", "toy_adapters:ColourAdapter"),
        "its datasets: synthetic-source, synthetic-target",
    )
    assert_user_error(
        cli(*base, "synthetic-source", "--model", "toy_adapters:ColourAdapter", "-o", "gain=9"),
        "matches",
    )
    assert_user_error(cli("show", "--model", "x"), "both --model and --dataset")
    assert_user_error(cli("show", "--results", tmp_path / "none", "--model", "x", "--dataset", "y"),
                      "no result records")  # fmt: skip


def test_backbone_choices_are_the_built_in_models_backbones():
    from ovrsisbench.choices import BACKBONES
    from ovrsisbench.registry import builtin_adapters

    offered = {
        b for cls in builtin_adapters().values() for b in cls.choices.get("backbone", ()) if b
    }
    assert set(BACKBONES) == offered


def test_a_bad_thread_setting_is_one_line(cli, monkeypatch):
    monkeypatch.setenv("OVRSISBENCH_THREADS", "lots")
    assert_user_error(cli("leaderboard"), "OVRSISBENCH_THREADS='lots' must be a positive integer")


def test_python_m_is_the_same_command():
    """One program name whatever starts it: help, hints and the completion variable agree."""
    result = subprocess.run(
        [sys.executable, "-m", "ovrsisbench", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.startswith("Usage: ovrsisbench [OPTIONS]")
