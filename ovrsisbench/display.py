"""What the commands show: progress (bars on a terminal, plain lines otherwise) and tables that
fit the terminal's width (numbers right-aligned, wide tables split into several)."""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import takewhile
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

#: plain progress lines (output that is not a terminal): one per this share of a task, at most
#: one per PLAIN_MIN_SECONDS, and one after PLAIN_SECONDS without a line; one when it ends
PLAIN_STEP = 0.1
PLAIN_MIN_SECONDS = 5.0
PLAIN_SECONDS = 30.0


def make_progress(console: Console | None = None) -> Progress | PlainProgress:
    """Progress display on ``console`` (default: stderr): rich bars with count and time left on
    a terminal; plain lines at a modest rate otherwise (a log file, a CI job, a pipe)."""
    console = console or Console(stderr=True)
    if not console.is_terminal:
        return PlainProgress(console)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    )


@dataclass
class PlainTask:
    """One task of a ``PlainProgress`` (the fields rich's tasks have that the commands read)."""

    description: str
    total: float | None
    completed: float
    started: float  # clock time of add_task
    initial: float  # completed at add_task (a resumed run's earlier work): not in the rate
    last_line: float
    last_step: int
    ended: bool = False


class PlainProgress:
    """rich ``Progress``'s interface for output that is not a terminal: instead of bars, a line
    per tenth of a task (``PLAIN_STEP``; at most one per ``PLAIN_MIN_SECONDS``), after
    ``PLAIN_SECONDS`` without one, and when the task ends (a task shorter than
    ``PLAIN_MIN_SECONDS`` prints that line only)."""

    def __init__(self, console: Console, clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console
        self.clock = clock
        self.tasks: list[PlainTask] = []

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Nothing to start: lines are printed as the tasks advance."""

    def stop(self) -> None:
        """Nothing to stop: the last line of each finished task is already printed."""

    def add_task(self, description: str, total: float | None = None, completed: float = 0) -> int:
        now = self.clock()
        step = self._step(total, completed)
        self.tasks.append(PlainTask(description, total, completed, now, completed, now, step))
        return len(self.tasks) - 1

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(
        self,
        task_id: int,
        *,
        description: str | None = None,
        advance: float = 0,
        completed: float | None = None,
        total: float | None = None,
    ) -> None:
        task = self.tasks[task_id]
        if description is not None:
            task.description = description
        if total is not None:
            task.total = total
        if completed is None and not advance:
            return
        task.completed = (task.completed if completed is None else completed) + advance
        step = self._step(task.total, task.completed)
        now = self.clock()
        quiet = now - task.last_line
        finished = task.total is not None and task.completed >= task.total
        stepped = step > task.last_step and quiet >= PLAIN_MIN_SECONDS
        if not task.ended and (finished or stepped or quiet >= PLAIN_SECONDS):
            task.last_step, task.last_line, task.ended = step, now, finished
            self._print(task)

    @staticmethod
    def _step(total: float | None, completed: float) -> int:
        return int(completed / total / PLAIN_STEP) if total else 0

    def _print(self, task: PlainTask) -> None:
        elapsed = self.clock() - task.started
        if task.total:
            share = min(task.completed / task.total, 1.0)
            count = f"{task.completed:,.0f}/{task.total:,.0f} ({share:.0%})"
        else:
            count = f"{task.completed:,.0f}"
        line = f"{task.description}: {count}, {_duration(elapsed)} elapsed"
        done_here = task.completed - task.initial
        if task.total and done_here > 0 and task.completed < task.total:
            left = elapsed * (task.total - task.completed) / done_here
            line += f", about {_duration(left)} left"
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class TaskProgress:
    """The engines' progress sink (``start`` per dataset or step, ``advance`` per item) on a
    ``make_progress`` display: one task per dataset.

    The display starts with the first task, so a command that fails before any work prints
    nothing but its error; ``close()`` stops it.
    """

    def __init__(self, progress: Progress | PlainProgress, label: str) -> None:
        self.progress = progress
        self.label = label
        self.task: Any = None

    def start(self, dataset: str, total: int, done: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task(f"{self.label}{dataset}", total=total, completed=done)

    def close(self) -> None:
        self.progress.stop()

    def advance(self, count: int) -> None:
        self.progress.advance(self.task, count)


# -- tables ---------------------------------------------------------------------------------------
def format_number(value: object, digits: int = 2) -> str:
    """A table cell: numbers with ``digits`` decimals, missing values (None, NaN, NA) empty."""
    if _is_missing(value):
        return ""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return f"{value:.{digits}f}"  # float, numpy floats
    return str(value)


def _is_missing(value: object) -> bool:
    """None, NaN and pandas' NA (whose comparisons are not booleans)."""
    try:
        return value is None or bool(value != value)
    except TypeError:
        return True


def new_table(
    headers: Sequence[str],
    numeric: Sequence[bool],
    title: str | None = None,
    min_widths: Sequence[int] | None = None,
) -> Table:
    """A table whose number columns are right-aligned and never wrap; text columns wrap at
    spaces, never inside a word of ``min_widths`` characters or fewer. A header may hold a
    line break ("dataset\\nmIoU") so it never breaks mid-word."""
    table = Table(title=title, title_justify="left")
    widths = min_widths or [0] * len(headers)
    for header, is_number, width in zip(headers, numeric, widths, strict=True):
        if is_number:
            table.add_column(header, justify="right", no_wrap=True)
        else:
            table.add_column(header, overflow="fold", min_width=width or None)
    return table


def table_width(console: Console, table: Table) -> int:
    """The width ``table`` needs to show every cell without wrapping."""
    return Measurement.get(console, console.options.update(width=10**5), table).maximum


def split_columns(
    console: Console,
    key: list[str],
    columns: list[str],
    make: Callable[[list[str]], Table],
) -> list[list[str]]:
    """``columns`` cut into groups that each fit the console next to the ``key`` columns (a
    group holds at least one column): groups of even size that keep the columns of one dataset
    ("<dataset> <metric>") together where they can; ``make`` builds the table of a column list."""

    def fits(group: list[str]) -> bool:
        return table_width(console, make(key + group)) <= console.width

    fit = 1
    while fit < len(columns) and fits(columns[: fit + 1]):
        fit += 1
    first_dataset = columns[0].rpartition(" ")[0]
    per_dataset = len(list(takewhile(lambda c: c.rpartition(" ")[0] == first_dataset, columns)))
    if fit >= per_dataset:
        fit -= fit % per_dataset
    size = math.ceil(len(columns) / math.ceil(len(columns) / fit))
    if size % per_dataset and size + per_dataset - size % per_dataset <= fit:
        size += per_dataset - size % per_dataset
    groups = [columns[start : start + size] for start in range(0, len(columns), size)]
    if all(fits(group) for group in groups):
        return groups
    greedy: list[list[str]] = [[]]  # wider columns further on: fill each table in turn
    for column in columns:
        if greedy[-1] and not fits(greedy[-1] + [column]):
            greedy.append([])
        greedy[-1].append(column)
    return greedy


def print_frame(
    console: Console,
    frame: Any,
    title: str,
    key: list[str],
    missing: Mapping[str, str] | None = None,
) -> None:
    """Print a pandas ``frame`` as tables that fit the console: one table when it fits;
    otherwise a first table of the text columns and the number columns named in ``key``, then
    the other number columns in groups next to the text columns named in ``key``, with a ``#``
    column numbering the rows so that the tables can be read together. Text columns with one
    value in every row are said once, under the first table. A missing value shows as empty,
    or as ``missing[column]``."""
    marks = missing or {}
    numbers = [c for c in frame.columns if _numeric(frame[c])]
    shared = [
        c
        for c in frame.columns
        if c not in numbers and len(frame) > 1 and frame[c].nunique(dropna=False) == 1
    ]
    numbered = frame.drop(columns=shared)
    numbered.insert(0, "#", range(1, len(frame) + 1))

    def make(columns: list[str]) -> Table:
        widths = [_longest_word(numbered[c]) if c not in numbers else 0 for c in columns]
        table = new_table(
            [_header(c) for c in columns], [c == "#" or c in numbers for c in columns], None, widths
        )
        for row in numbered[columns].itertuples(index=False):
            cells = zip(columns, row, strict=True)
            table.add_row(*(format_number(value) or marks.get(c, "") for c, value in cells))
        return table

    said = [c for c in shared if not _is_missing(frame[c].iloc[0]) and frame[c].iloc[0] != ""]
    caption = "; ".join(f"{c}: {frame[c].iloc[0]}" for c in said) or None
    columns = [c for c in frame.columns if c not in shared]
    first = ["#", *(c for c in columns if c not in numbers or c in key)]
    rest = [c for c in numbers if c not in first]
    table = make(columns)
    split = bool(rest) and table_width(console, table) > console.width
    if split:
        table = make(first)
    table.caption, table.caption_justify = caption, "left"
    console.print(title, markup=False, highlight=False, soft_wrap=True)
    console.print(table)
    if not split:
        return
    short_key = ["#", *(c for c in key if c in columns and c not in numbers)]
    groups = split_columns(console, short_key, rest, make)
    for number, group in enumerate(groups, start=1):
        console.print(f"{title}, continued ({number}/{len(groups)})", markup=False, highlight=False)
        console.print(make(short_key + group))


def _longest_word(series: Any) -> int:
    return max((len(word) for value in series for word in str(value).split()), default=0)


def _numeric(series: Any) -> bool:
    return series.dtype.kind in "fiu" or str(series.dtype) == "Int64"


def _header(column: str) -> str:
    """``"<dataset> <metric>"`` headers break between the two, never inside a name."""
    dataset, _, metric = str(column).rpartition(" ")
    return f"{dataset}\n{metric}" if dataset else str(column)
