"""The report's figures, one function each, returning a ``matplotlib.figure.Figure`` drawn on
the Agg canvas: no pyplot, so no global figure registry or backend switch leaks between
figures or into the caller's process."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from ovrsisbench.report.collect import SpeedPoint
from ovrsisbench.seen import SeenSplit

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
SEEN_COLOUR, UNSEEN_COLOUR = "#1f77b4", "#ff7f0e"
#: a qualitative panel: an RGB picture, or the reason there is none
Panel = np.ndarray | str


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` x ``height`` inches on its own Agg canvas."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def speed_figure(points: Sequence[SpeedPoint]) -> Figure:
    """Mean mIoU against ms per image (log axis), one marker and colour per device (Fig. 1(d))."""
    figure = new_figure(7.5, 4.8)
    axes = figure.add_subplot()
    devices = list(dict.fromkeys(point.device for point in points))
    for number, device in enumerate(devices):
        mine = [p for p in points if p.device == device]
        axes.scatter(
            [p.ms_per_image for p in mine],
            [p.mean_miou for p in mine],
            marker=MARKERS[number % len(MARKERS)],
            color=f"C{number % 10}",
            s=60,
            label=device,
            zorder=3,
        )
        for point in mine:
            axes.annotate(
                point.label,
                (point.ms_per_image, point.mean_miou),
                xytext=(5, 4),
                textcoords="offset points",
                fontsize=8,
            )
    axes.set_xscale("log")
    plain = FuncFormatter(lambda value, _position: f"{value:g}")  # "30", not "3 x 10^1"
    axes.xaxis.set_major_formatter(plain)
    axes.xaxis.set_minor_formatter(plain)
    axes.set_xlabel("inference time (ms per image, log scale)")
    axes.set_ylabel("mean mIoU (%)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(title="device", fontsize=8, title_fontsize=8, loc="best")
    axes.set_title("Speed vs accuracy")
    return figure


def overlap_figure(train_label: str, counts: Sequence[tuple[str, int, int]]) -> Figure:
    """Per evaluation dataset, its classes in (seen) and not in (unseen) the training
    vocabulary, as stacked bars (Fig. 2(b)); ``counts`` = (dataset, seen, unseen)."""
    figure = new_figure(max(4.5, 1.1 * len(counts) + 2), 4.2)
    axes = figure.add_subplot()
    names = [name for name, _, _ in counts]
    seen = np.array([s for _, s, _ in counts])
    unseen = np.array([u for _, _, u in counts])
    positions = np.arange(len(names))
    bottom = axes.bar(positions, seen, color=SEEN_COLOUR, label="seen (in the training vocabulary)")
    top = axes.bar(positions, unseen, bottom=seen, color=UNSEEN_COLOUR, label="unseen")
    axes.bar_label(bottom, labels=[str(v) if v else "" for v in seen], label_type="center")
    axes.bar_label(top, labels=[str(v) if v else "" for v in unseen], label_type="center")
    axes.set_xticks(positions, names, rotation=30, ha="right")
    axes.set_ylabel("scored classes")
    axes.set_title(f"Classes seen in training ({train_label})")
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes.yaxis.get_major_locator().set_params(integer=True)
    return figure


def iou_heatmap(
    dataset: str,
    classes: Sequence[str],
    columns: Sequence[tuple[str, Sequence[float | None]]],
    split: SeenSplit | None,
) -> Figure:
    """Per-class IoU (classes x models) with the values written in; classes left out of the
    means (None) are grey with "-"; seen / unseen classes are named so and coloured."""
    values = np.array(
        [[np.nan if v is None else v for v in ious] for _, ious in columns], dtype=float
    ).T.reshape(len(classes), len(columns))
    figure = new_figure(2.8 + 1.05 * len(columns), 1.4 + 0.36 * len(classes))
    axes = figure.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="#d0d0d0")  # grey: class left out of mIoU
    image = axes.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for (row, column), value in np.ndenumerate(values):
        text = "-" if np.isnan(value) else f"{value:.1f}"
        colour = "black" if np.isnan(value) or value > 60 else "white"
        axes.text(column, row, text, ha="center", va="center", fontsize=8, color=colour)
    axes.set_xticks(range(len(columns)), [label for label, _ in columns], rotation=30, ha="right")
    axes.set_yticks(range(len(classes)), [_class_label(name, split) for name in classes])
    if split is not None:
        for tick, name in zip(axes.get_yticklabels(), classes, strict=True):
            tick.set_color(SEEN_COLOUR if split.is_seen(name) else UNSEEN_COLOUR)
    figure.colorbar(image, ax=axes, label="IoU (%)", shrink=0.8)
    axes.set_title(f"Per-class IoU on {dataset}")
    return figure


def _class_label(name: str, split: SeenSplit | None) -> str:
    if split is None:
        return name
    return f"{name} (seen)" if split.is_seen(name) else f"{name} (unseen)"


def confusion_figure(title: str, classes: Sequence[str], confusion: np.ndarray) -> Figure:
    """The confusion matrix normalised per ground-truth row (percent of the class's pixels);
    rows of classes without ground truth stay blank."""
    matrix = np.asarray(confusion, dtype=np.float64)
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(100 * matrix, totals, out=np.full_like(matrix, np.nan), where=totals > 0)
    size = 2.4 + 0.42 * len(classes)
    figure = new_figure(size + 1.2, size)
    axes = figure.add_subplot()
    cmap = colormaps["Blues"].with_extremes(bad="#f0f0f0")  # a class without ground truth
    image = axes.imshow(np.ma.masked_invalid(share), cmap=cmap, vmin=0, vmax=100)
    if len(classes) <= 20:  # beyond that the numbers no longer fit their cells
        for (row, column), value in np.ndenumerate(share):
            if not np.isnan(value) and value >= 0.05:
                colour = "white" if value > 60 else "black"
                axes.text(
                    column, row, f"{value:.1f}", ha="center", va="center", fontsize=7, color=colour
                )
    axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("ground-truth class")
    figure.colorbar(image, ax=axes, label="% of the ground-truth class's pixels", shrink=0.8)
    axes.set_title(title, fontsize=10)
    return figure


def qualitative_figure(
    dataset: str,
    images: Sequence[str],
    column_titles: Sequence[str],
    panels: Sequence[Sequence[Panel]],
    legend: Sequence[tuple[str, tuple[int, int, int]]],
) -> Figure:
    """A grid with one row per image (``images``: their stems) and one column per
    ``column_titles`` (image, ground truth, each model); a panel without a picture shows why;
    the legend names every class with its colour (Fig. 6)."""
    rows, columns = len(images), len(column_titles)
    figure = new_figure(1.9 * columns + 0.6, 1.9 * rows + 0.5 + 0.25 * (len(legend) // 6 + 1))
    grid = figure.subplots(rows, columns, squeeze=False)
    for row, stem in enumerate(images):
        for column, panel in enumerate(panels[row]):
            axes = grid[row][column]
            axes.set_xticks([])
            axes.set_yticks([])
            if isinstance(panel, str):
                axes.text(
                    0.5,
                    0.5,
                    panel,
                    ha="center",
                    va="center",
                    wrap=True,
                    fontsize=7,
                    transform=axes.transAxes,
                    color="#a00000",
                )
                axes.set_facecolor("#f4f4f4")
            else:
                axes.imshow(panel, interpolation="nearest")
            if row == 0:
                # wrapped to the panel's width: long row labels (weights, run) must not overlap
                title = textwrap.fill(column_titles[column], 22, break_long_words=False)
                axes.set_title(title, fontsize=8)
            if column == 0:
                axes.set_ylabel(stem, fontsize=7)
    handles = [
        Patch(facecolor=tuple(c / 255 for c in colour), edgecolor="black", label=name)
        for name, colour in legend
    ]
    figure.legend(
        handles=handles,
        loc="outside lower center",
        ncol=min(6, len(handles)),
        fontsize=7,
        frameon=False,
    )
    figure.suptitle(f"Predictions on {dataset}", fontsize=10)
    return figure
