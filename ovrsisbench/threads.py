"""How many CPU threads torch may use: one for small models, so a busy machine does not stall them.

A small model's CPU work is a long series of small operations. With two or more torch
threads, each operation ends at a barrier that waits for every thread; when another process
holds a core, that wait lasts a scheduler time slice. On 2 cores next to a 2-process CPU hog
the demo took 250 s with torch's two threads and 113 s with one; alone, 63 s either way
(bench/demo_time.py). Large models keep torch's default: their operations are long enough to
share out.

``OVRSISBENCH_THREADS=N`` (or ``OMP_NUM_THREADS``) set by the user always wins.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ovrsisbench.errors import UserError

if TYPE_CHECKING:
    import torch

#: below this many parameters a model counts as small and runs on one CPU thread
SMALL_MODEL_PARAMETERS = 20_000_000
THREADS_ENV = "OVRSISBENCH_THREADS"


def requested_threads() -> int | None:
    """The thread count the user asked for (``OVRSISBENCH_THREADS``), or None; torch already
    follows ``OMP_NUM_THREADS``, which therefore also turns the policy off."""
    text = os.environ.get(THREADS_ENV, "").strip()
    if not text:
        return None
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise UserError(f"{THREADS_ENV}={text!r} must be a positive integer")
    return count


def policy_threads(parameters: int | None) -> int | None:
    """Torch threads for a model of ``parameters`` on the CPU: the user's choice, else 1 for a
    small model, else None (torch's default)."""
    requested = requested_threads()
    if requested is not None:
        return requested
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    if parameters is not None and parameters < SMALL_MODEL_PARAMETERS:
        return 1
    return None


def module_parameters(module: torch.nn.Module | None) -> int | None:
    """Parameters of ``module`` (None for none)."""
    if module is None:
        return None
    return sum(parameter.numel() for parameter in module.parameters())


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` torch threads (None: leave the setting alone)."""
    import torch

    if count is None or count == torch.get_num_threads():
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def model_threads(module: torch.nn.Module | None, device: torch.device | str) -> Iterator[None]:
    """The thread policy for running ``module`` on ``device`` (CPU only; see the module)."""
    import torch

    if torch.device(device).type != "cpu":
        yield
        return
    with torch_threads(policy_threads(module_parameters(module))):
        yield
