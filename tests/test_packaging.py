"""A non-editable install (wheel) ships adapters, models, protocols and reference data inside
the ovrsisbench namespace, never as bare top-level packages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def project_files() -> list[str]:
    """Files git tracks or would track (not ignored), relative to the repository root."""
    listing = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return [name for name in listing.stdout.splitlines() if (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("build")
    # build from a copy of the project's files: build/ or data left in the checkout must not leak
    source = tmp_path_factory.mktemp("source") / "ovrsisbench"
    for relative in project_files():
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, source / relative)
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)]
    subprocess.run([*command, str(source)], check=True, capture_output=True)
    return next(out.glob("ovrsisbench-*.whl"))


def test_wheel_layout(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.endswith(".dist-info/RECORD")}
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"ovrsisbench"}
    for expected in (
        "ovrsisbench/adapters/maskclip.py",
        "ovrsisbench/models/maskclip/model.py",
        "ovrsisbench/models/common/dense_clip.py",
        "ovrsisbench/protocols/dlrsd.yaml",
        "ovrsisbench/protocols/vocab/loveda-clean.yaml",
        "ovrsisbench/reference/rsktseg_table1.csv",
        "ovrsisbench/report/templates/report.html.j2",
    ):
        assert expected in names
    # every model package and every vocabulary of the checkout is in the wheel (pyproject lists
    # packages one by one)
    for package in sorted((ROOT / "models").glob("*/__init__.py")):
        assert f"ovrsisbench/models/{package.parent.name}/__init__.py" in names, package
    for vocabulary in sorted((ROOT / "protocols" / "vocab").glob("*.yaml")):
        assert f"ovrsisbench/protocols/vocab/{vocabulary.name}" in names, vocabulary


def test_installed_wheel_finds_builtins_and_data(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    probe = (
        "import ovrsisbench, ovrsisbench.adapters, ovrsisbench.models.maskclip;"
        "from ovrsisbench.registry import find_adapter;"
        "from ovrsisbench.protocol import load_protocol;"
        "from ovrsisbench.leaderboard import reference_rows;"
        "p = load_protocol('dlrsd');"
        "print(ovrsisbench.__file__, ovrsisbench.adapters.__file__,"
        " ovrsisbench.models.maskclip.__file__, find_adapter('maskclip').origin,"
        " len(p.evaluation), len(reference_rows(p)))"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert all(path.startswith(str(target)) for path in out[:3]), out
    assert out[3:] == ["built-in", "8", "14"]
