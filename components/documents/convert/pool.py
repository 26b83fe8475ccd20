"""Documents converted in parallel, one Docling per worker process (or thread), with a progress
bar; results come back as they finish, and a cancel stops the batch without waiting for it."""
from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Iterator

from components.documents.convert.engine import DocResult, DoclingEngine
from components.documents.convert.options import DoclingOptions

_WORKER: DoclingEngine | None = None
_LOCAL = threading.local()  # threads: one engine each, a DocumentConverter is not shared-safe


def _init_process(opts: dict) -> None:
    global _WORKER
    import logging

    logging.getLogger("docling").setLevel(logging.ERROR)  # the parent reports per document
    _WORKER = DoclingEngine(DoclingOptions(**opts))
    _WORKER.prepare(quiet=True)


def _work_process(source: str, path: str, sha256: str | None) -> DocResult:
    assert _WORKER is not None
    return _WORKER.convert_one(source, Path(path), sha256)


def _init_thread(opts: dict) -> None:
    _LOCAL.engine = DoclingEngine(DoclingOptions(**opts))
    _LOCAL.engine.prepare(quiet=True)


def _work_thread(source: str, path: str, sha256: str | None) -> DocResult:
    return _LOCAL.engine.convert_one(source, Path(path), sha256)


def start_method(opts: DoclingOptions) -> str:
    if opts.start_method != "auto":
        return opts.start_method
    # fork starts a worker in milliseconds where spawn re-imports Docling (seconds each); macOS
    # frameworks are not fork-safe, so there it is spawn. The pool is created before the
    # progress bar's thread starts, and Python 3.11's fork pool starts all its workers at once,
    # so no thread of ours is running mid-lock when they fork.
    return "fork" if sys.platform.startswith("linux") else "spawn"


def workers_for(opts: DoclingOptions, n_docs: int) -> int:
    return max(1, min(int(opts.workers or 1), n_docs, os.cpu_count() or 1))


def convert_many(engine: DoclingEngine, pending: list[DocResult], progress: bool,
                 cancel: threading.Event | None = None) -> Iterator[tuple[int, DocResult]]:
    """(index into ``pending``, result) as each document finishes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if not pending:
        return
    opts = engine.opts
    workers = workers_for(opts, len(pending))
    bar = Progress(TextColumn("convert"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   TextColumn("{task.fields[name]}"), disable=not progress, transient=True)
    if workers == 1:
        with bar:
            task = bar.add_task("convert", total=len(pending), name="")
            for i, r in enumerate(pending):
                if cancel is not None and cancel.is_set():
                    return
                bar.update(task, name=r.source)
                res = engine.convert_one(r.source, r.path, r.sha256)
                bar.advance(task)
                yield i, res
        return
    _ = engine.pdf_native  # warn once, here, not in every worker
    settings = opts.model_dump() | {"workers": 1, "cache": False}
    pool: Executor
    if opts.parallel == "process":
        method = start_method(opts)
        if method == "fork":
            engine.prepare()  # children inherit imported Docling: no 3 s start each
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                                   initializer=_init_process, initargs=(settings,))
        work = _work_process
    else:
        pool = ThreadPoolExecutor(workers, initializer=_init_thread, initargs=(settings,))
        work = _work_thread
    try:
        # Submit (and so fork) before the progress bar starts its refresh thread.
        futures: dict[Future, int] = {pool.submit(work, r.source, str(r.path), r.sha256): i
                                      for i, r in enumerate(pending)}
        with bar:
            task = bar.add_task("convert", total=len(pending), name="")
            todo = set(futures)
            while todo:
                done, todo = wait(todo, timeout=0.5, return_when=FIRST_COMPLETED)
                if cancel is not None and cancel.is_set():
                    return
                for fut in done:
                    i = futures[fut]
                    try:
                        res = fut.result()
                    except Exception as exc:  # a worker died (out of memory, a crash in C code)
                        res = DocResult(pending[i].source, pending[i].path, "failed", transient=True,
                                        error=f"converter process failed: {type(exc).__name__}: {exc}")
                    bar.update(task, advance=1, name=res.source)
                    yield i, res
    finally:
        # On a cancel or an error, queued documents are dropped rather than waited for.
        pool.shutdown(wait=False, cancel_futures=True)
