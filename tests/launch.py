"""Starting ``ovrsisbench`` as several gloo processes on the CPU: through torchrun, or by hand
with torchrun's environment variables (to keep each process's exit code and output apart)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from conftest import PLUGINS

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT = 180  # seconds: a hung collective fails the test instead of blocking the suite


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without launcher variables, with the test plug-ins
    importable and one thread per process."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    pythonpath = os.pathsep.join(p for p in (str(PLUGINS), env.get("PYTHONPATH")) if p)
    return {**env, "PYTHONPATH": pythonpath, "COLUMNS": "250", "OMP_NUM_THREADS": "1", **extra}


def torchrun(arguments: list[str], world_size: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N -m ovrsisbench ARGUMENTS``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", str(world_size), "-m", "ovrsisbench", *arguments]
    return subprocess.run(
        command, env=environment(), capture_output=True, text=True, timeout=TIMEOUT
    )


def start_by_hand(arguments: list[str], world_size: int = 2) -> list[subprocess.Popen]:
    """Start the processes as torchrun would (its environment variables); not waiting."""
    port = str(free_port())
    return [
        subprocess.Popen(
            [sys.executable, "-m", "ovrsisbench", *arguments],
            env=environment(
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE=str(world_size),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(world_size)
    ]


def finish(processes: list[subprocess.Popen]) -> list[subprocess.CompletedProcess]:
    """Wait for every process (killing them all if one hangs); their exit codes and output."""
    finished = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=TIMEOUT)
            finished.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return finished


def launch_by_hand(arguments: list[str], world_size: int = 2) -> list[subprocess.CompletedProcess]:
    """Run the processes as torchrun would, keeping each one's exit code and output apart."""
    return finish(start_by_hand(arguments, world_size))
