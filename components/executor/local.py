"""``executor=local``: a process or thread pool on this machine (one task at a time, inline,
for a single worker)."""
from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Iterator

from components.executor.base import POLL_S, Batch, Executor, Failed, LocalPool, Window, describe
from components.settings import Settings


def start_method(method: str) -> str:
    """``auto``: fork starts a worker in milliseconds where spawn re-imports the libraries
    (seconds each); macOS frameworks are not fork-safe, so there it is spawn."""
    if method != "auto":
        return method
    return "fork" if sys.platform.startswith("linux") else "spawn"


class LocalOptions(Settings):
    """The ``executor=local`` group (less ``_target_``): the pool is set per use (for convert,
    ``docling.workers`` and ``docling.parallel``)."""


def _outcome(fut: Future) -> Any:
    try:
        return fut.result()
    except BrokenProcessPool as exc:  # a worker died: every task it held is lost
        return Failed(describe(exc), lost_worker=True)
    except Exception as exc:
        return Failed(describe(exc))


def _finished(futures: list[Future]) -> set[Future]:
    return wait(futures, timeout=POLL_S, return_when=FIRST_COMPLETED)[0]


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, **options) -> None:
        self.opts = LocalOptions(**options)

    def parallelism(self, local: LocalPool) -> int:
        return max(1, local.workers)

    def map_unordered(self, fn, items, *, cancel=None, max_in_flight=None, local=LocalPool(),
                      task_cpus=1.0) -> Batch:
        workers = max(1, min(local.workers, len(items)))
        if workers == 1:
            return Batch(self._inline(fn, items, cancel), lambda: None)
        if local.kind == "process":
            method = start_method(local.start_method)
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))
        else:
            pool = ThreadPoolExecutor(workers)

        def stop() -> None:
            # Queued tasks are dropped, not waited for; a running one finishes on its own.
            pool.shutdown(wait=False, cancel_futures=True)

        # Two per worker keep every worker busy while the driver handles a result; more would
        # only queue.
        window = Window(items, lambda item: pool.submit(fn, item), _finished, _outcome,
                        max_in_flight or 2 * workers, cancel)
        try:
            window.fill()  # Python 3.11's fork pool starts all its workers on the first submit
        except BaseException:
            stop()
            raise
        return Batch(window.drain(), stop)

    @staticmethod
    def _inline(fn, items, cancel) -> Iterator[tuple[int, Any]]:
        for i, item in enumerate(items):
            if cancel is not None and cancel.is_set():
                return
            try:
                res = fn(item)
            except Exception as exc:
                res = Failed(describe(exc))
            yield i, res
