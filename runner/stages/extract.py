"""extract: ``chunks.jsonl`` (+ ``documents/``) -> ``extractions.jsonl`` and ``glossary.jsonl``.

``extraction.extractor``: ``rules`` (glossary, spec and clause references, releases; no LLM, the
server is never started), ``llm`` (the model alone) or ``hybrid`` (both; the default). Chunks not
worth a request (front matter, boilerplate, table-of-contents remnants, low quality) get rules
only, counted.

Every finished record is appended to ``extractions.partial.jsonl`` as soon as it is back. A rerun
keeps final and successful records and redoes transient failures (service down, timeouts, 5xx):
while any remain, ``extract/transient_failures`` > 0 keeps the stage from counting as done. On
a stop request the loop stops within a few seconds, keeps what finished and raises Interrupted.
"""
from __future__ import annotations

import json
import logging
import time

from omegaconf import OmegaConf

from components.documents.glossary import glossary_rows
from components.files import json_sha256, read_jsonl, write_jsonl
from components.progress import Progress
from runner.stage import Interrupted, StageContext, StageError

log = logging.getLogger(__name__)

INPUTS = ["chunks.jsonl"]
# Converted documents give the glossary and metadata; without them rules see only the chunks.
OPTIONAL_INPUTS = ["documents"]
OUTPUTS = ["extractions.jsonl", "glossary.jsonl"]
CONFIG = ["service", "extraction", "executor"]
PARTIAL = "extractions.partial.jsonl"


def start_service(service, run_dir=None):
    """``service`` (the ``service`` group's component) behind routing, retries, breakers, cache
    and fallback, started after the same checks as ``python -m runner.health``; ``audit.jsonl``
    goes into run_dir."""
    from components.llm.errors import ServiceFailure
    from components.llm.resilience import chain

    svc = chain(service).bind(run_dir)
    try:
        svc.start()
    except BaseException as exc:
        svc.close()
        if isinstance(exc, ServiceFailure):  # unavailable, refused, an alert in alerts.fail_on
            raise StageError(f"extract: {exc}") from None
        raise
    return svc


# Where replies are cached and audited, and how failures are retried or alerted on, change no
# request: a run with another cache_dir still reuses its records.
_NOT_ASKING = {"cache", "audit", "alerts", "resilience"}


def _asking(service):
    """The service config less what does not change what is asked."""
    if isinstance(service, dict):
        return {k: _asking(v) for k, v in service.items() if k not in _NOT_ASKING}
    return service


def _documents(ctx: StageContext, doc_ids: list[str]) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """Glossary rows and metadata per document; an unreadable file is named and skipped."""
    rows: dict[str, list[dict]] = {}
    metas: dict[str, dict] = {}
    docs = ctx.path("documents")
    if not docs.is_dir():
        log.info("extract: no documents/ folder; the glossary and metadata come from nowhere "
                 "(run the convert stage for them)")
        return rows, metas
    for d in doc_ids:
        md, meta = docs / f"{d}.md", docs / "meta" / f"{d}.json"
        try:
            if md.is_file():
                rows[d] = glossary_rows(md.read_text(encoding="utf-8"), d)
            if meta.is_file():
                metas[d] = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("extract: %s: cannot read (%s); this document gets no glossary", md, exc)
    return rows, metas


def _glossary_file(chunks: list[dict], rows: dict[str, list[dict]], records: list[dict]) -> list[dict]:
    """One row per (document, acronym, expansion) or (document, term): the document glossary by
    rule, then acronyms only the model found (grounded in their chunk), each with its chunk."""
    from components.llm import grounding as G

    by_doc: dict[str, list[dict]] = {}
    for c in chunks:
        by_doc.setdefault(c["doc_id"], []).append(c)
    out, seen = [], set()
    for d, doc_rows in rows.items():
        for r in doc_rows:
            name = r.get("acronym") or r["term"]
            value = r.get("expansion") or r["definition"]
            home = next((c["id"] for c in by_doc.get(d, []) if name in c["text"]
                         and G.contains_quote(value, c["text"], 1)), None)
            if home is None:
                home = next((c["id"] for c in by_doc.get(d, []) if name in c["text"]), None)
            key = (d, name, " ".join(G.tokens(value)))
            if key not in seen:
                seen.add(key)
                out.append({**r, "chunk_id": home, "origin": "rule"})
    for rec in records:
        for a in (rec.get("result") or {}).get("acronyms", []):
            key = (rec["doc_id"], a["acronym"], " ".join(G.tokens(a["expansion"])))
            if a["origin"] != "rule" and key not in seen:
                seen.add(key)
                out.append({"doc_id": rec["doc_id"], "source": "llm", "clause": rec["clause"],
                            "acronym": a["acronym"], "expansion": a["expansion"],
                            "chunk_id": rec["chunk_id"], "origin": a["origin"]})
    return out


