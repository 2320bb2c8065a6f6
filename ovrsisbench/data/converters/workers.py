"""Running jobs inline or in worker processes, with progress."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import Any


class Progress:
    """Progress sink (the CLI passes a rich one): one task per step of a dataset."""

    def start(self, description: str, total: int, done: int) -> None: ...

    def advance(self, count: int) -> None: ...


def run_all(
    function: Callable[[Any], Any],
    items: list,
    pool: Executor | None,
    progress: Progress,
    size: Callable[[Any], int] = lambda item: 1,
) -> Iterator[Any]:
    """Yield ``function(item)`` for every item (completion order), advancing ``progress`` by
    ``size(item)``."""
    if pool is None:
        for item in items:
            yield function(item)
            progress.advance(size(item))
        return
    pending: set = set()
    queue = iter(items)
    limit = 4 * getattr(pool, "_max_workers", 1)
    sizes = {}
    while True:
        for item in queue:
            future = pool.submit(function, item)
            pending.add(future)
            sizes[future] = size(item)
            if len(pending) >= limit:
                break
        if not pending:
            return
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            yield future.result()
            progress.advance(sizes.pop(future))


def make_pool(workers: int, jobs: int) -> ProcessPoolExecutor | None:
    """min(workers, jobs) worker processes (forkserver on POSIX), or None for one."""
    workers = min(workers, jobs)
    if workers <= 1:
        return None
    method = "forkserver" if os.name == "posix" else "spawn"
    return ProcessPoolExecutor(workers, mp_context=get_context(method))
