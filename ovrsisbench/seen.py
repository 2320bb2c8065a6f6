"""Seen and unseen classes of an evaluation vocabulary, and the scores on each (issue 16).

An evaluation class is *seen* when the protocol's training vocabulary contains the same class,
else *unseen*. The match is derived from the class names and prompts (synonyms) of both sides,
compared after ``normalise``; where a training vocabulary names the same class differently, or
the same word means a different class, the evaluation vocabulary's ``seen_as`` entry says so
(parsed by ``ovrsisbench.protocol``; it is not part of the vocabulary's hash, so records keep
their identity and gain these scores without re-running).

Scores, in percent like the record's metrics: mIoU-seen and mIoU-unseen are the means of the
per-class IoUs of ``compute_scores`` (so the absent-class policy applies as for mIoU) over the
seen and the unseen classes; hIoU = 2 s u / (s + u), their harmonic mean, as zero-shot
segmentation papers report it. ``None`` where a value is undefined.

The RSKT-Seg paper's text states no overlap counts: they are drawn only in its Fig. 2(b)
(transcribed in ``shared/spec/rsktseg.md``), which is not symmetric (DLRSD training shares 2
classes with iSAID, iSAID training 1 with DLRSD) and counts near-synonyms differently from case
to case. The splits here follow the class definitions; ``tests/test_seen.py`` pins where they
differ from the figure, and why.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from ovrsisbench.errors import DataError
from ovrsisbench.metrics import DEFAULT_POLICY, compute_scores
from ovrsisbench.protocol import Protocol, VocabClass, Vocabulary

#: the scores of a split, under their record-style keys, in column order
SEEN_METRICS = ("mIoU-seen", "mIoU-unseen", "hIoU")

# -- name normalisation ------------------------------------------------------------------------
#: characters that separate words in a class name or prompt ("no-data", "Clutter/background")
SEPARATORS = r"[\s_\-/]+"
#: English plural endings -> singular endings, first match wins ("trees" -> "tree")
PLURAL_ENDINGS = (("ies", "y"), ("sses", "ss"), ("ches", "ch"), ("shes", "sh"), ("s", ""))
#: endings of singular words that end in "s" ("grass", "bus", "chassis")
SINGULAR_S_ENDINGS = ("ss", "us", "is")
#: shorter words are left alone ("gas", "bus")
MIN_PLURAL_LENGTH = 4


def normalise(name: str) -> str:
    """The form in which class names and prompts are compared: lower case, words separated by
    single spaces, the last word (the head of an English compound: "storage tanks") singular."""
    words = re.split(SEPARATORS, name.lower().strip())
    words = [word for word in words if word]
    if words:
        words[-1] = singular(words[-1])
    return " ".join(words)


def singular(word: str) -> str:
    """``word`` without a regular English plural ending ("buildings" -> "building"); words that
    are singular already stay as they are ("grass")."""
    if len(word) < MIN_PLURAL_LENGTH or word.endswith(SINGULAR_S_ENDINGS):
        return word
    for plural, single in PLURAL_ENDINGS:
        if word.endswith(plural):
            return word[: len(word) - len(plural)] + single
    return word


# -- splits ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeenSplit:
    """The scored classes of an evaluation vocabulary, split by a training vocabulary."""

    seen: tuple[str, ...]  # scored class names of the evaluation vocabulary, in score order
    unseen: tuple[str, ...]  # the rest, in score order
    #: each seen evaluation class -> the training class it is
    matches: Mapping[str, str] = field(hash=False)

    def is_seen(self, name: str) -> bool:
        """Whether the evaluation class ``name`` is seen; a KeyError for a name of neither."""
        if name not in self.seen and name not in self.unseen:
            raise KeyError(f"{name!r} is not a scored class of this split")
        return name in self.seen

    def defines(self, metric: str) -> bool:
        """Whether ``metric`` (one of ``SEEN_METRICS``) can have a value on this split: it needs
        a seen class, an unseen class, or both (hIoU)."""
        sides = {"mIoU-seen": [self.seen], "mIoU-unseen": [self.unseen]}
        sides["hIoU"] = [self.seen, self.unseen]
        return all(sides[metric])


def seen_split(evaluation: Vocabulary, training: Vocabulary) -> SeenSplit:
    """Split ``evaluation``'s classes into those ``training`` contains and the others: its
    ``seen_as`` entry for ``training`` first, else a normalised name or prompt in common."""
    overrides = evaluation.seen_overrides(training)
    matches: dict[str, str] = {}
    for cls in evaluation.classes:
        match = overrides[cls.name] if cls.name in overrides else _match(cls, evaluation, training)
        if match is not None:
            matches[cls.name] = match
    names = evaluation.names()
    return SeenSplit(
        seen=tuple(name for name in names if name in matches),
        unseen=tuple(name for name in names if name not in matches),
        matches=MappingProxyType(matches),
    )


def _terms(cls: VocabClass) -> set[str]:
    return {normalise(term) for term in (cls.name, *cls.prompts)}


def _match(cls: VocabClass, evaluation: Vocabulary, training: Vocabulary) -> str | None:
    """The training class sharing a normalised name or prompt with ``cls``, if exactly one."""
    found = [other.name for other in training.classes if _terms(other) & _terms(cls)]
    if len(found) > 1:
        raise DataError(
            f"{evaluation.path}: class {cls.name!r} matches {len(found)} classes of training "
            f"vocabulary {training.name!r} ({', '.join(found)}); say which in "
            f"seen_as: {{{training.name}: {{{cls.name}: ...}}}}"
        )
    return found[0] if found else None


def protocol_seen_splits(protocol: Protocol) -> dict[str, SeenSplit]:
    """Evaluation dataset -> its split by the protocol's training vocabulary; {} for an
    evaluation-only protocol."""
    if protocol.train is None:
        return {}
    training = protocol.train.vocabulary
    return {entry.dataset: seen_split(entry.vocabulary, training) for entry in protocol.evaluation}


# -- scores ------------------------------------------------------------------------------------
def seen_scores(
    confusion: np.ndarray,
    classes: list[str],
    split: SeenSplit | None,
    policy: str = DEFAULT_POLICY,
) -> dict[str, float | None]:
    """mIoU-seen, mIoU-unseen and hIoU (percent) of a confusion matrix over ``classes``;
    ``None`` where undefined: no split, no class on one side, or all of them absent under
    ``policy``."""
    if split is None:
        return dict.fromkeys(SEEN_METRICS)
    if sorted(classes) != sorted(split.seen + split.unseen):
        raise ValueError(f"classes {classes} are not those of the split {split}")
    iou = dict(zip(classes, compute_scores(confusion, policy).iou, strict=True))
    seen = _mean([iou[name] for name in split.seen])
    unseen = _mean([iou[name] for name in split.unseen])
    return {"mIoU-seen": seen, "mIoU-unseen": unseen, "hIoU": harmonic_mean(seen, unseen)}


def _mean(values: list[float | None]) -> float | None:
    """The mean of the values the policy keeps (None = class left out); None if there is none."""
    kept = [value for value in values if value is not None]
    return sum(kept) / len(kept) if kept else None


def harmonic_mean(seen: float | None, unseen: float | None) -> float | None:
    """hIoU = 2 s u / (s + u); None unless both are defined, 0.0 when both are 0."""
    if seen is None or unseen is None:
        return None
    total = seen + unseen
    return 2 * seen * unseen / total if total else 0.0


def record_seen_split(record: dict[str, Any], protocol: Protocol) -> SeenSplit | None:
    """The split of ``record``'s dataset under ``protocol``, when the record was made with that
    protocol entry's vocabulary (same hash); else None."""
    entry = next((e for e in protocol.evaluation if e.dataset == record["dataset"]), None)
    if entry is None or protocol.train is None:
        return None
    if entry.vocabulary.sha256 != record["vocabulary"]["sha256"]:
        return None
    return seen_split(entry.vocabulary, protocol.train.vocabulary)


def record_seen_scores(
    record: dict[str, Any], protocol: Protocol, policy: str | None = None
) -> dict[str, float | None]:
    """``seen_scores`` from a result record's stored matrix and classes, under ``policy``
    (default: the record's own, that of its stored metrics)."""
    return seen_scores(
        np.asarray(record["confusion"], dtype=np.int64),
        list(record["classes"]),
        record_seen_split(record, protocol),
        policy or record["absent_class_policy"],
    )
