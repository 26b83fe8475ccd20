"""What every executor gives: ``map_unordered`` yielding ``(index, result or Failed)``, and the
one loop that keeps a bounded window of tasks in flight."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable, Iterator, Literal, Sized

from components.secrets import scrub

POLL_S = 0.5  # how often a waiting driver looks at ``cancel``


class ExecutorError(RuntimeError):
    """The executor cannot run anything (Ray missing, the cluster unreachable); the message says
    which key to change or what to start."""


@dataclass(frozen=True)
class Failed:
    """A task without a result: its function raised, or (``lost_worker``) the process running it
    died — out of memory, a crash in C code, a lost node — which the next run may not repeat."""

    error: str
    lost_worker: bool = False


@dataclass(frozen=True)
class LocalPool:
    """How a batch runs on one machine; a cluster decides this itself."""

    workers: int = 1
    kind: Literal["process", "thread"] = "thread"
    start_method: str = "auto"  # process pools: fork | spawn | forkserver | auto


def describe(exc: BaseException) -> str:
    return scrub(f"{type(exc).__name__}: {exc}")


class Batch:
    """The results of one ``map_unordered`` call: an iterator that is also a context manager;
    closing it early drops the tasks not finished."""

    def __init__(self, results: Iterator[tuple[int, Any]], stop: Callable[[], None]) -> None:
        self._results, self._stop = results, stop

    def __iter__(self) -> Batch:
        return self

    def __next__(self) -> tuple[int, Any]:
        return next(self._results)

    def close(self) -> None:
        try:
            close = getattr(self._results, "close", None)
            if close:
                close()
        finally:
            self._stop()

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Window:
    """At most ``limit`` tasks in flight; the next items go out as results come back.

    ``launch(item)`` starts a task and returns its handle; ``ready(handles)`` returns those
    finished, waiting at most ``POLL_S``; ``result(handle)`` is the task's result or a
    ``Failed``; ``free()`` says whether a task may start now (an actor with a free slot).
    Once ``cancel`` is set nothing more is launched and the results stop at once.
    """

    def __init__(self, items: Iterable[Any], launch: Callable[[Any], Hashable],
                 ready: Callable[[list], Iterable], result: Callable[[Any], Any], limit: int,
                 cancel: threading.Event | None = None, free: Callable[[], bool] = lambda: True) -> None:
        self.todo = iter(enumerate(items))
        self.in_flight: dict[Hashable, int] = {}
        self._launch, self._ready, self._result, self._free = launch, ready, result, free
        self.limit, self.cancel = max(1, limit), cancel

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def fill(self) -> None:
        while len(self.in_flight) < self.limit and self._free() and not self.cancelled:
            nxt = next(self.todo, None)
            if nxt is None:
                return
            self.in_flight[self._launch(nxt[1])] = nxt[0]

    def drain(self) -> Iterator[tuple[int, Any]]:
        while self.in_flight:
            done = self._ready(list(self.in_flight))
            if self.cancelled:
                return
            for handle in done:
                i = self.in_flight.pop(handle)
                yield i, self._result(handle)
                if self.cancelled:
                    return
            self.fill()


class Executor:
    """The interface both executors give."""

    name = "?"
    # Tasks run where the driver's files may not be: send a file's bytes, not its path.
    remote = False

    def map_unordered(self, fn: Callable[[Any], Any], items: Sized, *,
                      cancel: threading.Event | None = None, max_in_flight: int | None = None,
                      local: LocalPool = LocalPool(), task_cpus: float = 1.0) -> Batch:
        """Run ``fn(item)`` for each item; ``(index, result or Failed)`` as each finishes.
        ``items`` is iterated as tasks are submitted (a lazy sized iterable keeps only the
        tasks in flight in memory).
        ``local`` says how to run on this machine; ``task_cpus`` what a task reserves on a
        cluster (0 for work that waits on a server, such as an LLM request). The first tasks
        are submitted before this returns (a fork pool forks here, before the caller starts any
        thread)."""
        raise NotImplementedError

    def parallelism(self, local: LocalPool) -> int:
        """How many tasks run at once: the local pool's workers, or the cluster's CPUs."""
        raise NotImplementedError

    def close(self) -> None:
        """Let go of the pool or the cluster connection (a cluster itself is never stopped)."""
