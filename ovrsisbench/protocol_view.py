"""What ``ovrsisbench protocols list`` and ``protocols show`` print: the protocols, and per
evaluation dataset its seen and unseen classes (``ovrsisbench.seen``)."""

from __future__ import annotations

from rich.console import Console

from ovrsisbench.display import new_table
from ovrsisbench.protocol import EvalEntry, Protocol
from ovrsisbench.seen import SeenSplit, protocol_seen_splits


def _say(console: Console, text: str, wrap: bool = True) -> None:
    """A line of text, wrapped at the console's width between words (``wrap``) or in full."""
    console.print(text, markup=False, highlight=False, soft_wrap=not wrap)


def _entry(entry: EvalEntry) -> str:
    vocabulary = entry.vocabulary
    count = len(vocabulary.classes)
    return f"{entry.dataset}, {entry.split} split, vocabulary {vocabulary.name} ({count} classes)"


def print_protocol_list(console: Console, protocols: list[Protocol]) -> None:
    """One line per protocol: name, what it trains on, how many datasets it evaluates, what
    it is."""
    longest = max((len(w) for p in protocols for w in p.description.split()), default=0)
    columns = ("name", "training", "datasets", "description")
    table = new_table(columns, [False, False, True, False], "protocols", [0, 0, 0, longest])
    for protocol in protocols:
        train = protocol.train
        table.add_row(
            protocol.name,
            f"{train.dataset}\n{train.split} split" if train else "none (evaluation only)",
            str(len(protocol.evaluation)),
            protocol.description,
        )
    console.print(table)


def print_protocol(console: Console, protocol: Protocol) -> None:
    """The protocol's entries and, per evaluation dataset, its seen and unseen classes."""
    _say(console, f"protocol {protocol.name}: {protocol.description}")
    _say(console, f"file: {protocol.path}", wrap=False)
    if protocol.train is None:
        _say(console, "training: none (evaluation only: no class is seen or unseen)")
        table = new_table(("dataset", "split", "vocabulary", "classes"), [False] * 3 + [True])
        for entry in protocol.evaluation:
            vocabulary = entry.vocabulary
            table.add_row(entry.dataset, entry.split, vocabulary.name, str(len(vocabulary.classes)))
        console.print(table)
        return
    training = protocol.train.vocabulary.name
    _say(console, f"training: {_entry(protocol.train)}")
    _say(
        console,
        f"evaluation: {len(protocol.evaluation)} datasets; seen = a class of the training "
        f"vocabulary {training} (as: its name there, where it differs)",
    )
    splits = protocol_seen_splits(protocol)
    table = new_table(("dataset", "seen", "unseen"), [False] * 3, None, [0, 12, 12])
    for entry in protocol.evaluation:
        split = splits[entry.dataset]
        table.add_row(_dataset_cell(entry), _seen_cell(split), _unseen_cell(split))
    console.print(table)


def _dataset_cell(entry: EvalEntry) -> str:
    """Dataset, split and vocabulary on lines of their own (the column stays narrow)."""
    vocabulary = entry.vocabulary.name
    lines = [entry.dataset, f"{entry.split} split"]
    return "\n".join(lines + ([f"vocabulary {vocabulary}"] if vocabulary != entry.dataset else []))


def _seen_cell(split: SeenSplit) -> str:
    lines = [f"{len(split.seen)} seen"]
    for name in split.seen:
        match = split.matches[name]
        lines.append(f"{name} (as {match})" if match != name else name)
    return "\n".join(lines)


def _unseen_cell(split: SeenSplit) -> str:
    return "\n".join([f"{len(split.unseen)} unseen", *split.unseen])
