"""Paired comparison of two models on the same items, and the sentence a person reads from it.

Each item is answered right or wrong by both models. The difference of accuracies gets a
percentile bootstrap interval (items resampled with replacement) and McNemar's exact test on
the discordant items (two-sided binomial, p = 0.5), the test for paired proportions.
"""
from __future__ import annotations

from math import comb

import numpy as np

ALPHA = 0.05


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of an accuracy."""
    if n == 0:
        return 0.0, 0.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(gained: int, lost: int) -> float:
    """Two-sided exact p for ``gained`` items only the second model got right against ``lost``
    items only the first got right."""
    n = gained + lost
    if n == 0:
        return 1.0
    k = min(gained, lost)
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n)


def paired(base: list[bool], tuned: list[bool], resamples: int = 2000, seed: int = 0) -> dict:
    """n, both accuracies, the difference (tuned - base), its 95 % bootstrap interval, the
    discordant counts and McNemar's exact p."""
    if len(base) != len(tuned):
        raise ValueError(f"paired comparison needs the same items ({len(base)} vs {len(tuned)})")
    n = len(base)
    if n == 0:
        return {"n": 0, "base": 0.0, "tuned": 0.0, "diff": 0.0, "ci_low": 0.0, "ci_high": 0.0,
                "gained": 0, "lost": 0, "p": 1.0}
    b, t = np.asarray(base, dtype=float), np.asarray(tuned, dtype=float)
    d = t - b
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    boot = d[idx].mean(axis=1)
    gained, lost = int(((t == 1) & (b == 0)).sum()), int(((t == 0) & (b == 1)).sum())
    return {"n": n, "base": round(float(b.mean()), 4), "tuned": round(float(t.mean()), 4),
            "diff": round(float(d.mean()), 4), "ci_low": round(float(np.percentile(boot, 2.5)), 4),
            "ci_high": round(float(np.percentile(boot, 97.5)), 4), "gained": gained, "lost": lost,
            "p": round(mcnemar_exact(gained, lost), 6)}


def gain_over_control(taught: tuple[list[bool], list[bool]], control: tuple[list[bool], list[bool]],
                      resamples: int = 2000, seed: int = 0) -> dict:
    """What the fine-tune taught about the trained facts beyond what it did to facts it never
    saw (a better answering skill, say): the gain on ``taught`` (base, tuned) less the change on
    ``control``, with a 95 % interval from resampling each set's items."""
    if not taught[0] or not control[0]:
        return {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    rng = np.random.default_rng(seed)
    d1 = np.asarray(taught[1], float) - np.asarray(taught[0], float)
    d2 = np.asarray(control[1], float) - np.asarray(control[0], float)
    boot = (d1[rng.integers(0, len(d1), (resamples, len(d1)))].mean(1)
            - d2[rng.integers(0, len(d2), (resamples, len(d2)))].mean(1))
    return {"diff": round(float(d1.mean() - d2.mean()), 4), "ci_low": round(float(np.percentile(boot, 2.5)), 4),
            "ci_high": round(float(np.percentile(boot, 97.5)), 4)}


def points(x: float) -> str:
    return f"{signed(x)} point{'s' if abs(round(100 * x)) != 1 else ''}"


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}" if p < 0.1 else f"p = {p:.2f}"


def signed(x: float) -> str:
    """A fraction as signed points, with a real minus sign: ``+31``, ``−4``."""
    return f"{round(100 * x):+d}".replace("-", "−")


def describe(c: dict) -> str:
    """``+31 points (95 % CI +22…+40, p < 0.001, n = 120)``"""
    lo, hi = signed(c["ci_low"]), signed(c["ci_high"])
    return f"{points(c['diff'])} (95 % CI {lo}…{hi}, {_p(c['p'])}, n = {c['n']})"


def significant(c: dict) -> bool:
    return c["n"] > 0 and c["p"] < ALPHA


def verdict(sets: dict[str, dict]) -> str:
    """One sentence from the paired comparisons of the probe sets (``your_documents``,
    ``unseen_facts``, ``general``; any may be missing)."""
    parts = []
    yours = sets.get("your_documents")
    if yours and yours["n"]:
        if significant(yours) and yours["diff"] > 0:
            parts.append(f"knows your documents better: {describe(yours)}")
        elif significant(yours) and yours["diff"] < 0:
            parts.append(f"knows your documents worse: {describe(yours)}")
        else:
            parts.append(f"no evidence the fine-tune helped: your documents {describe(yours)}")
    else:
        parts.append("no probes of your documents: nothing shows what the fine-tune taught")
    for key, label in (("unseen_facts", "unseen facts"), ("general", "general telecom")):
        c = sets.get(key)
        if not c or not c["n"]:
            continue
        if significant(c) and c["diff"] < 0:
            parts.append(f"forgot {'general knowledge' if key == 'general' else label}: {describe(c)}")
        elif significant(c):
            parts.append(f"{label} {describe(c)}")
        else:
            parts.append(f"{label} {points(c['diff'])} (n.s., n = {c['n']})")
    return "; ".join(parts)


def knowledge_score(sets: dict[str, dict]) -> float:
    """What a sweep maximises: the your-documents gain, less every point lost on unseen facts
    and general knowledge (a gain there earns nothing: the run is not for that)."""
    yours = sets.get("your_documents") or {}
    score = float(yours.get("diff", 0.0))
    for key in ("unseen_facts", "general"):
        c = sets.get(key) or {}
        if c.get("n"):
            score += min(0.0, float(c["diff"]))
    return round(score, 4)
