"""Protocols (what to train on and evaluate) and vocabularies (which native classes are scored).

Both are YAML files, validated on load. Packaged ones live in ``ovrsisbench.protocols`` (the
repository's ``protocols/`` folder: ``<name>.yaml`` and ``vocab/<name>.yaml``); users may pass
their own files by path. A vocabulary maps a prepared dataset's native class ids onto the scored
classes through one lookup table; native classes no entry covers are ignored (255).
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ovrsisbench.data.native import IGNORE_INDEX, KNOWN_CLASSES
from ovrsisbench.errors import DataError, UserError, did_you_mean
from ovrsisbench.io import json_sha256

SPLITS = ("train", "val", "all")
YAML_SUFFIXES = (".yaml", ".yml")
_VOCAB_KEYS = ("dataset", "description", "native_classes", "classes")
_VOCAB_OPTIONAL = ("background", "seen_as")
_BACKGROUND_KEYS = ("class", "threshold")
_CLASS_KEYS = ("name", "prompts", "native")
_PROTOCOL_KEYS = ("name", "description", "evaluation")
_PROTOCOL_OPTIONAL = ("train",)
_ENTRY_KEYS = ("dataset", "split", "vocabulary")


@dataclass(frozen=True)
class BackgroundRule:
    """A vocabulary's rejection rule (its ``background`` entry): pixels whose highest class
    probability is below ``threshold`` are assigned to class ``index`` (SegEarth-OV's per-dataset
    ``prob_thd`` / ``bg_idx``). Models that score with probabilities of their own apply it in
    ``Adapter.set_background``; the others score every pixel as usual."""

    index: int
    threshold: float


@dataclass(frozen=True)
class VocabClass:
    """One scored class: display name, prompt names (synonyms), native ids it covers."""

    name: str
    prompts: tuple[str, ...]
    native_ids: tuple[int, ...]


@dataclass(frozen=True)
class Vocabulary:
    """The ordered scored classes of one dataset, read from ``vocab/<name>.yaml``."""

    name: str
    dataset: str
    description: str
    native_classes: tuple[str, ...]
    classes: tuple[VocabClass, ...]
    path: Path
    #: The optional rejection rule of models that apply one (``background`` in the file).
    background: BackgroundRule | None = None
    #: ``seen_as`` in the file: training vocabulary name -> {class of this file: the training
    #: class it is, or None = never seen}, for names that differ (``ovrsisbench.seen``). Not
    #: part of ``sha256``: it says how to read results, not how they are made.
    seen_as: Mapping[str, Mapping[str, str | None]] = field(default_factory=dict, compare=False)

    @property
    def sha256(self) -> str:
        """Hash of the content that affects scores; file layout, comments and description aside."""
        content: dict[str, Any] = {
            "dataset": self.dataset,
            "native_classes": list(self.native_classes),
            "classes": [
                {"name": c.name, "prompts": list(c.prompts), "native": list(c.native_ids)}
                for c in self.classes
            ],
        }
        if self.background is not None:  # absent from the hash of files without one
            content["background"] = self.background_record()
        return json_sha256(content)

    def background_record(self) -> dict[str, Any] | None:
        """The rejection rule as results record it: class name, index and threshold."""
        rule = self.background
        if rule is None:
            return None
        name = self.classes[rule.index].name
        return {"class": name, "index": rule.index, "threshold": rule.threshold}

    def names(self) -> list[str]:
        """Display names of the scored classes, in score order."""
        return [c.name for c in self.classes]

    def seen_overrides(self, training: Vocabulary) -> dict[str, str | None]:
        """This file's ``seen_as`` entry for ``training`` (class -> training class or None); a
        DataError naming this file when it names a class ``training`` does not have."""
        overrides = dict(self.seen_as.get(training.name, {}))
        known = training.names()
        for name, target in overrides.items():
            if target is not None and target not in known:
                raise DataError(
                    f"{self.path}: seen_as: {training.name}: class {name!r} is seen as "
                    f"{target!r}, which is not a class of vocabulary {training.name!r} "
                    f"({training.path}){did_you_mean(target, known)}"
                )
        return overrides

    def prompts(self) -> list[list[str]]:
        """Prompt names per scored class (what ``Adapter.set_vocabulary`` takes)."""
        return [list(c.prompts) for c in self.classes]

    def lookup_table(self) -> np.ndarray:
        """(256,) uint8 table: native id -> scored index; uncovered ids and 255 -> 255."""
        table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for index, cls in enumerate(self.classes):
            table[list(cls.native_ids)] = index
        return table

    def check_dataset(self, classes: list[str], where: str) -> None:
        """Raise DataError unless a prepared dataset's native ``classes`` are this file's."""
        if tuple(classes) != self.native_classes:
            raise DataError(
                f"{where}: native classes {list(classes)} differ from "
                f"{list(self.native_classes)} expected by vocabulary {self.path}"
            )


@dataclass(frozen=True)
class EvalEntry:
    """One (dataset, split, vocabulary) of a protocol."""

    dataset: str
    split: str
    vocabulary: Vocabulary


@dataclass(frozen=True)
class Protocol:
    """A training source and the evaluation list, read from ``<name>.yaml``."""

    name: str
    description: str
    train: EvalEntry | None  # None: an evaluation-only protocol (training-free models)
    evaluation: tuple[EvalEntry, ...]
    path: Path

    def training_entry(self) -> EvalEntry:
        """The split to train on; a UserError for an evaluation-only protocol."""
        if self.train is None:
            raise UserError(
                f"protocol {self.name!r} ({self.path}) is evaluation-only: it names no "
                "training dataset (choose a protocol with a train entry, e.g. dlrsd or isaid)"
            )
        return self.train

    def select(self, datasets: list[str] | None) -> list[EvalEntry]:
        """Evaluation entries for ``datasets`` in protocol order; None selects all."""
        if datasets is None:
            return list(self.evaluation)
        known = [e.dataset for e in self.evaluation]
        unknown = [d for d in datasets if d not in known]
        if unknown or not datasets:
            problem = (
                f"has no dataset {unknown[0]!r}{did_you_mean(unknown[0], known)}"
                if unknown
                else "needs at least one dataset"
            )
            raise UserError(f"protocol {self.name!r} {problem}; its datasets: {', '.join(known)}")
        return [e for e in self.evaluation if e.dataset in datasets]


# -- public loaders ----------------------------------------------------------------------------
def load_vocabulary(name_or_path: str | Path, search_dir: Path | None = None) -> Vocabulary:
    """Load a vocabulary by path, or by name from ``search_dir`` first, then the packaged ones."""
    if _is_path(name_or_path):
        return _parse_vocabulary(Path(name_or_path))
    return _parse_vocabulary(_find_vocabulary(str(name_or_path), search_dir))


def load_protocol(name_or_path: str | Path) -> Protocol:
    """Load a packaged protocol by name, or a protocol file by path.

    A file's vocabularies are looked up in ``<its folder>/vocab/`` first, then among the packaged.
    """
    if _is_path(name_or_path):
        path = Path(name_or_path)
        return _parse_protocol(path, path.parent / "vocab")
    path = _packaged_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        known = list_protocols()
        raise UserError(
            f"unknown protocol {str(name_or_path)!r}{did_you_mean(str(name_or_path), known)}; "
            f"known: {', '.join(known)}"
        )
    return _parse_protocol(path, None)


def list_protocols() -> list[str]:
    """Names of the packaged protocols."""
    return _stems(_packaged_dir())


def list_vocabularies(search_dir: Path | None = None) -> list[str]:
    """Names of the vocabularies in ``search_dir`` (if given) and the packaged ones."""
    dirs = [_packaged_dir() / "vocab"] + ([search_dir] if search_dir else [])
    return sorted({stem for d in dirs for stem in _stems(d)})


# -- finding files -----------------------------------------------------------------------------
def _packaged_dir() -> Path:
    return Path(str(importlib.resources.files("ovrsisbench.protocols")))


def _stems(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _is_path(value: str | Path) -> bool:
    text = str(value)
    return isinstance(value, Path) or "/" in text or "\\" in text or text.endswith(YAML_SUFFIXES)


def _find_vocabulary(name: str, search_dir: Path | None, where: str = "") -> Path:
    prefix = f"{where}: " if where else ""
    if _is_path(name):
        raise UserError(f"{prefix}vocabulary {name!r} must be a name (a file stem), not a path")
    dirs = ([search_dir] if search_dir else []) + [_packaged_dir() / "vocab"]
    for folder in dirs:
        if (folder / f"{name}.yaml").is_file():
            return folder / f"{name}.yaml"
    raise UserError(
        f"{prefix}unknown vocabulary {name!r}; known: {', '.join(list_vocabularies(search_dir))}"
    )


# -- YAML reading and shape checks -------------------------------------------------------------
class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys instead of keeping the last one."""


