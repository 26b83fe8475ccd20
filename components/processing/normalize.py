"""Text normalization (rust/SPEC.md, "Normalize"); mirrors rust/src/normalize.rs."""
from __future__ import annotations

import re
import unicodedata

from components.processing.config import NormalizeConfig
from components.processing.structure import BARE_NUMBER, CONTENTS, ascii_lower, heading_form, joins, toc_key

# The same patterns as rust/src/normalize.rs; ASCII classes only, so both regex engines agree.
FURNITURE = re.compile(
    r"(?:(?:3GPP|ETSI) T[SR] [0-9]{2,3}[ .][0-9]{3}(?:-[0-9]{1,2})? V[0-9]{1,2}\.[0-9]{1,2}\.[0-9]{1,2}"
    r" \([0-9]{4}-[0-9]{2}\)(?: [0-9]{1,4})?|Release [0-9]{1,2}(?: [0-9]{1,4})?|[0-9]{1,4}"
    r"|(?:3GPP|ETSI) T[SR] [0-9]{2,3}[ .][0-9]{3}(?:-[0-9]{1,2})? version [0-9]{1,2}\.[0-9]{1,2}\.[0-9]{1,2}"
    r" Release [0-9]{1,2}(?: [0-9]{1,4})?"
    r"|Page [0-9]{1,4}(?: of [0-9]{1,4})?|3GPP|ETSI)"
)
# A line that opens with a generation's name (5G, 5GC, 3GPP: 2-6 and a G not followed by a
# lower-case letter) is prose, not clause 5's TOC entry ("5General7" is one).
TOC = re.compile(
    r"(?:(?:(?:[0-9]{1,2}(?:\.[0-9]{1,3})+|[0-9]{2}|[A-Z](?:\.[0-9]{1,3})+)[A-Z]|[0-9](?:[A-FH-Z]|G[a-z])"
    r"|[017-9]G)[^|]*[A-Za-z)][0-9]{1,4}"
    r"|(?:Foreword|Scope|References|Introduction|Contents)[0-9]{1,4}"
    r"|Annex [A-Z]{1,2}[ :(][^|]*[A-Za-z)][0-9]{1,4}|[^|].*\.{4,} ?[0-9]{1,4})"
)

HSPACE = "\t\x0b\x0c \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
REMOVED = "".join(map(chr, [*range(0x00, 0x09), *range(0x0E, 0x20), 0x7F, 0x200B, 0xFEFF]))
_MAP = {**{ord(c): " " for c in HSPACE}, **{ord(c): None for c in REMOVED}}


def _furniture(line: str, cfg: NormalizeConfig) -> bool:
    return bool(cfg.strip_page_furniture and line[0] not in "#|" and FURNITURE.fullmatch(line))


def _toc(line: str, cfg: NormalizeConfig) -> bool:
    return bool(cfg.strip_toc and line[0] not in "#|" and TOC.fullmatch(line))


def drop_lines(lines: list[str], cfg: NormalizeConfig) -> list[str]:
    """Step 5 of SPEC.md "Normalize": page furniture goes, and TOC lines go where they come two
    or more in a row (furniture between them not counting). A TOC line alone among prose is
    prose that has the shape ("20MHz carriers are used in band n78")."""
    lines = [line for line in lines if not (line and _furniture(line, cfg))]
    nonempty = [i for i, line in enumerate(lines) if line]
    toc = [_toc(lines[i], cfg) for i in nonempty]
    dropped = {i for k, i in enumerate(nonempty)
               if toc[k] and ((k > 0 and toc[k - 1]) or (k + 1 < len(toc) and toc[k + 1]))}
    return collapse([line for i, line in enumerate(lines) if i not in dropped])


def is_prose(line: str) -> bool:
    """Ends with '.' and holds a char other than '.', ' ' and digits (a sentence, not a leader)."""
    return line[-1] == "." and bool(line.strip(". 0123456789"))


def toc_end(lines: list[str], c: int) -> int | None:
    """End (exclusive) of the table of contents opened by the `Contents` line ``lines[c]``: the
    first entry-like line whose key repeats an earlier entry's (the body's first heading), if
    the lines before it hold at most one prose line per four TOC-like lines; else None."""
    seen: set[str] = set()
    toclike = prose = 0
    for j in range(c + 1, len(lines)):
        line = lines[j]
        if not line:
            continue
        if line[0] == "#":
            return None
        key = toc_key(line)
        if key and heading_form(key):
            if key in seen:
                return j if 4 * prose <= toclike else None
            seen.add(key)
            toclike += 1
        elif BARE_NUMBER.fullmatch(line) or FURNITURE.fullmatch(line) or TOC.fullmatch(line):
            toclike += 1
        elif is_prose(line):
            prose += 1
    return None


def strip_toc_block(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        if ascii_lower(lines[i]) in CONTENTS:
            end = toc_end(lines, i)
            if end is not None:
                i = end
                continue
        out.append(lines[i])
        i += 1
    return out


def reflow(lines: list[str], special=lambda line: False) -> list[str]:
    """Joins hard-wrapped lines (structure.joins) with a space, across empty lines. A joined
    line that is ``special`` (furniture, TOC-shaped, or a contents line) is written as the
    lines it joined: normalizing the output again then makes the same joins and keeps the text
    instead of dropping it (prose such as "8K video is carried over" + "the N3" has a TOC
    entry's shape)."""
    nonempty = [i for i, line in enumerate(lines) if line]
    out: list[str] = []
    parts: list[str] = []  # the lines joined into out[-1]
    last = -1  # index in out of the last non-empty line

    def close():
        if len(parts) > 1 and special(out[last]):
            out[last:last + 1] = parts

    for k, i in enumerate(nonempty):
        following = lines[nonempty[k + 1]] if k + 1 < len(nonempty) else ""
        line = lines[i]
        if last >= 0 and joins(out[last], line, following):
            del out[last + 1:]
            out[last] += " " + line
            parts.append(line)
        else:
            if last >= 0:
                close()
            out.extend(lines[nonempty[k - 1] + 1:i] if k else lines[:i])
            out.append(line)
            last, parts = len(out) - 1, [line]
    if last >= 0:
        close()
    return out


def collapse(lines: list[str]) -> list[str]:
    """Runs of empty lines as one, none at either end (SPEC.md steps 6 and 9)."""
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    while out and not out[-1]:
        out.pop()
    return out


def normalize(raw: str, cfg: NormalizeConfig) -> str:
    text = raw.replace("\r\n", "\n").replace("\r", "\n").translate(_MAP)
    if cfg.nfc:
        text = unicodedata.normalize("NFC", text)
    lines = drop_lines([" ".join(word for word in line.split(" ") if word) for line in text.split("\n")], cfg)
    if not (cfg.strip_toc_block or cfg.reflow):
        return "\n".join(lines)
    if cfg.strip_toc_block:
        lines = strip_toc_block(lines)
    if cfg.reflow:
        lines = reflow(lines, lambda line: _furniture(line, cfg) or _toc(line, cfg)
                       or (cfg.strip_toc_block and ascii_lower(line) in CONTENTS))
    return "\n".join(collapse(lines))
