"""What the commands show: plain progress lines when the output is not a terminal, and tables
that fit 80 columns (numbers right-aligned, wide tables split, headers never cut mid-word)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from rich.progress import Progress

from ovrsisbench.display import (
    PLAIN_MIN_SECONDS,
    PLAIN_SECONDS,
    PlainProgress,
    format_number,
    make_progress,
    print_frame,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def plain(width: int = 200) -> tuple[PlainProgress, Clock, io.StringIO]:
    out = io.StringIO()
    clock = Clock()
    return PlainProgress(Console(file=out, width=width), clock), clock, out


def test_a_terminal_gets_bars_and_anything_else_plain_lines():
    assert isinstance(make_progress(Console(file=io.StringIO(), force_terminal=True)), Progress)
    assert isinstance(make_progress(Console(file=io.StringIO())), PlainProgress)


def test_plain_lines_every_tenth_and_at_the_end():
    progress, clock, out = plain()
    task = progress.add_task("evaluating", total=100)
    for _ in range(100):
        clock.now += PLAIN_MIN_SECONDS / 5  # a tenth of the task every 2 * PLAIN_MIN_SECONDS
        progress.advance(task)
    lines = out.getvalue().splitlines()
    assert len(lines) == 10, lines
    assert lines[0] == "evaluating: 10/100 (10%), 0:10 elapsed, about 1:30 left"
    assert lines[-1] == "evaluating: 100/100 (100%), 1:40 elapsed"
    assert progress.tasks[task].completed == 100


def test_a_short_task_prints_one_line_and_a_slow_one_one_per_30_s():
    progress, clock, out = plain()
    quick = progress.add_task("quick", total=24)
    progress.advance(quick, 24)
    slow = progress.add_task("slow", total=1000)
    for _ in range(3):
        clock.now += PLAIN_SECONDS
        progress.advance(slow)  # 0.1 % each: no tenth crossed, but 30 s passed
    progress.update(slow, description="slow · loss 0.5")
    clock.now += 1
    progress.advance(slow, 997)
    assert out.getvalue().splitlines() == [
        "quick: 24/24 (100%), 0:00 elapsed",
        "slow: 1/1,000 (0%), 0:30 elapsed, about 8:19:30 left",
        "slow: 2/1,000 (0%), 1:00 elapsed, about 8:19:00 left",
        "slow: 3/1,000 (0%), 1:30 elapsed, about 8:18:30 left",
        "slow · loss 0.5: 1,000/1,000 (100%), 1:31 elapsed",
    ]


def test_format_number():
    assert format_number(1.0) == "1.00" and format_number(None) == ""
    assert format_number(float("nan")) == "" and format_number(pd.NA) == ""
    assert format_number("text") == "text" and format_number(3) == "3"


def leaderboard_like(datasets: int, rows: int = 3) -> pd.DataFrame:
    data: dict[str, list] = {
        "rank": pd.array(range(1, rows + 1), dtype="Int64"),
        "model": [f"model-{i}" for i in range(rows)],
        "config": ["backbone=vit-b inference=slide"] * rows,
        "weights": [f"{i:012x} (run trained-{i})" for i in range(rows)],
        "kind": ["ours (raw data)"] * rows,
    }
    for index in range(datasets):
        for metric in ("mIoU", "mACC"):
            data[f"dataset-number-{index} {metric}"] = [10.0 * index + r for r in range(rows)]
    data["mean mIoU"] = [55.5] * rows
    data["mean mACC"] = [66.25] * rows
    return pd.DataFrame(data)


def printed(frame: pd.DataFrame, width: int) -> str:
    out = io.StringIO()
    print_frame(
        Console(file=out, width=width), frame, "leaderboard", ["rank", "model", "mean mIoU"]
    )
    return out.getvalue()


@pytest.mark.parametrize("datasets", [1, 8])
def test_tables_fit_80_columns(datasets):
    text = printed(leaderboard_like(datasets), 80)
    assert max(len(line) for line in text.splitlines()) <= 80, text
    for index in range(datasets):  # every header whole: the dataset above its metric
        assert f"dataset-number-{index}" in text
    assert "000000000001" in text  # short hashes never folded
    # shared text columns said once, under the first table
    assert text.count("config: backbone=vit-b inference=slide; kind: ours (raw data)") == 1


def test_a_wide_leaderboard_is_split_with_the_key_repeated():
    text = printed(leaderboard_like(8), 80)
    assert "leaderboard, continued (1/" in text
    tables = text.split("leaderboard, continued")
    assert "mean" in tables[0] and "weights" in tables[0]
    for table in tables[1:]:
        assert "model-2" in table and "weights" not in table
    # a dataset's two metrics stay in one table
    for index in range(8):
        assert sum(f"dataset-number-{index}" in table for table in tables[1:]) == 1


def test_numbers_are_right_aligned():
    text = printed(leaderboard_like(1), 200)
    line = next(line for line in text.splitlines() if "model-0" in line)
    cells = [cell for cell in line.split("│")[1:-1]]
    numbers = [cell for cell in cells if cell.strip().replace(".", "").isdigit()]
    assert numbers and all(cell.endswith(" ") and cell[-2] != " " for cell in numbers), cells
    assert any(cell.startswith("  ") for cell in numbers)  # padded on the left


def test_a_table_that_fits_is_one_table():
    text = printed(leaderboard_like(1), 200)
    assert "continued" not in text and text.count("model-0") == 1


def test_time_left_after_a_resume_counts_only_this_run():
    progress, clock, out = plain()
    task = progress.add_task("train", total=300, completed=250)  # resumed at 250
    for _ in range(20):
        clock.now += 1.0
        progress.advance(task)
    assert out.getvalue().splitlines()[-1] == "train: 270/300 (90%), 0:20 elapsed, about 0:30 left"


def test_nothing_more_after_the_end_and_rich_keywords_work():
    progress, clock, out = plain()
    task = progress.add_task("x", total=2)
    progress.update(task, completed=2)
    progress.advance(task)  # past the end: no second line
    progress.update(task, total=10, completed=5)
    assert out.getvalue().splitlines() == ["x: 2/2 (100%), 0:00 elapsed"]
    assert progress.tasks[task].completed == 5 and progress.tasks[task].total == 10


def test_numpy_floats_are_formatted():
    assert format_number(np.float32(1.0)) == "1.00" and format_number(np.int64(3)) == "3"


def test_a_missing_value_is_never_hidden_by_the_shared_caption():
    frame = leaderboard_like(1)
    frame["weights"] = ["abc", None, "abc"]
    text = printed(frame, 200)
    assert "weights: abc" not in text and text.count("abc") == 2
    frame["weights"] = [None, None, None]
    assert "weights:" not in printed(frame, 200)
