"""Glossary rows from one converted specification, by rule (no LLM).

``glossary_rows(markdown, doc_id)`` reads three things out of a document's Markdown:

- the Abbreviations clause ("3.2 Abbreviations"), in every layout a conversion produces:
  Markdown table rows (``| ACR | Expansion |``), ``ACR<tab>Expansion`` or ``ACR  Expansion``
  lines (3GPP Word files), and the alternating lines a PDF's two columns become (an acronym
  line, then its expansion line), with page furniture (``ETSI TS 138 322 V19.2.0 (2026-04)``,
  ``3GPP TS 38.322 version 19.2.0 Release 19``, ``ETSI``, bare page numbers) and page breaks in
  between;
- the Definitions clause ("3.1 Terms", "3.1 Definitions"): ``term: definition`` paragraphs,
  hard-wrapped over several lines in PDFs;
- first uses in the body, "Radio Link Control (RLC)", kept when the acronym's letters can be
  found, in order, at word starts of the words before it (Schwartz and Hearst's algorithm).

Clauses are found from Markdown headings (Word, HTML, Markdown) and from plain numbered lines
such as ``3.2 Abbreviations`` (a PDF through Docling's text-only pipeline has no headings);
table-of-contents lines (dotted leaders, bare clause numbers, page numbers) start nothing.

Rows, one schema per kind (``source`` says which):

- ``{"doc_id", "source": "abbreviations" | "inline", "clause", "acronym", "expansion"}``
- ``{"doc_id", "source": "definitions", "clause", "term", "definition"}``

``clause`` is the clause number ("3.2"), or its title where it has none ("Foreword"), or "" for
the front matter. Each (acronym, expansion) and (term, definition) appears once; an inline first
use of an acronym the Abbreviations clause lists is not emitted (the list is authoritative,
prose may pluralise or lower-case it), and an inline expansion is made singular.
"""
from __future__ import annotations

import html
import re

# ---------------------------------------------------------------- lines that are not text

_FURNITURE = [re.compile(p, re.I) for p in (
    r"^ETSI\s+(?:TS|TR|ES|EN|EG|GS|GR|SR)\s+\d{3}\s?\d{3}(?:-\d+)?\s+V\d+\.\d+\.\d+\s*\(\d{4}-\d{2}\)(?:\s+\d{1,4})?$",
    r"^(?:\d{1,4}\s+)?3GPP\s+T[SR]\s+\d{2}\.\d{3}(?:-\d+)?\s+(?:version\s+\d+\.\d+\.\d+|V\d+\.\d+\.\d+"
    r"(?:\s*\(\d{4}-\d{2}\))?)(?:\s+\(?Release\s+\d+\)?)?(?:\s+\d{1,4})?$",
    r"^ETSI$",
    r"^\d{1,4}$",
    r"^(?:page\s+)?\d{1,4}\s+of\s+\d{1,4}$",
    r"^page\s+\d{1,4}$",
    r"^\(?release\s+\d+\)?$",
)]
_LEADERS = re.compile(r"(?:\.\s?){5,}|…{2,}|_{5,}")
_BARE_CLAUSE = re.compile(r"^(?:\d{1,2}|[A-Z])(?:\.\d{1,3})+\.?$|^\d{1,2}$")

# ---------------------------------------------------------------- clause starts

_NUMBERED = re.compile(r"^(?P<num>(?:\d{1,2}|[A-Z])(?:\.\d{1,3}){0,7})\.?\s+(?P<title>\S.*)$")
_ANNEX = re.compile(r"^Annex\s+(?P<num>[A-Z])\b[^:]*:?\s*(?P<title>.*)$", re.I)
_ABBR_TITLE = re.compile(r"^(?:abbreviations?|acronyms?|abbreviations and acronyms|symbols and abbreviations)$", re.I)
_DEFS_TITLE = re.compile(r"^(?:terms|definitions?|terms and definitions|definitions of terms"
                         r"|definition of terms)$", re.I)
_MIXED_TITLE = re.compile(r"^definitions?(?: of terms)?(?:,| and)(?: symbols)?(?: and)? abbreviations$", re.I)


