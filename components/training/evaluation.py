"""How the base and the tuned model are compared on the same items.

The primary score is knowledge: the never-trained probes of the facts the run taught (``your
documents``), of the facts it kept out of training (``unseen facts``, the control for
forgetting) and, when ``mcq_path`` names a TeleQnA-format file, general telecom questions, each
multiple choice scored by log-likelihood (``scoring``) and compared pairwise (``stats``).
Secondary: test loss and perplexity, a few generated answers for the report, and multiple choice
answered by generation (strict and lenient parsing) on a small sample, which shows whether the
tuned model still follows the answer format.
"""
from __future__ import annotations

from pydantic import Field

from components.mcq import normalize
from components.settings import Settings

# Probe sets, in the order a person reads them.
SETS = {"your_documents": "trained", "unseen_facts": "unseen"}


class EvaluateConfig(Settings):
    """``evaluate`` group."""

    unseen_fraction: float = Field(0.25, ge=0, lt=1)  # facts kept out of training (the control)
    max_probes: int | None = Field(None, ge=1)  # per probe set, for quick runs (a seeded sample)
    mcq_path: str | None = None  # a TeleQnA-format JSON file: the general-telecom set
    mcq_max_questions: int | None = Field(None, ge=1)
    generative_mcq: int = Field(4, ge=0)  # probes answered by generation too, per model
    mcq_max_tokens: int = Field(4, ge=1)
    samples: int = Field(3, ge=0)  # held-out questions answered by generation, for the report
    max_tokens: int = Field(32, ge=1)
    bootstrap_resamples: int = Field(2000, ge=100)
    seed: int = 0
    workers: int = Field(1, ge=1, le=2)  # 2: base and tuned measured at once, each in a process with its share of the threads
    reuse_base: bool = True  # the base model's measurements kept in the cache for any run asking the same (a sweep's jobs)


def token_f1(pred: str, gold: str) -> float:
    p, g = normalize(pred).split(), normalize(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum(min(p.count(w), g.count(w)) for w in set(p))
    if common == 0:
        return 0.0
    prec, rec = common / len(p), common / len(g)
    return 2 * prec * rec / (prec + rec)
