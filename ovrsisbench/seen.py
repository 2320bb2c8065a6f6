"""TEMPORARY stub of the seen/unseen module (issue 16, point 2) so the report can be written
against its API; the real module replaces it at merge. Matching here is by normalised class
names and prompts only (no override lists)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ovrsisbench.metrics import compute_scores
from ovrsisbench.protocol import Protocol, Vocabulary


@dataclass(frozen=True)
class SeenSplit:
    """The scored classes of one evaluation vocabulary the training vocabulary contains."""

    seen: tuple[str, ...]
    unseen: tuple[str, ...]
    matches: Mapping[str, str]

    def is_seen(self, name: str) -> bool:
        return name in self.seen


def _normalise(text: str) -> str:
    return " ".join(text.lower().replace("_", " ").replace("-", " ").split())


def _names(vocabulary: Vocabulary) -> dict[str, str]:
    names = {}
    for cls in vocabulary.classes:
        for name in (cls.name, *cls.prompts):
            names.setdefault(_normalise(name), cls.name)
    return names


def protocol_seen_splits(protocol: Protocol) -> dict[str, SeenSplit]:
    """Evaluation dataset name -> split; {} for an evaluation-only protocol."""
    if protocol.train is None:
        return {}
    training = _names(protocol.train.vocabulary)
    splits = {}
    for entry in protocol.evaluation:
        matches = {}
        for cls in entry.vocabulary.classes:
            for name in (cls.name, *cls.prompts):
                if _normalise(name) in training:
                    matches[cls.name] = training[_normalise(name)]
                    break
        names = entry.vocabulary.names()
        splits[entry.dataset] = SeenSplit(
            tuple(n for n in names if n in matches),
            tuple(n for n in names if n not in matches),
            matches,
        )
    return splits


def record_seen_scores(record: dict[str, Any], protocol: Protocol) -> dict[str, float | None]:
    """mIoU over the seen classes, over the unseen ones, and their harmonic mean."""
    split = protocol_seen_splits(protocol).get(record["dataset"])
    iou = compute_scores(np.asarray(record["confusion"], dtype=np.int64), "exclude-absent").iou
    scores: dict[str, float | None] = {}
    for key, names in (("mIoU-seen", split.seen if split else ()), ("mIoU-unseen", ())):
        if split and key == "mIoU-unseen":
            names = split.unseen
        values = [iou[record["classes"].index(n)] for n in names]
        values = [v for v in values if v is not None]
        scores[key] = sum(values) / len(values) if values else None
    seen, unseen = scores["mIoU-seen"], scores["mIoU-unseen"]
    scores["hIoU"] = 2 * seen * unseen / (seen + unseen) if seen and unseen else None
    return scores
