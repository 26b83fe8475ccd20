"""One chunk in, one extraction record out: rules always, the model when it is worth a request,
and only what the chunk supports kept.

A record says where each item came from (``rule`` or the model's name), what was dropped and
why, and, when it failed, whether the failure is ``final`` (the model's answer is invalid) or
``transient`` (the service failed: retried by the next run).
"""
from __future__ import annotations

import hashlib
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from components.llm import extraction as X
from components.llm import grounding as G
from components.llm import rules
from components.llm.errors import ServiceFailure
from components.llm.extraction import ExtractionConfig
from components.llm.record import ExtractionRecord, Result
from components.training.evaluation import token_f1

RULE = "rule"
_NOTHING = X.Extraction().model_dump()  # a reply's fields the model was not asked for


class Cancelled(Exception):
    """The run was asked to stop between two requests of one chunk; the chunk is redone later."""


def chunk_sha(chunk: dict) -> str:
    return hashlib.sha256(chunk["text"].encode("utf-8")).hexdigest()[:16]


@dataclass
class ChunkExtractor:
    cfg: ExtractionConfig
    glossaries: dict[str, rules.Glossary]
    metas: dict[str, dict]
    service: Any = None  # None: rules only
    cancel: threading.Event = field(default_factory=threading.Event)
    _local: threading.local = field(default_factory=threading.local, repr=False)

    def __post_init__(self) -> None:
        self.schema = X.json_schema(self.cfg.max_acronyms, self.cfg.max_spec_refs,
                                    self.cfg.qa_per_chunk, self.cfg.max_entities, self.cfg.fields)
        self.answer_schema = X.answer_schema()
        self._empty = rules.Glossary([])

    # ------------------------------------------------------------ the record

    def base(self, chunk: dict, request_key: str) -> ExtractionRecord:
        g = self.glossaries.get(chunk["doc_id"], self._empty)
        found = rules.extract(chunk, g, self.metas.get(chunk["doc_id"]))
        skip = rules.skip_reason(chunk, self.cfg.min_words, self.cfg.min_alpha_ratio)
        return {"chunk_id": chunk["id"], "doc_id": chunk["doc_id"], "chunk_sha": chunk_sha(chunk),
                "request_key": request_key, "extractor": self.cfg.extractor,
                "spec": found["spec"], "clause": found["clause"],
                "section_path": found["section_path"], "status": "ok", "failure": None,
                "skip": skip, "rules": found, "llm": None}

    def needs_llm(self, rec: dict) -> bool:
        return self.cfg.extractor != "rules" and rec["skip"] is None

    def __call__(self, chunk: dict, request_key: str) -> ExtractionRecord:
        self._local.route = {"complexity": chunk.get("complexity"), "chunk_id": chunk["id"]}
        rec = self.base(chunk, request_key)
        if self.needs_llm(rec):
            try:
                rec["llm"] = self._ask(chunk, rec)
            except Cancelled:
                raise
            except ServiceFailure as exc:
                if getattr(exc, "stop_run", False):  # an alert in alerts.fail_on
                    raise
                # The service's own word: a 400 or a missing model stays failed (final); a
                # timeout, 5xx or open breaker is retried by the next run (transient).
                rec.update(status="error", failure=exc.failure,
                           error=f"{type(exc).__name__}: {exc}"[:500])
            else:
                if rec["llm"].get("error"):
                    rec.update(status="invalid", failure="final", error=rec["llm"]["error"])
        rec["result"] = merge(rec, self.cfg.extractor)
        return rec

    # ------------------------------------------------------------ the model

    def _chat(self, messages: list[dict], schema: dict, max_tokens: int, usage: Counter):
        if self.cancel.is_set():
            raise Cancelled()
        # The chain routes by the chunk's complexity and audits by its id.
        route = getattr(self._local, "route", {})
        reply = self.service.chat_json(messages, schema, max_tokens, self.cfg.temperature, **route)
        usage["requests"] += 1
        for k in ("model", "service"):  # what actually answered, after routing and fallback
            if getattr(reply, k, None):
                # MLflow metric names allow no ':' (ollama tags have one)
                usage[f"by_{k}/" + re.sub(r"[^\w.\-/ ]", "_", str(getattr(reply, k)))] += 1
        usage["prompt_tokens"] += reply.prompt_tokens
        usage["completion_tokens"] += reply.completion_tokens
        usage["seconds"] += reply.seconds
        return reply

    def _ask(self, chunk: dict, rec: dict) -> dict:
        g = self.glossaries.get(chunk["doc_id"], self._empty)
        # hybrid tells the model what the glossary knows; llm measures the model alone.
        known = rec["rules"]["acronyms"] if self.cfg.extractor == "hybrid" else []
        messages = X.messages_for(chunk, rec["spec"], rec["rules"]["release"], known, self.cfg.fields)
        usage: Counter = Counter()
        out: dict[str, Any] = {"service": getattr(self.service, "name", None),
                               "model": self.model_name(), "attempts": 0}
        parsed = None
        for attempt in range(1 + self.cfg.repair_retries):
            reply = self._chat(messages, self.schema, self.cfg.max_tokens, usage)
            out["attempts"] = attempt + 1
            out["finish_reason"] = reply.finish_reason
            # Who answered, after routing and any fallback (the chain's Reply says).
            out["service"] = getattr(reply, "service", None) or out["service"]
            out["model"] = getattr(reply, "model", None) or out["model"]
            parsed = X.parse(reply.content)
            if attempt == 0:
                out["first_json_valid"], out["first_schema_valid"] = parsed.json_valid, parsed.data is not None
            if parsed.data is not None:
                break
            out["raw"] = reply.content[:2000]
            messages = X.repair_messages(messages, reply.content, parsed.error or "")
        assert parsed is not None
        out.update(json_valid=parsed.json_valid, schema_valid=parsed.data is not None,
                   repaired=parsed.repaired)
        if parsed.data is None:
            out["error"] = parsed.error
            out["usage"] = dict(usage)
            return out
        out.pop("raw", None)
        # What was asked for (a field the schema left out is not the model's empty answer).
        out["proposed"] = {f: parsed.data[f] for f in self.cfg.fields}
        out.update(self._judge({**_NOTHING, **out["proposed"]}, chunk["text"], g, usage))
        out["usage"] = dict(usage)
        return out

    def model_name(self) -> str | None:
        used = getattr(self.service, "used", self.service)
        return getattr(used, "model", None) or getattr(self.service, "name", None)

    def _judge(self, data: dict, text: str, g: rules.Glossary, usage: Counter) -> dict:
        dropped: Counter = Counter()
        # A small model repeats itself ("UE", "UE", "UE"): each item is kept once.
        entities, seen_entities = [], set()
        for e in data["entities"]:
            key = (" ".join(G.tokens(e["name"])), e["type"])
            if not G.entity_in_chunk(e["name"], text):
                dropped["entity_not_in_chunk"] += 1
            elif key in seen_entities:
                dropped["duplicate_entity"] += 1
            else:
                seen_entities.add(key)
                entities.append(e)
        acronyms, seen_acronyms = [], set()
        for a in data["acronyms"]:
            key = (a["acronym"], " ".join(G.tokens(a["expansion"])))
            if not G.acronym_supported(a["acronym"], a["expansion"], text, g):
                dropped["acronym_unsupported"] += 1
            elif key in seen_acronyms:
                dropped["duplicate_acronym"] += 1
            else:
                seen_acronyms.add(key)
                acronyms.append(a)
        in_chunk = set(rules.spec_refs(rules.body_text(text)))
        refs = []
        for r in data["spec_refs"]:
            norm = rules.normalise_ref(r)
            if norm is None:
                dropped["spec_ref_not_a_reference"] += 1
            elif norm not in in_chunk:
                dropped["spec_ref_not_in_chunk"] += 1
            elif norm not in refs:
                refs.append(norm)
        said = data["summary"].strip()
        summary = G.whole_sentences(said)
        if said and (G.repetition_loop(summary) or G.copies_example(summary, _EXAMPLE_SUMMARY, text)
                        or not G.summary_supported(summary, text)):
            dropped["summary_unsupported"] += 1
            summary = ""
        grounded, seen = [], set()
        for qa in data["qa"]:
            why = G.qa_drop_reason(qa, text, X.EXAMPLE_QA, g)
            key = " ".join(G.tokens(qa["question"]))
            if why is None and key in seen:
                why = "duplicate_question"
            if why:
                dropped[why] += 1
            else:
                seen.add(key)
                grounded.append(qa)
        kept = []
        for qa in grounded:
            why, checks = self._verify(qa, text, usage)
            qa = {**qa, **checks}
            if why:
                dropped[why] += 1
            else:
                kept.append(qa)
        return {"entities": entities, "acronyms": acronyms, "spec_refs": refs, "summary": summary,
                "qa": kept, "qa_proposed": len(data["qa"]), "qa_grounded": len(grounded),
                "dropped": dict(dropped)}

    def _verify(self, qa: dict, text: str, usage: Counter) -> tuple[str | None, dict]:
        """A second request answers the question from the chunk alone; the pair stays when the
        two answers agree. A question the model answers the same without the chunk is not
        teaching anything the chunk says."""
        if not self.cfg.verify:
            return None, {}
        checks: dict[str, Any] = {}
        reply = self._chat(X.verify_messages(text, qa["question"]), self.answer_schema,
                           self.cfg.verify_max_tokens, usage)
        got = X.parse(reply.content, X.Answer).data
        checks["verify_answer"] = got["answer"] if got else None
        checks["verify_f1"] = round(token_f1(got["answer"], qa["answer"]), 3) if got else 0.0
        if checks["verify_f1"] < self.cfg.verify_threshold:
            return "verify_disagrees", checks
        if self.cfg.closed_book_check:
            reply = self._chat(X.closed_book_messages(qa["question"]), self.answer_schema,
                               self.cfg.verify_max_tokens, usage)
            got = X.parse(reply.content, X.Answer).data
            f1 = round(token_f1(got["answer"], qa["answer"]), 3) if got else 0.0
            checks["closed_book_f1"] = f1
            if f1 >= self.cfg.verify_threshold:
                return "answerable_without_chunk", checks
        return None, checks