def _release(ctx: StageContext, svc, stopping: bool) -> None:
    """Close the shared server; when stopping, cut the requests still running first."""
    if stopping:
        n = svc.abort_requests()
        log.info("extract: stopping: %d connection(s) to the server cut (requests in flight are abandoned)", n)
    ctx.resources.release("llm")


def _reuse(final, partial, chunks: list[dict], extractor, request_key: str) -> dict[str, dict]:
    """The records earlier runs finished for this very request, by chunk id, their rules redone."""
    from components.llm.extractor import chunk_sha, merge
    from components.llm.record_log import reusable

    done = reusable([final, partial], request_key, {c["id"]: chunk_sha(c) for c in chunks})
    by_id = {c["id"]: c for c in chunks}
    for cid, rec in done.items():  # rules are cheap and the glossary may have changed: redo them
        fresh = extractor.base(by_id[cid], request_key)
        rec.update(rules=fresh["rules"], spec=fresh["spec"], clause=fresh["clause"],
                   section_path=fresh["section_path"])
        rec["result"] = merge(rec, extractor.cfg.extractor)
    return done


def _metrics(records: list[dict], new: list[dict], chunks: list[dict], glossaries: dict,
             rows: dict[str, list[dict]], resumed: int, seconds: float, served: dict) -> dict[str, float]:
    """Extraction quality over every record, and this run's throughput over the ``new`` ones."""
    from components.llm.extractor import quality

    metrics = quality(records, glossaries, {c["id"]: c["text"] for c in chunks})
    tokens = sum(((r.get("llm") or {}).get("usage") or {}).get("completion_tokens", 0) for r in new)
    metrics.update({
        "extract/resumed_chunks": float(resumed),
        "extract/glossary_rows": float(sum(len(r) for r in rows.values())),
        "extract/fallback_used": float(served.get("tags", {}).get("service.fallback") == "true"),
        "extract/retried_requests": float(served.get("retried", 0)),
        "extract/seconds": round(seconds, 3),
        "extract/chunks_per_min": round(60 * len(new) / seconds, 2) if seconds > 0 and new else 0.0,
        "extract/completion_tokens_per_s": round(tokens / seconds, 2) if seconds > 0 and tokens else 0.0,
        # Kept for dashboards that predate the split into final/transient failures.
        "extract/errors": float(sum(r.get("failure") == "transient" for r in records)),
        "extract/invalid": float(sum(r["status"] == "invalid" for r in records)),
        **served.get("metrics", {}),
    })
    return metrics


