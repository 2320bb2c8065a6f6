"""What the report page holds, section by section: each figure with its caption (what it is
computed from) and, where a figure cannot be drawn or is incomplete, a note saying what is
missing. Figures are drawn lazily (``FigureItem.draw``) so that only one is in memory at once."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ovrsisbench.data.layout import PreparedDataset
from ovrsisbench.errors import DataError
from ovrsisbench.palette import IGNORED_COLOUR, class_colours, colourise
from ovrsisbench.predictions import read_map, saved_maps
from ovrsisbench.protocol import Vocabulary
from ovrsisbench.report import figures
from ovrsisbench.report.collect import (
    MAX_QUALITATIVE_IMAGES,
    ModelRow,
    ReportData,
    speed_points,
)

#: The names of the figures a report writes (``FigureItem.name``; files ``<name>.<format>``):
#: a new report removes the old ones it no longer writes, and nothing else of the folder.
FIGURE_NAME = re.compile(r"(speed-vs-miou|vocabulary-overlap|(iou|confusion|qualitative)-.+)")


@dataclass
class FigureItem:
    """One figure: its file name (without suffix), title, caption and notes; ``draw`` is None
    when it cannot be drawn (the notes say why). Drawing may add notes (unreadable files)."""

    name: str
    title: str
    caption: str
    draw: Callable[[list[str]], Figure] | None
    notes: list[str] = field(default_factory=list)


@dataclass
class Section:
    anchor: str
    title: str
    intro: str
    items: list[FigureItem]


def build_sections(data: ReportData) -> list[Section]:
    """The figure sections of the page, in order."""
    datasets = [entry.dataset for entry in data.protocol.evaluation]
    return [
        Section(
            "speed",
            "Speed vs accuracy",
            "Mean mIoU over the protocol's datasets (the leaderboard's) against the mean "
            "inference time per image of the row's records (their timing.ms_per_image), on a log "
            "axis; one marker and colour per device the records were timed on "
            "(timing.device): times from different devices are not comparable.",
            [speed_item(data)],
        ),
        Section(
            "overlap",
            "Vocabulary overlap",
            "For each evaluation dataset, how many of its scored classes the training "
            "vocabulary contains (seen) and how many it does not (unseen), from the protocol's "
            "vocabularies.",
            [overlap_item(data)],
        ),
        Section(
            "per-class",
            "Per-class IoU",
            "IoU of every scored class (records' per_class.iou, computed from their confusion "
            "matrices) for each row with a record on the dataset; '-' = a class without "
            "ground-truth pixels, left out of mIoU.",
            [iou_item(data, dataset) for dataset in datasets],
        ),
        Section(
            "confusion",
            "Confusion matrices",
            "Each record's int64 confusion matrix, every ground-truth row divided by its pixel "
            "count (percent); rows are ground truth, columns predictions.",
            [item for dataset in datasets for item in confusion_items(data, dataset)],
        ),
        Section(
            "qualitative",
            "Predictions",
            "Image, ground truth (the label mapped through the vocabulary) and each model's "
            "saved prediction map (the PNG files its record lists), in the dataset's colours; "
            "black = ignored pixels.",
            [qualitative_item(data, dataset) for dataset in datasets],
        ),
    ]


def _with_records(data: ReportData, dataset: str) -> list[ModelRow]:
    return [model for model in data.models if dataset in model.records]


def _no_records(dataset: str) -> str:
    return f"No figure for {dataset}: none of the report's rows has a record on it."


def speed_item(data: ReportData) -> FigureItem:
    points, left_out = speed_points(data)
    notes = [] if points else ["No speed figure: no row has both a mean mIoU and a timed record."]
    notes += [f"Left out: {reason}." for reason in left_out]
    published = data.leaderboard["kind"].str.startswith("published").sum()
    if published:
        notes.append(f"{published} published row(s) left out: published results carry no timing.")
    return FigureItem(
        "speed-vs-miou",
        "Mean mIoU against inference time",
        "One point per leaderboard row and device.",
        (lambda _notes: figures.speed_figure(points)) if points else None,
        notes,
    )


def overlap_item(data: ReportData) -> FigureItem:
    train = data.protocol.train
    if train is None or not data.splits:
        return FigureItem(
            "vocabulary-overlap",
            "Train/test vocabulary overlap",
            "",
            None,
            [
                f"No overlap chart: protocol {data.protocol.name} is evaluation-only "
                "(it names no training vocabulary)."
            ],
        )
    counts = [
        (dataset, len(split.seen), len(split.unseen)) for dataset, split in data.splits.items()
    ]
    label = f"{train.dataset}, {len(train.vocabulary.classes)} classes"
    return FigureItem(
        "vocabulary-overlap",
        "Train/test vocabulary overlap",
        f"Training vocabulary: {train.vocabulary.name} ({len(train.vocabulary.classes)} classes)"
        f", of {train.dataset} ({train.split}).",
        lambda _notes: figures.overlap_figure(label, counts),
    )


def iou_item(data: ReportData, dataset: str) -> FigureItem:
    models = _with_records(data, dataset)
    name, title = f"iou-{dataset}", f"Per-class IoU on {dataset}"
    if not models:
        return FigureItem(name, title, "", None, [_no_records(dataset)])
    classes = data.vocabulary(dataset).names()
    columns = [(m.label, m.records[dataset]["per_class"]["iou"]) for m in models]
    split = data.splits.get(dataset)
    caption = "Class names say (seen) or (unseen) with respect to the training vocabulary."
    notes = [] if split else ["No seen/unseen marks: the protocol has no training vocabulary."]
    return FigureItem(
        name,
        title,
        caption if split else "",
        lambda _notes: figures.iou_heatmap(dataset, classes, columns, split),
        notes,
    )


def confusion_items(data: ReportData, dataset: str) -> list[FigureItem]:
    models = _with_records(data, dataset)
    if not models:
        return [FigureItem(f"confusion-{dataset}", dataset, "", None, [_no_records(dataset)])]
    items = []
    for number, model in enumerate(models, start=1):
        record = model.records[dataset]
        title = f"{model.label} on {dataset}"
        matrix = np.asarray(record["confusion"], dtype=np.int64)

        def draw(_notes, title=title, classes=record["classes"], matrix=matrix):
            return figures.confusion_figure(title, classes, matrix)

        items.append(FigureItem(f"confusion-{dataset}-{number}", title, "", draw))
    return items


def qualitative_item(data: ReportData, dataset: str) -> FigureItem:
    name, title = f"qualitative-{dataset}", f"Predictions on {dataset}"
    models = _with_records(data, dataset)
    if not models:
        return FigureItem(name, title, "", None, [_no_records(dataset)])
    notes: list[str] = []
    saved: dict[str, dict[str, Path]] = {}  # row label -> image stem -> its map file
    for model in models:
        path = model.record_paths.get(dataset)
        listed = saved_maps(path, model.records[dataset]) if path else {}
        if listed:
            saved[model.label] = listed
        else:
            notes.append(f"{model.label}: its record lists no saved predictions.")
    stems = list(dict.fromkeys(stem for listed in saved.values() for stem in listed))
    if not stems:
        reason = (
            f"No prediction grid for {dataset}: no record lists saved predictions "
            "(evaluate with `ovrsisbench run --save-predictions N`)."
        )
        return FigureItem(name, title, "", None, [reason])
    if len(stems) > MAX_QUALITATIVE_IMAGES:
        notes.append(f"The first {MAX_QUALITATIVE_IMAGES} of {len(stems)} saved images shown.")
    prepared = data.datasets.get(dataset)
    if prepared is None:
        notes.append(f"Images and ground truth not shown: {data.missing_data[dataset]}.")
    grid = _Grid(dataset, data.vocabulary(dataset), prepared, saved, stems[:MAX_QUALITATIVE_IMAGES])
    return FigureItem(name, title, "", grid.draw, notes)


@dataclass
class _Grid:
    """The panels of one dataset's prediction grid, read when drawn; an unreadable file
    becomes a panel saying so and a note."""

    dataset: str
    vocabulary: Vocabulary
    prepared: PreparedDataset | None
    saved: dict[str, dict[str, Path]]
    stems: list[str]

    def draw(self, notes: list[str]) -> Figure:
        colours = class_colours(self.vocabulary)
        rows = []
        for stem in self.stems:
            row: list[figures.Panel] = []
            if self.prepared is not None:
                row.append(_panel(partial(self.prepared.read_image, stem), f"image {stem}", notes))
                read_label = partial(self._ground_truth, stem, colours)
                row.append(_panel(read_label, f"label {stem}", notes))
            for label, predictions in self.saved.items():
                prediction = predictions.get(stem)
                if prediction is None:
                    row.append("no saved\nprediction")
                    continue
                read = partial(_coloured_prediction, prediction, colours)
                row.append(_panel(read, f"{label}, {stem}", notes))
            rows.append(row)
        titles = ["image", "ground truth"] if self.prepared is not None else []
        legend = [*zip(self.vocabulary.names(), colours, strict=True), ("ignored", IGNORED_COLOUR)]
        return figures.qualitative_figure(
            self.dataset, self.stems, [*titles, *self.saved], rows, legend
        )

    def _ground_truth(self, stem: str, colours: list[tuple[int, int, int]]) -> np.ndarray:
        assert self.prepared is not None
        scored = self.vocabulary.lookup_table()[self.prepared.read_label(stem)]
        return colourise(scored, colours)


def _coloured_prediction(path: Path, colours: list[tuple[int, int, int]]) -> np.ndarray:
    return colourise(read_map(path), colours)


def _panel(read: Callable[[], np.ndarray], what: str, notes: list[str]) -> figures.Panel:
    try:
        return read()
    except DataError as error:
        notes.append(f"{what}: {error}")
        return f"{what}:\nunreadable"
