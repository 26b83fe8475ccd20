"""process: ``documents/*.md`` -> ``chunks.jsonl`` (normalize, chunk, dedup; rust/SPEC.md).

Runs the Rust binary ``ericsson-dataset-pipeline`` or its Python twin (``process.engine``);
both write the same bytes: the chunks, and the duplicate clusters (what each dedup removed, in
favour of which chunk) to ``chunks.clusters.jsonl``. The validated config goes to
``process.yaml`` for the binary and the engine's result (counts, phase timings) to
``process_result.json``.
"""
from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from components.files import write_json
from components.progress import Progress
from runner.stage import StageContext, StageError

log = logging.getLogger(__name__)

INPUTS = ["documents"]
OUTPUTS = ["chunks.jsonl", "chunks.clusters.jsonl"]
CONFIG = ["process"]


def fingerprint_extra(ctx: StageContext) -> str:
    """The Rust engine's sources (the Python twin's are found with the stage's code)."""
    from components.processing import rust

    root = rust.CRATE_DIR.parent
    h = hashlib.sha256()
    for f in rust.sources(rust.CRATE_DIR):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def metrics(result: dict[str, Any], wall_s: float) -> dict[str, float]:
    t = result["timings"]
    out = {f"process/{phase}_seconds": float(t[phase]) for phase in ("read", "normalize", "chunk", "dedup", "write")}
    out.update({
        f"process/{result['engine']}_seconds": float(t["total"]),
        "process/wall_seconds": wall_s,
        "process/mb_per_s": float(result["mb_per_s"]),
        "process/documents": float(result["documents"]),
        "process/documents_failed": float(result["documents_failed"]),
        "process/chunks_total": float(result["chunks_total"]),
        "process/chunks_filtered": float(result["chunks_filtered"]),
        "process/chunks": float(result["chunks_written"]),
        "process/exact_duplicates": float(result["exact_duplicates"]),
        "process/near_duplicates": float(result["near_duplicates"]),
        "process/duplicate_clusters": float(result["duplicate_clusters"]),
    })
    return out


class Phases:
    """The engine's progress (documents, dedup, write) as one bar per phase; plain lines when
    the output is not a terminal."""

    UNITS = {"documents": "documents", "write": "chunks"}

    def __init__(self) -> None:
        self.phase: str | None = None
        self.bar: Progress | None = None

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase != self.phase:
            self.close()
            log.info("process: %s%s", phase, f" ({total} {self.UNITS.get(phase, 'steps')})" if total else "")
            self.phase = phase
            self.bar = Progress(f"process: {phase}", total or None, unit=self.UNITS.get(phase, "steps")).start()
        if self.bar is not None and done > self.bar.done:
            self.bar.advance(done - self.bar.done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(ctx: StageContext) -> dict[str, float]:
    from components.processing import ProcessingError, resolve_engine, run_processing, write_config

    documents = ctx.path("documents")
    if not documents.is_dir():
        raise StageError(f"process: {documents} is missing; run the convert stage first")
    try:
        cfg = ctx.component("process").model_copy(update={
            "input_dir": str(documents.resolve()), "output_path": str(ctx.path("chunks.jsonl").resolve())})
        config_path = write_config(cfg, ctx.path("process.yaml"))
        engine = resolve_engine(cfg.engine)
        log.info("process: %s engine on %s", engine, documents)
        t = time.perf_counter()
        phases = Phases()
        try:
            result = run_processing(cfg, config_path, on_progress=phases)
        finally:
            phases.close()
        wall_s = time.perf_counter() - t
    except ProcessingError as exc:
        raise StageError(f"process: {exc}") from exc
    write_json(ctx.path("process_result.json"), result)
    for failure in result["failures"]:
        log.warning("process: skipped %s: %s", failure["path"], failure["message"])
    log.info("process: %d chunks from %d documents (%d exact, %d near duplicates removed) at %.1f MB/s",
             result["chunks_written"], result["documents"], result["exact_duplicates"],
             result["near_duplicates"], result["mb_per_s"])
    return metrics(result, wall_s)
