"""Acceptance: the report of three models on two demo datasets, opened from file:// in real
headless chromium (Debian's; ``.ci/run`` installs it): no console error, every image loaded,
one table row per leaderboard row, sortable columns, and a full-page screenshot."""

from __future__ import annotations

import shutil
import tempfile

import pytest
from PIL import Image

from ovrsisbench.leaderboard import build
from ovrsisbench.protocol import load_protocol

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium executable on PATH (apt-get install chromium)"
)
#: no downloads, no background traffic: the page must work offline
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def test_report_page_in_headless_chromium(cli, report_results, synthetic_root, tmp_path):
    from playwright.sync_api import sync_playwright

    site = tmp_path / "site"
    ran = cli(
        "report", "--protocol", "demo", "--results", report_results, "--out", site,
        "--data-root", synthetic_root,
    )  # fmt: skip
    assert ran.code == 0, ran.err
    index = site / "index.html"
    frame = build(load_protocol("demo"), report_results, with_reference=True)
    assert len(frame) == 3 and frame["model"].nunique() == 3

    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(index.as_uri(), wait_until="load")
            images = page.evaluate(
                "[...document.images].map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
            )
            rows = page.locator("#leaderboard-table tbody tr").count()
            model_column = list(frame.columns).index("model")
            cells = f"#leaderboard-table tbody tr td:nth-child({model_column + 1})"
            page.locator("#leaderboard-table th", has_text="model").click()
            by_model = page.locator(cells).all_inner_texts()
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()

    assert errors == []
    assert len(images) == 12, images  # speed, overlap, 2 heatmaps, 6 matrices, 2 grids
    assert all(complete and width > 0 for _, complete, width in images), images
    assert all(url.startswith("file://") for url in requests), requests  # nothing online
    assert rows == len(frame)
    assert by_model == sorted(frame["model"])  # a click sorts by that column
    shot = tmp_path / "report.png"
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(shot) as picture:
        assert picture.width > 0 and picture.height > 1000  # the whole page, not the viewport
