"""Rich display helpers shared by the commands: progress bars (on stderr) and tables."""

from __future__ import annotations

from typing import Any

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ovrsisbench.leaderboard import format_cell


def make_progress(console: Console | None = None) -> Progress:
    """A progress display with description, bar, count and time remaining."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
    )


class RichProgress:
    """Progress sink for the engines: one rich bar per dataset (or step).

    The display starts with the first bar, so a command that fails before any work prints
    nothing but its error; ``close()`` stops it if it was started.
    """

    def __init__(self, progress: Progress, label: str) -> None:
        self.progress = progress
        self.label = label
        self.task: Any = None

    def start(self, dataset: str, total: int, done: int) -> None:
        if not self.progress.live.is_started:
            self.progress.start()
        self.task = self.progress.add_task(f"{self.label}{dataset}", total=total, completed=done)

    def close(self) -> None:
        if self.progress.live.is_started:
            self.progress.stop()

    def advance(self, count: int) -> None:
        self.progress.advance(self.task, count)


def frame_table(frame: pd.DataFrame, title: str) -> Table:
    """A leaderboard frame as a rich table: floats with 2 decimals, missing cells empty."""
    table = Table(title=title)
    for column in frame.columns:
        table.add_column(str(column), overflow="fold")
    for row in frame.itertuples(index=False):
        table.add_row(*(format_cell(value) for value in row))
    return table
