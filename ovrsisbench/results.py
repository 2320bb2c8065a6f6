"""Result records: their schema, their identity key, and an atomic on-disk store with resume.

A record is one JSON file per (model, options, weights, protocol, dataset, split, vocabulary,
code version, data version): the same model on a dataset prepared differently (raw download vs
the OVSISBench archive, another tiling) is another result. Its file name carries a hash of that
key, so a rerun finds it without reading every file. Evaluation in progress is checkpointed to a
``.partial.json`` beside it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ovrsisbench.checkpoints import FINAL
from ovrsisbench.environment import describe_environment
from ovrsisbench.errors import DataError
from ovrsisbench.io import atomic_write_text, json_sha256
from ovrsisbench.metrics import compute_scores

SCHEMA = "ovrsisbench.result/1"
#: Every key of a record, in the order records are written (``make_record``).
RECORD_KEYS = (
    "schema",
    "model",
    "options",
    "weights_sha256",
    "weights_origin",
    "protocol",
    "dataset",
    "split",
    "vocabulary",
    "classes",
    "background_rule",
    "confusion",
    "metrics",
    "per_class",
    "absent_class_policy",
    "num_images",
    "predictions",
    "timing",
    "params",
    "environment",
    "created",
)
#: Keys that records written before they existed lack (``weights_origin``: also on later
#: records written through ``ResultStore.save`` by other tools); readers take them as None.
LATER_KEYS = ("weights_origin", "background_rule", "predictions")
REQUIRED_KEYS = tuple(key for key in RECORD_KEYS if key not in LATER_KEYS)
#: The fields of a ``RecordKey``: equal keys mean a reusable record. The code and data versions
#: are kept in a record's environment.
IDENTITY_FIELDS = (
    "model",
    "options",
    "weights_sha256",
    "protocol",
    "dataset",
    "split",
    "vocabulary",
    "code_version",
    "data_version",
)


@dataclass(frozen=True)
class RecordKey:
    """Everything that decides a result: equal keys mean the record can be reused."""

    model: str
    options: dict[str, Any]
    weights_sha256: str | None
    protocol: str
    dataset: str
    split: str
    vocabulary: dict[str, str]  # {"name": ..., "sha256": ...}
    code_version: str
    data_version: dict[str, str]  # {"source": raw|archive|synthetic, "sha256": ...}

    def as_dict(self) -> dict[str, Any]:
        return {field: getattr(self, field) for field in IDENTITY_FIELDS}

    @property
    def digest(self) -> str:
        return json_sha256(self.as_dict())


def key_of_record(record: dict[str, Any]) -> RecordKey:
    """The identity key stored in a record."""
    environment = record["environment"]
    fields = {field: record[field] for field in IDENTITY_FIELDS if not field.endswith("_version")}
    return RecordKey(
        **fields,
        code_version=environment["ovrsisbench"],
        data_version=environment.get("data", {}).get("version", {}),
    )


@dataclass(frozen=True)
class Measurement:
    """What one evaluation measured: the pooled int64 confusion matrix, the number of images
    and the seconds their predictions took, on ``device`` (a device name)."""

    confusion: np.ndarray
    num_images: int
    seconds: float
    device: str


def make_record(
    key: RecordKey,
    measurement: Measurement,
    *,
    classes: list[str],
    policy: str,
    adapter_facts: dict[str, Any],
    data: dict[str, Any],
) -> dict[str, Any]:
    """The result record of ``key``: every key of ``RECORD_KEYS``, in that order, the scores
    computed from the matrix under ``policy``. ``adapter_facts`` holds the adapter's
    ``weights_origin``, ``background_rule``, ``inference`` (its ``describe()``), ``params`` and the
    ``predictions`` the evaluation saved (``ovrsisbench.predictions.listing``, or None);
    ``data`` the prepared dataset's provenance (version, meta.json hash, converter, source)."""
    matrix = measurement.confusion
    scores = compute_scores(matrix, policy)
    record = {
        "schema": SCHEMA,
        "model": key.model,
        "options": key.options,
        "weights_sha256": key.weights_sha256,
        "weights_origin": adapter_facts["weights_origin"],
        "protocol": key.protocol,
        "dataset": key.dataset,
        "split": key.split,
        "vocabulary": key.vocabulary,
        "classes": classes,
        "background_rule": adapter_facts["background_rule"],
        "confusion": matrix.tolist(),
        "metrics": scores.summary(),
        "per_class": {
            "iou": scores.iou,
            "acc": scores.acc,
            "gt_pixels": matrix.sum(axis=1).tolist(),
            "pred_pixels": matrix.sum(axis=0).tolist(),
        },
        "absent_class_policy": scores.policy,
        "num_images": measurement.num_images,
        "predictions": adapter_facts["predictions"],
        "timing": {
            "ms_per_image": 1000.0 * measurement.seconds / measurement.num_images,
            "device": measurement.device,
            "inference": adapter_facts["inference"],
        },
        "params": adapter_facts["params"],
        "environment": {**describe_environment(), "data": data},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    assert tuple(record) == RECORD_KEYS  # the schema and its writer change together
    return record


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


class ResultStore:
    """Records below ``<results>/records/<protocol>/<model>/``; writes are atomic."""

    def __init__(self, results_dir: Path) -> None:
        self.results_dir = Path(results_dir)
        self.records_dir = self.results_dir / "records"

    def path_for(self, key: RecordKey) -> Path:
        name = f"{_slug(key.dataset)}--{_slug(key.vocabulary['name'])}--{key.digest[:16]}.json"
        return self.records_dir / _slug(key.protocol) / _slug(key.model) / name

    def partial_path_for(self, key: RecordKey) -> Path:
        return self.path_for(key).with_suffix(".partial.json")

    def find(self, key: RecordKey) -> dict[str, Any] | None:
        """The finished record for ``key``, or None (a file with another key is not a match)."""
        path = self.path_for(key)
        if not path.exists():
            return None
        record = read_record(path)
        return record if key_of_record(record) == key else None

    def save(self, record: dict[str, Any]) -> Path:
        """Write ``record`` atomically and drop its checkpoint."""
        key = key_of_record(record)
        path = self.path_for(key)
        atomic_write_text(path, json.dumps(record, indent=1, allow_nan=False) + "\n")
        self.discard_partial(key)
        return path

    def discard_partial(self, key: RecordKey) -> None:
        """Remove the checkpoint of ``key`` (a finished record supersedes it)."""
        self.partial_path_for(key).unlink(missing_ok=True)

    def load_partial(self, key: RecordKey) -> dict[str, Any] | None:
        """A checkpoint of an interrupted evaluation for ``key``, if one exists and matches."""
        path = self.partial_path_for(key)
        if not path.exists():
            return None
        try:
            state = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # checkpoints are written atomically; an unreadable one is stale
        return state if state.get("key") == key.digest else None

    def save_partial(self, key: RecordKey, state: dict[str, Any]) -> None:
        """Checkpoint an evaluation in progress (atomic)."""
        atomic_write_text(self.partial_path_for(key), json.dumps({**state, "key": key.digest}))

    def iter_records(self) -> Iterator[tuple[Path, dict[str, Any]]]:
        """Every finished record below the store, in path order."""
        if not self.records_dir.is_dir():
            return
        for path in sorted(self.records_dir.rglob("*.json")):
            if not path.name.endswith(".partial.json"):
                yield path, read_record(path)


def read_record(path: Path) -> dict[str, Any]:
    """Read and check one result record; DataError names the file and the problem."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: unreadable result record ({error})") from error
    if not isinstance(record, dict):
        raise DataError(f"{path}: a result record must be a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise DataError(f"{path}: result record lacks {', '.join(missing)}")
    if record["schema"] != SCHEMA:
        raise DataError(f"{path}: unknown schema '{record['schema']}' (expected {SCHEMA})")
    return record


# -- what a record's configuration is called on leaderboards ---------------------------------------
def data_source(record: dict[str, Any]) -> str:
    """Where the record's dataset was prepared from: raw, archive (the paper's OVSISBench files)
    or synthetic; results on differently prepared data are different benchmark versions."""
    return record["environment"].get("data", {}).get("version", {}).get("source", "unknown")


def distinguishing_options(records: list[dict[str, Any]]) -> list[str]:
    """Option names whose values differ between the records of one model (plus backbone)."""
    keys = {key for record in records for key in record["options"]}
    varying = {k for k in keys if len({repr(r["options"].get(k)) for r in records}) > 1}
    return sorted(varying | ({"backbone"} & keys))


def config_label(record: dict[str, Any], shown: list[str]) -> str:
    """``key=value`` of the ``shown`` options ("-" for none)."""
    return " ".join(f"{k}={record['options'].get(k)}" for k in shown) or "-"


SHORT_HASH = 12  # hex digits of a weights hash shown in tables


def weights_label(record: dict[str, Any]) -> str:
    """The weights hash's first 12 digits ("none" without one) and, for the weights of a
    training run (``weights_origin``, see ``ovrsisbench.checkpoints.weights_origin``), the
    run's name (and the iteration of a checkpoint before the final one): what tells apart rows
    that differ only in their weights."""
    label = (record["weights_sha256"] or "none")[:SHORT_HASH]
    origin = record.get("weights_origin")
    if not isinstance(origin, dict) or not isinstance(origin.get("training_run"), str):
        return label
    run = origin["training_run"]
    iteration = origin.get("iteration")
    if Path(str(origin.get("file"))).stem != FINAL and isinstance(iteration, int):
        run += f" @ {iteration}"  # a checkpoint before the end of the run
    return f"{label} (run {run})"
