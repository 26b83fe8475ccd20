"""Text normalization (rust/SPEC.md, "Normalize"); mirrors rust/src/normalize.rs."""
from __future__ import annotations

import re
import unicodedata

from components.processing.config import NormalizeConfig

# The same patterns as rust/src/normalize.rs; ASCII classes only, so both regex engines agree.
FURNITURE = re.compile(
    r"(?:(?:3GPP|ETSI) T[SR] [0-9]{2,3}[ .][0-9]{3}(?:-[0-9]{1,2})? V[0-9]{1,2}\.[0-9]{1,2}\.[0-9]{1,2}"
    r" \([0-9]{4}-[0-9]{2}\)(?: [0-9]{1,4})?|Release [0-9]{1,2}(?: [0-9]{1,4})?|[0-9]{1,4}"
    r"|Page [0-9]{1,4}(?: of [0-9]{1,4})?|3GPP|ETSI)"
)
TOC = re.compile(
    r"(?:(?:[0-9]{1,2}(?:\.[0-9]{1,3})*|[A-Z](?:\.[0-9]{1,3})+)[A-Z][^|]*[A-Za-z)][0-9]{1,4}"
    r"|(?:Foreword|Scope|References|Introduction|Contents)[0-9]{1,4}"
    r"|Annex [A-Z]{1,2}[ :(][^|]*[A-Za-z)][0-9]{1,4}|[^|].*\.{4,} ?[0-9]{1,4})"
)

HSPACE = "\t\x0b\x0c \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
REMOVED = "".join(map(chr, [*range(0x00, 0x09), *range(0x0E, 0x20), 0x7F, 0x200B, 0xFEFF]))
_MAP = {**{ord(c): " " for c in HSPACE}, **{ord(c): None for c in REMOVED}}


def _dropped(line: str, cfg: NormalizeConfig) -> bool:
    if line.startswith(("#", "|")):
        return False
    return bool((cfg.strip_page_furniture and FURNITURE.fullmatch(line))
                or (cfg.strip_toc and TOC.fullmatch(line)))


def normalize(raw: str, cfg: NormalizeConfig) -> str:
    text = raw.replace("\r\n", "\n").replace("\r", "\n").translate(_MAP)
    if cfg.nfc:
        text = unicodedata.normalize("NFC", text)
    lines: list[str] = []
    for line in text.split("\n"):
        line = " ".join(word for word in line.split(" ") if word)
        if line and _dropped(line, cfg):
            continue
        if line or (lines and lines[-1]):
            lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)
