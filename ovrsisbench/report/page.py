"""``write_report``: the static report site (index.html + figures/), written atomically file by
file. The page is rendered by jinja2 from the packaged template; it works from file:// without
any network (inline style and script, figures by relative path, text drawn as paths in SVG)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined
from matplotlib.figure import Figure

from ovrsisbench import __version__
from ovrsisbench.choices import FIGURE_FORMATS
from ovrsisbench.display import format_number
from ovrsisbench.errors import UserError
from ovrsisbench.io import atomic_write_bytes, atomic_write_text
from ovrsisbench.leaderboard import ROW_COLUMNS, undefined_marks
from ovrsisbench.protocol import load_protocol
from ovrsisbench.report.collect import ReportData, collect
from ovrsisbench.report.sections import FIGURE_NAME, FigureItem, Section, build_sections

FIGURES_DIR = "figures"
TEMPLATE = "report.html.j2"
#: formats a browser shows in <img>; a PDF report also gets a PNG copy for the page
PAGE_FORMATS = ("svg", "png")
PNG_DPI = 110
#: settings that make figure files reproducible and self-contained (text as paths, no dates)
_RC = {"svg.fonttype": "path", "svg.hashsalt": "ovrsisbench", "pdf.fonttype": 42}
_METADATA = {"svg": {"Date": None}, "pdf": {"CreationDate": None}, "png": {}}


def write_report(
    protocol: str,
    results_dir: Path,
    out: Path,
    *,
    data_root: Path | None = None,
    models: list[str] | None = None,
    fmt: str = "svg",
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write the report of ``protocol`` from the records under ``results_dir`` into ``out``
    (``index.html`` and ``figures/``, each figure also standalone in ``fmt``: svg, png or pdf);
    images and labels for the prediction grids are read from ``data_root`` when given.
    ``models`` keeps only those models' rows (published rows stay). Returns index.html's path."""
    if fmt not in FIGURE_FORMATS:
        raise UserError(f"unknown figure format {fmt!r} (choose {', '.join(FIGURE_FORMATS)})")
    say = progress or (lambda _line: None)
    data = collect(load_protocol(protocol), Path(results_dir), data_root, models)
    out = Path(out)
    sections = build_sections(data)
    written: set[Path] = set()
    figure_files: dict[str, dict[str, str]] = {}  # figure name -> its page and standalone files
    for section in sections:
        drawable = [item for item in section.items if item.draw is not None]
        say(f"{section.title}: {len(drawable)} figure(s)")
        for item in drawable:
            files = _write_figure(item, out / FIGURES_DIR, fmt)
            written.update(out / name for name in files.values())
            figure_files[item.name] = files
    _remove_stale_figures(out / FIGURES_DIR, written)
    html = render_page(data, sections, figure_files, fmt)
    index = out / "index.html"
    atomic_write_text(index, html)
    return index


def _write_figure(item: FigureItem, folder: Path, fmt: str) -> dict[str, str]:
    """Draw ``item`` and save it as ``<name>.<fmt>`` (and a PNG for the page when ``fmt`` is
    not one a browser shows); returns the paths relative to the report's folder."""
    assert item.draw is not None
    figure = item.draw(item.notes)
    formats = [fmt] if fmt in PAGE_FORMATS else [fmt, "png"]
    for suffix in formats:
        atomic_write_bytes(folder / f"{item.name}.{suffix}", figure_bytes(figure, suffix))
    return {
        "standalone": f"{FIGURES_DIR}/{item.name}.{fmt}",
        "page": f"{FIGURES_DIR}/{item.name}.{formats[-1]}",
    }


def figure_bytes(figure: Figure, fmt: str) -> bytes:
    """``figure`` encoded as ``fmt`` (rcParams changed only inside this call)."""
    buffer = io.BytesIO()
    with matplotlib.rc_context(_RC):
        figure.savefig(
            buffer, format=fmt, dpi=PNG_DPI, metadata=_METADATA[fmt], bbox_inches="tight"
        )  # tight: labels drawn outside the axes (point names, legends) are kept
    return buffer.getvalue()


def _remove_stale_figures(folder: Path, written: set[Path]) -> None:
    """Drop figure files an earlier report left in ``folder`` that this one did not write;
    files with other names (the user's own) stay."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        is_figure = path.suffix.lstrip(".") in FIGURE_FORMATS and FIGURE_NAME.fullmatch(path.stem)
        if is_figure and path not in written and path.is_file():
            path.unlink()


def render_page(
    data: ReportData,
    sections: list[Section],
    figure_files: dict[str, dict[str, str]],
    fmt: str,
) -> str:
    """The HTML of the page (jinja2, autoescaped)."""
    environment = Environment(
        loader=PackageLoader("ovrsisbench.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )
    return environment.get_template(TEMPLATE).render(
        protocol=data.protocol,
        results_dir=str(data.results_dir),
        version=__version__,
        fmt=fmt,
        table=leaderboard_table(data.leaderboard),
        refused=data.refused,
        sections=sections,
        figure_files=figure_files,
    )


def leaderboard_table(frame: pd.DataFrame) -> dict[str, Any]:
    """Header and rows of the leaderboard for the template: each cell's text (2 decimals,
    empty = missing, "-" = undefined seen / unseen score, as the leaderboard command shows them)
    and its sort key; each row's kind (ours, submitted, published)."""
    numeric = [column not in ROW_COLUMNS for column in frame.columns]
    marks = undefined_marks(frame)
    rows = []
    for line in frame.itertuples(index=False):
        cells = []
        for column, value, is_number in zip(frame.columns, line, numeric, strict=True):
            text = format_number(value)
            sort = "" if text == "" else str(value)
            cells.append(
                {"text": text or marks.get(column, ""), "sort": sort, "numeric": is_number}
            )
        kind = str(line[list(frame.columns).index("kind")]).split(" ")[0]
        rows.append({"kind": kind, "cells": cells})
    return {"columns": list(frame.columns), "numeric": numeric, "rows": rows}
