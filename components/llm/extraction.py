"""What the extraction asks a model for, and how its answer is read.

The schema is the contract with the model (sent as ``response_format``/``format``): pydantic
models, turned into a JSON schema without ``$ref`` that llama.cpp, Ollama and OpenAI-compatible
servers all accept, with tighter limits than validation so a constrained server cannot ramble.
json-repair rescues near-JSON from servers that do not constrain output. What the chunk supports
is judged in ``grounding``; what rules find without a model is in ``rules``.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any, Literal

import json_repair
from pydantic import BaseModel, Field, ValidationError

from components.settings import Settings

ENTITY_TYPES = ["network function", "protocol", "procedure", "message",
                "information element", "interface", "channel", "timer"]


class Entity(BaseModel):
    name: str = Field(min_length=1, max_length=80)
    type: Literal["network function", "protocol", "procedure", "message",
                  "information element", "interface", "channel", "timer"]


class Acronym(BaseModel):
    acronym: str = Field(min_length=1, max_length=24)
    expansion: str = Field(min_length=2, max_length=120)


class QA(BaseModel):
    question: str = Field(min_length=5, max_length=300)
    answer: str = Field(min_length=1, max_length=400)
    evidence: str = Field(min_length=1, max_length=600)


class Extraction(BaseModel):
    entities: list[Entity] = Field(default_factory=list, max_length=16)
    acronyms: list[Acronym] = Field(default_factory=list, max_length=16)
    spec_refs: list[str] = Field(default_factory=list, max_length=16)
    summary: str = Field("", max_length=600)
    qa: list[QA] = Field(default_factory=list, max_length=8)


class Answer(BaseModel):
    answer: str = Field(max_length=400)


# Limits sent to the server: tighter than validation, so output stays short and loops end.
_LIMITS = {"entities": {"maxItems": 6}, "entities.name": {"maxLength": 40},
           "acronyms": {"maxItems": 6}, "acronyms.acronym": {"maxLength": 16},
           "acronyms.expansion": {"maxLength": 80}, "spec_refs": {"maxItems": 6},
           "spec_refs.*": {"maxLength": 24}, "summary": {"maxLength": 200},
           "qa.question": {"maxLength": 140}, "qa.answer": {"maxLength": 120},
           "qa.evidence": {"maxLength": 240}, "answer": {"maxLength": 120}}


def schema_of(model: type[BaseModel], limits: dict[str, dict] | None = None) -> dict:
    """The model's JSON schema with ``$ref``s inlined, titles and defaults dropped, every
    property required and no extra properties (what strict OpenAI mode asks for)."""
    raw = model.model_json_schema()
    defs = raw.pop("$defs", {})
    limits = {**_LIMITS, **(limits or {})}

    def walk(node: Any, path: str, own: bool = True) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(copy.deepcopy(defs[node["$ref"].split("/")[-1]]), path, own)
            node = {k: v for k, v in node.items() if k not in ("title", "default", "description")}
            if node.get("type") == "object" and "properties" in node:
                node["properties"] = {k: walk(v, f"{path}.{k}".lstrip("."))
                                      for k, v in node["properties"].items()}
                node["required"] = list(node["properties"])
                node["additionalProperties"] = False
            elif node.get("type") == "array" and "items" in node:
                items = walk(node["items"], path, own=False)
                node["items"] = {**items, **limits.get(f"{path}.*", {})}
            return {**node, **limits.get(path, {})} if own else node
        return node

    return walk(raw, "")


FIELDS = ("entities", "acronyms", "spec_refs", "summary", "qa")


def json_schema(max_acronyms: int = 6, max_spec_refs: int = 6, qa_per_chunk: int = 2,
                max_entities: int = 6, fields: tuple[str, ...] = FIELDS) -> dict:
    """The schema of a reply with ``fields`` (what the model is asked for), in that order."""
    schema = schema_of(Extraction, {"acronyms": {"maxItems": max_acronyms},
                                    "spec_refs": {"maxItems": max_spec_refs},
                                    "entities": {"maxItems": max_entities},
                                    "qa": {"maxItems": qa_per_chunk}})
    schema["properties"] = {f: schema["properties"][f] for f in fields}
    schema["required"] = list(fields)
    return schema


def answer_schema() -> dict:
    return schema_of(Answer)


# ---------------------------------------------------------------- prompts

SYSTEM_PROMPT = "You extract training data from telecom specifications. Reply with one JSON object only."
_ASKS = {
    "entities": "entities: telecom terms named in the text, each with a type: " + ", ".join(ENTITY_TYPES) + ".",
    "acronyms": "acronyms: abbreviations that appear in the text, with their expansions.",
    "spec_refs": "spec_refs: specification references in the text, like \"TS 38.331\".",
    "summary": "summary: one sentence saying what the text specifies.",
    "qa": "qa: questions an engineer could ask that the text answers, each with a short answer and "
          "evidence: a sentence copied word for word from the text that contains the answer."}

# One worked example: small models follow a demonstration far better than an instruction. It is
# a fixed prefix, so llama.cpp's prompt cache makes it nearly free after the first chunk. Its
# question and answer are checked for on every reply (a copy onto a chunk that does not say it
# is dropped).
_EXAMPLE_IN = ("Specification: TS 99.901 (Release 18)\nClause: 7.4 Beam reporting\n"
               "Abbreviations: CSI = Channel State Information\n\nText:\n"
               "The UE reports CSI to the serving cell on the PUCCH every 20 slots, as configured "
               "in TS 99.911. Reporting stops when timer T999 expires.")
EXAMPLE_QA = {"question": "How often does the UE report CSI on the PUCCH?",
              "answer": "Every 20 slots.",
              "evidence": "The UE reports CSI to the serving cell on the PUCCH every 20 slots"}
EXAMPLE_OUT = {
    "entities": [{"name": "PUCCH", "type": "channel"}, {"name": "T999", "type": "timer"}],
    "acronyms": [{"acronym": "CSI", "expansion": "Channel State Information"}],
    "spec_refs": ["TS 99.911"],
    "summary": "The clause specifies when the UE reports channel state information.",
    "qa": [EXAMPLE_QA]}


def messages_for(chunk: dict, spec: str | None, release: int | None, glossary: list[dict],
                 fields: tuple[str, ...] = FIELDS) -> list[dict]:
    """The request for one chunk: its spec, clause path and the glossary entries it uses; the
    instructions and the worked example name only ``fields``."""
    head = []
    if spec:
        head.append(f"Specification: {spec}" + (f" (Release {release})" if release else ""))
    path = " > ".join(chunk.get("section_path") or []) or chunk.get("heading") or ""
    if path:
        head.append(f"Clause: {path}")
    if glossary:
        head.append("Abbreviations: " + "; ".join(f"{g['acronym']} = {g['expansion']}" for g in glossary[:12]))
    user = "\n".join(head) + ("\n\n" if head else "") + f"Text:\n{chunk['text']}"
    return [{"role": "system", "content": " ".join([SYSTEM_PROMPT, *(_ASKS[f] for f in fields)])},
            {"role": "user", "content": _EXAMPLE_IN},
            {"role": "assistant", "content": json.dumps({f: EXAMPLE_OUT[f] for f in fields})},
            {"role": "user", "content": user}]


def request_template(fields: tuple[str, ...] = FIELDS) -> list[list[dict]]:
    """Every request a chunk can send, with placeholders for what varies: any edit of a prompt,
    the worked example or a message's wording changes it (the extraction request key)."""
    chunk = {"text": "{text}", "section_path": ["{clause}"]}
    asked = messages_for(chunk, "{spec}", 0, [{"acronym": "{acronym}", "expansion": "{expansion}"}], fields)
    return [asked, repair_messages(asked, "{reply}", "{error}"), verify_messages("{text}", "{question}"),
            closed_book_messages("{question}")]


