"""``executor=ray``: tasks on an existing Ray cluster, submitted by this process (the driver),
and one actor per node for work that needs each node's own server."""
from __future__ import annotations

import logging
import signal
import socket
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sized

from pydantic import Field

from components.executor.base import POLL_S, Batch, Executor, ExecutorError, Failed, LocalPool, Window, describe
from components.secrets import scrub
from components.settings import Settings

log = logging.getLogger(__name__)

# The folder shipped to the workers (``ship_code``): the whole ``components`` package.
COMPONENTS = Path(__file__).resolve().parent.parent


class RayOptions(Settings):
    """The ``executor=ray`` group (less ``_target_``)."""

    # "auto": the cluster started on this machine with `ray start --head`; "ray://host:10001":
    # Ray Client; "host:6379": a cluster's GCS from one of its nodes; null: start a private
    # Ray for this run (for trying it, not a cluster).
    address: str | None = "auto"
    namespace: str | None = None
    # Ship this project's components/ to the workers so they run the driver's code (outputs stay
    # byte-identical); false when the cluster's nodes have the project installed.
    ship_code: bool = True
    # The nodes see the driver's files under the same paths (NFS): send paths, not bytes.
    shared_fs: bool = False
    # Retries of a task whose worker died (a lost node); 0: report it as a transient failure.
    max_retries: int = Field(1, ge=0)
    # An address where nothing answers fails after this long (Ray itself retries for minutes).
    connect_timeout_s: float = Field(10, gt=0)
    runtime_env: dict[str, Any] | None = None  # the job's (env_vars, pip, ...), at connection


@contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """``ray.init`` makes SIGTERM exit the process; the run's own handler (stop, keep finished
    work, report) stays in charge."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in saved.items():
            if h is not None:
                signal.signal(s, h)


def _apply(fn, item):
    return fn(item)


def _wait(ray, refs: list) -> list:
    """The refs done within POLL_S. An exception raised by a signal handler (the run's stop
    request) while Ray's C code waits comes out as a SystemError caused by it: the stop request
    goes on as itself."""
    try:
        return ray.wait(refs, num_returns=1, timeout=POLL_S)[0]
    except SystemError as exc:
        if exc.__cause__ is not None:
            raise exc.__cause__ from None
        raise


def _result(ray, ref, timeout_s: float | None = None) -> Any:
    """A task's or actor call's result, or a ``Failed``: the function's own error, or
    (``lost_worker``) a worker, actor or node that died, or no answer within ``timeout_s``."""
    try:
        return ray.get(ref, timeout=timeout_s)
    except ray.exceptions.RayTaskError as exc:  # the function raised: its error
        cause = getattr(exc, "cause", None)
        return Failed(describe(cause if cause is not None else exc))
    except ray.exceptions.RayError as exc:
        return Failed(describe(exc), lost_worker=True)


class RayExecutor(Executor):
    """Tasks as Ray tasks on an existing cluster, submitted by this process (the driver)."""

    name = "ray"

    def __init__(self, **options) -> None:
        self.opts = RayOptions(**options)
        self.remote = not self.opts.shared_fs
        self._ray = None
        self._owns = False  # we called ray.init, so we disconnect
        self._cpus = 0

    def _connect(self):
        if self._ray is not None:
            return self._ray
        try:
            import ray
        except ImportError:
            raise ExecutorError("executor=ray needs Ray, an optional extra: pip install '.[ray]' "
                                "(or executor=local)") from None
        where = self.opts.address or "a new local Ray"
        if ray.is_initialized():  # the caller's own connection (a notebook): its runtime_env
            log.info("executor: using this process's Ray connection as it is")
        else:
            # Ray uploads local code (py_modules) only for a whole job, at connection.
            env = dict(self.opts.runtime_env or {})
            if self.opts.ship_code:
                env["py_modules"] = [*env.get("py_modules", []), str(COMPONENTS)]
                env["excludes"] = [*env.get("excludes", []), "__pycache__", "*.pyc"]
            self._check_reachable(where)
            kwargs: dict = {"address": self.opts.address, "namespace": self.opts.namespace,
                            "runtime_env": env or None,
                            "log_to_driver": False, "logging_level": logging.WARNING}
            if self.opts.address is None:
                kwargs["include_dashboard"] = False
            try:
                with _signal_handlers_kept():
                    ray.init(**{k: v for k, v in kwargs.items() if v is not None or k == "address"})
            except Exception as exc:
                why = describe(exc) + (f" ({describe(exc.__cause__)})" if exc.__cause__ else "")
                hint = (" — start one with `ray start --head`, or set executor.address"
                        if self.opts.address == "auto" else "")
                raise ExecutorError(f"executor.address={scrub(where)}: cannot connect to Ray: "
                                    f"{why}{hint}") from None
            self._owns = True
        self._ray = ray
        self._cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        log.info("executor: Ray at %s, %d CPUs", scrub(where), self._cpus)
        return ray

    def _check_reachable(self, where: str) -> None:
        """``host:port`` or ``ray://host:port``: something must answer there (``auto`` fails
        fast by itself when no cluster runs here)."""
        rest = (self.opts.address or "auto").split("://", 1)[-1]
        host, sep, port = rest.rpartition(":")
        if not sep or not port.isdigit():
            return
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=self.opts.connect_timeout_s):
                pass
        except OSError as exc:
            raise ExecutorError(f"executor.address={scrub(where)}: cannot connect to Ray: nothing "
                                f"answers there ({exc.strerror or type(exc).__name__}); is the "
                                f"cluster up (`ray status`)?") from None

    def parallelism(self, local: LocalPool) -> int:
        return self._cpus  # 0 until a batch connected: nothing ran on the cluster

    def map_unordered(self, fn, items, *, cancel=None, max_in_flight=None, local=LocalPool(),
                      task_cpus=1.0) -> Batch:
        if not len(items):
            return Batch(iter(()), lambda: None)
        ray = self._connect()
        task = ray.remote(_apply).options(num_cpus=task_cpus, max_retries=self.opts.max_retries)
        fn_ref = ray.put(fn)  # once, not once per task
        # Enough to keep every CPU busy; more would only queue (and hold their inputs in the
        # object store) and slow a cancel.
        window = Window(items, lambda item: task.remote(fn_ref, item), lambda refs: _wait(ray, refs),
                        lambda ref: _result(ray, ref),
                        max_in_flight or (max(1, int(self._cpus / task_cpus)) if task_cpus else self._cpus),
                        cancel)
        # Nothing is queued beyond the window, and what runs is left to finish unread (the job's
        # workers go when the driver disconnects): ray.cancel racing a task's own completion
        # kills the driver in Ray 2.60 ("Tried to complete task that was not pending"), which
        # would lose the run's report.
        stop = window.in_flight.clear
        try:
            window.fill()
        except BaseException:
            stop()
            raise
        return Batch(window.drain(), stop)

    # -- one actor per node ------------------------------------------------------------------
    def node_actors(self, cls: type, *args: Any, max_concurrency: int) -> list[tuple[str, Any]]:
        """(node id, actor) for one actor of ``cls`` on each alive node with CPUs, pinned there:
        ``cls(*args)`` runs on that node, so it reaches that node's own servers (a loopback
        URL, a server it starts itself). It reserves no CPU; ``max_concurrency`` calls run in
        it at once (threads)."""
        ray = self._connect()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        remote = ray.remote(cls)
        nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU")]
        return [(node, remote.options(
            num_cpus=0, max_concurrency=max_concurrency, max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(*args))
            for node in nodes]

    def driver_node(self) -> str | None:
        """The node this process runs on (None where Ray cannot say, through Ray Client)."""
        ray = self._connect()
        if (self.opts.address or "").startswith("ray://"):
            return None
        try:
            return ray.get_runtime_context().get_node_id()
        except Exception:
            return None

    def call_all(self, actors: list[Any], method: str, *args: Any, timeout_s: float | None = None) -> list[Any]:
        """``method(*args)`` on every actor, each result or a ``Failed`` (a dead actor, its
        constructor's error included)."""
        refs = [getattr(a, method).remote(*args) for a in actors]
        return [_result(self._ray, ref, timeout_s) for ref in refs]

    def map_on_actors(self, actors: list[Any], method: str, items: Sized, *, per_actor: int,
                      total: int | None = None, cancel: threading.Event | None = None) -> Batch:
        """``actor.method(item)`` for each item on the least busy actor, at most ``per_actor``
        calls in each and ``total`` in all at once; ``(index, result or Failed)`` as each
        finishes. A dead actor gets nothing more; once none is left, the items not started are
        ``Failed(lost_worker=True)``."""
        ray = self._ray
        load = dict.fromkeys(range(len(actors)), 0)
        alive = set(load)
        on: dict = {}  # ref -> the actor running it

        def least_busy() -> int | None:
            a = min(alive, key=lambda k: (load[k], k), default=None)
            return a if a is not None and load[a] < per_actor else None

        def launch(item: Any):
            a = least_busy()
            ref = getattr(actors[a], method).remote(item)
            on[ref] = a
            load[a] += 1
            return ref

        def result(ref) -> Any:
            a = on.pop(ref)
            load[a] -= 1
            res = _result(ray, ref)
            if isinstance(res, Failed) and res.lost_worker:
                alive.discard(a)
            return res

        window = Window(items, launch, lambda refs: _wait(ray, refs), result,
                        total or per_actor * len(actors), cancel, free=lambda: least_busy() is not None)

        def results() -> Iterator[tuple[int, Any]]:
            yield from window.drain()
            if not alive and not window.cancelled:
                for i, _ in window.todo:
                    yield i, Failed("no node of the cluster is left to run it", lost_worker=True)

        window.fill()
        return Batch(results(), window.in_flight.clear)

    def kill(self, actors: list[Any]) -> None:
        for a in actors:
            try:
                self._ray.kill(a, no_restart=True)
            except Exception:  # already gone
                pass

    def close(self) -> None:
        if self._ray is not None and self._owns:
            self._ray.shutdown()  # disconnects; a cluster started with `ray start` stays up
        self._ray, self._owns = None, False
