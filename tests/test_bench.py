"""``bench/model_speed.py`` runs for the models timed through their adapters (tiny backbones,
small image): the same table as for the others, with counts from the built network."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ovrsisbench.registry import create_adapter

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "model_speed.py"


@pytest.mark.parametrize(
    "model",
    [
        "san",
        pytest.param("sed", marks=pytest.mark.slow),
        pytest.param("segearth_ov", marks=pytest.mark.slow),
    ],
)  # one model in the default tier: the script's path is the same for the three
def test_model_speed_times_the_adapter_protocol(model):
    command = [sys.executable, str(SCRIPT), "--model", model, "--backbone", "tiny"]
    options = ["--size", "64", "--repeats", "1", "--threads", "1"]
    result = subprocess.run([*command, *options], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    network = create_adapter(model, backbone="tiny").build("meta")
    total = sum(p.numel() for p in network.parameters())
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    assert lines["total"][1] == f"{total:,}"
    for row in ("GFLOPs", "ms", "achieved", "matmul"):
        assert row in lines, result.stdout
    assert float(lines["ms"][-1]) > 0


BENCH = SCRIPT.parent


def test_demo_time_prints_alone_busy_and_both_thread_settings():
    """The harness of bench/demo_time.py on a trivial command (the demo itself takes minutes)."""
    command = [sys.executable, str(BENCH / "demo_time.py"), "--hogs", "1", "--command"]
    result = subprocess.run(
        [*command, f"{sys.executable} -c pass"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    header, _, policy, default, *_ = result.stdout.splitlines()
    assert "alone: wall s" in header and "next to a 1-process CPU hog" in header
    assert policy.startswith("thread policy (default)") and default.startswith("torch default")
    failing = subprocess.run(
        [*command, f"{sys.executable} -c 'import sys; sys.exit(3)'", "--only", "idle"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failing.returncode == 0 and failing.stdout.count("failed (exit 3)") == 2


@pytest.mark.slow  # starts torch twice per repeat
def test_cli_start_times_help_against_a_bare_interpreter():
    script = BENCH / "cli_start.py"
    result = subprocess.run(
        [sys.executable, str(script), "--repeats", "1"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split("  ")[0].strip(): line.split() for line in result.stdout.splitlines()[2:7]}
    assert float(rows["python -c pass"][-1]) == 1.0
    assert float(rows["ovrsisbench --help"][-3]) > 0
