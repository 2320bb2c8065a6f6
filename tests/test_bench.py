"""``bench/model_speed.py`` runs for the models timed through their adapters (tiny backbones,
small image): the same table as for the others, with counts from the built network."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ovrsisbench.adapter import create_adapter

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "model_speed.py"


@pytest.mark.parametrize("model", ["san", "sed", "segearth_ov"])
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
