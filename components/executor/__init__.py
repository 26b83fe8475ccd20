"""Where a batch of independent tasks runs: on this machine (a process or thread pool, the
``executor=local`` default) or over an existing Ray cluster (``executor=ray``).

One interface, ``map_unordered(fn, items)``: ``(index, result)`` pairs as tasks finish. A task
that gives no result (it raised, or its worker died) yields a ``Failed`` in its place, never an
exception for the batch. At most ``max_in_flight`` tasks are submitted at a time, so a caller
with one driver bounds its load cluster-wide (an LLM server's concurrency); when ``cancel`` is
set, nothing more is submitted and the batch returns at once: queued tasks are dropped, running
ones are not waited for.
Iterate the batch to the end or close it (``with``), which also stops the pool.
"""
from components.executor.base import (POLL_S, Batch, Executor, ExecutorError, Failed, LocalPool,
                                      Window)
from components.executor.local import LocalExecutor, LocalOptions, start_method
from components.executor.ray_cluster import RayExecutor, RayOptions

__all__ = ["POLL_S", "Batch", "Executor", "ExecutorError", "Failed", "LocalExecutor", "LocalOptions",
           "LocalPool", "RayExecutor", "RayOptions", "Window", "start_method"]
