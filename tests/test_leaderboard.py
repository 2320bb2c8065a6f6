"""Leaderboards: built only from records, means and ranks, published rows marked as such."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from tests_helpers import run_toy  # noqa: I001

from ovrsisbench.leaderboard import build, render, write_leaderboards
from ovrsisbench.protocol import load_protocol


def test_rows_come_from_records(synthetic_root, tmp_path, toy_adapters):
    protocol = load_protocol("demo")
    records = {}
    for gain in (1.0, 3.0):
        outcomes = run_toy(toy_adapters, synthetic_root, tmp_path, gain=gain)
        records[gain] = {o.dataset: o.record for o in outcomes}
    frame = build(protocol, tmp_path)
    assert len(frame) == 2 and set(frame["kind"]) == {"ours (synthetic data)"}
    for _, row in frame.iterrows():
        gain = 1.0 if "gain=1.0" in row["config"] else 3.0
        values = [
            records[gain][d]["metrics"]["mIoU"] for d in ("synthetic-source", "synthetic-target")
        ]
        assert row["synthetic-source mIoU"] == values[0]
        assert row["mean mIoU"] == pytest.approx(sum(values) / 2)
    assert list(frame["rank"]) == [1, 2]
    assert frame["mean mIoU"].is_monotonic_decreasing


def test_incomplete_rows_have_no_mean_and_no_rank(synthetic_root, tmp_path, toy_adapters):
    run_toy(toy_adapters, synthetic_root, tmp_path, datasets=["synthetic-source"])
    frame = build(load_protocol("demo"), tmp_path)
    assert math.isnan(frame.loc[0, "mean mIoU"]) and pd.isna(frame.loc[0, "rank"])
    assert math.isnan(frame.loc[0, "synthetic-target mIoU"])


def test_records_of_another_vocabulary_do_not_count(synthetic_root, tmp_path, toy_adapters):
    outcomes = run_toy(toy_adapters, synthetic_root, tmp_path)
    record = json.loads(outcomes[0].path.read_text())
    record["vocabulary"]["sha256"] = "0" * 64
    outcomes[0].path.write_text(json.dumps(record))
    frame = build(load_protocol("demo"), tmp_path)
    assert math.isnan(frame.loc[0, "synthetic-source mIoU"])


def test_published_rows_are_marked_and_missing_cells_stay_empty(tmp_path):
    frame = build(load_protocol("dlrsd"), tmp_path, with_reference=True)
    assert len(frame) == 14 and frame["kind"].str.startswith("published").all()
    rskt_b = frame[(frame["model"] == "RSKT-Seg") & (frame["config"] == "backbone=ViT-B")].iloc[0]
    assert rskt_b["dlrsd mIoU"] == 90.60 and rskt_b["udd5 mACC"] == 57.81
    assert math.isnan(rskt_b["vaihingen mIoU"]) and math.isnan(rskt_b["mean mIoU"])
    assert pd.isna(rskt_b["rank"])
    assert build(load_protocol("dlrsd"), tmp_path).empty  # never shown without the flag


def test_render_and_write(synthetic_root, tmp_path, toy_adapters):
    run_toy(toy_adapters, synthetic_root, tmp_path)
    frame = build(load_protocol("demo"), tmp_path)
    csv_text = render(frame, "csv")
    header = "rank,model,config,weights,kind,synthetic-source mIoU"
    assert csv_text.splitlines()[0].startswith(header)
    markdown = render(frame, "md")
    assert markdown.startswith("|   rank |") and "toy_adapters:ColourAdapter" in markdown
    csv_path, md_path = write_leaderboards(tmp_path, [load_protocol("demo")])
    assert "toy_adapters:ColourAdapter" in csv_path.read_text()
    assert "Protocol `demo`" in md_path.read_text()


def test_markdown_renders_rows_without_mean_or_rank(synthetic_root, tmp_path, toy_adapters):
    run_toy(toy_adapters, synthetic_root, tmp_path, datasets=["synthetic-source"])
    markdown = render(build(load_protocol("demo"), tmp_path), "md")
    assert "toy_adapters:ColourAdapter" in markdown and "nan" not in markdown.lower()
    published = render(build(load_protocol("dlrsd"), tmp_path, with_reference=True), "md")
    rskt_b = next(
        line
        for line in published.splitlines()
        if line.startswith("|") and line.split("|")[2].strip() == "RSKT-Seg"
        and "backbone=ViT-B" in line
    )  # fmt: skip
    assert " 90.60 |" in rskt_b and "nan" not in rskt_b.lower()


def test_markdown_numbers_are_right_aligned(synthetic_root, tmp_path, toy_adapters):
    run_toy(toy_adapters, synthetic_root, tmp_path)
    frame = build(load_protocol("demo"), tmp_path)
    header, separator, *_ = render(frame, "md").splitlines()
    names = [cell.strip() for cell in header.strip("|").split("|")]
    aligns = [cell.strip() for cell in separator.strip("|").split("|")]
    for name, align in zip(names, aligns, strict=True):
        text = name in ("model", "config", "weights", "kind")
        assert align.startswith(":") if text else align.endswith(":"), (name, align)


def test_wide_markdown_is_one_table_per_metric(tmp_path):
    """The eight-dataset protocols with published rows: one readable table per metric."""
    frame = build(load_protocol("dlrsd"), tmp_path, with_reference=True)
    markdown = render(frame, "md")
    sections = markdown.split("### ")[1:]
    assert [section.splitlines()[0] for section in sections] == ["mIoU", "mACC"]
    for section, metric in zip(sections, ("mIoU", "mACC"), strict=True):
        header = section.splitlines()[2]
        metrics = {name.strip().rpartition(" ")[2] for name in header.strip("|").split("|")[5:]}
        assert metrics == {metric}, header
        assert f"mean {metric}" in header and "dlrsd" in header and "vdd" in header
    assert render(build(load_protocol("demo"), tmp_path), "md").count("###") == 0


# -- mIoU-seen, mIoU-unseen and hIoU (--split-seen) ------------------------------------------------
TARGET_SEEN = ("background", "building", "road", "water")  # demo: synthetic-source's classes


def _seen_unseen(record: dict) -> tuple[float, float]:
    """Means of the record's stored per-class IoUs over the seen and the unseen classes."""
    iou = dict(zip(record["classes"], record["per_class"]["iou"], strict=True))
    seen = [iou[c] for c in record["classes"] if c in TARGET_SEEN and iou[c] is not None]
    unseen = [iou[c] for c in record["classes"] if c not in TARGET_SEEN and iou[c] is not None]
    return sum(seen) / len(seen), sum(unseen) / len(unseen)


