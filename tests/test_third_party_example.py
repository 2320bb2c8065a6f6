"""The example third-party adapter (examples/third_party_adapter), installed as a package: found
through its entry point by ``adapters list``, ``adapters validate`` and ``run``, with provenance
from its distribution metadata, and its own tests passing.

The package is installed once into a temporary folder (no network); the commands run in
subprocesses with that folder on PYTHONPATH and started together (about 4 s each, mostly
imports), so the module takes about 10 s on 2 cores. The example's source folder is never on
the path: only the installed entry point can be found.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from launch import environment

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "third_party_adapter"
NAME, DIST = "colour-prototype", "ovrsisbench-colour-prototype"
TIMEOUT = 180  # seconds per subprocess
PROVENANCE = (
    "import inspect, json; from ovrsisbench.registry import find_adapter; "
    f"entry = find_adapter({NAME!r}); "
    "print(json.dumps({**entry.provenance(), 'file': inspect.getfile(entry.cls)}))"
)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example installed (no dependencies, no index, no build isolation) into a folder."""
    # pip builds a local folder in place (build/, *.egg-info): build a copy, not the checkout
    source = tmp_path_factory.mktemp("example") / "third_party_adapter"
    shutil.copytree(
        EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    target = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation"]
    command += ["--no-index", "--disable-pip-version-check", "--target", str(target), str(source)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (target / "ovrsis_colour_prototype" / "adapter.py").is_file()
    return target


class Commands:
    """Subprocesses started at once, each finished (and its output kept) when first asked."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env, self.cwd = env, cwd
        self.running: dict[str, subprocess.Popen] = {}
        self.finished: dict[str, subprocess.CompletedProcess] = {}

    def start(self, key: str, *arguments: str) -> None:
        self.running[key] = subprocess.Popen(
            [sys.executable, *arguments],
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def result(self, key: str) -> subprocess.CompletedProcess:
        if key not in self.finished:
            process = self.running[key]
            out, err = process.communicate(timeout=TIMEOUT)
            self.finished[key] = subprocess.CompletedProcess(
                process.args, process.returncode, out, err
            )
        return self.finished[key]

    def stop(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.kill()
                process.communicate()


@pytest.fixture(scope="module")
def commands(site, synthetic_root, tmp_path_factory):
    """Every command of this module, running side by side; yields the ``Commands``."""
    work = tmp_path_factory.mktemp("work")
    pythonpath = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    env = environment(PYTHONPATH=pythonpath, PYTHONDONTWRITEBYTECODE="1")
    started = Commands(env, work)
    try:
        started.start("list", "-m", "ovrsisbench", "adapters", "list")
        started.start("validate", "-m", "ovrsisbench", "adapters", "validate", NAME)
        started.start(
            "run", "-m", "ovrsisbench", "run", "--model", NAME, "--protocol", "demo", "--device",
            "cpu", "--data-root", str(synthetic_root), "--results", str(work / "results"),
        )  # fmt: skip
        started.start("provenance", "-c", PROVENANCE)
        started.start(
            "tests", "-m", "pytest", str(EXAMPLE / "tests"), "-q", "-p", "no:cacheprovider",
            "-c", str(EXAMPLE / "pyproject.toml"), "--rootdir", str(EXAMPLE),
        )  # fmt: skip
        yield started
    finally:
        started.stop()


def output(done: subprocess.CompletedProcess) -> str:
    return f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"


def test_adapters_list_shows_the_entry_point(commands):
    done = commands.result("list")
    assert done.returncode == 0, output(done)
    pattern = rf"\b{NAME}\W+entry point \({DIST}\)\W+no\b"
    assert re.search(pattern, done.stdout), output(done)
    assert "warning" not in done.stderr, output(done)


def test_adapters_validate_passes(commands):
    done = commands.result("validate")
    assert done.returncode == 0, output(done)
    assert f"adapter '{NAME}' passed all" in done.stdout, output(done)
    assert "FAIL" not in done.stdout, output(done)


def test_run_on_the_demo_protocol_writes_a_record_per_dataset(commands):
    done = commands.result("run")
    assert done.returncode == 0, output(done)
    records_dir = Path(commands.cwd) / "results" / "records"
    paths = [p for p in records_dir.rglob("*.json") if not p.name.endswith(".partial.json")]
    records = [json.loads(path.read_text()) for path in paths]
    assert sorted(record["dataset"] for record in records) == [
        "synthetic-source",
        "synthetic-target",
    ], output(done)
    for record in records:
        assert record["model"] == NAME and record["options"] == {"temperature": 0.1}
        assert record["weights_sha256"] is None
        assert 0 <= record["metrics"]["mIoU"] <= 100


def test_provenance_comes_from_the_distribution_metadata(commands, site):
    done = commands.result("provenance")
    assert done.returncode == 0, output(done)
    provenance = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(provenance.pop("file")).is_relative_to(site)  # the installed copy, not the source
    assert provenance == {
        "name": NAME,
        "origin": f"entry point ({DIST})",
        "version": "0.1.0",
        "source_url": "https://example.org/ovrsisbench-colour-prototype",
        "licence": "Apache-2.0",
    }


def test_the_example_s_own_tests_pass(commands):
    done = commands.result("tests")
    assert done.returncode == 0, output(done)
    assert re.search(r"\b\d+ passed\b", done.stdout) and "failed" not in done.stdout, output(done)


def test_its_results_submit_verify_and_join_the_leaderboard(commands):
    """``submit`` (with the package installed), then ``verify`` and ``leaderboard`` without it:
    checking a submission needs none of the submitter's code."""
    assert commands.result("run").returncode == 0, output(commands.result("run"))
    results = Path(commands.cwd) / "results"
    submission = results / "submissions" / f"{NAME}-demo.json"
    submission.parent.mkdir(parents=True, exist_ok=True)
    ovrsisbench = [sys.executable, "-m", "ovrsisbench"]
    submitted = subprocess.run(
        [*ovrsisbench, "submit", "--model", NAME, "--protocol", "demo"]
        + ["--out", str(submission), "--results", str(results)],
        env=commands.env, capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert submitted.returncode == 0, output(submitted)
    adapter = json.loads(submission.read_text())["adapter"]
    assert adapter["origin"] == f"entry point ({DIST})" and adapter["version"] == "0.1.0"
    assert adapter["params"] is None and adapter["options"] == {"temperature": 0.1}

    without_package = environment()
    verified = subprocess.run(
        [*ovrsisbench, "verify", str(submission), "--data-root", str(commands.cwd / "none")],
        env=without_package, capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert verified.returncode == 0 and "VERIFIED" in verified.stdout, output(verified)
    board = subprocess.run(
        [*ovrsisbench, "leaderboard", "--protocol", "demo", "--format", "csv"]
        + ["--results", str(results)],
        env=without_package, capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert board.returncode == 0, output(board)
    rows = [line for line in board.stdout.splitlines() if "submitted (synthetic data)" in line]
    assert len(rows) == 1 and rows[0].split(",")[1] == NAME, output(board)
