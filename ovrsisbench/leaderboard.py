"""Leaderboards built only from result records, plus clearly marked published reference rows.

One row per (model, options, weights, data source: raw download, OVSISBench archive or
synthetic); per dataset of the protocol its mIoU and mACC (fwIoU, and mIoU-seen / mIoU-unseen /
hIoU of ``ovrsisbench.seen``, on request); the mean over the protocol's datasets when every
dataset has a record; rank by mean mIoU. Every number of ours is read from a record file, so
it can be traced and recomputed.
Submissions in ``<results>/submissions/`` add rows marked "submitted" once they verify
(``ovrsisbench.submission``); the others are refused with their reason.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from tabulate import tabulate

from ovrsisbench.display import format_number, print_frame
from ovrsisbench.errors import UserError
from ovrsisbench.io import atomic_write_text, json_sha256
from ovrsisbench.metrics import DEFAULT_POLICY, compute_scores
from ovrsisbench.protocol import Protocol, list_protocols, load_protocol
from ovrsisbench.results import (
    ResultStore,
    config_label,
    data_source,
    distinguishing_options,
    weights_label,
)
from ovrsisbench.seen import SEEN_METRICS, protocol_seen_splits, record_seen_scores
from ovrsisbench.submission import SUBMISSIONS_DIR, read_submission

REFERENCE_FILE = "rsktseg_table1.csv"
#: the columns that name a row; every other column holds a number
ROW_COLUMNS = ("model", "config", "weights", "kind")
#: metrics a leaderboard can show per dataset, in column order
METRICS = ("mIoU", "mACC", "fwIoU")
#: the columns kept in every table when a leaderboard is split to fit the terminal
TERMINAL_KEY = ("rank", "model", "mean mIoU", "mean mACC")
#: Markdown shows one table per metric when a protocol has more per-dataset columns than this
MARKDOWN_METRIC_COLUMNS = 8
#: a seen / unseen score without a value: no seen (or unseen) class, every one of them absent,
#: no matrix (published rows) or no record; never shown as 0
UNDEFINED = "-"


@dataclass
class Row:
    """One leaderboard line: a model configuration and its per-dataset metrics."""

    model: str
    config: str
    weights: str  # short hash (and training run) of ours and submitted rows; "" when published
    kind: str  # "ours (<data source> data)" or "published (<source>)"
    #: dataset -> metric -> x100 (None: undefined, e.g. mIoU-unseen without an unseen class)
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)
    created: dict[str, str] = field(default_factory=dict)
    stated_means: dict[str, float] | None = None  # published rows state their own means
    #: dataset -> the record its metrics come from (ours and submitted rows; for figures)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)


def record_metrics(record: dict[str, Any], policy: str) -> dict[str, float]:
    """The record's metrics under ``policy``: as stored, or recomputed from its matrix."""
    if record["absent_class_policy"] == policy:
        return dict(record["metrics"])
    return compute_scores(np.asarray(record["confusion"], dtype=np.int64), policy).summary()


def rows_from_records(
    protocol: Protocol,
    store: ResultStore,
    policy: str = DEFAULT_POLICY,
    submissions: list[list[dict[str, Any]]] = (),
    split_seen: bool = False,
) -> list[Row]:
    """Rows of our own results for ``protocol`` (only records matching its current entries),
    then one row per verified submission (its records, kind ``submitted``); with
    ``split_seen``, also each record's mIoU-seen, mIoU-unseen and hIoU."""
    wanted = {key: key[0] for key in _entry_keys(protocol)}
    matching: list[tuple[str, dict[str, Any]]] = []
    for _path, record in store.iter_records():
        key = (record["dataset"], record["split"], record["vocabulary"]["sha256"])
        if record["protocol"] == protocol.name and key in wanted:
            matching.append((wanted[key], record))
    submitted = [
        (record["dataset"], record, number)
        for number, records in enumerate(submissions)
        for record in records
    ]
    everything = [(dataset, record, None) for dataset, record in matching] + submitted
    shown = {
        model: distinguishing_options([r for _, r, _ in everything if r["model"] == model])
        for model in {r["model"] for _, r, _ in everything}
    }
    rows: dict[tuple, Row] = {}
    for dataset, record, submission in everything:
        data = data_source(record)
        if submission is None:  # ours: one row per configuration
            kind = "ours"
            identity: tuple = (record["model"], json_sha256(record["options"]))
            identity += (record["weights_sha256"], data)
        else:  # one row per submission file
            kind, identity = "submitted", ("submitted", submission)
        label = config_label(record, shown[record["model"]])
        row = rows.setdefault(
            identity, Row(record["model"], label, weights_label(record), f"{kind} ({data} data)")
        )
        if record["created"] >= row.created.get(dataset, ""):  # newest record wins
            row.created[dataset] = record["created"]
            row.metrics[dataset] = record_metrics(record, policy)
            row.records[dataset] = record
            if split_seen:
                row.metrics[dataset] |= record_seen_scores(record, protocol, policy)
    return list(rows.values())


