"""Acquire: download the configured 3GPP specs into the shared cache and unpack them safely.

Writes ``acquired.json``: one entry per requested spec (``status`` ``ok`` or ``failed`` with the
error) and the flat, sorted list of extracted ``documents`` (absolute paths) for later stages.
The manifest records only what was acquired, not whether it came from the cache this time, so
re-running with a warm cache produces the same bytes and does not invalidate later stages.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from components.documents.acquire import (AcquireConfig, AcquireError, ArchiveLimits, SpecResult,
                                         ThreeGPPDownloader, spec_dir)
from components.documents.archives import ArchiveError, extract_cached
from components.files import file_sha256, write_json
from components.progress import Progress
from runner.stage import StageContext, StageError

INPUTS: list[str] = []
OUTPUTS = ["acquired.json"]
CONFIG = ["acquire", "corpus.path"]
# Downloads have their own cache; a failure (offline today) must not be replayed to other runs.
STAGE_CACHE = False

log = logging.getLogger(__name__)


def fingerprint_extra(ctx: StageContext) -> str:
    """Never up to date while a spec failed: the next run tries it again (cached ones are free)."""
    path = ctx.path("acquired.json")
    if path.is_file():
        specs = json.loads(path.read_text(encoding="utf-8")).get("specs", [])
        if any(s.get("status") == "failed" for s in specs):
            return f"retry-{time.time_ns()}"
    return ""


def run(ctx: StageContext) -> dict[str, float]:
    cfg: AcquireConfig = ctx.component("acquire")
    specs = cfg.specs
    metrics = {"acquire/downloaded": 0.0, "acquire/cached": 0.0, "acquire/failed": 0.0, "acquire/bytes": 0.0}
    if not specs:
        write_json(ctx.path("acquired.json"), {"specs": [], "documents": []})
        return metrics

    downloader = cfg.downloader
    try:
        with Progress("acquire", None, unit="MB", scale=2**20) as downloader.progress:
            results = downloader.download(specs)
    except AcquireError as exc:
        if not ctx.cfg.corpus.path:
            raise StageError(str(exc)) from exc
        log.warning("%s; continuing with corpus.path only", exc)
        results = exc.results

    entries = [_entry(r, downloader, cfg.extract) for r in results]
    for r, e in zip(results, entries):
        key = r.status if e["status"] == "ok" else "failed"
        metrics[f"acquire/{key}"] += 1
        metrics["acquire/bytes"] += r.bytes
        if e["status"] == "failed":
            log.warning("acquire %s: %s", e["request"], e["error"])
    entries.sort(key=lambda e: e["request"])
    documents = sorted({d for e in entries for d in e["documents"]})
    write_json(ctx.path("acquired.json"), {"specs": entries, "documents": documents})
    metrics["acquire/documents"] = float(len(documents))
    return metrics


def _entry(r: SpecResult, downloader: ThreeGPPDownloader, extract: ArchiveLimits) -> dict[str, Any]:
    entry = {
        "request": r.request, "spec": r.spec, "version": r.version, "url": r.url, "zip": r.path,
        "status": "failed" if r.status == "failed" else "ok", "error": r.error, "sha256": None, "documents": [],
    }
    if entry["status"] == "failed":
        return entry
    zip_path = Path(r.path)
    entry["sha256"] = file_sha256(zip_path)
    if not extract.enabled:
        return entry
    limits = extract.model_dump(exclude={"enabled"})
    out_dir = downloader.dest / "extracted" / spec_dir(r.spec) / zip_path.stem
    try:
        docs = extract_cached(zip_path, out_dir, **limits)
    except ArchiveError as exc:
        entry.update(status="failed", error=str(exc))
        return entry
    entry["documents"] = [str(p) for p in docs]
    return entry
