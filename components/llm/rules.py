"""What rules extract from a chunk, with no LLM: exact where a small model is not.

- Specification references, normalised: ``3GPP TS 38.331``, ``TS38.331 [2]``, ``ETSI TS 138 331``
  all become ``TS 38.331`` (an ETSI deliverable numbered 1SS NNN republishes 3GPP SS.NNN).
- Clause references: ``clause 5.3.3``, ``subclause 5.3``, ``clauses 5.1 and 5.2``, ``Annex A``.
- Releases: ``Release 17``, ``Rel-17``, ``Rel. 18``.
- The document glossary (``components.documents.glossary``) resolves every acronym and defined
  term that occurs in any chunk of its document, wherever the glossary clause was.
- The chunk's own place: its specification (from the document metadata) and clause path.

Chunks not worth an LLM request (front matter, boilerplate, table-of-contents remnants, low
quality signals) are recognised here too; they get rules only.
"""
from __future__ import annotations

import re
from typing import Iterable

from components.documents import glossary
from components.documents.glossary import is_page_furniture

_SPEC = re.compile(
    r"(?<![\w.])(?:3GPP\s+)?(?P<kind>TS|TR)\s?(?P<num>\d{2}\.\d{3})(?:-(?P<part>\d{1,2}))?(?![\d.]\d)")
_ETSI = re.compile(r"(?<!\w)ETSI\s+(?P<kind>TS|TR)\s+1(?P<series>\d{2})\s?(?P<num>\d{3})(?:-(?P<part>\d{1,2}))?(?!\d)")
_RFC = re.compile(r"(?<!\w)(?:IETF\s+)?RFC\s?(?P<num>\d{3,5})(?!\d)")
_CLAUSE_NUM = r"(?:\d{1,2}(?:\.\d{1,3}){0,6}|[A-Z](?:\.\d{1,3}){1,6})(?![\w-])(?!\.\d)"
_CLAUSE = re.compile(
    rf"\b(?:sub)?(?:clause|section)s?\s+(?P<first>{_CLAUSE_NUM})"
    rf"(?P<more>(?:\s*(?:,|and|or|to)\s*{_CLAUSE_NUM})*)", re.I)
_ANNEX = re.compile(r"\bAnnex\s+(?P<num>[A-Z])(?:\.(?P<sub>\d{1,3}(?:\.\d{1,3})*))?\b")
_RELEASE = re.compile(r"\b(?:Release|Rel)(?:\s*[-.]\s*|\s+)(?P<num>\d{1,2})\b", re.I)
# What a reference an LLM returns must look like, once normalised.
_REF_SHAPE = re.compile(r"^(?:TS|TR) \d{2}\.\d{3}(?:-\d{1,2})?$|^RFC \d{3,5}$")


def spec_refs(text: str) -> list[str]:
    """Normalised specification references, in order of first appearance."""
    found: list[tuple[int, str]] = []
    for m in _SPEC.finditer(text):
        found.append((m.start(), f"{m['kind']} {m['num']}" + (f"-{m['part']}" if m["part"] else "")))
    for m in _ETSI.finditer(text):
        found.append((m.start(), f"{m['kind']} {m['series']}.{m['num']}" + (f"-{m['part']}" if m["part"] else "")))
    for m in _RFC.finditer(text):
        found.append((m.start(), f"RFC {m['num']}"))
    return _unique(r for _, r in sorted(found))


def normalise_ref(ref: str) -> str | None:
    """A model's reference in the canonical form, or None when it is not a reference at all
    ("DNN", "S-NSSAI", a timestamp)."""
    got = spec_refs(ref.strip())
    if len(got) == 1 and _REF_SHAPE.match(got[0]):
        # The whole string must be the reference (give or take "3GPP"/"ETSI" and brackets).
        rest = _SPEC.sub("", _ETSI.sub("", _RFC.sub("", ref)))
        if not re.sub(r"[\s\[\]()\d,;.:]|3GPP|ETSI|IETF|version|v", "", rest, flags=re.I):
            return got[0]
    return None


def clause_refs(text: str) -> list[str]:
    """``clause 5.3.3`` style references (annexes as ``Annex A`` / ``clause A.2``)."""
    out: list[str] = []
    for m in _CLAUSE.finditer(text):
        out.append(f"clause {m['first']}")
        out += [f"clause {n}" for n in re.findall(_CLAUSE_NUM, m["more"] or "") if n]
    for m in _ANNEX.finditer(text):
        out.append(f"clause {m['num']}.{m['sub']}" if m["sub"] else f"Annex {m['num']}")
    return _unique(out)


def releases(text: str) -> list[int]:
    return _unique(int(m["num"]) for m in _RELEASE.finditer(text))


def _unique(items: Iterable) -> list:
    seen, out = set(), []
    for x in items:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


# ---------------------------------------------------------------- where a chunk sits

_NUMBER = re.compile(r"^(?:Annex\s+)?((?:\d{1,2}|[A-Z])(?:\.\d{1,3})*)\b")