def run(ctx: StageContext) -> dict[str, float]:
    from components.llm import extraction as X
    from components.llm.cluster import NoNodeServes, extract_on_cluster
    from components.llm.extractor import ChunkExtractor
    from components.llm.record_log import RecordLog, run_bounded
    from components.llm.rules import Glossary

    ex = ctx.component("extraction")
    chunks = read_jsonl(ctx.path("chunks.jsonl"))
    if ex.max_chunks:
        chunks = chunks[: ex.max_chunks]
    if not chunks:
        raise StageError("extract: chunks.jsonl is empty; nothing to extract (see the process stage)")
    doc_ids = list(dict.fromkeys(c["doc_id"] for c in chunks))
    rows, metas = _documents(ctx, doc_ids)
    glossaries = {d: Glossary(r) for d, r in rows.items()}
    extractor = ChunkExtractor(ex, glossaries, metas, cancel=ctx.cancel)

    # Records are only reusable for the same request: extractor, prompt, schema, checks, service.
    asked = ex.model_dump(exclude={"concurrency", "max_chunks", "progress_every_s"})
    request_key = json_sha256([asked, X.request_template(ex.fields), extractor.schema,
                               _asking(OmegaConf.to_container(ctx.cfg.service, resolve=False))
                               if ex.extractor != "rules" else None])[:16]
    final, partial = ctx.path("extractions.jsonl"), ctx.path(PARTIAL)
    done = _reuse(final, partial, chunks, extractor, request_key)
    todo = [c for c in chunks if c["id"] not in done]
    resumed = len(chunks) - len(todo)
    if resumed:
        log.info("extract: resuming, %d of %d chunks already extracted", resumed, len(chunks))

    t0 = time.perf_counter()
    asks = [c for c in todo if extractor.needs_llm(extractor.base(c, request_key))]
    svc = None
    executor = ctx.resources.shared("executor", lambda: ctx.component("executor")) if asks else None
    on_cluster = executor is not None and executor.name == "ray"
    served: dict = {}  # on a cluster: the nodes' service metrics and tags, merged
    if asks and not on_cluster:
        svc = ctx.resources.shared("llm", lambda: start_service(ctx.component("service"), ctx.run_dir))
        extractor.service = svc
        ctx.tracker.set_tags(svc.tags())

    progress = Progress("extract", len(todo), unit="chunks", every_s=ex.progress_every_s).start()

    def finished(chunk: dict, rec: dict) -> None:
        done[chunk["id"]] = rec
        record_log.append(rec)
        progress.advance(failed=int(rec["status"] != "ok"), note=chunk["id"])
        if rec["status"] != "ok":
            log.warning("extract: chunk %s: %s (%s failure): %s", rec["chunk_id"], rec["status"],
                        rec["failure"], rec.get("error"))

    complete = False
    try:
        with RecordLog(partial) as record_log:
            asked = {c["id"] for c in asks}
            for c in todo:  # rules only: cheap, no thread needed
                if ctx.cancel.is_set():
                    break
                if c["id"] not in asked:
                    finished(c, extractor(c, request_key))
            else:
                if on_cluster:
                    ctx.component("service")  # a wrong key fails here, naming it, before any node starts
                    try:
                        complete, served = extract_on_cluster(
                            executor, extractor, OmegaConf.to_container(ctx.cfg.service, resolve=True),
                            rows, metas, request_key, ctx.run_dir, asks, finished, ctx.cancel)
                    except NoNodeServes as exc:
                        raise StageError(f"extract: {exc}") from None
                else:
                    complete = run_bounded(asks, lambda c: extractor(c, request_key), ex.concurrency,
                                           ctx.cancel, finished, grace_s=1.0)
    finally:
        progress.close()
        # Free the server's threads and memory (before training, or on the way out).
        if svc is not None:
            _release(ctx, svc, stopping=not complete)
    seconds = time.perf_counter() - t0
    if not complete:
        kept = sum(1 for r in done.values() if r.get("failure") != "transient")
        raise Interrupted(f"extract: stopped on request after {seconds:.1f}s; {kept} of "
                          f"{len(chunks)} chunks are finished and kept in {partial.name}; run "
                          "again in the same directory to resume")

    records = [done[c["id"]] for c in chunks]
    transient = [r for r in records if r.get("failure") == "transient"]
    if transient and len(transient) == sum(1 for r in records if r.get("llm") is not None or
                                           r.get("failure") == "transient"):
        raise StageError(f"extract: every request failed; first error: {transient[0]['error']} "
                         f"(answers so far are kept in {partial.name}; run again to retry)")
    write_jsonl(final, records)
    write_jsonl(ctx.path("glossary.jsonl"), _glossary_file(chunks, rows, records))
    if transient:
        log.warning("extract: %d chunk(s) failed for a transient reason; the stage is not done: "
                    "run again in the same directory to retry exactly those", len(transient))
    else:
        partial.unlink(missing_ok=True)  # complete: the partial log has served its purpose

    if svc is not None:
        served = {"metrics": svc.metrics(), "tags": svc.tags(), "retried": svc.requests_retried}
    metrics = _metrics(records, [done[c["id"]] for c in todo], chunks, glossaries, rows, resumed,
                       seconds, served)
    if on_cluster:
        metrics["extract/nodes"] = float(served.get("nodes", 0))
    if served.get("tags"):
        # What happened after start (fallbacks, breaker opens, alerts) belongs on the run too.
        ctx.tracker.set_tags(served["tags"])
    return metrics
