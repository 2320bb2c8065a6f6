"""Running jobs inline or in worker processes, with progress."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from multiprocessing import get_context
from typing import Any

from ovrsisbench.errors import DataError


class Progress:
    """Progress sink (the CLI passes a rich one): one task per step of a dataset."""

    def start(self, description: str, total: int, done: int) -> None: ...

    def advance(self, count: int) -> None: ...


def run_all(
    function: Callable[[Any], Any],
    items: list,
    pool: Pool | None,
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
    limit = 4 * pool.workers
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
            try:
                result = future.result()
            except BrokenProcessPool:
                raise DataError(
                    "a worker process died (out of memory?): run again to resume, with fewer "
                    "--workers"
                ) from None
            yield result
            progress.advance(sizes.pop(future))


class Pool(ProcessPoolExecutor):
    """A process pool that knows its size (forkserver on POSIX: no fork of a threaded parent)."""

    def __init__(self, workers: int) -> None:
        method = "forkserver" if os.name == "posix" else "spawn"
        super().__init__(workers, mp_context=get_context(method))
        self.workers = workers


def make_pool(workers: int, jobs: int) -> Pool | None:
    """min(workers, jobs) worker processes, or None for one (then everything runs inline)."""
    workers = min(workers, jobs)
    return Pool(workers) if workers > 1 else None


@contextmanager
def pool_for(workers: int, jobs: int) -> Iterator[Pool | None]:
    """``make_pool`` as a context: on an error or Ctrl-C, pending jobs are cancelled at once."""
    pool = make_pool(workers, jobs)
    if pool is None:
        yield None
        return
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