def _entry_keys(protocol: Protocol) -> list[tuple[str, str, str]]:
    return [(e.dataset, e.split, e.vocabulary.sha256) for e in protocol.evaluation]


def verified_submissions(
    protocol: Protocol, results_dir: Path, refused: list[str] | None = None
) -> list[list[dict[str, Any]]]:
    """The records (one per evaluation entry, in order) of every submission in
    ``<results_dir>/submissions`` that verifies for exactly this ``protocol``; each file that
    does not verify, or repeats another's records, is described in ``refused``."""
    folder = Path(results_dir) / SUBMISSIONS_DIR
    found: dict[frozenset[str], str] = {}  # record hashes -> file name
    submissions = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            verdict = read_submission(path)
            problems = verdict.problems
        except Exception as error:  # e.g. a dangling link: refused, never fatal
            verdict, problems = None, [f"unreadable ({type(error).__name__}: {error})"]
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            _refuse(refused, path, problems[0] + more)
            continue
        assert verdict is not None and verdict.protocol is not None
        if _entry_keys(verdict.protocol) != _entry_keys(protocol):
            continue  # another protocol, or another definition under this name
        hashes = frozenset(json_sha256(record) for record in verdict.records)
        if hashes in found:
            _refuse(refused, path, f"the same records as {found[hashes]}")
            continue
        found[hashes] = path.name
        submissions.append(verdict.records)
    return submissions


def _refuse(refused: list[str] | None, path: Path, reason: str) -> None:
    if refused is not None:
        refused.append(f"{SUBMISSIONS_DIR}/{path.name}: refused: {reason}")


def reference_rows(protocol: Protocol) -> list[Row]:
    """Published rows for ``protocol`` from ``results/reference`` (empty cells stay empty)."""
    text = resources.files("ovrsisbench.reference").joinpath(REFERENCE_FILE).read_text()
    rows = []
    for line in csv.DictReader(text.splitlines()):
        if line["protocol"] != protocol.name:
            continue
        row = Row(
            model=line["method"],
            config=f"backbone={line['backbone']}",
            weights="",
            kind=f"published ({line['source']})",
        )
        for entry in protocol.evaluation:
            values = {m: line.get(f"{entry.dataset}_{m}", "") for m in ("mIoU", "mACC")}
            row.metrics[entry.dataset] = {m: float(v) for m, v in values.items() if v}
        means = {m: line[f"mean_{m}"] for m in ("mIoU", "mACC")}
        row.stated_means = {m: float(v) for m, v in means.items() if v}
        rows.append(row)
    return rows


def _mean(row: Row, datasets: list[str], metric: str) -> float | None:
    if row.stated_means is not None:
        return row.stated_means.get(metric)
    values = [row.metrics.get(d, {}).get(metric) for d in datasets]
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)


