"""Start-up time of the command line: `ovrsisbench --help` (and `--version`, `leaderboard --help`)
next to `python -c pass`, measured side by side in one run (target: --help under 0.5 s idle).

Each command runs in a fresh process, as a user starts it; the table shows the median wall
time of the repeats, the median CPU time (user + system of the child) and the ratio to the bare
interpreter. `import torch` is timed as well: what every command that loads a model pays.

Usage: python bench/cli_start.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

from tabulate import tabulate

# the console script a user runs (python -m ovrsisbench where it is not installed as one)
SCRIPT = shutil.which("ovrsisbench", path=os.path.dirname(sys.executable))
OVRSISBENCH = [SCRIPT] if SCRIPT else [sys.executable, "-m", "ovrsisbench"]
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "ovrsisbench --help": [*OVRSISBENCH, "--help"],
    "ovrsisbench --version": [*OVRSISBENCH, "--version"],
    "ovrsisbench leaderboard --help": [*OVRSISBENCH, "leaderboard", "--help"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
}


def time_command(command: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (the child's user + system time) of one run of ``command``."""
    before = os.times()
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = os.times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rows = []
    baseline = None
    for name, command in COMMANDS.items():
        time_command(command)  # warm the file cache
        runs = [time_command(command) for _ in range(args.repeats)]
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        baseline = baseline or wall
        rows.append([name, f"{wall:.3f}", f"{cpu:.3f}", f"{wall / baseline:.1f}"])
    print(
        tabulate(
            rows,
            headers=["command", "wall s (median)", "CPU s (median)", "x python -c pass"],
            colalign=["left", "right", "right", "right"],
        )
    )
    print(f"\n{args.repeats} runs each, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
