"""extract: ``chunks.jsonl`` -> ``extractions.jsonl`` through a local LLM service.

Every answered chunk is appended to ``extractions.partial.jsonl`` as soon as it is back, so an
interrupted run resumes where it stopped; the final file is written atomically at the end.
Invalid model output is recorded with its reason, never raised.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from omegaconf import DictConfig, OmegaConf

from components.files import read_jsonl, write_jsonl
from runner.config import build
from runner.stage import StageContext, StageError

log = logging.getLogger(__name__)

INPUTS = ["chunks.jsonl"]
OUTPUTS = ["extractions.jsonl"]
CONFIG = ["service", "extraction"]
PARTIAL = "extractions.partial.jsonl"


def start_service(service: DictConfig, run_dir=None):
    """The configured service behind routing, retries, breakers, cache and fallback, started
    after the same checks as ``python -m runner.health``; ``audit.jsonl`` goes into run_dir."""
    from components.llm.errors import ServiceFailure

    svc = build(service, "service").chain().bind(run_dir)
    try:
        svc.start()
    except BaseException as exc:
        svc.close()
        if isinstance(exc, ServiceFailure):  # unavailable, refused, an alert in alerts.fail_on
            raise StageError(f"extract: {exc}") from None
        raise
    return svc


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def run(ctx: StageContext) -> dict[str, float]:
    from components.llm import extraction as X

    ex = build(ctx.cfg.extraction, "extraction")
    chunks = read_jsonl(ctx.path("chunks.jsonl"))
    if ex.max_chunks:
        chunks = chunks[: ex.max_chunks]
    if not chunks:
        raise StageError("extract: chunks.jsonl is empty; nothing to extract (see the process stage)")
    schema = X.json_schema(ex.max_acronyms, ex.max_spec_refs)
    # Answers are only reusable for the same request: same prompt, schema, budget and service.
    request_key = _sha(json.dumps([X.SYSTEM_PROMPT, schema, ex.max_tokens, ex.temperature,
                                   OmegaConf.to_container(ctx.cfg.service, resolve=False)],
                                  sort_keys=True, default=str))

    partial = ctx.path(PARTIAL)
    done: dict[str, dict] = {}
    if partial.is_file():
        with open(partial, encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a crash
                    continue
                if rec.get("request_key") == request_key and rec.get("status") != "error":
                    done[rec["chunk_id"]] = rec
    todo = [c for c in chunks if done.get(c["id"], {}).get("chunk_sha") != _sha(c["text"])]
    resumed = len(chunks) - len(todo)
    if resumed:
        log.info("extract: resuming, %d of %d chunks already extracted", resumed, len(chunks))

    t0 = time.perf_counter()
    svc = None
    if todo:
        svc = ctx.resources.shared("llm", lambda: start_service(ctx.cfg.service, ctx.run_dir))
        info = {"service.configured": ctx.cfg.service.name, "service.used": svc.name,
                "service.fallback": str(svc.fallback is not None).lower()}
        if svc.fallback_reason:
            info["service.fallback_reason"] = svc.fallback_reason[:500]
        ctx.tracker.set_tags(info)
    lock = threading.Lock()

    def one(chunk: dict) -> dict:
        rec = {"chunk_id": chunk["id"], "doc_id": chunk["doc_id"], "chunk_sha": _sha(chunk["text"]),
               "request_key": request_key}
        try:
            reply = svc.chat_json(X.messages_for(chunk), schema, ex.max_tokens, ex.temperature)
        except Exception as exc:  # after retries/fallback: record and go on
            rec.update(status="error", error=f"{type(exc).__name__}: {exc}"[:500],
                       service=svc.name)
            return rec
        data, err, repaired = X.parse(reply.content)
        rec.update(service=svc.name, model=getattr(svc.used, "model", None),
                   prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
                   seconds=round(reply.seconds, 3), finish_reason=reply.finish_reason,
                   repaired=repaired)
        if data is None:
            rec.update(status="invalid", error=err, raw=reply.content[:2000])
        else:
            rec.update(status="ok", extraction=data, grounding=X.grounding(data, chunk["text"]))
        return rec

    with open(partial, "a", encoding="utf-8") as out, \
            ThreadPoolExecutor(max_workers=ex.concurrency) as pool:
        futures = [pool.submit(one, c) for c in todo]
        for i, fut in enumerate(as_completed(futures), 1):
            rec = fut.result()
            done[rec["chunk_id"]] = rec
            with lock:
                out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                out.flush()
            if rec["status"] != "ok":
                log.warning("extract: chunk %s: %s: %s", rec["chunk_id"], rec["status"], rec.get("error"))
            if i % 10 == 0 or i == len(todo):
                log.info("extract: %d/%d chunks", i, len(todo))
    seconds = time.perf_counter() - t0
    # Free the server's threads and memory before training starts.
    ctx.resources.release("llm")

    records = [done[c["id"]] for c in chunks if c["id"] in done]
    errors = [r for r in records if r["status"] == "error"]
    if errors and len(errors) == len(records):
        raise StageError(f"extract: every request failed; first error: {errors[0]['error']} "
                         f"(answers so far are kept in {partial.name})")
    write_jsonl(ctx.path("extractions.jsonl"), records)
    if not errors:
        os.unlink(partial)  # complete: the partial log has served its purpose

    ok = [r for r in records if r["status"] == "ok"]
    n = len(records)
    acr = sum(len(r["extraction"]["acronyms"]) for r in ok)
    acr_g = sum(len(r["grounding"]["acronyms"]) for r in ok)
    refs = sum(len(r["extraction"]["spec_refs"]) for r in ok)
    refs_g = sum(len(r["grounding"]["spec_refs"]) for r in ok)
    todo_ids = {c["id"] for c in todo}
    new = [r for r in records if r["chunk_id"] in todo_ids and "completion_tokens" in r]
    tokens = sum(r["completion_tokens"] for r in new)
    return {
        "extract/chunks": n,
        "extract/json_valid_rate": round(len(ok) / n, 4) if n else 0.0,
        "extract/repaired": sum(1 for r in records if r.get("repaired")),
        "extract/invalid": sum(1 for r in records if r["status"] == "invalid"),
        "extract/errors": len(errors),
        "extract/truncated": sum(1 for r in records if r.get("finish_reason") == "length"),
        "extract/acronym_grounded_rate": round(acr_g / acr, 4) if acr else 0.0,
        "extract/spec_ref_grounded_rate": round(refs_g / refs, 4) if refs else 0.0,
        "extract/qa_grounded_rate": round(sum(r["grounding"]["qa_grounded"] for r in ok) / len(ok), 4) if ok else 0.0,
        "extract/resumed_chunks": resumed,
        "extract/fallback_used": float(bool(svc and svc.fallback is not None)),
        "extract/retried_requests": float(svc.requests_retried if svc else 0),
        "extract/seconds": round(seconds, 3),
        "extract/completion_tokens_per_s": round(tokens / seconds, 2) if seconds > 0 and tokens else 0.0,
        **(svc.metrics() if svc else {}),
    }