def _mean_columns(protocol: Protocol, split_seen: bool) -> dict[str, tuple[str, list[str]]]:
    """Mean column -> (metric, the datasets it averages): mIoU and mACC over every dataset;
    with ``split_seen``, each seen / unseen score over the datasets whose split can define it,
    counted in the name ("mean hIoU (7)"), so that a dataset without unseen classes neither
    counts as 0 nor leaves every row without a mean."""
    datasets = [entry.dataset for entry in protocol.evaluation]
    means = {f"mean {metric}": (metric, datasets) for metric in ("mIoU", "mACC")}
    if split_seen:
        splits = protocol_seen_splits(protocol)
        for metric in SEEN_METRICS:
            defined = [d for d in datasets if d in splits and splits[d].defines(metric)]
            means[f"mean {metric} ({len(defined)})"] = (metric, defined)
    return means


def column_metric(column: str) -> str:
    """The metric of a column: "<dataset> <metric>" or "mean <metric>[ (<count>)]"."""
    return re.sub(r" \(\d+\)$", "", column).rpartition(" ")[2]


def leaderboard_frame(
    protocol: Protocol, rows: list[Row], with_fwiou: bool = False, split_seen: bool = False
) -> pd.DataFrame:
    """The table: rank, the ``ROW_COLUMNS`` (model, config, weights, kind), per-dataset metrics
    (with ``split_seen`` also ``SEEN_METRICS``), means (NaN = missing)."""
    datasets = [entry.dataset for entry in protocol.evaluation]
    metrics = list(METRICS if with_fwiou else METRICS[:2]) + list(
        SEEN_METRICS if split_seen else []
    )
    means = _mean_columns(protocol, split_seen)
    table = []
    for row in rows:
        line: dict[str, Any] = {
            "model": row.model,
            "config": row.config,
            "weights": row.weights,
            "kind": row.kind,
        }
        for dataset in datasets:
            for metric in metrics:
                line[f"{dataset} {metric}"] = row.metrics.get(dataset, {}).get(metric)
        for column, (metric, averaged) in means.items():
            line[column] = _mean(row, averaged, metric)
        table.append(line)
    columns = [*ROW_COLUMNS, *(f"{d} {m}" for d in datasets for m in metrics)]
    frame = pd.DataFrame(table, columns=[*columns, *means])
    frame = frame.astype({c: "float64" for c in frame.columns[len(ROW_COLUMNS) :]})
    frame = frame.sort_values(["mean mIoU", "model"], ascending=[False, True], na_position="last")
    frame.insert(0, "rank", frame["mean mIoU"].rank(ascending=False, method="min").astype("Int64"))
    return frame.reset_index(drop=True)


