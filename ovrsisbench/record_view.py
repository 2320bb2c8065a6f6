"""What ``ovrsisbench show`` prints: result records picked by model and dataset, each with its
headline numbers and its per-class IoU and accuracy (as mmseg prints after a test); when the
record's protocol is known and trains on a vocabulary, also its mIoU-seen / mIoU-unseen / hIoU
and which classes are seen (``ovrsisbench.seen``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from ovrsisbench.display import format_number, new_table
from ovrsisbench.errors import UserError, did_you_mean
from ovrsisbench.protocol import Protocol, list_protocols, load_protocol
from ovrsisbench.results import ResultStore, data_source, weights_label
from ovrsisbench.seen import SEEN_METRICS, SeenSplit, record_seen_scores, record_seen_split

HEADLINE = ("mIoU", "fwIoU", "mACC", "pACC")


@dataclass(frozen=True)
class RecordFilter:
    """Which records to show: one model on one dataset, optionally narrowed down."""

    model: str
    dataset: str
    protocol: str | None = None
    options: dict[str, Any] | None = None  # every given option must have this value
    weights_prefix: str | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        options = record["options"]
        return (
            record["model"] == self.model
            and record["dataset"] == self.dataset
            and self.protocol in (None, record["protocol"])
            and all(options.get(k) == v for k, v in (self.options or {}).items())
            and (record["weights_sha256"] or "").startswith(self.weights_prefix or "")
        )


def find_records(results_dir: Path, wanted: RecordFilter) -> list[tuple[Path, dict[str, Any]]]:
    """The records under ``results_dir`` that ``wanted`` matches, newest first; a UserError that
    says what there is instead when none does."""
    store = ResultStore(results_dir)
    records = list(store.iter_records())
    found = [(path, record) for path, record in records if wanted.matches(record)]
    if found:
        return sorted(found, key=lambda item: item[1]["created"], reverse=True)
    if not records:
        raise UserError(
            f"no result records in {results_dir} (run `ovrsisbench run` first, or give --results)"
        )
    models = sorted({record["model"] for _, record in records})
    if wanted.model not in models:
        raise UserError(
            f"no records of model '{wanted.model}'{did_you_mean(wanted.model, models)} in "
            f"{results_dir} (models with records: {', '.join(models)})"
        )
    datasets = sorted({r["dataset"] for _, r in records if r["model"] == wanted.model})
    if wanted.dataset not in datasets:
        raise UserError(
            f"no records of {wanted.model} on dataset '{wanted.dataset}'"
            f"{did_you_mean(wanted.dataset, datasets)} (its datasets: {', '.join(datasets)})"
        )
    raise UserError(
        f"no record of {wanted.model} on {wanted.dataset} matches --protocol, -o, --backbone "
        "and --weights-sha256"
    )


def per_class_scores(record: dict[str, Any], policy: str) -> tuple[dict[str, Any], dict]:
    """The headline metrics and per-class IoU / accuracy of ``record`` under ``policy``: as
    stored, or recomputed from its confusion matrix."""
    if record["absent_class_policy"] == policy:
        return record["metrics"], record["per_class"]
    import numpy as np

    from ovrsisbench.metrics import compute_scores

    scores = compute_scores(np.asarray(record["confusion"], dtype=np.int64), policy)
    return scores.summary(), {**record["per_class"], "iou": scores.iou, "acc": scores.acc}


def known_protocol(record: dict[str, Any]) -> Protocol | None:
    """The packaged protocol the record names, if there is one (a protocol given as a file is
    not known from its name alone)."""
    name = record["protocol"]
    return load_protocol(name) if name in list_protocols() else None


def seen_view(record: dict[str, Any], policy: str) -> tuple[SeenSplit, str, str] | None:
    """For a record of a known protocol that trains on a vocabulary: its seen / unseen split,
    the line of its seen scores, and a note on the classes training names differently ('' if
    none). None for other records."""
    protocol = known_protocol(record)
    split = record_seen_split(record, protocol) if protocol else None
    if protocol is None or protocol.train is None or split is None:
        return None
    training = protocol.train.vocabulary.name
    scores = record_seen_scores(record, protocol, policy)
    values = "  ".join(f"{m} {format_number(scores[m]) or '-'}" for m in SEEN_METRICS)
    pairs = [f"{name} = {match}" for name, match in split.matches.items() if match != name]
    renamed = f"seen: under other names in {training}: {', '.join(pairs)}" if pairs else ""
    return split, f"{values}  (seen: in training vocabulary {training})", renamed


def print_record(console: Console, path: Path, record: dict[str, Any], policy: str) -> None:
    """One record: what it is, its headline numbers under ``policy``, its per-class table."""
    metrics, per_class = per_class_scores(record, policy)
    split, seen_line, renamed = seen_view(record, policy) or (None, "", "")
    options = " ".join(f"{k}={v}" for k, v in record["options"].items()) or "none"
    lines = [
        f"{record['model']} on {record['dataset']} ({record['split']} split, "
        f"{record['num_images']:,} images), protocol {record['protocol']}, vocabulary "
        f"{record['vocabulary']['name']}, {data_source(record)} data",
        f"options: {options}",
        f"weights: {weights_label(record)}",
        "  ".join(f"{m} {format_number(metrics.get(m))}" for m in HEADLINE) + f"  ({policy})",
        seen_line,
        f"record: {path}",
    ]
    for line in filter(None, lines):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    columns = ("class", "IoU", "Acc", "GT pixels", "predicted pixels", "seen")
    columns = columns if split else columns[:-1]
    table = new_table(columns, [False, True, True, True, True, False][: len(columns)])
    rows = zip(
        record["classes"],
        per_class["iou"],
        per_class["acc"],
        per_class["gt_pixels"],
        per_class["pred_pixels"],
        strict=True,
    )
    for name, iou, acc, gt, predicted in rows:
        table.add_row(
            name,
            "-" if iou is None else format_number(iou),
            "-" if acc is None else format_number(acc),
            f"{gt:,}",
            f"{predicted:,}",
            *([("yes" if split.is_seen(name) else "no")] if split else []),
        )
    console.print(table)
    notes = [renamed]
    if any(iou is None for iou in per_class["iou"]):
        notes.append(
            "-: left out of the means under this policy (no ground-truth pixel of the class)"
        )
    for note in filter(None, notes):
        console.print(note, markup=False, highlight=False, soft_wrap=True)
