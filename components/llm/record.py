"""The extraction record: one line of ``extractions.jsonl`` per chunk.

The extractor writes it; the extract stage's resume, the dataset stage and the run report read
it, all through these types. ``read`` checks each line against them, so a record in another
shape (an older format, a hand edit) is an error naming the file, the line and the field, never
a silent zero downstream.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import TypeAdapter, ValidationError
from typing_extensions import NotRequired, TypedDict

Status = Literal["ok", "invalid", "error"]
Failure = Optional[Literal["transient", "final"]]


class Acronym(TypedDict):
    acronym: str
    expansion: str
    origin: str  # "rule", or the model that proposed it


class Definition(TypedDict):
    term: str
    definition: str
    origin: str


class SpecRef(TypedDict):
    ref: str
    origin: str


class Entity(TypedDict):
    name: str
    type: str
    origin: str


class Summary(TypedDict):
    text: str
    origin: str


class QA(TypedDict):
    question: str
    answer: str
    origin: str


class Result(TypedDict):
    """What the record contributes downstream (``extractor.merge``), each item with its origin."""

    acronyms: list[Acronym]
    spec_refs: list[SpecRef]
    definitions: list[Definition]
    clause_refs: list[Any]
    releases: list[Any]
    entities: list[Entity]
    summary: Optional[Summary]
    qa: list[QA]


class Rules(TypedDict):
    """What the rules found in the chunk (glossary, metadata, references)."""

    spec: Optional[str]
    release: Optional[int]
    doc_title: NotRequired[Optional[str]]
    clause: Optional[str]
    section_path: list[str]
    acronyms: list[dict]
    definitions: list[dict]
    spec_refs: list[str]
    clause_refs: list[Any]
    releases: list[Any]


class ExtractionRecord(TypedDict):
    chunk_id: str
    doc_id: str
    chunk_sha: str
    request_key: str  # the hash of the exact request: a record is reused only for the same one
    extractor: Literal["rules", "llm", "hybrid"]
    spec: Optional[str]
    clause: Optional[str]
    section_path: list[str]
    status: Status
    failure: Failure  # transient: the next run asks again
    skip: Optional[str]  # why the chunk was not worth a request
    rules: Rules
    llm: Optional[dict[str, Any]]  # the model's answer, its checks and usage; None: not asked
    result: Result
    error: NotRequired[str]


_RECORD = TypeAdapter(ExtractionRecord)


class RecordError(ValueError):
    """A line of an extraction log that is not an extraction record."""


def check(row: Any, where: str = "record") -> ExtractionRecord:
    """``row`` itself when it is a record (as read: nothing coerced or dropped), else RecordError
    naming ``where`` and the first field that is wrong."""
    try:
        _RECORD.validate_python(row, strict=True)
        return row
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "record"
        raise RecordError(f"{where}: {field}: {err['msg']} (not an extraction record of this "
                          "version; run the extract stage again)") from None


def read(path: Path, *, strict: bool = True) -> list[ExtractionRecord]:
    """The records of ``path``. ``strict``: a line that is not one raises RecordError naming the
    file and line. Else it is skipped — a line a crash cut short, a record of another shape —
    and a missing file has none (a report shows what it can; a resume redoes those chunks)."""
    if not strict and not path.is_file():
        return []
    out = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append(check(json.loads(line), f"{path.name} line {n}"))
            except (RecordError, json.JSONDecodeError) as exc:
                if strict:
                    raise RecordError(str(exc) if isinstance(exc, RecordError)
                                      else f"{path.name} line {n}: not JSON ({exc})") from None
    return out