def clause_of(chunk: dict) -> str:
    """The chunk's clause number ("5.2"), or its heading's title where it has none, or ""."""
    path = chunk.get("section_path") or []
    for title in reversed(path):
        m = _NUMBER.match(title.lstrip("# ").strip())
        if m:
            return m.group(1)
    return (path[-1] if path else chunk.get("heading") or "").strip()


def clause_title(chunk: dict) -> str:
    path = chunk.get("section_path") or []
    last = (path[-1] if path else chunk.get("heading") or "").lstrip("# ").strip()
    m = re.match(r"^(?:Annex\s+[A-Z]\b[^:]*:\s*|(?:\d{1,2}|[A-Z])(?:\.\d{1,3})*\s+)(.+)$", last)
    return (m.group(1) if m else last).strip()


# ---------------------------------------------------------------- the document glossary


class Glossary:
    """A document's glossary rows, looked up per chunk."""

    def __init__(self, rows: list[dict]) -> None:
        self.acronyms = [r for r in rows if "acronym" in r]
        self.definitions = [r for r in rows if "term" in r]
        self._acr = [(re.compile(rf"(?<![\w-]){re.escape(r['acronym'])}(?![\w-])"), r) for r in self.acronyms]
        self._terms = [(re.compile(rf"(?<!\w){re.escape(r['term'])}(?!\w)", re.I), r) for r in self.definitions]

    def acronyms_in(self, text: str) -> list[dict]:
        """Glossary acronyms that occur in ``text`` (one expansion per acronym: the
        Abbreviations clause's wins over an inline first use)."""
        out: dict[str, dict] = {}
        for pat, r in self._acr:
            if pat.search(text) and (r["acronym"] not in out or r["source"] == "abbreviations"
                                     and out[r["acronym"]]["source"] != "abbreviations"):
                out[r["acronym"]] = r
        return list(out.values())

    def definitions_in(self, text: str) -> list[dict]:
        return [r for pat, r in self._terms if pat.search(text)]

    def expansion(self, acronym: str) -> str | None:
        for r in self.acronyms:
            if r["acronym"] == acronym and r["source"] == "abbreviations":
                return r["expansion"]
        return next((r["expansion"] for r in self.acronyms if r["acronym"] == acronym), None)


def body_text(text: str) -> str:
    """The text without page headers and footers, which name the document itself, not a
    reference ("ETSI TS 138 322 V19.2.0", "3GPP TS 38.322 version 19.2.0 Release 19")."""
    return "\n".join(l for l in text.splitlines() if not is_page_furniture(l))


def extract(chunk: dict, glossary: Glossary, meta: dict | None) -> dict:
    """Everything rules find in one chunk."""
    text = body_text(chunk["text"])
    meta = meta or {}
    return {
        "spec": _spec_name(meta),
        "release": meta.get("release"),
        "doc_title": meta.get("title"),
        "clause": clause_of(chunk),
        "section_path": list(chunk.get("section_path") or []),
        "acronyms": [{"acronym": r["acronym"], "expansion": r["expansion"], "source": r["source"],
                      "clause": r.get("clause", "")} for r in glossary.acronyms_in(text)],
        "definitions": [{"term": r["term"], "definition": r["definition"], "clause": r.get("clause", "")}
                        for r in glossary.definitions_in(text)],
        "spec_refs": spec_refs(text),
        "clause_refs": clause_refs(text),
        "releases": releases(text),
    }


def _spec_name(meta: dict) -> str | None:
    if meta.get("spec"):
        return f"{meta.get('spec_type') or 'TS'} {meta['spec']}"
    return None


# ---------------------------------------------------------------- not worth a request

_TOC_LINE = re.compile(r"^\s*(?:#+\s*)?(?:(?:\d{1,2}|[A-Z])(?:\.\d{1,3})*\.?|Annex\s+[A-Z])(?:\s+\S.{0,80}?)?"
                       r"(?:\s*(?:\.\s?){3,}\s*\d{1,4}|\s+\d{1,4})?\s*$")
_BOILERPLATE = re.compile(r"\b(?:Important notice|Intellectual Property Rights|Copyright Notification|"
                          r"Modal verbs terminology|650 Route des Lucioles|Sophia Antipolis|"
                          r"All rights reserved|Essential patents|Trademarks)\b", re.I)


def skip_reason(chunk: dict, min_words: int, min_alpha_ratio: float) -> str | None:
    """Why a chunk gets rules only (None: worth an LLM request)."""
    kind = chunk.get("kind")
    if kind in ("front_matter", "boilerplate", "toc"):
        return kind
    if glossary.is_glossary_title(clause_title(chunk)):
        return "glossary"  # the document glossary reads it whole, by rule
    text = chunk["text"]
    lines = [l for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    if lines and sum(bool(_TOC_LINE.match(l)) for l in lines) / len(lines) >= 0.6:
        return "toc"
    if len(_BOILERPLATE.findall(text)) >= 2:
        return "boilerplate"
    n_words = chunk.get("n_words", len(text.split()))
    if n_words < min_words:
        return "too_short"
    alpha = chunk.get("alpha_ratio")
    if alpha is None:
        alpha = sum(c.isalpha() for c in text) / max(1, len(text))
    if alpha < min_alpha_ratio:
        return "low_quality"
    return None