def is_glossary_title(title: str) -> bool:
    """An Abbreviations or Definitions clause's title (or both in one)."""
    t = re.sub(r"\s+", " ", title).strip()
    return bool(_ABBR_TITLE.match(t) or _DEFS_TITLE.match(t) or _MIXED_TITLE.match(t))


def _clean(line: str) -> str:
    line = html.unescape(line).replace("\\_", "_").replace("\u00a0", " ")
    line = re.sub(r"(\*\*|__)(.+?)\1", r"\2", line)
    return line.strip()


def is_page_furniture(line: str) -> bool:
    """A page header or footer ("ETSI TS 138 322 V19.2.0 (2026-04)", "3GPP TS 38.322 version
    19.2.0 Release 19", "ETSI") or a bare page number."""
    text = line.strip()
    return any(p.match(text) for p in _FURNITURE)


def is_furniture(line: str) -> bool:
    """A page header or footer, a bare page number, or a table-of-contents leader line."""
    text = line.strip()
    return any(p.match(text) for p in _FURNITURE) or bool(_LEADERS.search(text))


def _clause_start(raw: str) -> tuple[str, str] | None:
    """(number, title) when the line starts a clause: a heading, or a plain numbered line."""
    stripped = raw.strip()
    heading = stripped.startswith("#")
    text = _clean(re.sub(r"^#{1,6}\s*", "", stripped)) if heading else _clean(stripped)
    if not text or _LEADERS.search(text):
        return None
    text = re.sub(r"\s+", " ", text)
    m = _ANNEX.match(text)
    if m and (heading or len(text) < 120):
        return m["num"], m["title"] or text
    m = _NUMBERED.match(text)
    if m:
        title = m["title"].strip()
        plain_ok = (title[:1].isupper() and len(title) <= 120 and len(title.split()) <= 16
                    and not re.search(r"[.,;:]$", title) and not re.search(r"\s\d{1,4}$", title))
        if heading or plain_ok:
            # A multi-level number, or a one-level one with a clause-like title.
            if heading or "." in m["num"] or m["num"].isdigit():
                return m["num"], title
    if heading:
        return "", text
    return None


# ---------------------------------------------------------------- entries

_ACRONYM = re.compile(r"^[0-9A-Za-z][0-9A-Za-z\-/+&.]{0,14}$")
_NOT_ACRONYM = {"NOTE", "EXAMPLE", "ETSI", "TABLE", "FIGURE", "ANNEX"}


def is_acronym(token: str) -> bool:
    if not _ACRONYM.match(token) or token.upper() in _NOT_ACRONYM or token.endswith("."):
        return False
    upper = sum(c.isupper() for c in token)
    lower = sum(c.islower() for c in token)
    digits = sum(c.isdigit() for c in token)
    if upper == 0 or (digits and not upper and not lower):
        return False
    return upper >= 2 or upper + digits >= lower


def _is_expansion(text: str, acronym: str) -> bool:
    if not 1 < len(text) <= 160 or not text[0].isalnum() or not re.search(r"[A-Za-z]{2}", text):
        return False
    if re.search(r"[\[\]|]|\.$|:$", text) or _LEADERS.search(text):
        return False
    return text != acronym and len(text.split()) <= 16


def _split_entry(line: str) -> tuple[str, str] | None:
    """``ACR<tab>Expansion``, ``ACR  Expansion`` or ``ACR Expansion``."""
    parts = re.split(r"\t+|\s{2,}", line, maxsplit=1)
    if len(parts) != 2:
        parts = line.split(" ", 1)
    if len(parts) != 2:
        return None
    acr, exp = parts[0].strip(), re.sub(r"\s+", " ", parts[1]).strip()
    return (acr, exp) if is_acronym(acr) and _is_expansion(exp, acr) else None


def _table_cells(line: str) -> list[str] | None:
    if not (line.startswith("|") and line.endswith("|")):
        return None
    cells = [c.strip() for c in line.strip("|").split("|")]
    if all(re.fullmatch(r":?-{2,}:?", c) or not c for c in cells):
        return []
    return cells