def _construct_unique_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    mapping: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"{path}: invalid YAML{at}: {' '.join(problem.split())}") from None


def _mapping(value: Any, keys: tuple[str, ...], where: str, optional: tuple[str, ...] = ()) -> dict:
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected a mapping with keys {', '.join(keys)}")
    missing = [k for k in keys if k not in value]
    if missing:
        raise UserError(f"{where}: missing key {missing[0]!r}")
    unknown = [k for k in value if k not in keys + optional]
    if unknown:
        allowed = ", ".join(keys + optional)
        raise UserError(f"{where}: unknown key {unknown[0]!r} (expected: {allowed})")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _texts(value: Any, where: str) -> tuple[str, ...]:
    return tuple(_text(item, where) for item in _nonempty_list(value, where))


def _nonempty_list(value: Any, where: str) -> list:
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}: expected a non-empty list, got {value!r}")
    return value


def _dataset(value: Any, where: str) -> str:
    name = _text(value, where)
    if name not in KNOWN_CLASSES:
        raise UserError(f"{where}: unknown dataset {name!r}; known: {', '.join(KNOWN_CLASSES)}")
    return name


# -- vocabulary files --------------------------------------------------------------------------
def _parse_vocabulary(path: Path) -> Vocabulary:
    data = _mapping(_read_yaml(path), _VOCAB_KEYS, str(path), _VOCAB_OPTIONAL)
    dataset = _dataset(data["dataset"], f"{path}: dataset")
    native = _native_classes(data["native_classes"], dataset, f"{path}: native_classes")
    classes = _vocab_classes(_nonempty_list(data["classes"], f"{path}: classes"), len(native), path)
    background = data.get("background")
    return Vocabulary(
        name=path.stem,
        dataset=dataset,
        description=_text(data["description"], f"{path}: description"),
        native_classes=native,
        classes=classes,
        path=path,
        background=None if background is None else _background(background, classes, path),
        seen_as=_seen_as(data.get("seen_as", {}), classes, path),
    )