_EXAMPLE_SUMMARY = "The clause specifies when the UE reports channel state information."


def merge(rec: ExtractionRecord, extractor: str) -> Result:
    """What the record contributes downstream, each item with its origin."""
    r, llm = rec["rules"], rec.get("llm") or {}
    use_rules, use_llm = extractor in ("rules", "hybrid"), extractor in ("llm", "hybrid") and "qa" in llm
    model = llm.get("model") or "llm"
    acronyms, refs = [], []
    if use_rules:
        acronyms += [{"acronym": a["acronym"], "expansion": a["expansion"], "origin": RULE} for a in r["acronyms"]]
        refs += [{"ref": x, "origin": RULE} for x in r["spec_refs"]]
    if use_llm:
        have = {a["acronym"] for a in acronyms}
        acronyms += [{**a, "origin": model} for a in llm["acronyms"] if a["acronym"] not in have]
        have_refs = {x["ref"] for x in refs}
        refs += [{"ref": x, "origin": model} for x in llm["spec_refs"] if x not in have_refs]
    return {
        "acronyms": acronyms, "spec_refs": refs,
        "definitions": [{**d, "origin": RULE} for d in r["definitions"]] if use_rules else [],
        "clause_refs": r["clause_refs"] if use_rules else [],
        "releases": r["releases"] if use_rules else [],
        "entities": [{**e, "origin": model} for e in llm.get("entities", [])] if use_llm else [],
        "summary": ({"text": llm["summary"], "origin": model} if use_llm and llm.get("summary") else None),
        "qa": [{**q, "origin": model} for q in llm.get("qa", [])] if use_llm else [],
    }


