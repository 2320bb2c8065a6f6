"""``ovrsisbench report``: the static site (index.html + figures/) from result records, its
figures, and the page it still writes when pieces are missing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from ovrsisbench.errors import UserError
from ovrsisbench.leaderboard import build
from ovrsisbench.palette import class_colours, colourise, indexed_png
from ovrsisbench.protocol import load_protocol
from ovrsisbench.report import write_report
from ovrsisbench.report.collect import collect, speed_points
from ovrsisbench.report.figures import speed_figure
from ovrsisbench.report.sections import iou_item, overlap_item, qualitative_item
from ovrsisbench.results import ResultStore
from ovrsisbench.seen import protocol_seen_splits

PROTOCOL = "demo"
DATASETS = ("synthetic-source", "synthetic-target")
MAGIC = {"svg": b"<?xml", "png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF-"}


class PageParser(HTMLParser):
    """The <img> sources, the leaderboard's body rows and the notes of a report page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.rows = 0
        self.notes: list[str] = []
        self._in_body = self._in_note = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "img":
            self.images.append(attributes["src"])
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows += 1
        elif tag == "p" and "note" in (attributes.get("class") or "").split():
            self._in_note = True
            self.notes.append("")

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False
        elif tag == "p":
            self._in_note = False

    def handle_data(self, data):
        if self._in_note:
            self.notes[-1] += data


def parse(index: Path) -> PageParser:
    parser = PageParser()
    parser.feed(index.read_text())
    return parser


def assert_images_exist(index: Path, page: PageParser) -> None:
    for source in page.images:
        assert not Path(source).is_absolute() and "://" not in source, source
        assert (index.parent / source).is_file(), source


def figure_axes_by_title(figure, title: str):
    """The axes titled ``title`` (titles may be wrapped over several lines)."""
    return next(axes for axes in figure.axes if " ".join(axes.get_title().split()) == title)


def test_report_holds_the_leaderboard_and_every_figure(report_results, synthetic_root, tmp_path):
    index = write_report(PROTOCOL, report_results, tmp_path / "site", data_root=synthetic_root)
    assert index == tmp_path / "site" / "index.html"
    page = parse(index)
    assert_images_exist(index, page)
    protocol = load_protocol(PROTOCOL)
    frame = build(protocol, report_results, with_reference=True)
    assert page.rows == len(frame) == 3  # three toy models; the demo has no published rows
    names = sorted(Path(source).stem for source in page.images)
    expected = ["speed-vs-miou", "vocabulary-overlap"]
    expected += [f"iou-{d}" for d in DATASETS] + [f"qualitative-{d}" for d in DATASETS]
    expected += [f"confusion-{d}-{n}" for d in DATASETS for n in (1, 2, 3)]
    assert names == sorted(expected)
    assert all(source.endswith(".svg") for source in page.images)
    text = index.read_text()
    for model in frame["model"]:
        assert model in text
    assert "Images and ground truth not shown" not in text  # the data root was given


@pytest.mark.parametrize("fmt", ["svg", "png", "pdf"])
def test_standalone_figures_in_each_format(report_results, synthetic_root, tmp_path, fmt):
    before = (matplotlib.get_backend(), dict(matplotlib.rcParams))
    model = "toy_adapters:NoopAdapter"
    index = write_report(
        PROTOCOL, report_results, tmp_path, data_root=synthetic_root, models=[model], fmt=fmt
    )
    assert (matplotlib.get_backend(), dict(matplotlib.rcParams)) == before
    page = parse(index)
    assert_images_exist(index, page)
    assert page.rows == 1  # one model: its row only
    standalone = sorted((tmp_path / "figures").glob(f"*.{fmt}"))
    assert [p.stem for p in standalone] == sorted(Path(s).stem for s in page.images)
    for path in standalone:
        assert path.read_bytes().startswith(MAGIC[fmt]), path
    if fmt == "pdf":  # a browser cannot show a PDF in <img>: the page shows PNG copies
        assert all(source.endswith(".png") for source in page.images)
        for source in page.images:
            assert (index.parent / source).read_bytes().startswith(MAGIC["png"])
    else:
        assert all(source.endswith(f".{fmt}") for source in page.images)


def test_report_imports_no_pyplot(report_results, tmp_path):
    code = (
        "import sys\nfrom ovrsisbench.report import write_report\n"
        f"write_report('demo', {str(report_results)!r}, {str(tmp_path)!r}, "
        "models=['toy_adapters:NoopAdapter'])\n"
        "print('matplotlib.pyplot' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=300
    ).stdout
    assert out.split() == ["False"]


def test_template_is_package_data():
    template = resources.files("ovrsisbench.report").joinpath("templates/report.html.j2")
    assert template.is_file()
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"ovrsisbench.report" = ["templates/*.html.j2"]' in pyproject