def _markdown_cell(text: str) -> str:
    """A cell that cannot break the table: no line breaks, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def undefined_marks(frame: pd.DataFrame) -> dict[str, str]:
    """The text of a missing value in each seen / unseen column (``UNDEFINED``)."""
    return {c: UNDEFINED for c in frame.columns if column_metric(c) in SEEN_METRICS}


def render(frame: pd.DataFrame, fmt: str, heading: str = "###") -> str:
    """CSV (full precision, empty = missing) or Markdown (2 decimals, empty = missing, numbers
    right-aligned; with more than ``MARKDOWN_METRIC_COLUMNS`` per-dataset columns, one table
    per metric under a ``heading`` line, so that wide protocols stay readable). In both, a seen
    / unseen score without a value is ``UNDEFINED``."""
    if fmt == "csv":
        marks = undefined_marks(frame)
        return frame.astype(dict.fromkeys(marks, object)).fillna(marks).to_csv(index=False)
    shown = [column_metric(c) for c in frame.columns]
    metrics = [m for m in (*METRICS, *SEEN_METRICS) if m in shown]
    head = ["rank", *ROW_COLUMNS]
    per_dataset = [c for c in frame.columns if c not in head and not c.startswith("mean ")]
    if len(per_dataset) <= MARKDOWN_METRIC_COLUMNS or len(metrics) < 2:
        return _markdown_table(frame)
    return "\n\n".join(
        f"{heading} {metric}\n\n"
        + _markdown_table(frame[head + [c for c in frame.columns if column_metric(c) == metric]])
        for metric in metrics
    )


def _markdown_table(frame: pd.DataFrame) -> str:
    numbers = [c for c in frame.columns if c not in ROW_COLUMNS]
    marks = undefined_marks(frame)
    cells = [
        [
            _markdown_cell(format_number(value) or marks.get(column, ""))
            for column, value in zip(frame.columns, row, strict=True)
        ]
        for row in frame.itertuples(index=False)
    ]
    return tabulate(
        cells,
        headers=list(frame.columns),
        tablefmt="pipe",
        disable_numparse=True,
        colalign=["right" if c in numbers else "left" for c in frame.columns],
    )


def build(
    protocol: Protocol,
    results_dir: Path,
    with_reference: bool = False,
    with_fwiou: bool = False,
    policy: str = DEFAULT_POLICY,
    refused: list[str] | None = None,
    split_seen: bool = False,
) -> pd.DataFrame:
    """The leaderboard of ``protocol`` from the records and verified submissions under
    ``results_dir`` (refused submissions are described in ``refused``); ``split_seen`` adds
    mIoU-seen, mIoU-unseen and hIoU, computed from the stored matrices.

    Published rows follow the default policy (detectron2's); with another ``policy`` they are
    left out rather than shown next to numbers computed differently.
    """
    if split_seen and protocol.train is None:
        raise UserError(
            f"protocol {protocol.name!r} is evaluation-only: without a training vocabulary no "
            "class is seen or unseen (drop --split-seen, or choose e.g. dlrsd or isaid)"
        )
    submissions = verified_submissions(protocol, results_dir, refused)
    store = ResultStore(results_dir)
    rows = rows_from_records(protocol, store, policy, submissions, split_seen)
    if with_reference and policy != DEFAULT_POLICY:
        raise UserError(
            f"published rows use the '{DEFAULT_POLICY}' policy; drop --with-reference "
            f"to see '{policy}' numbers"
        )
    if with_reference:
        rows += reference_rows(protocol)
    return leaderboard_frame(protocol, rows, with_fwiou, split_seen)


def print_leaderboard(console: Console, frame: pd.DataFrame, title: str) -> None:
    """The leaderboard as terminal tables that fit the console's width (``print_frame``)."""
    marks = undefined_marks(frame)
    print_frame(console, frame, title, list(TERMINAL_KEY), marks)
    if marks:
        note = (
            f"seen: classes of the protocol's training vocabulary (`ovrsisbench protocols show`); "
            f"{UNDEFINED}: no value (no seen or no unseen class, all of them absent, or no matrix)"
        )
        console.print(note, markup=False, highlight=False)


def protocols_with_records(results_dir: Path) -> list[str]:
    """The protocols that have result records under ``results_dir`` (for hints)."""
    return sorted({record["protocol"] for _, record in ResultStore(results_dir).iter_records()})


def write_leaderboards(results_dir: Path, protocols: list[Protocol] | None = None) -> list[Path]:
    """Write ``leaderboard.csv`` and ``leaderboard.md`` for every protocol that has records; the
    Markdown lists refused submissions with their reason."""
    if protocols is None:
        protocols = [load_protocol(name) for name in list_protocols()]
    refused: list[str] = []
    frames = [(p, build(p, results_dir, refused=refused)) for p in protocols]
    frames = [(p, f) for p, f in frames if not f.empty]
    csv_text = pd.concat(
        [f.assign(protocol=p.name) for p, f in frames] or [pd.DataFrame()], ignore_index=True
    ).to_csv(index=False)
    md_parts = ["# Leaderboard\n", "Built from the result records in `records/`.\n"]
    for protocol, frame in frames:
        md_parts.append(f"\n## Protocol `{protocol.name}`\n\n{protocol.description}\n\n")
        md_parts.append(render(frame, "md") + "\n")
    if refused:
        md_parts.append("\n## Refused submissions\n\n")
        md_parts += [f"- {_markdown_cell(line)}\n" for line in dict.fromkeys(refused)]
    paths = [Path(results_dir) / "leaderboard.csv", Path(results_dir) / "leaderboard.md"]
    atomic_write_text(paths[0], csv_text)
    atomic_write_text(paths[1], "".join(md_parts))
    return paths