# ---------------------------------------------------------------- quality, measured per run


def _pairs(items: list[dict]) -> set[tuple[str, str]]:
    return {(a["acronym"], " ".join(G.tokens(a["expansion"]))) for a in items}


def quality(records: list[ExtractionRecord], glossaries: dict[str, rules.Glossary], texts: dict[str, str]) -> dict[str, float]:
    """``extract/*`` metrics over a run's records (see the extraction issue's list)."""
    m: Counter = Counter()
    for rec in records:
        m["chunks"] += 1
        m[f"status_{rec['status']}"] += 1
        if rec.get("failure"):
            m[f"{rec['failure']}_failures"] += 1
        if rec.get("skip"):
            m["skipped"] += 1
            m[f"skipped_{rec['skip']}"] += 1
        res = rec.get("result") or {}
        for a in res.get("acronyms", []):
            m["acronyms_rule" if a["origin"] == RULE else "acronyms_llm"] += 1
        for x in res.get("spec_refs", []):
            m["spec_refs_rule" if x["origin"] == RULE else "spec_refs_llm"] += 1
        m["definitions_rule"] += len(res.get("definitions", []))
        m["qa_kept"] += len(res.get("qa", []))
        m["summaries"] += bool(res.get("summary"))
        for e in res.get("entities", []):
            m["entities_" + e["type"].replace(" ", "_")] += 1
        llm = rec.get("llm")
        if not llm:
            continue
        m["sent"] += 1
        m["json_valid"] += bool(llm.get("json_valid"))
        m["schema_valid"] += bool(llm.get("schema_valid"))
        m["repaired"] += bool(llm.get("repaired"))
        m["repair_retries"] += max(0, llm.get("attempts", 1) - 1)
        m["truncated"] += llm.get("finish_reason") == "length"
        for k, v in (llm.get("usage") or {}).items():
            m[f"usage_{k}"] += v
        if "proposed" not in llm:
            continue
        p = llm["proposed"]
        for reason, n in (llm.get("dropped") or {}).items():
            m[f"dropped_{reason}"] += n
        m["items_proposed"] += sum(len(p.get(k, [])) for k in ("entities", "acronyms", "spec_refs", "qa"))
        m["items_grounded"] += (len(llm["entities"]) + len(llm["acronyms"]) + len(llm["spec_refs"])
                                + llm["qa_grounded"])
        m["qa_proposed"] += llm["qa_proposed"]
        m["qa_grounded"] += llm["qa_grounded"]
        m["qa_verified"] += len(llm["qa"])
        g = glossaries.get(rec["doc_id"])
        text = texts.get(rec["chunk_id"], "")
        if "acronyms" in p:  # the model's own, against the glossary
            truth = _pairs(g.acronyms_in(text)) if g else set()
            said = _pairs(p["acronyms"])
            m["acr_asked"] += 1
            m["acr_said"] += len(said)
            m["acr_truth"] += len(truth)
            m["acr_hit"] += len(said & truth)
        if "spec_refs" in p:
            truth_refs = set(rules.spec_refs(rules.body_text(text)))
            said_refs = {rules.normalise_ref(x) or f"?{x}" for x in p["spec_refs"]}
            m["ref_asked"] += 1
            m["ref_said"] += len(said_refs)
            m["ref_truth"] += len(truth_refs)
            m["ref_hit"] += len(said_refs & truth_refs)

    def rate(a: str, b: str) -> float:
        return round(m[a] / m[b], 4) if m[b] else 0.0

    out = {f"extract/{k}": float(v) for k, v in m.items()
           if not k.startswith(("acr_", "ref_"))}
    if m["acr_asked"]:  # measured only where the model was asked for them
        out.update({"extract/acronym_precision": rate("acr_hit", "acr_said"),
                    "extract/acronym_recall": rate("acr_hit", "acr_truth")})
    if m["ref_asked"]:
        out.update({"extract/spec_ref_precision": rate("ref_hit", "ref_said"),
                    "extract/spec_ref_recall": rate("ref_hit", "ref_truth")})
    out.update({
        "extract/json_valid_rate": rate("json_valid", "sent"),
        "extract/schema_valid_rate": rate("schema_valid", "sent"),
        "extract/grounded_rate": rate("items_grounded", "items_proposed"),
        "extract/qa_grounded_rate": rate("qa_grounded", "qa_proposed"),
        "extract/qa_keep_rate": rate("qa_verified", "qa_proposed"),
        "extract/transient_failures": float(m["transient_failures"]),
        "extract/final_failures": float(m["final_failures"]),
    })
    return out