def test_split_seen_columns_come_from_the_stored_matrices(synthetic_root, tmp_path, toy_adapters):
    outcomes = run_toy(toy_adapters, synthetic_root, tmp_path)
    records = {o.dataset: o.record for o in outcomes}
    assert not any("hIoU" in o.path.read_text() for o in outcomes)  # nothing new is stored
    assert "synthetic-target hIoU" not in build(load_protocol("demo"), tmp_path).columns
    frame = build(load_protocol("demo"), tmp_path, split_seen=True)
    row = frame.iloc[0]
    seen, unseen = _seen_unseen(records["synthetic-target"])
    assert row["synthetic-target mIoU-seen"] == pytest.approx(seen)
    assert row["synthetic-target mIoU-unseen"] == pytest.approx(unseen)
    assert row["synthetic-target hIoU"] == pytest.approx(2 * seen * unseen / (seen + unseen))
    # the source domain is the training set: every class seen, no unseen score
    assert row["synthetic-source mIoU-seen"] == pytest.approx(
        records["synthetic-source"]["metrics"]["mIoU"]
    )
    assert math.isnan(row["synthetic-source mIoU-unseen"]) and math.isnan(
        row["synthetic-source hIoU"]
    )
    # means over the datasets that define the score, their number in the header
    means = [c for c in frame.columns if c.startswith("mean ")]
    assert means == [
        "mean mIoU",
        "mean mACC",
        "mean mIoU-seen (2)",
        "mean mIoU-unseen (1)",
        "mean hIoU (1)",
    ]
    both = (row["synthetic-source mIoU-seen"] + row["synthetic-target mIoU-seen"]) / 2
    assert row["mean mIoU-seen (2)"] == pytest.approx(both)
    assert row["mean hIoU (1)"] == row["synthetic-target hIoU"]


