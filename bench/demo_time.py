"""Wall time of `ovrsisbench demo` alone and next to a CPU hog, with and without the thread policy,
measured side by side in one run.

The thread policy (``ovrsisbench.threads``) runs small models on one torch thread; "without"
sets OVRSISBENCH_THREADS to torch's default thread count (the behaviour before the policy).
The hog is N processes that spin on the CPU (default 2, as many as the project's machines
have cores) for the whole run. A run that takes longer than --timeout is stopped and shown as
"> timeout", a failed one as "failed".

Usage: python bench/demo_time.py [--hogs 2] [--timeout 900] [--only idle|busy]
       python bench/demo_time.py --command "python -m pytest -q"   # the default test tier
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from tabulate import tabulate

HOG = "while True: pass"


@contextmanager
def cpu_hog(processes: int) -> Iterator[None]:
    """``processes`` Python processes spinning on the CPU while the block runs."""
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(processes)]
    try:
        if hogs:
            time.sleep(1.0)  # let the scheduler see them
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def time_demo(command: list[str], threads: str | None, timeout: float) -> float | str:
    """Seconds the command took, in a fresh --out folder; or why there is no time."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    env.pop("OVRSISBENCH_THREADS", None)
    if threads is not None:
        env["OVRSISBENCH_THREADS"] = threads
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        try:
            subprocess.run(
                [*command, "--out", out] if command[-1] == "demo" else command,
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return f"> {timeout:.0f}"
        except subprocess.CalledProcessError as error:
            return f"failed (exit {error.returncode})"
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hogs", type=int, default=2, help="CPU-bound processes beside the demo")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per demo run")
    parser.add_argument("--only", choices=("idle", "busy"), help="one of the two conditions")
    parser.add_argument(
        "--command",
        default=f"{sys.executable} -m ovrsisbench demo",
        help="what to time (default: the demo; --out DIR is added to a command ending in demo)",
    )
    args = parser.parse_args()
    command = shlex.split(args.command)
    cpus = os.cpu_count() or 1
    default = torch.get_num_threads()  # torch's own default in a fresh process
    policies = {"thread policy (default)": None, f"torch default ({default} threads)": str(default)}
    conditions = {"alone": 0, f"next to a {args.hogs}-process CPU hog": args.hogs}
    if args.only:
        conditions = dict([list(conditions.items())[args.only == "busy"]])
    times: dict[tuple[str, str], float | str] = {}
    for condition, hogs in conditions.items():
        for name, threads in policies.items():
            with cpu_hog(hogs):
                times[name, condition] = time_demo(command, threads, args.timeout)
            print(f"{name}, {condition}: {_shown(times[name, condition])}", file=sys.stderr)
    rows = []
    for name in policies:
        row = [name, *(_shown(times[name, c]) for c in conditions)]
        if len(conditions) == 2:
            alone, busy = (times[name, c] for c in conditions)
            measured = isinstance(alone, float) and isinstance(busy, float)
            row.append(f"{busy / alone:.1f}" if measured else "")
        rows.append(row)
    headers = ["threads", *(f"{c}: wall s" for c in conditions)]
    headers += ["busy / alone"] if len(conditions) == 2 else []
    print(tabulate(rows, headers=headers, colalign=["left", *["right"] * (len(headers) - 1)]))
    print(f"\n{cpus} CPUs; command: {args.command}")


def _shown(seconds: float | str) -> str:
    return f"{seconds:.1f}" if isinstance(seconds, float) else seconds


if __name__ == "__main__":
    main()