def repair_messages(messages: list[dict], reply: str, error: str) -> list[dict]:
    """One more try, telling the model what was wrong with its reply."""
    return messages + [{"role": "assistant", "content": reply[:2000]},
                       {"role": "user", "content": f"That reply was not valid ({error[:200]}). "
                                                   "Reply again with one JSON object that follows the schema."}]


def verify_messages(text: str, question: str) -> list[dict]:
    return [{"role": "system", "content": "Answer the question from the text alone, in a few words. "
                                          "Reply with JSON: {\"answer\": \"...\"}. If the text does "
                                          "not answer it, answer \"unknown\"."},
            {"role": "user", "content": f"Text:\n{text}\n\nQuestion: {question}"}]


def closed_book_messages(question: str) -> list[dict]:
    return [{"role": "system", "content": "Answer the telecom question in a few words. Reply with "
                                          "JSON: {\"answer\": \"...\"}."},
            {"role": "user", "content": question}]


# ---------------------------------------------------------------- reading replies


@dataclass
class Parsed:
    data: dict | None
    error: str | None
    repaired: bool
    json_valid: bool


def parse(content: str, model: type[BaseModel] = Extraction) -> Parsed:
    """The validated reply, or why it is not one. Never raises."""
    repaired = False
    try:
        raw = json.loads(content)
    except (json.JSONDecodeError, TypeError):
        try:
            raw = json_repair.loads(content or "")
            repaired = True
        except Exception as exc:  # json-repair gives up on some inputs
            return Parsed(None, f"not JSON: {exc}", False, False)
        if not isinstance(raw, dict) or not raw:
            return Parsed(None, "not JSON: no object could be recovered", repaired, False)
    if not isinstance(raw, dict):
        return Parsed(None, "schema: the reply is not a JSON object", repaired, True)
    try:
        return Parsed(model.model_validate(raw).model_dump(), None, repaired, True)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ()))
        return Parsed(None, f"schema: {loc}: {first.get('msg')}", repaired, True)


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


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