def _seen_as(value: Any, classes: tuple[VocabClass, ...], path: Path) -> dict:
    """``seen_as: {<training vocabulary>: {<class of this file>: <training class> | null}}``.

    The training classes are checked against the training vocabulary when a protocol pairs
    the two (``Vocabulary.seen_overrides``); here, this file's side and the vocabulary names.
    """
    where = f"{path}: seen_as"
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected a mapping of training vocabulary -> classes")
    vocabularies = list_vocabularies(path.parent)
    names = [c.name for c in classes]
    overrides: dict[str, dict[str, str | None]] = {}
    for training, entries in value.items():
        if training not in vocabularies:
            raise DataError(
                f"{where}: unknown training vocabulary {training!r}"
                f"{did_you_mean(str(training), vocabularies)}"
            )
        if not isinstance(entries, dict) or not entries:
            raise DataError(f"{where}: {training}: expected a mapping of class -> training class")
        for name, target in entries.items():
            if name not in names:
                raise DataError(
                    f"{where}: {training}: {name!r} is not a class of this vocabulary"
                    f"{did_you_mean(str(name), names)}"
                )
            if target is not None and (not isinstance(target, str) or not target.strip()):
                raise DataError(
                    f"{where}: {training}: class {name!r}: expected a training class name or "
                    f"null (never seen), got {target!r}"
                )
        overrides[training] = dict(entries)
    return overrides


