"""Documents converted in parallel through an executor — worker processes or threads here, Ray
tasks on a cluster — one Docling per worker, kept between documents; results come back as they
finish, and a cancel stops the batch without waiting for it."""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from components.documents.convert.engine import DocResult, DoclingEngine
from components.documents.convert.options import DoclingOptions
from components.executor import Executor, Failed, LocalExecutor, LocalPool, start_method
from components.progress import Progress

# Per worker thread (a DocumentConverter is not shared-safe) and so per process: one engine per
# options, built by the first document and reused by the rest — a Ray worker lives on between
# tasks, so Docling is not rebuilt for each.
_LOCAL = threading.local()


def _engine(settings: dict) -> DoclingEngine:
    engines = _LOCAL.__dict__.setdefault("engines", {})
    key = json.dumps(settings, sort_keys=True)
    if key not in engines:
        engine = DoclingEngine(DoclingOptions(**settings))
        _ = engine.pdf_native  # the pinned pipeline, or ConvertConfigError where it cannot run
        engine.prepare(quiet=True)
        engines[key] = engine
    return engines[key]


class ConvertTask:
    """One document in a worker: ``(source, path, sha256, bytes or None)`` -> DocResult. With
    the bytes (a cluster node need not see the driver's files), the document is converted
    from a private copy under its own name, and the copy's path never reaches a message."""

    def __init__(self, settings: dict, quiet: bool) -> None:
        self.settings, self.quiet = settings, quiet

    def __call__(self, item: tuple[str, str, str | None, bytes | None]) -> DocResult:
        source, path, sha256, data = item
        if self.quiet:
            logging.getLogger("docling").setLevel(logging.ERROR)  # the driver reports per document
        engine = _engine(self.settings)
        if data is None:
            return engine.convert_one(source, Path(path), sha256)
        with tempfile.TemporaryDirectory(prefix="convert-") as tmp:
            copy = Path(tmp) / Path(path).name
            copy.write_bytes(data)
            res = engine.convert_one(source, copy, sha256)
        if res.error:
            res.error = res.error.replace(str(copy), path)
        res.path = Path(path)
        return res


def workers_for(opts: DoclingOptions, n_docs: int) -> int:
    return max(1, min(int(opts.workers or 1), n_docs, os.cpu_count() or 1))


def local_pool(opts: DoclingOptions, n_docs: int) -> LocalPool:
    return LocalPool(workers=workers_for(opts, n_docs), kind=opts.parallel,
                     start_method=start_method(opts.start_method))


def convert_many(engine: DoclingEngine, pending: list[DocResult], progress: bool,
                 cancel: threading.Event | None = None,
                 executor: Executor | None = None) -> Iterator[tuple[int, DocResult]]:
    """(index into ``pending``, result) as each document finishes."""
    if not pending:
        return
    executor = executor or LocalExecutor()
    opts = engine.opts
    pool = local_pool(opts, len(pending))
    if isinstance(executor, LocalExecutor) and pool.workers == 1:
        # In this thread: the converter's own engine, which keeps Docling's pipelines between
        # batches. Built first: a converter that cannot be built stops the batch.
        engine.prepare()

        def fn(item):
            return engine.convert_one(item[0], Path(item[1]), item[2])
    else:
        # Decided here, once: the warning is the driver's, and every worker takes the PDF
        # pipeline the cache key was computed for (a cluster node without the layout models
        # fails its documents saying so, instead of converting them differently).
        native = engine.pdf_native
        settings = opts.model_dump() | {"workers": 1, "cache": False,
                                         "pdf_backend": "native" if native else "standard"}
        if isinstance(executor, LocalExecutor) and pool.kind == "process" and pool.start_method == "fork":
            engine.prepare()  # children inherit imported Docling: no 3 s start each
        fn = ConvertTask(settings, quiet=executor.remote or pool.kind == "process")
    items = _Items(pending, ship=executor.remote)
    bar = Progress("convert", len(pending), unit="documents", terminal=progress)
    # Submitted (and so forked) before the progress bar starts its refresh thread, so no
    # thread of ours is running mid-lock in a child.
    with executor.map_unordered(fn, items, cancel=cancel, local=pool) as results, bar:
        for i, res in results:
            if isinstance(res, Failed):  # the worker died, or Docling could not be built there
                what = "converter worker died" if res.lost_worker else "converter process failed"
                res = DocResult(pending[i].source, pending[i].path, "failed", transient=True,
                                sha256=pending[i].sha256, error=f"{what}: {res.error}")
            bar.advance(failed=int(res.status != "success"), note=res.source)
            yield i, res


class _Items:
    """The batch's tasks; with ``ship``, each file is read when its task is submitted, so only
    the documents in flight are held in memory, not the corpus."""

    def __init__(self, pending: list[DocResult], ship: bool) -> None:
        self._pending, self._ship = pending, ship

    def __len__(self) -> int:
        return len(self._pending)

    def __iter__(self):
        for r in self._pending:
            yield r.source, str(r.path), r.sha256, _read(r.path) if self._ship else None


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None  # unreadable now: the worker tries the path itself and says why it failed
