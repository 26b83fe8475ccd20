"""Document conversion with Docling: one status per document, never an exception for the batch.

A bad file yields a failed result whose error names the problem in words a user can act on
("encrypted PDF", "wrong extension: the content is a PDF"), and the batch goes on. PDFs go
through the standard (layout-model) pipeline when its models and runtime are installed, and
through the native text-only pipeline otherwise, with a warning — the user should know their
tables and headings came out flatter.

Documents convert through an executor (``components.executor``): worker processes or threads on
this machine, or Ray tasks on a cluster, each worker holding its own ``DocumentConverter``;
results come back in input order whatever runs them. A conversion is cached by content hash and
options — looked up and stored here, in the driver, whatever the executor — so an unchanged
document never reaches Docling twice.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Iterable

from components.documents.convert.cache import ConvertCache
from components.documents.convert.engine import (ConvertConfigError, DocResult, DoclingEngine,
                                                 layout_models_available)
from components.documents.convert.options import DoclingOptions
from components.documents.convert.pool import convert_many, local_pool
from components.documents.convert.sniff import precheck
from components.documents.convert.tables import table_markdowns
from components.documents.metadata import describe
from components.executor import Executor

__all__ = ["ConvertConfigError", "DocResult", "DoclingConverter", "DoclingOptions",
           "layout_models_available", "table_markdowns"]

log = logging.getLogger(__name__)


class DoclingConverter:
    """What the ``docling`` group builds: typed options, the content-addressed cache and the
    worker pool around one Docling engine."""

    def __init__(self, **options) -> None:
        self.opts = DoclingOptions(**options)
        self.engine = DoclingEngine(self.opts)

    @property
    def exports(self) -> list[str]:
        return self.opts.exports

    def workers_for(self, n_docs: int, executor: Executor | None = None) -> int:
        """How many documents convert at once: the local workers, or the cluster's CPUs."""
        pool = local_pool(self.opts, n_docs)
        return executor.parallelism(pool) if executor is not None else pool.workers

    def convert_all(self, items: Iterable[tuple[str, Path]], cache_dir: str | os.PathLike | None = None,
                    progress: bool = False, cancel: threading.Event | None = None,
                    executor: Executor | None = None) -> list[DocResult]:
        """Convert (display name, path) pairs; one DocResult each, in input order. With
        ``cancel`` set midway, the documents not converted yet come back ``pending``; every
        finished one is already in the cache. ``executor``: where they convert (default: a
        local pool per ``workers`` and ``parallel``)."""
        items = [(s, Path(p)) for s, p in items]
        results: list[DocResult] = []
        cache = ConvertCache(Path(cache_dir) / "docling") if cache_dir and self.opts.cache else None
        hashes: dict[bool, str] = {}

        def key(sha: str, path: Path) -> str:
            pdf = path.suffix.lower() == ".pdf"
            if pdf not in hashes:
                hashes[pdf] = self.engine.options_hash(pdf)
            return f"{sha}-{hashes[pdf]}"

        pending: list[int] = []
        for source, path in items:
            problem, sha, transient = precheck(self.opts, path)
            if problem:
                results.append(DocResult(source, path, "failed", error=problem, transient=transient))
                continue
            hit = cache.get(key(sha, path)) if cache else None
            if hit is not None:
                results.append(DocResult(source, path, "success", cached=True, sha256=sha,
                                         pdf_fallback=path.suffix.lower() == ".pdf" and self.engine.pdf_native,
                                         **hit))
            else:
                pending.append(len(results))
                results.append(DocResult(source, path, "pending", sha256=sha))
        for k, res in convert_many(self.engine, [results[i] for i in pending], progress, cancel,
                                 executor):
            i = pending[k]
            res.path = items[i][1]  # a worker's Path is an equal copy; keep the caller's
            results[i] = res
            if cache and res.status == "success":
                cache.put(key(res.sha256, res.path), {"markdown": res.markdown, "tables": res.tables,
                                                      "exports": res.exports})
        for res in results:
            if res.status == "success":  # the file name is not part of the cache key
                res.meta = describe(res.markdown, res.source)
        return results
