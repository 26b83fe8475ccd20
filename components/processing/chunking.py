"""Heading-aware chunking (rust/SPEC.md, "Chunk"); mirrors rust/src/chunk.rs.

Offsets are indices into the normalized document string, so ``text == doc[start:end]``.
"""
from __future__ import annotations

from dataclasses import dataclass

from components.processing.config import ChunkConfig

HEADING, TABLE, PARAGRAPH = "heading", "table", "paragraph"


@dataclass(frozen=True)
class Section:
    heading: str
    path: tuple[str, ...]


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


def units(doc: str) -> tuple[list[Section], list[Unit]]:
    sections = [Section("", ())]
    stack: list[tuple[int, str]] = []
    out: list[Unit] = []
    open_unit: Unit | None = None
    pos = 0
    for line in doc.split("\n"):
        start, end = pos, pos + len(line)
        pos = end + 1
        level = heading_level(line) if line else None
        if not line or level is not None:
            if open_unit:
                out.append(open_unit)
                open_unit = None
        if not line:
            continue
        if level is not None:
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, line[level + 1:]))
            sections.append(Section(stack[-1][1], tuple(title for _, title in stack)))
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
    return sections, out


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
    sections, us = units(doc)
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
        heading_break = u.kind == HEADING and end - start >= cfg.min_chars
        if not heading_break and u.end - start <= cfg.max_chars:
            end = u.end
            count(u)
        else:
            close()
            open_at(u.start if heading_break else overlap_start(doc, us[i - 1], u, cfg), u)
    if is_open:
        close()
    return sections, spans
