"""What importing a part of ovrsisbench pulls in: the CLI starts without any model, finding one
model imports that model only, and the core's modules depend on the adapter contract only where
they use it (hashing lives in ``ovrsisbench.io``)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

MODELS = ("ovrsisbench.models", "ovrsisbench.adapters.")


def imported_after(code: str) -> list[str]:
    """The ovrsisbench modules loaded by a fresh interpreter after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    return [name for name in json.loads(out.splitlines()[-1]) if name.startswith("ovrsisbench")]


def test_importing_the_cli_imports_no_model_and_no_torch():
    modules = imported_after("import ovrsisbench.cli")
    assert not [name for name in modules if name.startswith(MODELS)], modules
    assert "ovrsisbench.adapter" not in modules


def test_finding_a_built_in_imports_that_model_only():
    modules = imported_after("from ovrsisbench.registry import find_adapter\nfind_adapter('sed')")
    from ovrsisbench.adapters import BUILTINS

    others = {spec.partition(":")[0] for name, spec in BUILTINS.items() if name != "sed"}
    assert "ovrsisbench.adapters.sed" in modules and not others & set(modules)
    models = {name.split(".")[2] for name in modules if name.startswith("ovrsisbench.models.")}
    assert models <= {"common", "sed"}, models


def test_the_leaderboard_command_imports_no_model(tmp_path):
    code = (
        "from typer.testing import CliRunner\nfrom ovrsisbench.cli import app\n"
        f"result = CliRunner().invoke(app, ['leaderboard', '--results', {str(tmp_path)!r}, "
        "'--format', 'md', '--with-reference'])\nassert result.exit_code == 0, result.output"
    )
    modules = imported_after(code)
    assert "ovrsisbench.leaderboard" in modules
    assert not [name for name in modules if name.startswith(MODELS)], modules


@pytest.mark.parametrize("module", ["protocol", "results", "leaderboard"])
def test_core_modules_hash_without_the_adapter_contract(module):
    assert "ovrsisbench.adapter" not in imported_after(f"import ovrsisbench.{module}")
