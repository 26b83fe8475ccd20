"""Quality signals and complexity (rust/SPEC.md, "Signals"); mirrors rust/src/signals.rs.

Ratios are computed as integer basis points, then divided by 10000, so both engines print the
same floats.
"""
from __future__ import annotations

import string

STRIP = "()[]{}<>,.;:!?\"'"
_ACRONYM_CHARS = frozenset(string.ascii_uppercase + string.digits + "-")
_UPPER = frozenset(string.ascii_uppercase)
_LETTERS = frozenset(string.ascii_letters)


def words(text: str) -> list[str]:
    return [w for w in text.replace("\n", " ").split(" ") if w]


def is_acronym(word: str) -> bool:
    w = word.strip(STRIP)
    return (2 <= len(w) <= 12 and all(c in _ACRONYM_CHARS for c in w)
            and sum(c in _UPPER for c in w) >= 2)


def _bp(num: int, den: int) -> int:
    return num * 10_000 // den if den else 0


def signals(text: str, max_chars: int) -> dict[str, float | int]:
    n_chars = len(text)
    ws = words(text)
    n_words = len(ws)
    letters = sum(c in _LETTERS for c in text)
    word_chars = n_chars - text.count(" ") - text.count("\n")
    table_chars = sum(len(line) for line in text.split("\n") if line.startswith("|"))
    acronyms = sum(map(is_acronym, ws))
    len_bp = min(10_000, _bp(n_chars, max_chars))
    table_bp = _bp(table_chars, n_chars)
    acr_bp = _bp(acronyms, n_words)
    wl_bp = min(10_000, _bp(word_chars, 12 * n_words))
    complexity_bp = (35 * len_bp + 25 * table_bp + 25 * min(10_000, 4 * acr_bp) + 15 * wl_bp) // 100
    return {
        "n_chars": n_chars,
        "n_words": n_words,
        "alpha_ratio": _bp(letters, n_chars) / 10_000,
        "table_density": table_bp / 10_000,
        "acronym_density": acr_bp / 10_000,
        "complexity": complexity_bp / 10_000,
    }