def _abbreviations(lines: list[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pending: str | None = None
    for line in lines:
        if not line:
            continue
        cells = _table_cells(line)
        if cells is not None:
            pending = None
            if len(cells) >= 2 and is_acronym(cells[0]) and _is_expansion(cells[1], cells[0]):
                out.append((cells[0], re.sub(r"\s+", " ", cells[1])))
            continue
        if pending is not None:
            exp = re.sub(r"\s+", " ", line)
            if " " not in line.strip() and is_acronym(line.strip()):
                pending = line.strip()  # two acronyms in a row: the first had no expansion
                continue
            if _is_expansion(exp, pending):
                out.append((pending, exp))
            pending = None
            continue
        if " " not in line and "\t" not in line and is_acronym(line):
            pending = line
            continue
        entry = _split_entry(line)
        if entry:
            out.append(entry)
    return out


_TERM = re.compile(r"^(?P<term>[^\s:][^:]{0,79}?)\s*:\s+(?P<definition>\S.*)$")


def _definitions(lines: list[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    term, parts = None, []

    def close():
        nonlocal term, parts
        if term and parts:
            out.append((term, re.sub(r"\s+", " ", " ".join(parts)).strip()))
        term, parts = None, []

    for line in lines:
        if not line:
            continue
        if term and parts and not parts[-1].rstrip().endswith("."):
            parts.append(line)  # a hard-wrapped definition goes on
            continue
        m = _TERM.match(line)
        if m and len(m["term"].split()) <= 8 and not re.match(r"^(NOTE|EXAMPLE)\b", m["term"], re.I) \
                and not re.search(r"[.;,\[\]]$", m["term"]) and not line.startswith("|"):
            close()
            term, parts = m["term"].strip(), [m["definition"]]
        else:
            close()
    close()
    return out


# ---------------------------------------------------------------- first uses in the text

_PAREN = re.compile(r"\(([^()\s]{2,15})\)")


def long_form(short: str, text: str) -> str | None:
    """Schwartz and Hearst: the shortest tail of ``text`` holding the characters of ``short``
    in order, the first at a word start; None when there is none."""
    s, i = len(short) - 1, len(text) - 1
    while s >= 0:
        c = short[s].lower()
        if not c.isalnum():
            s -= 1
            continue
        while i >= 0 and (text[i].lower() != c or (s == 0 and i > 0 and text[i - 1].isalnum())):
            i -= 1
        if i < 0:
            return None
        i -= 1
        s -= 1
    return text[i + 1:].strip()


_STOP = {"of", "and", "for", "the", "to", "in", "on", "a", "an", "with", "by", "or"}


def _key_letters(word: str) -> str:
    """What a word can give an acronym: each hyphen part's first character, then its capitals
    and digits ("Non-3GPP" -> "N3GPP", "InterWorking" -> "IW", "5G" -> "5G")."""
    out = ""
    for part in re.split(r"[-/]", word):
        part = re.sub(r"[^0-9A-Za-z]", "", part)
        if part:
            out += part[0] + "".join(c for c in part[1:] if c.isupper() or c.isdigit())
    return out.lower()


def initials_form(short: str, words: list[str]) -> str | None:
    """The fewest last ``words`` whose initials spell ``short`` ("Radio Resource Control" for
    RRC, where Schwartz and Hearst would stop at "Resource Control"); stop words may give
    their initial or nothing, other words a non-empty prefix of their key letters."""
    target = "".join(c for c in short.lower() if c.isalnum())

    def fits(ws: list[str], t: str) -> bool:
        if not ws:
            return not t
        w, keys = ws[0], _key_letters(ws[0])
        if w.lower() in _STOP and fits(ws[1:], t):
            return True
        return any(t.startswith(keys[:n]) and fits(ws[1:], t[n:]) for n in range(1, len(keys) + 1))

    for k in range(1, min(len(words), len(target) + 3) + 1):
        cand = words[-k:]
        if cand[0].lower() not in _STOP and fits(cand, target):
            return " ".join(cand)
    return None


def _singular(acr: str, expansion: str) -> str:
    """A first use in running prose is often plural ("sequence numbers (SN)"); the expansion
    is the singular unless the acronym itself ends in a plural s."""
    words = expansion.split()
    last = words[-1]
    if acr[-1:] not in "sS" and len(last) > 3 and last.endswith("s") and not last.endswith(("ss", "us", "is")):
        words[-1] = last[:-1]
    return " ".join(words)


def _inline(text: str) -> list[tuple[str, str]]:
    out = []
    for m in _PAREN.finditer(text):
        acr = m.group(1).rstrip(",;.")
        if not is_acronym(acr) or not any(c.isalpha() for c in acr) or acr.isdigit():
            continue
        n_letters = sum(c.isalnum() for c in acr)
        words = text[:m.start()].split()
        window = " ".join(words[-min(n_letters + 5, 2 * n_letters):])
        window = re.split(r"[;:\"“”()\[\]]", window)[-1]  # the phrase right before the bracket
        lf = initials_form(acr, window.split()) or long_form(acr, window)
        if not lf:
            continue
        lf_words = lf.split()
        if not lf_words or len(lf_words) > n_letters + 2 or lf_words[0][0].lower() != acr[0].lower():
            continue
        if acr in lf_words or not _is_expansion(lf, acr) or (len(lf_words) == 1 and n_letters > 2):
            continue
        out.append((acr, lf))
    return out


# ---------------------------------------------------------------- the document


def _sections(markdown: str) -> list[tuple[str, str, list[str]]]:
    """(number, title, body lines) in order; the front matter is ("", "", ...)."""
    sections: list[tuple[str, str, list[str]]] = [("", "", [])]
    for raw in markdown.splitlines():
        start = _clause_start(raw)
        if start:
            sections.append((start[0], start[1], []))
            continue
        line = _clean(raw)
        if not line or is_furniture(line):
            continue
        sections[-1][2].append(line)
    return sections


def _glossary_body(lines: list[str]) -> list[str]:
    """A glossary clause's lines up to any table-of-contents debris (which ends it)."""
    out = []
    for line in lines:
        if _BARE_CLAUSE.match(line):
            break
        out.append(line)
    return out


def _key(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", " ", text.lower()).strip()


def glossary_rows(markdown: str, doc_id: str) -> list[dict]:
    """Abbreviations, definitions and inline first uses of one document, as rows (see above)."""
    rows: list[dict] = []
    seen: set[tuple[str, str, str]] = set()
    inline: list[tuple[str, str, str]] = []
    for number, title, lines in _sections(markdown):
        clause = number or title
        t = re.sub(r"\s+", " ", title).strip()
        abbr, defs = bool(_ABBR_TITLE.match(t)), bool(_DEFS_TITLE.match(t))
        if _MIXED_TITLE.match(t):
            abbr = defs = True
        if abbr or defs:
            body = _glossary_body(lines)
            entries_d = _definitions(body) if defs else []
            defined = {d for _, d in entries_d}
            if defs:
                for term, definition in entries_d:
                    k = ("d", term.lower(), _key(definition))
                    if k not in seen:
                        seen.add(k)
                        rows.append({"doc_id": doc_id, "source": "definitions", "clause": clause,
                                     "term": term, "definition": definition})
            if abbr:
                if defs:  # one clause for both: lines that were definitions are not entries
                    body = [x for x in body if not _TERM.match(x) and not any(x in d for d in defined)]
                for acr, exp in _abbreviations(body):
                    k = ("a", acr, _key(exp))
                    if k not in seen:
                        seen.add(k)
                        rows.append({"doc_id": doc_id, "source": "abbreviations", "clause": clause,
                                     "acronym": acr, "expansion": exp})
            continue
        text = " ".join(x for x in lines if not x.startswith("|"))
        inline += [(clause, acr, exp) for acr, exp in _inline(text)]
        if number or title:  # a heading's own words: "5G System (5GS)" in a title
            inline += [(clause, acr, exp) for acr, exp in _inline(title)]
    listed = {r["acronym"] for r in rows if r["source"] == "abbreviations"}
    for clause, acr, exp in inline:
        if acr in listed:  # the Abbreviations clause says what it stands for; prose only uses it
            continue
        exp = _singular(acr, exp)
        k = ("a", acr, _key(exp))
        if k not in seen:
            seen.add(k)
            rows.append({"doc_id": doc_id, "source": "inline", "clause": clause,
                         "acronym": acr, "expansion": exp})
    return rows
