"""What the extraction asks a model for, and how its answer is judged.

The schema is the contract with the model (sent as ``response_format``/``format``); pydantic
validates what comes back; json-repair rescues near-JSON from servers that do not constrain
output. Grounding checks (is the acronym, the reference, the answer in the chunk?) measure
extraction quality, since a valid JSON object can still be made up.
"""
from __future__ import annotations

import json
import re
from typing import Any

import json_repair
from pydantic import BaseModel, Field, ValidationError
from components.settings import Settings

SPEC_REF = re.compile(r"\b(?:3GPP\s+)?(TS|TR)\s+(\d{2}\.\d{3})(?:-\d+)?\b")
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")


class Acronym(BaseModel):
    acronym: str = Field(min_length=1, max_length=24)
    expansion: str = Field(min_length=2, max_length=120)


class QA(BaseModel):
    question: str = Field(min_length=5, max_length=300)
    answer: str = Field(min_length=1, max_length=400)


class Extraction(BaseModel):
    acronyms: list[Acronym] = Field(default_factory=list, max_length=12)
    spec_refs: list[str] = Field(default_factory=list, max_length=12)
    qa: QA


def json_schema(max_acronyms: int = 8, max_spec_refs: int = 8) -> dict:
    """A schema llama.cpp, Ollama and OpenAI-compatible servers all accept (no $ref)."""
    return {
        "type": "object",
        "properties": {
            "acronyms": {"type": "array", "maxItems": max_acronyms, "items": {
                "type": "object",
                "properties": {"acronym": {"type": "string", "maxLength": 16},
                               "expansion": {"type": "string", "maxLength": 80}},
                "required": ["acronym", "expansion"], "additionalProperties": False}},
            "spec_refs": {"type": "array", "maxItems": max_spec_refs,
                          "items": {"type": "string", "maxLength": 24}},
            "qa": {"type": "object",
                   "properties": {"question": {"type": "string", "maxLength": 160},
                                  "answer": {"type": "string", "maxLength": 200}},
                   "required": ["question", "answer"], "additionalProperties": False},
        },
        "required": ["acronyms", "spec_refs", "qa"],
        "additionalProperties": False,
    }


SYSTEM_PROMPT = (
    "You extract training data from telecom specifications. Reply with one JSON object only. "
    "acronyms: abbreviations that appear in the text, with their expansions. spec_refs: "
    "specification references in the text, like \"TS 38.331\". qa: one question a telecom "
    "engineer could ask about the text, and its short answer taken from the text.")


# One worked example: small models follow a demonstration far better than an instruction. It
# is a fixed prefix, so llama.cpp's prompt cache makes it nearly free after the first chunk.
_EXAMPLE_IN = ("Section: 6.2 Paging\n\nText:\nThe AMF (Access and Mobility Management Function) "
               "pages the UE when downlink data arrives, as described in TS 23.502.")
_EXAMPLE_OUT = json.dumps({
    "acronyms": [{"acronym": "AMF", "expansion": "Access and Mobility Management Function"}],
    "spec_refs": ["TS 23.502"],
    "qa": {"question": "When does the AMF page the UE?", "answer": "When downlink data arrives."}})


def messages_for(chunk: dict) -> list[dict]:
    heading = " > ".join(chunk.get("section_path") or []) or chunk.get("heading") or ""
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": _EXAMPLE_IN},
            {"role": "assistant", "content": _EXAMPLE_OUT},
            {"role": "user", "content": f"Section: {heading}\n\nText:\n{chunk['text']}"}]


def parse(content: str) -> tuple[dict | None, str | None, bool]:
    """Return (validated extraction, error, repaired). Never raises."""
    repaired = False
    try:
        raw = json.loads(content)
    except (json.JSONDecodeError, TypeError):
        try:
            raw = json_repair.loads(content or "")
            repaired = True
        except Exception as exc:  # json-repair gives up on some inputs
            return None, f"not JSON: {exc}", False
        if not isinstance(raw, dict) or not raw:
            return None, "not JSON: no object could be recovered", repaired
    try:
        return Extraction.model_validate(raw).model_dump(), None, repaired
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ()))
        return None, f"schema: {loc}: {first.get('msg')}", repaired


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


def _tokens(s: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(s) if len(w) > 2}


def expands(acronym: str, expansion: str) -> bool:
    """Whether an expansion can spell its acronym: its letters appear in order ("gNB" in "next
    generation Node B"). Small models pair acronyms with any nearby string; this catches that."""
    letters = [c for c in acronym.lower() if c.isalnum()]
    exp = expansion.lower()
    if not letters or _norm(expansion) == _norm(acronym) or len(exp.split()) < 2:
        return False
    pos = 0
    for c in letters:
        pos = exp.find(c, pos)
        if pos < 0:
            return False
        pos += 1
    return True


def grounding(extraction: dict, text: str) -> dict[str, Any]:
    """Which parts of an extraction the chunk supports."""
    low = _norm(text)
    acr_ok = [a for a in extraction.get("acronyms", [])
              if re.search(rf"(?<![A-Za-z0-9]){re.escape(a['acronym'])}(?![A-Za-z0-9])", text)
              and _norm(a["expansion"]) in low and expands(a["acronym"], a["expansion"])]
    found_refs = {m.group(2) for m in SPEC_REF.finditer(text)}
    refs_ok = [r for r in extraction.get("spec_refs", [])
               if any(num in r for num in found_refs)]
    qa = extraction.get("qa") or {}
    ans = _tokens(qa.get("answer", ""))
    overlap = len(ans & _tokens(text)) / len(ans) if ans else 0.0
    return {"acronyms": acr_ok, "spec_refs": refs_ok, "qa_support": round(overlap, 3),
            "qa_grounded": bool(ans) and overlap >= 0.6}


# "ACR<tab>Expansion" lines (whitespace may be collapsed by normalization) or "| ACR | Expansion |"
# rows under an Abbreviations heading: the 3GPP convention, parsed by rule because it is exact
# where a small model is not.
_ACRONYM = re.compile(r"^[A-Za-z0-9][\w\-/]{0,15}$")


def _looks_like_acronym(tok: str) -> bool:
    upper = sum(c.isupper() for c in tok)
    return bool(_ACRONYM.match(tok)) and (upper >= 2 or (upper == 1 and any(c.isdigit() for c in tok)))


def rule_acronyms(chunk: dict) -> list[dict]:
    path = " ".join(chunk.get("section_path") or []) + " " + (chunk.get("heading") or "")
    if "abbreviation" not in path.lower():
        return []
    out, seen = [], set()
    for line in chunk["text"].splitlines():
        line = line.strip()
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if len(cells) < 2:
                continue
            acr, exp = cells[0], cells[1]
        else:
            parts = line.split(None, 1)
            if len(parts) < 2:
                continue
            acr, exp = parts[0], parts[1].strip()
        if (acr not in seen and _looks_like_acronym(acr) and exp[:1].isalpha()
                and len(exp) <= 120 and expands(acr, exp)):
            seen.add(acr)
            out.append({"acronym": acr, "expansion": exp})
    return out


class ExtractionConfig(Settings):
    """``extraction`` group: what is asked of the model per chunk, and how hard to push."""

    concurrency: int = Field(2, ge=1)
    max_tokens: int = Field(256, ge=16)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_chunks: int | None = Field(None, ge=1)
    max_acronyms: int = Field(4, ge=0)
    max_spec_refs: int = Field(4, ge=0)
