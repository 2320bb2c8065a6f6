"""Shared fixtures: generated synthetic data, the toy plug-in adapters, in-process CLI calls."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PLUGINS = Path(__file__).parent / "plugins"


def pytest_configure(config):
    """The tests build tiny models: the thread policy for small models (one torch thread,
    ``ovrsisbench.threads``) holds for the whole run, so a busy machine does not stall it;
    ``OVRSISBENCH_THREADS=N`` or ``OMP_NUM_THREADS`` overrides it."""
    import torch

    from ovrsisbench.errors import UserError
    from ovrsisbench.threads import policy_threads

    try:
        threads = policy_threads(0)  # a tiny model's
    except UserError as error:
        raise pytest.UsageError(str(error)) from None
    if threads is not None:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A data root holding the two synthetic demo datasets (generated once per session)."""
    from ovrsisbench.data.converters.synthetic import generate_synthetic_benchmark

    root = tmp_path_factory.mktemp("data")
    generate_synthetic_benchmark(root)
    return root


@pytest.fixture
def toy_adapters(monkeypatch) -> str:
    """Make ``toy_adapters:ClassName`` importable; returns the module name."""
    monkeypatch.syspath_prepend(str(PLUGINS))
    return "toy_adapters"


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run the ``ovrsisbench`` entry point in-process; returns exit code, stdout, stderr."""
    from ovrsisbench.cli import main

    monkeypatch.setenv("COLUMNS", "250")

    def invoke(*args: str) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["ovrsisbench", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


sys.path.insert(0, str(Path(__file__).parent))  # tests_helpers


@pytest.fixture(scope="session")
def report_results(tmp_path_factory, synthetic_root) -> Path:
    """A results folder with records of three toy models on both demo datasets, each listing
    saved predictions of its first two images (the report's tests read it, never write it)."""
    from tests_helpers import REPORT_MODELS

    from ovrsisbench import evaluate

    results = tmp_path_factory.mktemp("report-results")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(PLUGINS))
        for model in REPORT_MODELS:
            evaluate(
                model,
                "demo",
                data_root=synthetic_root,
                results=results,
                device="cpu",
                save_predictions=2,
            )
    return results