def test_split_seen_policy_recomputes_from_the_matrix(synthetic_root, tmp_path, toy_adapters):
    from ovrsisbench.seen import record_seen_scores

    [_, target] = run_toy(toy_adapters, synthetic_root, tmp_path)
    frame = build(load_protocol("demo"), tmp_path, policy="mmseg", split_seen=True)
    expected = record_seen_scores(target.record, load_protocol("demo"), "mmseg")
    assert frame.loc[0, "synthetic-target mIoU-unseen"] == pytest.approx(expected["mIoU-unseen"])


def test_undefined_scores_are_dashes_never_zero(cli, synthetic_root, tmp_path, toy_adapters):
    run_toy(toy_adapters, synthetic_root, tmp_path)
    out = tmp_path / "board.csv"
    done = cli("leaderboard", "--protocol", "demo", "--results", tmp_path, "--split-seen",
               "--format", "csv", "--out", out)  # fmt: skip
    assert done.code == 0, done.err
    table = pd.read_csv(out, keep_default_na=False)
    assert (table["synthetic-source mIoU-unseen"] == "-").all()
    assert (table["synthetic-source hIoU"] == "-").all()
    assert float(table.loc[0, "synthetic-target hIoU"]) > 0
    markdown = cli("leaderboard", "--protocol", "demo", "--results", tmp_path, "--split-seen",
                   "--format", "md").out  # fmt: skip
    hiou = markdown.split("### hIoU")[1].splitlines()
    assert [cell.strip() for cell in hiou[4].strip("|").split("|")][5] == "-"
    printed = cli("leaderboard", "--protocol", "demo", "--results", tmp_path, "--split-seen",
                  "--format", "table")  # fmt: skip
    rows = [line.split("│") for line in printed.out.splitlines() if line.startswith("│ 1 │")]
    assert "mIoU-unseen" in printed.out and any(c.strip() == "-" for row in rows for c in row)


def test_published_rows_have_no_seen_scores(tmp_path):
    for protocol, counts in (("dlrsd", (8, 7, 7)), ("isaid", (2, 7, 1))):
        frame = build(load_protocol(protocol), tmp_path, with_reference=True, split_seen=True)
        names = ("mIoU-seen", "mIoU-unseen", "hIoU")
        means = [f"mean {name} ({count})" for name, count in zip(names, counts, strict=True)]
        assert [c for c in frame.columns if c.startswith("mean ")][2:] == means
        seen_columns = [c for c in frame.columns if c.rpartition(" ")[2] in names]
        assert frame[seen_columns + means].isna().all().all()
        hiou = render(frame, "md").split("### hIoU")[1].splitlines()[4]
        cells = [cell.strip() for cell in hiou.strip("|").split("|")]
        per_dataset = len(load_protocol(protocol).evaluation)
        assert cells[-(per_dataset + 1) :] == ["-"] * (per_dataset + 1)  # never 0


def test_split_seen_needs_a_training_vocabulary(cli, tmp_path):
    done = cli("leaderboard", "--protocol", "segearth", "--results", tmp_path, "--split-seen")
    assert done.code == 2 and "evaluation-only" in done.err and "--split-seen" in done.err