def _background(value: Any, classes: tuple[VocabClass, ...], path: Path) -> BackgroundRule:
    """``background: {class: <scored class name>, threshold: <probability in [0, 1]>}``."""
    where = f"{path}: background"
    data = _mapping(value, _BACKGROUND_KEYS, where)
    names = [c.name for c in classes]
    name = _text(data["class"], f"{where}: class")
    if name not in names:
        raise UserError(f"{where}: class {name!r} is not a scored class ({', '.join(names)})")
    threshold = data["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise UserError(f"{where}: threshold must be a number, got {threshold!r}")
    if not 0 <= threshold <= 1:
        raise UserError(f"{where}: threshold {threshold} is not a probability in [0, 1]")
    return BackgroundRule(names.index(name), float(threshold))


def _native_classes(value: Any, dataset: str, where: str) -> tuple[str, ...]:
    names = _texts(value, where)
    if names != KNOWN_CLASSES[dataset]:
        raise UserError(
            f"{where}: {list(names)} differ from the native classes of {dataset!r}: "
            f"{list(KNOWN_CLASSES[dataset])} (ovrsisbench.data.native)"
        )
    return names


def _vocab_classes(entries: list, num_native: int, path: Path) -> tuple[VocabClass, ...]:
    classes: list[VocabClass] = []
    owners: dict[int, int] = {}
    names: dict[str, int] = {}
    for index, entry in enumerate(entries):
        where = f"{path}: class {index}"
        data = _mapping(entry, _CLASS_KEYS, where)
        name = _text(data["name"], f"{where}: name")
        where = f"{where} ({name!r})"
        if name in names:
            raise UserError(f"{where}: duplicate class name (also class {names[name]})")
        names[name] = index
        native_ids = _native_ids(data["native"], num_native, where)
        for native_id in native_ids:
            if native_id in owners:
                raise UserError(
                    f"{where}: native id {native_id} already covered by class {owners[native_id]}"
                )
            owners[native_id] = index
        classes.append(VocabClass(name, _texts(data["prompts"], f"{where}: prompts"), native_ids))
    return tuple(classes)


def _native_ids(value: Any, num_native: int, where: str) -> tuple[int, ...]:
    ids = _nonempty_list(value, f"{where}: native")
    for native_id in ids:
        if isinstance(native_id, bool) or not isinstance(native_id, int):
            raise UserError(f"{where}: native id {native_id!r} is not an integer")
        if not 0 <= native_id < num_native:
            raise UserError(f"{where}: native id {native_id} out of range 0..{num_native - 1}")
    return tuple(ids)


# -- protocol files ----------------------------------------------------------------------------
def _parse_protocol(path: Path, search_dir: Path | None) -> Protocol:
    data = _mapping(_read_yaml(path), _PROTOCOL_KEYS, str(path), _PROTOCOL_OPTIONAL)
    train = data.get("train")
    train = None if train is None else _entry(train, f"{path}: train", search_dir)
    items = _nonempty_list(data["evaluation"], f"{path}: evaluation")
    evaluation = tuple(
        _entry(item, f"{path}: evaluation {i}", search_dir) for i, item in enumerate(items)
    )
    listed = [e.dataset for e in evaluation]
    repeated = next((d for i, d in enumerate(listed) if d in listed[:i]), None)
    if repeated:
        raise UserError(f"{path}: evaluation lists dataset {repeated!r} twice")
    for entry in evaluation if train is not None else ():
        entry.vocabulary.seen_overrides(train.vocabulary)  # a bad seen_as fails the load
    return Protocol(
        name=_text(data["name"], f"{path}: name"),
        description=_text(data["description"], f"{path}: description"),
        train=train,
        evaluation=evaluation,
        path=path,
    )


def _entry(value: Any, where: str, search_dir: Path | None) -> EvalEntry:
    data = _mapping(value, _ENTRY_KEYS, where)
    dataset = _dataset(data["dataset"], f"{where}: dataset")
    split = _text(data["split"], f"{where}: split")
    if split not in SPLITS:
        raise UserError(f"{where}: unknown split {split!r}; known: {', '.join(SPLITS)}")
    name = _text(data["vocabulary"], f"{where}: vocabulary")
    vocabulary = _parse_vocabulary(_find_vocabulary(name, search_dir, where))
    if vocabulary.dataset != dataset:
        raise UserError(
            f"{where}: vocabulary {name!r} ({vocabulary.path}) is for dataset "
            f"{vocabulary.dataset!r}, not {dataset!r}"
        )
    return EvalEntry(dataset, split, vocabulary)
