"""Heading-aware chunking (rust/SPEC.md, "Chunk"); mirrors rust/src/chunk.rs.

Offsets are indices into the normalized document string, so ``text == doc[start:end]``.
"""
from __future__ import annotations

from dataclasses import dataclass

from components.processing.config import ChunkConfig
from components.processing.structure import (BODY_START, BOILERPLATE, ascii_lower, bare_title, clause_number,
                                             is_heading)

HEADING, TABLE, PARAGRAPH = "heading", "table", "paragraph"


@dataclass(frozen=True)
class Section:
    heading: str
    path: tuple[str, ...]
    kind: str = "body"


@dataclass(frozen=True)
class Unit:
    kind: str
    start: int
    end: int
    section: int


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    section: int


def heading_level(line: str) -> int | None:
    """1-6 '#', a space, then at least one character."""
    n = len(line) - len(line.lstrip("#"))
    if 1 <= n <= 6 and len(line) > n + 1 and line[n] == " ":
        return n
    return None


class Numbering:
    """The clause numbering seen so far, for the plausibility guard on plain headings."""

    def __init__(self) -> None:
        self.top = 0
        self.in_annex = False

    def advance(self, title: str) -> None:
        number = clause_number(title)
        if number is None:
            return
        if number[0] == "annex":
            self.in_annex = True
        else:
            self.top = number[1]

    def plausible(self, line: str, level: int) -> bool:
        number = clause_number(line)
        if number is None or number[0] == "annex":
            return True
        n = number[1]
        if self.in_annex or n > self.top + 3:
            return False
        return n > self.top if level == 1 else n >= self.top


def plain_heading(line: str, following: str, numbering: Numbering) -> int:
    """Level of a plain (non-'#') heading line in context, 0 if it is none."""
    if not line or line[0] in "#|":
        return 0
    level = is_heading(line, following)
    return level if level and numbering.plausible(line, level) else 0


def units(doc: str, cfg: ChunkConfig | None = None) -> tuple[list[Section], list[Unit]]:
    plain = cfg is not None and cfg.clause_headings
    sections = [Section("", ())]
    stack: list[tuple[int, str]] = []
    out: list[Unit] = []
    open_unit: Unit | None = None
    numbering = Numbering()
    lines = doc.split("\n")
    following = [""] * len(lines)  # the next non-empty line after each line
    nxt = ""
    for i in range(len(lines) - 1, -1, -1):
        following[i] = nxt
        if lines[i]:
            nxt = lines[i]
    pos = 0
    for i, line in enumerate(lines):
        start, end = pos, pos + len(line)
        pos = end + 1
        level = heading_level(line) if line else None
        title = line[level + 1:] if level is not None else line
        if level is None and plain:
            level = plain_heading(line, following[i], numbering) or None
        if not line or level is not None:
            if open_unit:
                out.append(open_unit)
                open_unit = None
        if not line:
            continue
        if level is not None:
            numbering.advance(title)
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, title))
            sections.append(Section(stack[-1][1], tuple(t for _, t in stack)))
            out.append(Unit(HEADING, start, end, len(sections) - 1))
            continue
        kind = TABLE if line.startswith("|") else PARAGRAPH
        if open_unit and open_unit.kind == kind:
            open_unit = Unit(kind, open_unit.start, end, open_unit.section)
        else:
            if open_unit:
                out.append(open_unit)
            open_unit = Unit(kind, start, end, len(sections) - 1)
    if open_unit:
        out.append(open_unit)
    if cfg is not None and cfg.mark_boilerplate:
        sections = mark_kinds(sections)
    return sections, out


def mark_kinds(sections: list[Section]) -> list[Section]:
    """boilerplate: a title on the path is a legal/front-page title; front_matter: before the
    first `Foreword` or `Scope` heading (when there is one); else body."""
    body_start = next((i for i, s in enumerate(sections) if i and ascii_lower(bare_title(s.heading)) in BODY_START),
                      None)
    out = []
    for i, s in enumerate(sections):
        if any(ascii_lower(bare_title(t)) in BOILERPLATE for t in s.path):
            kind = "boilerplate"
        elif body_start is not None and i < body_start:
            kind = "front_matter"
        else:
            kind = "body"
        out.append(Section(s.heading, s.path, kind))
    return out


def split_long(doc: str, units_: list[Unit], max_chars: int) -> list[Unit]:
    """Paragraphs over budget break at the last space or newline that leaves a piece of at
    least half the budget, else hard at the budget. Tables stay whole. The caller passes
    max_chars - overlap_chars, so that a piece plus its overlap still fits a chunk."""
    out: list[Unit] = []
    for u in units_:
        if u.kind != PARAGRAPH or u.end - u.start <= max_chars:
            out.append(u)
            continue
        pos = u.start
        while u.end - pos > max_chars:
            limit = pos + max_chars
            q = max(doc.rfind(" ", pos + 1, limit + 1), doc.rfind("\n", pos + 1, limit + 1))
            if q > pos and q - pos >= max_chars // 2:
                out.append(Unit(u.kind, pos, q, u.section))
                pos = q + 1
            else:
                out.append(Unit(u.kind, pos, limit, u.section))
                pos = limit
        out.append(Unit(u.kind, pos, u.end, u.section))
    return out


def overlap_start(doc: str, prev: Unit, u: Unit, cfg: ChunkConfig) -> int:
    """Start of a chunk opened by ``u`` after a size break: up to ``overlap_chars`` of the
    preceding paragraph, beginning at a word boundary."""
    if cfg.overlap_chars == 0 or prev.kind != PARAGRAPH or u.kind == HEADING:
        return u.start
    p0 = u.start - cfg.overlap_chars
    if p0 <= prev.start:
        p = prev.start
    else:
        spaces = [i for i in (doc.find(" ", p0, prev.end), doc.find("\n", p0, prev.end)) if i >= 0]
        p = min(spaces) + 1 if spaces else u.start
    return u.start if u.end - p > cfg.max_chars else p


def chunk(doc: str, cfg: ChunkConfig) -> tuple[list[Section], list[Span]]:
    """Greedy packing: a unit joins the open chunk while the chunk fits ``max_chars``; a
    heading closes the open chunk once it holds ``min_chars``. A chunk is labelled with the
    section that holds most of its content (non-heading) chars, the earliest on ties."""
    sections, us = units(doc, cfg)
    us = split_long(doc, us, cfg.max_chars - cfg.overlap_chars)
    spans: list[Span] = []
    start = end = first_section = 0
    content: dict[int, int] = {}  # section -> content chars, in order of first appearance
    is_open = False

    def close() -> None:
        # max() returns the first of equal maxima, and dicts keep insertion order.
        spans.append(Span(start, end, max(content, key=content.get) if content else first_section))

    def open_at(s: int, u: Unit) -> None:
        nonlocal start, end, first_section, content
        start, end, first_section, content = s, u.end, u.section, {}
        count(u)

    def count(u: Unit) -> None:
        if u.kind != HEADING:
            content[u.section] = content.get(u.section, 0) + u.end - u.start

    for i, u in enumerate(us):
        if not is_open:
            open_at(u.start, u)
            is_open = True
            continue
        heading_break = u.kind == HEADING and (end - start >= cfg.min_chars
                                               or sections[u.section].kind != sections[us[i - 1].section].kind)
        if not heading_break and u.end - start <= cfg.max_chars:
            end = u.end
            count(u)
        else:
            close()
            open_at(u.start if heading_break else overlap_start(doc, us[i - 1], u, cfg), u)
    if is_open:
        close()
    return sections, spans
