"""How a tuned model's answers are scored against held-out ones."""
from __future__ import annotations

import re
import string

from pydantic import Field

from components.settings import Settings

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


class EvaluateConfig(Settings):
    """``evaluate`` group."""

    max_examples: int = Field(24, ge=0)  # held-out Q&A generated for exact match
    max_tokens: int = Field(48, ge=1)


def normalize(s: str) -> str:
    return " ".join(_PUNCT.sub(" ", s.lower()).split())


def token_f1(pred: str, gold: str) -> float:
    p, g = normalize(pred).split(), normalize(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum(min(p.count(w), g.count(w)) for w in set(p))
    if common == 0:
        return 0.0
    prec, rec = common / len(p), common / len(g)
    return 2 * prec * rec / (prec + rec)