def test_prediction_panels_show_the_saved_pixels(report_results, synthetic_root, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(report_results, results)
    protocol = load_protocol(PROTOCOL)
    dataset = "synthetic-target"
    vocabulary = next(e.vocabulary for e in protocol.evaluation if e.dataset == dataset)
    colours = class_colours(vocabulary)
    path, record = next(
        (p, r)
        for p, r in ResultStore(results).iter_records()
        if r["model"] == "toy_adapters:ColourAdapter" and r["dataset"] == dataset
    )
    saved = record["predictions"]["files"][0]
    height, width = np.asarray(Image.open(path.parent / saved["path"])).shape
    pattern = (np.arange(height * width).reshape(height, width) % len(colours)).astype(np.uint8)
    pattern[0, :3] = 255  # ignored pixels show black
    (path.parent / saved["path"]).write_bytes(indexed_png(pattern, colours))

    data = collect(protocol, results, synthetic_root)
    figure = qualitative_item(data, dataset).draw([])
    panel = figure_axes_by_title(figure, "toy_adapters:ColourAdapter")  # first image's row
    np.testing.assert_array_equal(panel.get_images()[0].get_array(), colourise(pattern, colours))
    assert tuple(panel.get_images()[0].get_array()[0, 0]) == (0, 0, 0)
    truth = figure_axes_by_title(figure, "ground truth")
    prepared = data.datasets[dataset]
    label = vocabulary.lookup_table()[prepared.read_label(saved["image"])]
    np.testing.assert_array_equal(truth.get_images()[0].get_array(), colourise(label, colours))
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend == [*vocabulary.names(), "ignored"]


def test_a_missing_prediction_file_is_noted_not_drawn(report_results, synthetic_root, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(report_results, results)
    deleted = sorted(results.rglob("*.predictions/*.png"))[0]
    deleted.unlink()
    model = deleted.parent.parent.name.replace("toy_adapters_", "toy_adapters:")
    index = write_report(
        PROTOCOL, results, tmp_path / "site", data_root=synthetic_root, models=[model]
    )
    page = parse(index)
    assert_images_exist(index, page)
    assert any(f"{deleted}: unreadable" in note for note in page.notes), page.notes


def test_missing_pieces_still_give_a_page(cli, toy_adapters, synthetic_root, tmp_path):
    """One model, one of the two datasets, no saved predictions, no data root."""
    results = tmp_path / "results"
    ran = cli(
        "run", "--model", f"{toy_adapters}:ColourAdapter", "--protocol", PROTOCOL,
        "--datasets", "synthetic-source", "--data-root", synthetic_root, "--results", results,
        "--device", "cpu",
    )  # fmt: skip
    assert ran.code == 0, ran.err
    index = write_report(PROTOCOL, results, tmp_path / "site")
    page = parse(index)
    assert_images_exist(index, page)
    names = sorted(Path(source).stem for source in page.images)
    assert names == ["confusion-synthetic-source-1", "iou-synthetic-source", "vocabulary-overlap"]
    notes = "\n".join(page.notes)
    assert "No speed figure" in notes and "no mean mIoU" in notes
    assert "No figure for synthetic-target: none of the report's rows has a record" in notes
    assert "No prediction grid for synthetic-source: no record lists saved predictions" in notes
    assert page.rows == 1


def test_predictions_without_a_data_root(report_results, tmp_path):
    index = write_report(PROTOCOL, report_results, tmp_path)
    page = parse(index)
    assert_images_exist(index, page)
    assert "figures/qualitative-synthetic-source.svg" in page.images
    notes = "\n".join(page.notes)
    assert "Images and ground truth not shown: no data root was given" in notes
    data = collect(load_protocol(PROTOCOL), report_results)
    figure = qualitative_item(data, "synthetic-source").draw([])
    titles = [axes.get_title() for axes in figure.axes if axes.get_title()]
    assert titles == [model.label for model in data.models]  # predictions only


def test_no_records_is_a_user_error_naming_the_folder(cli, report_results, tmp_path):
    with pytest.raises(UserError, match=f"no result records of protocol dlrsd in {tmp_path}"):
        write_report("dlrsd", tmp_path, tmp_path / "site")
    ran = cli("report", "--protocol", "dlrsd", "--results", report_results, "--out", tmp_path)
    assert ran.code == 2
    assert f"in {report_results}; records exist for protocol demo" in ran.err
    assert not (tmp_path / "index.html").exists()


def test_unknown_model_is_a_user_error(report_results, tmp_path):
    with pytest.raises(UserError, match="did you mean 'toy_adapters:DeafAdapter'"):
        write_report(PROTOCOL, report_results, tmp_path, models=["toy_adapters:DeafAdaptor"])
    with pytest.raises(UserError, match="--models names no model"):
        write_report(PROTOCOL, report_results, tmp_path, models=[])


def test_a_new_report_removes_only_its_own_old_figures(report_results, tmp_path):
    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / "fig1.png").write_bytes(b"the user's own figure")
    (figures / "iou-gone.svg").write_text("<svg/>")  # a dataset an earlier report had
    write_report(PROTOCOL, report_results, tmp_path, models=["toy_adapters:NoopAdapter"])
    assert (figures / "fig1.png").read_bytes() == b"the user's own figure"
    assert not (figures / "iou-gone.svg").exists()


def test_the_command_prints_progress_and_the_page(cli, report_results, synthetic_root, tmp_path):
    ran = cli(
        "report", "--protocol", PROTOCOL, "--results", report_results, "--out", tmp_path,
        "--data-root", synthetic_root, "--models", "toy_adapters:NoopAdapter", "--format", "png",
    )  # fmt: skip
    assert ran.code == 0, ran.err
    lines = ran.out.splitlines()
    assert "Confusion matrices: 2 figure(s)" in lines
    assert lines[-1] == f"report: {tmp_path / 'index.html'}"
    assert sorted(p.suffix for p in (tmp_path / "figures").iterdir()) == [".png"] * 8


def test_heatmap_and_overlap_follow_the_seen_split(report_results, synthetic_root):
    protocol = load_protocol(PROTOCOL)
    data = collect(protocol, report_results, synthetic_root)
    splits = protocol_seen_splits(protocol)
    figure = iou_item(data, "synthetic-target").draw([])
    heatmap = figure_axes_by_title(figure, "Per-class IoU on synthetic-target")
    marks = [label.get_text() for label in heatmap.get_yticklabels()]
    split = splits["synthetic-target"]
    names = data.vocabulary("synthetic-target").names()
    assert marks == [f"{n} ({'seen' if split.is_seen(n) else 'unseen'})" for n in names]
    assert split.seen and split.unseen  # the demo's target has both kinds
    values = [float(t.get_text()) for t in heatmap.texts if t.get_text() != "-"]
    expected = [
        round(v, 1)
        for i in range(len(names))
        for m in data.models
        for v in [m.records["synthetic-target"]["per_class"]["iou"][i]]
        if v is not None
    ]
    assert values == expected  # annotated row by row, the models in leaderboard order

    bars = overlap_item(data).draw([]).axes[0].patches
    heights = [round(bar.get_height()) for bar in bars]
    seen = [len(splits[d].seen) for d in DATASETS]
    unseen = [len(splits[d].unseen) for d in DATASETS]
    assert heights == seen + unseen


def test_speed_points_one_per_device(report_results, synthetic_root, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(report_results, results)
    path, record = next(
        (p, r)
        for p, r in ResultStore(results).iter_records()
        if r["model"] == "toy_adapters:DeafAdapter"
    )
    record["timing"]["device"] = "cuda (a GPU)"
    path.write_text(json.dumps(record))
    data = collect(load_protocol(PROTOCOL), results)
    points, left_out = speed_points(data)
    assert not left_out
    deaf = [p for p in points if p.label == "toy_adapters:DeafAdapter"]
    assert len(deaf) == 2 and "cuda (a GPU)" in {p.device for p in deaf}
    by_device = {p.device: p.ms_per_image for p in deaf}
    assert by_device["cuda (a GPU)"] == record["timing"]["ms_per_image"]
    assert {p.mean_miou for p in deaf} == {
        m.mean_miou for m in data.models if m.label == "toy_adapters:DeafAdapter"
    }
    axes = speed_figure(points).axes[0]
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert len(legend) == 2 and "cuda (a GPU)" in legend
    markers = {tuple(c.get_paths()[0].vertices.round(3).ravel()) for c in axes.collections}
    assert len(markers) == 2  # each device its own marker shape


def test_the_report_leaderboard_has_the_seen_scores(report_results, synthetic_root):
    from ovrsisbench.report.page import leaderboard_table

    table = leaderboard_table(collect(load_protocol(PROTOCOL), report_results).leaderboard)
    column = table["columns"].index("synthetic-source mIoU-unseen")  # every source class is seen
    assert {row["cells"][column]["text"] for row in table["rows"]} == {"-"}  # undefined, never 0
    expected = build(load_protocol(PROTOCOL), report_results, split_seen=True)
    seen = table["columns"].index("synthetic-target hIoU")
    texts = [row["cells"][seen]["text"] for row in table["rows"]]
    assert texts == [f"{value:.2f}" for value in expected["synthetic-target hIoU"]]
