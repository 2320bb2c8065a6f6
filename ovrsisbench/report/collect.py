"""What a report shows, gathered once from the results folder: the protocol's leaderboard (ours,
submitted and published rows, built by ``ovrsisbench.leaderboard``), the rows that have records,
the seen/unseen split of each evaluation vocabulary, speed points, saved predictions and the
prepared datasets to read images from. Figures and the page only draw what is collected here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ovrsisbench.data.layout import PreparedDataset, open_dataset
from ovrsisbench.errors import UserError, did_you_mean
from ovrsisbench.leaderboard import (
    Row,
    leaderboard_frame,
    protocols_with_records,
    reference_rows,
    rows_from_records,
    verified_submissions,
)
from ovrsisbench.protocol import Protocol, Vocabulary
from ovrsisbench.results import ResultStore, key_of_record
from ovrsisbench.seen import SeenSplit, protocol_seen_splits

#: images of a dataset shown in its qualitative grid (the first ones the records list)
MAX_QUALITATIVE_IMAGES = 4


@dataclass
class ModelRow:
    """A leaderboard row that has records (ours or submitted), as the figures name it."""

    label: str  # unique within the report
    row: Row
    mean_miou: float  # the leaderboard's mean mIoU (NaN when a dataset lacks a record)
    record_paths: dict[str, Path]  # dataset -> its record file (ours only: submitted have none)

    @property
    def records(self) -> dict[str, dict[str, Any]]:
        return self.row.records


@dataclass(frozen=True)
class SpeedPoint:
    """One point of the speed figure: a row's mean time per image on one device."""

    label: str
    device: str
    ms_per_image: float
    mean_miou: float


@dataclass
class ReportData:
    """Everything the report draws, for one protocol."""

    protocol: Protocol
    results_dir: Path
    leaderboard: pd.DataFrame  # ours, submitted and published rows (``leaderboard_frame``)
    models: list[ModelRow]  # rows with records, in leaderboard order
    splits: dict[str, SeenSplit]  # evaluation dataset -> its seen/unseen classes
    datasets: dict[str, PreparedDataset]  # those whose images and labels can be read
    missing_data: dict[str, str]  # dataset -> why its images cannot be read
    refused: list[str]  # submissions refused, with their reason

    def vocabulary(self, dataset: str) -> Vocabulary:
        return next(e.vocabulary for e in self.protocol.evaluation if e.dataset == dataset)


def collect(
    protocol: Protocol,
    results_dir: Path,
    data_root: Path | None = None,
    models: list[str] | None = None,
) -> ReportData:
    """The report's data; UserError when the protocol has no record in ``results_dir`` or
    ``models`` names a model without records."""
    results_dir = Path(results_dir)
    refused: list[str] = []
    submissions = verified_submissions(protocol, results_dir, refused)
    store = ResultStore(results_dir)
    split_seen = protocol.train is not None  # seen/unseen columns where training defines them
    rows = rows_from_records(protocol, store, submissions=submissions, split_seen=split_seen)
    if not rows:
        others = [name for name in protocols_with_records(results_dir) if name != protocol.name]
        hint = f"; records exist for protocol {', '.join(others)}" if others else ""
        raise UserError(f"no result records of protocol {protocol.name} in {results_dir}{hint}")
    rows = _select(rows, models)
    leaderboard = leaderboard_frame(
        protocol, rows + reference_rows(protocol), split_seen=split_seen
    )
    labels = _labels(rows)
    ranked = [
        ModelRow(label, row, _mean_miou(protocol, row), _record_paths(store, row))
        for label, row in zip(labels, rows, strict=True)
    ]
    ranked.sort(key=lambda m: (math.isnan(m.mean_miou), -np.nan_to_num(m.mean_miou), m.label))
    datasets, missing = _open_datasets(protocol, data_root)
    splits = protocol_seen_splits(protocol)
    return ReportData(
        protocol, results_dir, leaderboard, ranked, splits, datasets, missing, refused
    )


def _select(rows: list[Row], models: list[str] | None) -> list[Row]:
    if models is not None and not models:
        raise UserError("--models names no model (give names separated by commas: a,b)")
    if models is None:
        return rows
    known = sorted({row.model for row in rows})
    for name in models:
        if name not in known:
            raise UserError(
                f"--models: no records of model {name!r}{did_you_mean(name, known)}; "
                f"models with records: {', '.join(known)}"
            )
    return [row for row in rows if row.model in models]


def _labels(rows: list[Row]) -> list[str]:
    """Short names that tell the rows apart: model and config, then weights, kind, a number."""
    labels = [row.model if row.config == "-" else f"{row.model} {row.config}" for row in rows]
    for extra in (lambda row: row.weights, lambda row: row.kind.split(" ")[0]):
        repeated = {label for label in labels if labels.count(label) > 1}
        labels = [
            f"{label} [{extra(row)}]" if label in repeated else label
            for label, row in zip(labels, rows, strict=True)
        ]
    numbered, counts = [], dict.fromkeys(labels, 0)
    for label in labels:
        counts[label] += 1
        numbered.append(label if labels.count(label) == 1 else f"{label} #{counts[label]}")
    return numbered


def _mean_miou(protocol: Protocol, row: Row) -> float:
    """The row's mean mIoU as the leaderboard computes it."""
    value = leaderboard_frame(protocol, [row]).at[0, "mean mIoU"]
    return float(value)


def _record_paths(store: ResultStore, row: Row) -> dict[str, Path]:
    if not row.kind.startswith("ours"):
        return {}
    return {d: store.path_for(key_of_record(r)) for d, r in row.records.items()}


def _open_datasets(
    protocol: Protocol, data_root: Path | None
) -> tuple[dict[str, PreparedDataset], dict[str, str]]:
    opened: dict[str, PreparedDataset] = {}
    missing: dict[str, str] = {}
    for entry in protocol.evaluation:
        if data_root is None:
            missing[entry.dataset] = "no data root was given (--data-root)"
            continue
        try:
            opened[entry.dataset] = open_dataset(Path(data_root), entry.dataset)
        except UserError as error:
            missing[entry.dataset] = str(error)
    return opened, missing


def speed_points(data: ReportData) -> tuple[list[SpeedPoint], list[str]]:
    """One point per (row, device) with a leaderboard mean mIoU: the mean ms/image over the
    row's records timed on that device; and a note per row left out, with the reason."""
    points, left_out = [], []
    for model in data.models:
        if math.isnan(model.mean_miou):
            left_out.append(f"{model.label}: no mean mIoU (a dataset has no record)")
            continue
        times: dict[str, list[float]] = {}
        for record in model.records.values():
            timing = record.get("timing") or {}
            ms = timing.get("ms_per_image")
            if isinstance(ms, (int, float)) and ms > 0:
                times.setdefault(str(timing.get("device") or "unknown device"), []).append(ms)
        if not times:
            left_out.append(f"{model.label}: its records hold no timing")
        for device, values in times.items():
            points.append(
                SpeedPoint(model.label, device, sum(values) / len(values), model.mean_miou)
            )
    return points, left_out