class ExtractionConfig(Settings):
    """``extraction`` group: what rules and the model extract per chunk, and how hard to push."""

    extractor: Literal["rules", "llm", "hybrid"] = "hybrid"
    # What the model is asked for; null: what the extractor needs of it (hybrid: what rules
    # cannot find; llm: everything).
    ask: list[Literal["entities", "acronyms", "spec_refs", "summary", "qa"]] | None = None
    concurrency: int = Field(2, ge=1)
    max_tokens: int = Field(512, ge=16)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_chunks: int | None = Field(None, ge=1)
    max_acronyms: int = Field(6, ge=0)
    max_spec_refs: int = Field(6, ge=0)
    max_entities: int = Field(6, ge=0)
    qa_per_chunk: int = Field(2, ge=0, le=8)
    repair_retries: int = Field(1, ge=0, le=3)
    verify: bool = True
    verify_threshold: float = Field(0.5, ge=0.0, le=1.0)
    verify_max_tokens: int = Field(64, ge=8)
    closed_book_check: bool = True
    min_words: int = Field(12, ge=0)
    min_alpha_ratio: float = Field(0.45, ge=0.0, le=1.0)
    progress_every_s: float = Field(10.0, gt=0)

    @property
    def fields(self) -> tuple[str, ...]:
        """The reply's fields, in the schema's order. Hybrid leaves acronyms and specification
        references to the rules: they read the glossary and the references exactly, where
        SmolLM2-135M's own were 9 % right, and generating them took a fifth of its tokens."""
        if self.ask is not None:
            return tuple(f for f in FIELDS if f in self.ask)
        if self.extractor == "hybrid":
            return ("entities", "summary", "qa")
        return FIELDS
