"""Result submissions: one model's records on one protocol in one JSON file, with the adapter's
provenance and a SHA-256 of every record (``ovrsisbench submit``), checked from their data alone
(``ovrsisbench verify``).

Verification never imports or runs anything a submission names: it reads JSON, compares it with
this installation's protocols and vocabularies, and recomputes every metric from the stated
confusion matrices. Optionally it compares image counts (and, reading the labels, the
ground-truth pixel counts) with locally prepared copies of the same data version.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ovrsisbench.environment import describe_environment
from ovrsisbench.errors import UserError
from ovrsisbench.io import json_sha256
from ovrsisbench.metrics import POLICIES, compute_scores
from ovrsisbench.protocol import EvalEntry, Protocol, list_protocols, load_protocol
from ovrsisbench.results import (
    REQUIRED_KEYS,
    SCHEMA,
    ResultStore,
    config_label,
    data_source,
    distinguishing_options,
    weights_label,
)

SUBMISSION_SCHEMA = "ovrsisbench.submission/1"
SUBMISSIONS_DIR = "submissions"
#: A stated metric may differ from the one recomputed from its matrix by this much (x100 scale).
METRIC_TOLERANCE = 1e-6
#: No count of pixels (one cell, or a whole matrix) can reach this: floats stay exact below it.
MAX_COUNT = 2**53
#: Names shown on leaderboards (adapter names, module:Class strings) and data sources.
NAME_PATTERN = re.compile(r"[A-Za-z0-9._:/@+-]{1,200}")
DATA_SOURCES = ("raw", "archive", "synthetic")
_ADAPTER_KEYS = ("name", "origin", "version", "source_url", "licence", "options")
_ADAPTER_KEYS += ("weights_sha256", "params", "inference")


# -- submit --------------------------------------------------------------------------------------
def _entry_key(entry: EvalEntry) -> tuple[str, str, str]:
    return entry.dataset, entry.split, entry.vocabulary.sha256


def _record_key(record: dict[str, Any]) -> tuple[str, str, str]:
    return record["dataset"], record["split"], record["vocabulary"]["sha256"]


def _describe_entry(entry: EvalEntry) -> dict[str, Any]:
    vocabulary = entry.vocabulary
    return {
        "dataset": entry.dataset,
        "split": entry.split,
        "vocabulary": {"name": vocabulary.name, "sha256": vocabulary.sha256},
    }


def _configuration(record: dict[str, Any]) -> tuple[str, str | None, str, str]:
    """What one leaderboard row stands for (options, weights, data source), and the code
    version that computed it: a submission never mixes versions."""
    options, weights = json_sha256(record["options"]), record["weights_sha256"]
    return options, weights, data_source(record), record["environment"]["ovrsisbench"]


def _matches(record: dict[str, Any], options: dict[str, Any], weights: str | None) -> bool:
    if any(record["options"].get(k) != v for k, v in options.items()):
        return False
    return weights is None or (record["weights_sha256"] or "").startswith(weights)


def _complete_configurations(
    protocol: Protocol, store: ResultStore, model: str, options: dict[str, Any], weights: str | None
) -> dict[tuple, dict[tuple[str, str, str], dict[str, Any]]]:
    """Per configuration of ``model`` (matching the filters), its newest record per protocol
    entry; only configurations with a record for every entry."""
    wanted = {_entry_key(entry) for entry in protocol.evaluation}
    found: dict[tuple, dict[tuple[str, str, str], dict[str, Any]]] = {}
    for _path, record in store.iter_records():
        if record["model"] != model or record["protocol"] != protocol.name:
            continue
        if _record_key(record) not in wanted or not _matches(record, options, weights):
            continue
        mine = found.setdefault(_configuration(record), {})
        previous = mine.get(_record_key(record))
        if previous is None or record["created"] >= previous["created"]:
            mine[_record_key(record)] = record
    return {config: records for config, records in found.items() if set(records) == wanted}


def build_submission(
    model: str,
    results_dir: Path,
    protocol: Protocol | None = None,
    options: dict[str, Any] | None = None,
    weights: str | None = None,
) -> dict[str, Any]:
    """The submission of ``model``'s records under ``results_dir`` on ``protocol`` (None: the one
    protocol it has complete records for). ``options`` and ``weights`` (a SHA-256 prefix) pick
    one configuration when the model has several."""
    store = ResultStore(results_dir)
    options = options or {}
    protocols = [protocol] if protocol else [load_protocol(name) for name in list_protocols()]
    candidates = [
        (proto, config, records)
        for proto in protocols
        for config, records in _complete_configurations(
            proto, store, model, options, weights
        ).items()
    ]
    candidates = _newest_code_version(candidates)
    where = f"{model} in {store.records_dir}"
    if not candidates:
        scope = f"protocol {protocol.name}" if protocol else "any protocol"
        raise UserError(
            f"no complete set of records of {where} for {scope} (every evaluation dataset "
            "needs a record; run `ovrsisbench run` first, or check the filters)"
        )
    if len(candidates) > 1:
        firsts = [next(iter(records.values())) for _proto, _config, records in candidates]
        shown = distinguishing_options(firsts)
        listed = "; ".join(
            f"{proto.name}: {config_label(first, shown)} weights={weights_label(first)} "
            f"data={data_source(first)}"
            for (proto, _config, _records), first in zip(candidates, firsts, strict=True)
        )
        raise UserError(
            f"{where} has several complete configurations ({listed}); pick one with "
            "--protocol, -o KEY=VALUE or --weights-sha256 PREFIX"
        )
    chosen, _config, by_entry = candidates[0]
    # saved prediction maps stay behind: their paths name files of this results folder only
    records = [{**by_entry[_entry_key(e)], "predictions": None} for e in chosen.evaluation]
    first = records[0]
    from ovrsisbench.registry import find_adapter  # here: reading submissions needs no torch

    adapter = find_adapter(model).provenance()  # the submitter's own code, run locally
    adapter.update(
        name=first["model"],  # as run was given it (a module:Class string stays one)
        options=first["options"],
        weights_sha256=first["weights_sha256"],
        params=first["params"],
        inference=first["timing"].get("inference"),
    )
    return {
        "schema": SUBMISSION_SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "adapter": adapter,
        "protocol": {
            "name": chosen.name,
            "evaluation": [_describe_entry(entry) for entry in chosen.evaluation],
        },
        "environment": describe_environment(),
        "records": [{"sha256": json_sha256(record), "record": record} for record in records],
    }


def _newest_code_version(candidates: list[tuple]) -> list[tuple]:
    """Of complete sets that differ only in the code version, the one with the newest record."""
    best: dict[tuple, tuple] = {}
    for protocol, config, records in candidates:
        base = (protocol.name, *config[:3])
        newest = max(record["created"] for record in records.values())
        if base not in best or newest > best[base][0]:
            best[base] = (newest, protocol, config, records)
    return [(protocol, config, records) for _, protocol, config, records in best.values()]


# -- verify --------------------------------------------------------------------------------------
@dataclass
class Verdict:
    """What ``verify_submission`` found: ``problems`` empty means verified."""

    source: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be checked, and why
    protocol: Protocol | None = None
    records: list[dict[str, Any]] = field(default_factory=list)  # when verified, in entry order
    adapter: dict[str, Any] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        return not self.problems


def read_submission(path: Path) -> Verdict:
    """Read and verify the submission file ``path`` (JSON only: nothing it names is imported)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"submission file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        return Verdict(str(path), [f"unreadable file: {error}"])
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        return Verdict(str(path), [f"malformed JSON: {error}"])
    except (ValueError, RecursionError) as error:  # NaN/Infinity, huge numbers, deep nesting
        return Verdict(str(path), [f"malformed JSON: {error}"])
    return verify_submission(data, str(path))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_COUNT


