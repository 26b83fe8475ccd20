"""Printed-document structure (rust/SPEC.md, "Structure"); mirrors rust/src/structure.rs.

Docling's native PDF pipeline returns Markdown with the printed shape of a 3GPP/ETSI
specification: clause titles as plain lines, every printed line its own paragraph, a table of
contents, legal boilerplate. These predicates recognize that shape; normalize.py (TOC block,
reflow) and chunking.py (plain headings, chunk kinds) use them. ASCII classes only, so the
Python and Rust regex engines agree.
"""
from __future__ import annotations

import re

# A numbered clause (`4.2.1 SDAP structure`) or annex clause (`A.1 General`) and a title that
# starts with an upper-case letter or a digit run glued to a letter (`5GS`).
CLAUSE = re.compile(r"(?:[1-9][0-9]?(?:\.[0-9]{1,3}){0,5}|[A-Z](?:\.[0-9]{1,3}){1,5}) (?:[A-Z]|[0-9]+[A-Za-z])")
ANNEX = re.compile(r"Annex [A-Z]{1,2}(?: \([a-z]+\))?(?::|: .+)?")
# Lines that start a block of their own: never joined to the line before.
BLOCK = re.compile(r"(?:[-*\u2022\u2013\u2014] |\(?(?:[0-9]{1,3}[).>]|[a-z]{1,2}\)|[ivx]{1,5}\)|[A-Z]\)) "
                   r"|(?:NOTE|EXAMPLE)(?: [0-9]{1,2})?:|Editor's note:|(?:Figure|Table) [A-Z0-9][A-Za-z0-9.]*-[0-9]+)")
BARE_NUMBER = re.compile(r"[0-9]{1,2}(?:\.[0-9]{1,3})*|[A-Z](?:\.[0-9]{1,3})+")

UNNUMBERED = frozenset({"contents", "foreword", "introduction", "intellectual property rights", "legal notice",
                        "modal verbs terminology", "important notice", "copyright notification", "history"})
BOILERPLATE = frozenset({"intellectual property rights", "legal notice", "modal verbs terminology",
                         "important notice", "copyright notification", "foreword", "history",
                         "change history"})
BODY_START = frozenset({"foreword", "scope"})
CONTENTS = frozenset({"contents", "table of contents"})
# A line ending in one of these words goes on.
FUNCTION_WORDS = frozenset("a an the of to in on at by for from with and or as is are be that which than via "
                           "per into its their this shall may".split())
MAX_HEADING = 120
SENTENCE_END = ".:;?!"
CODE_CHARS = "={}"

_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def ascii_lower(s: str) -> str:
    return s.translate(_LOWER)


def starts_lower(line: str) -> bool:
    return bool(line) and "a" <= line[0] <= "z"


def last_word(line: str) -> str:
    return line[line.rfind(" ") + 1:]


def heading_form(line: str) -> int:
    """Level of a plain heading line (SPEC.md, "Structure"), 0 if it is none; no context."""
    if len(line) > MAX_HEADING:
        return 0
    if ascii_lower(line) in UNNUMBERED:
        return 1
    if line.startswith("Annex ") and ANNEX.fullmatch(line):
        return 1
    if CLAUSE.match(line) and line[-1] not in ".,;:" and last_word(line) not in FUNCTION_WORDS:
        return line[:line.index(" ")].count(".") + 1
    return 0


def is_heading(line: str, following: str) -> int:
    """heading_form, unless the next non-empty line continues it (starts lower-case)."""
    return 0 if starts_lower(following) else heading_form(line)


def clause_number(title: str) -> tuple[str, int] | None:
    """("num", first component) or ("annex", 0) for a title that starts a numbered or annex clause."""
    if title.startswith("Annex ") and ANNEX.fullmatch(title):
        return "annex", 0
    if CLAUSE.match(title):
        if "A" <= title[0] <= "Z":
            return "annex", 0
        return "num", int(title[:title.index(" ")].split(".")[0])
    return None


def toc_key(line: str) -> str:
    """A TOC entry without its page number: 1-4 trailing digits after a space or '.' go, then
    trailing spaces and dots."""
    k = len(line) - len(line.rstrip("0123456789"))
    if 1 <= k <= 4 and k < len(line) and line[-k - 1] in " .":
        line = line[:-k]
    return line.rstrip(" .")


def bare_title(title: str) -> str:
    """The title without a leading clause number (a first word of digits and dots) or annex
    label (``Annex B (informative): ``)."""
    if title.startswith("Annex ") and ":" in title:
        return title.split(":", 1)[1].lstrip(" ")
    first, sp, rest = title.partition(" ")
    if sp and first and all(c in "0123456789." for c in first):
        return rest
    return title


def joins(a: str, b: str, following: str) -> bool:
    """Whether reflow appends line ``b`` to the (accumulated) line ``a``; ``following`` is the
    next non-empty line after ``b`` ("" if none)."""
    if a[0] in "#|<" or b[0] in "#|<" or a[-1] in SENTENCE_END:
        return False
    if any(c in a or c in b for c in CODE_CHARS):
        return False
    if not (starts_lower(b) or a[-1] == "," or last_word(a) in FUNCTION_WORDS):
        return False
    if BLOCK.match(b):
        return False
    if not starts_lower(b) and heading_form(a):
        return False
    return not is_heading(b, following)
