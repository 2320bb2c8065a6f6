"""Leaderboards built only from result records, plus clearly marked published reference rows.

One row per (model, options, weights, data source: raw download, OVSISBench archive or
synthetic); per dataset of the protocol its mIoU and mACC (fwIoU on
request); the mean over the protocol's datasets when every dataset has a record; rank by mean
mIoU. Every number of ours is read from a record file, so it can be traced and recomputed.
Submissions in ``<results>/submissions/`` add rows marked "submitted" once they verify
(``ovrsisbench.submission``); the others are refused with their reason.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from ovrsisbench.adapter import json_sha256
from ovrsisbench.errors import UserError
from ovrsisbench.io import atomic_write_text
from ovrsisbench.metrics import DEFAULT_POLICY, compute_scores
from ovrsisbench.protocol import Protocol, list_protocols, load_protocol
from ovrsisbench.results import ResultStore, config_label, data_source, distinguishing_options
from ovrsisbench.submission import SUBMISSIONS_DIR, read_submission

REFERENCE_FILE = "rsktseg_table1.csv"
FORMATS = ("csv", "md")


@dataclass
class Row:
    """One leaderboard line: a model configuration and its per-dataset metrics."""

    model: str
    config: str
    kind: str  # "ours (<data source> data)" or "published (<source>)"
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # dataset -> metric -> x100
    created: dict[str, str] = field(default_factory=dict)
    stated_means: dict[str, float] | None = None  # published rows state their own means


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
) -> list[Row]:
    """Rows of our own results for ``protocol`` (only records matching its current entries),
    then one row per verified submission (its records, kind ``submitted``)."""
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
        row = rows.setdefault(identity, Row(record["model"], label, f"{kind} ({data} data)"))
        if record["created"] >= row.created.get(dataset, ""):  # newest record wins
            row.created[dataset] = record["created"]
            row.metrics[dataset] = record_metrics(record, policy)
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
    if any(v is None for v in values):
        return None
    return sum(values) / len(values)


def leaderboard_frame(
    protocol: Protocol, rows: list[Row], with_fwiou: bool = False
) -> pd.DataFrame:
    """The table: rank, model, config, kind, per-dataset metrics, means (NaN = missing)."""
    datasets = [entry.dataset for entry in protocol.evaluation]
    metrics = ["mIoU", "mACC", *(["fwIoU"] if with_fwiou else [])]
    table = []
    for row in rows:
        line: dict[str, Any] = {"model": row.model, "config": row.config, "kind": row.kind}
        for dataset in datasets:
            for metric in metrics:
                line[f"{dataset} {metric}"] = row.metrics.get(dataset, {}).get(metric)
        line["mean mIoU"] = _mean(row, datasets, "mIoU")
        line["mean mACC"] = _mean(row, datasets, "mACC")
        table.append(line)
    columns = ["model", "config", "kind"] + [f"{d} {m}" for d in datasets for m in metrics]
    frame = pd.DataFrame(table, columns=[*columns, "mean mIoU", "mean mACC"])
    frame = frame.astype({c: "float64" for c in frame.columns[3:]})
    frame = frame.sort_values(["mean mIoU", "model"], ascending=[False, True], na_position="last")
    frame.insert(0, "rank", frame["mean mIoU"].rank(ascending=False, method="min").astype("Int64"))
    return frame.reset_index(drop=True)


def format_cell(value: object) -> str:
    """A table cell: floats with 2 decimals, missing values (None, NaN, NA) empty."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _markdown_cell(text: str) -> str:
    """A cell that cannot break the table: no line breaks, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def render(frame: pd.DataFrame, fmt: str) -> str:
    """CSV (full precision, empty = missing) or Markdown (2 decimals, empty = missing)."""
    if fmt == "csv":
        return frame.to_csv(index=False)
    cells = [
        [_markdown_cell(format_cell(value)) for value in row]
        for row in frame.itertuples(index=False)
    ]
    return tabulate(cells, headers=list(frame.columns), tablefmt="github", disable_numparse=True)


def build(
    protocol: Protocol,
    results_dir: Path,
    with_reference: bool = False,
    with_fwiou: bool = False,
    policy: str = DEFAULT_POLICY,
    refused: list[str] | None = None,
) -> pd.DataFrame:
    """The leaderboard of ``protocol`` from the records and verified submissions under
    ``results_dir`` (refused submissions are described in ``refused``).

    Published rows follow the default policy (detectron2's); with another ``policy`` they are
    left out rather than shown next to numbers computed differently.
    """
    submissions = verified_submissions(protocol, results_dir, refused)
    rows = rows_from_records(protocol, ResultStore(results_dir), policy, submissions)
    if with_reference and policy != DEFAULT_POLICY:
        raise UserError(
            f"published rows use the '{DEFAULT_POLICY}' policy; drop --with-reference "
            f"to see '{policy}' numbers"
        )
    if with_reference:
        rows += reference_rows(protocol)
    return leaderboard_frame(protocol, rows, with_fwiou)


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