def _is_percent(value: Any) -> bool:
    """A JSON number between 0 and 100 (every metric is a percentage)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return 0.0 <= float(value) <= 100.0  # False for NaN
    except OverflowError:
        return False


def _close(stated: Any, computed: float | None) -> bool:
    if computed is None:
        return stated is None
    return _is_percent(stated) and abs(float(stated) - computed) <= METRIC_TOLERANCE


class _Checker:
    """Collects the problems of one submission; every check names where it looked."""

    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict

    def problem(self, where: str, message: str) -> None:
        self.verdict.problems.append(f"{where}: {message}")

    def fields(self, where: str, value: Any, keys: tuple[str, ...]) -> bool:
        if not isinstance(value, dict):
            self.problem(where, "must be a JSON object")
            return False
        missing = [key for key in keys if key not in value]
        if missing:
            self.problem(where, f"lacks {', '.join(missing)}")
            return False
        return True

    def submission(self, data: Any) -> None:
        if not self.fields(
            "submission", data, ("schema", "adapter", "protocol", "environment", "records")
        ):
            return
        if data["schema"] != SUBMISSION_SCHEMA:
            self.problem("schema", f"unknown {data['schema']!r} (expected {SUBMISSION_SCHEMA})")
            return
        self.adapter(data["adapter"])
        protocol = self.protocol(data["protocol"])
        if not isinstance(data["environment"], dict):
            self.problem("environment", "must be a JSON object")
        if protocol is not None:
            self.records(data["records"], protocol)

    def adapter(self, adapter: Any) -> None:
        """Check the adapter block; the records are compared with it (what of it is valid)."""
        if not self.fields("adapter", adapter, _ADAPTER_KEYS):
            return
        self.verdict.adapter = adapter
        if not isinstance(adapter["name"], str) or not NAME_PATTERN.fullmatch(adapter["name"]):
            self.problem("adapter.name", "must be a name of letters, digits and ._:/@+-")
        if not isinstance(adapter["origin"], str) or not adapter["origin"]:
            self.problem("adapter.origin", "must be a non-empty text")
        for key in ("version", "source_url", "licence", "weights_sha256"):
            if adapter[key] is not None and not isinstance(adapter[key], str):
                self.problem(f"adapter.{key}", "must be a text or null")
        if not isinstance(adapter["options"], dict):
            self.problem("adapter.options", "must be a JSON object")
        params = adapter["params"]
        if params is not None and not (
            isinstance(params, dict)
            and _is_count(params.get("total"))
            and _is_count(params.get("trainable"))
            and params["trainable"] <= params["total"]
        ):
            self.problem("adapter.params", "must be null or counts total >= trainable >= 0")

    def protocol(self, stated: Any) -> Protocol | None:
        if not self.fields("protocol", stated, ("name", "evaluation")):
            return None
        name = stated["name"]
        if not isinstance(name, str) or name not in list_protocols():
            known = ", ".join(list_protocols())
            self.problem("protocol.name", f"{name!r} is not a protocol of ours (known: {known})")
            return None
        protocol = load_protocol(name)
        ours = [_describe_entry(entry) for entry in protocol.evaluation]
        if stated["evaluation"] != ours:
            self.problem(
                "protocol.evaluation",
                "differs from our definition of the protocol (datasets, splits or vocabulary "
                "hashes)",
            )
        self.verdict.protocol = protocol
        return protocol

    def records(self, entries: Any, protocol: Protocol) -> None:
        if not isinstance(entries, list):
            self.problem("records", "must be a list")
            return
        wanted = {_entry_key(entry): entry for entry in protocol.evaluation}
        seen: dict[tuple[str, str, str], dict[str, Any]] = {}
        for index, item in enumerate(entries):
            where = f"records[{index}]"
            if not self.fields(where, item, ("sha256", "record")):
                continue
            record = item["record"]
            if not self.fields(f"{where}.record", record, REQUIRED_KEYS):
                continue
            where = f"records[{index}] ({record['dataset']!r})"
            if json_sha256(record) != item["sha256"]:
                self.problem(where, "its SHA-256 differs from the stated one (edited record?)")
            vocabulary = record["vocabulary"]
            texts = (record["dataset"], record["split"], (vocabulary or {}).get("sha256"))
            if not isinstance(vocabulary, dict) or not all(isinstance(t, str) for t in texts):
                self.problem(where, "dataset, split or vocabulary malformed")
                continue
            key = _record_key(record)
            if key not in wanted:
                self.problem(where, "is not an evaluation entry of the protocol (or its "
                             "vocabulary hash differs from ours)")  # fmt: skip
                continue
            if key in seen:
                self.problem(where, "appears twice")
                continue
            seen[key] = record
            self.record(where, record, wanted[key], protocol)
        for key, entry in wanted.items():
            if key not in seen:
                self.problem("records", f"no record for {entry.dataset} ({entry.split})")
        sources = {_source(record) for record in seen.values()}
        if len(sources) > 1:
            self.problem("records", f"mix data sources {sorted(map(str, sources))}: one per row")
        if not self.verdict.problems:
            self.verdict.records = [seen[_entry_key(entry)] for entry in protocol.evaluation]

    def record(
        self, where: str, record: dict[str, Any], entry: EvalEntry, protocol: Protocol
    ) -> None:
        adapter = self.verdict.adapter or {}
        if record["schema"] != SCHEMA:
            self.problem(where, f"unknown record schema {record['schema']!r}")
        if record["protocol"] != protocol.name:
            self.problem(where, f"belongs to protocol {record['protocol']!r}")
        if record["model"] != adapter.get("name"):
            self.problem(where, f"is of model {record['model']!r}, not {adapter.get('name')!r}")
        for key in ("options", "weights_sha256", "params"):
            if record[key] != adapter.get(key):
                self.problem(where, f"its {key} differ from the adapter's")
        if record["classes"] != entry.vocabulary.names():
            self.problem(where, "its class list differs from our vocabulary's")
        if record["absent_class_policy"] not in POLICIES:
            self.problem(where, f"unknown absent-class policy {record['absent_class_policy']!r}")
            return
        if not _is_count(record["num_images"]) or record["num_images"] < 1:
            self.problem(where, "num_images must be a positive integer")
        environment = record["environment"]
        data = environment.get("data", {}) if isinstance(environment, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("version"), dict):
            self.problem(where, "its environment must be a JSON object with the data version")
        elif _source(record) not in DATA_SOURCES:
            self.problem(where, f"unknown data source {_source(record)!r}")
        if not isinstance(environment, dict) or not isinstance(environment.get("ovrsisbench"), str):
            self.problem(where, "its environment must name the ovrsisbench version")
        matrix = self.confusion(where, record["confusion"], len(entry.vocabulary.names()))
        if matrix is not None:
            self.counts(where, record, matrix)

    def confusion(self, where: str, confusion: Any, size: int) -> np.ndarray | None:
        rows = confusion if isinstance(confusion, list) else None
        if (
            rows is None
            or len(rows) != size
            or any(not isinstance(row, list) or len(row) != size for row in rows)
        ):
            self.problem(where, f"the confusion matrix must be {size} x {size} (the classes)")
            return None
        if not all(_is_count(value) for row in rows for value in row):
            self.problem(where, f"the confusion matrix must hold integers from 0 to {MAX_COUNT}")
            return None
        total = sum(sum(row) for row in rows)  # Python integers: no overflow
        if not 0 < total < MAX_COUNT:
            self.problem(where, f"the confusion matrix counts {total} pixels")
            return None
        return np.asarray(rows, dtype=np.int64)

    def counts(self, where: str, record: dict[str, Any], matrix: np.ndarray) -> None:
        per_class = record["per_class"]
        if not isinstance(per_class, dict):
            self.problem(where, "per_class must be a JSON object")
            return
        if per_class.get("gt_pixels") != matrix.sum(axis=1).tolist():
            self.problem(where, "per_class.gt_pixels are not the matrix's row sums")
        if per_class.get("pred_pixels") != matrix.sum(axis=0).tolist():
            self.problem(where, "per_class.pred_pixels are not the matrix's column sums")
        scores = compute_scores(matrix, record["absent_class_policy"])
        stated = record["metrics"] if isinstance(record["metrics"], dict) else {}
        for name, value in scores.summary().items():
            if not _close(stated.get(name), value):
                self.problem(
                    where, f"{name} {stated.get(name)!r} is not {value!r}, computed from its matrix"
                )
        for name, values in (("iou", scores.iou), ("acc", scores.acc)):
            given = per_class.get(name)
            if not isinstance(given, list) or len(given) != len(values):
                self.problem(where, f"per_class.{name} must list every class")
            elif not all(_close(g, v) for g, v in zip(given, values, strict=True)):
                self.problem(where, f"per_class.{name} differs from its matrix")


def _source(record: dict[str, Any]) -> Any:
    try:
        return record["environment"]["data"]["version"]["source"]
    except (KeyError, TypeError):
        return None


def verify_submission(data: Any, source: str = "submission") -> Verdict:
    """Every problem of a parsed submission (``Verdict.problems`` empty: verified)."""
    verdict = Verdict(source)
    try:
        _Checker(verdict).submission(data)
    except Exception as error:  # a shape no check foresaw: rejected, never a traceback
        verdict.problems.append(f"malformed submission ({type(error).__name__}: {error})")
    if verdict.problems:
        verdict.records = []
    return verdict


# -- against locally prepared data ---------------------------------------------------------------
def check_local_data(verdict: Verdict, data_root: Path, labels: bool = False) -> None:
    """Compare a verified submission's records with the datasets prepared under ``data_root``
    when they are the same data version: image counts and the counted pixels against the label
    sizes, and with ``labels`` (reads every label) the ground-truth pixels of every class."""
    from ovrsisbench.data.layout import open_dataset
    from ovrsisbench.data.loader import SegmentationDataset

    assert verdict.protocol is not None
    for entry, record in zip(verdict.protocol.evaluation, verdict.records, strict=True):
        where = f"{entry.dataset} ({entry.split})"
        try:
            dataset = open_dataset(data_root, entry.dataset)
        except UserError:
            verdict.notes.append(f"{where}: not prepared under {data_root}; counts not compared")
            continue
        stated = record["environment"].get("data", {}).get("version")
        if stated != dataset.meta.version():
            verdict.notes.append(
                f"{where}: prepared here as another data version; counts not compared"
            )
            continue
        stems = dataset.stems(entry.split)
        matrix = np.asarray(record["confusion"], dtype=np.int64)
        if record["num_images"] != len(stems):
            verdict.problems.append(
                f"{where}: {record['num_images']} images stated, the split has {len(stems)}"
            )
            continue
        if labels:
            samples = SegmentationDataset(dataset, entry.split, entry.vocabulary.lookup_table())
            gt = np.zeros(len(matrix), dtype=np.int64)
            for index in range(len(samples)):
                label = samples[index]["label"].numpy()
                gt += np.bincount(label[label != 255], minlength=256)[: len(matrix)]
            if gt.tolist() != matrix.sum(axis=1).tolist():
                verdict.problems.append(
                    f"{where}: the ground-truth pixels per class differ from our labels' "
                    f"({matrix.sum(axis=1).tolist()} stated, {gt.tolist()} counted)"
                )
        else:
            area = sum(math.prod(dataset.sample_size(stem)) for stem in stems)
            if matrix.sum() > area:
                verdict.problems.append(
                    f"{where}: {int(matrix.sum())} pixels counted, the split's labels hold {area}"
                )
