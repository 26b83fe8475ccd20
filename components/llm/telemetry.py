"""What each service and model did in a run (requests, errors, latencies, retries, fallbacks,
cache hits), as the MLflow metrics ``service/<service>/<model>/...`` and their totals."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from components.llm.breaker import CircuitBreaker


@dataclass
class Stats:
    requests: int = 0
    ok: int = 0
    errors: int = 0
    retries: int = 0
    fallbacks: int = 0          # requests this target served for another first choice
    cache_hits: int = 0
    breaker_opens: int = 0
    breaker_recoveries: int = 0
    thinking_stripped: int = 0  # replies that carried reasoning
    length_retries: int = 0
    context_overflows: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0        # server time of answered requests
    latencies: list[float] = field(default_factory=list)


class Target:
    """One model on one service, with its own breaker and numbers."""

    def __init__(self, service: Any, model: str, breaker: CircuitBreaker, is_fallback_service: bool):
        self.service = service
        self.model = model
        self.key = f"{getattr(service, 'name', '?')}/{model}"
        self.breaker = breaker
        self.is_fallback_service = is_fallback_service
        self.stats = Stats()


def _metric_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


def target_metrics(targets: Iterable[Target]) -> dict[str, float]:
    out: dict[str, float] = {}
    tot: Counter = Counter()
    for t in targets:
        s = t.stats
        if not (s.requests or s.cache_hits or s.breaker_opens):
            continue
        p = f"service/{_metric_name(getattr(t.service, 'name', '?'))}/{_metric_name(t.model)}/"
        lat = s.latencies
        vals = {
            "requests": s.requests, "successes": s.ok, "errors": s.errors,
            "success_rate": round(s.ok / s.requests, 4) if s.requests else 0.0,
            "error_rate": round(s.errors / s.requests, 4) if s.requests else 0.0,
            "latency_p50_s": round(float(np.percentile(lat, 50)), 4) if lat else 0.0,
            "latency_p95_s": round(float(np.percentile(lat, 95)), 4) if lat else 0.0,
            "retries": s.retries, "breaker_opens": s.breaker_opens,
            "breaker_recoveries": s.breaker_recoveries, "fallbacks": s.fallbacks,
            "cache_hits": s.cache_hits, "thinking_stripped": s.thinking_stripped,
            "length_retries": s.length_retries, "context_overflows": s.context_overflows,
            "prompt_tokens_per_s": round(s.prompt_tokens / s.seconds, 2) if s.seconds else 0.0,
            "completion_tokens_per_s": round(s.completion_tokens / s.seconds, 2) if s.seconds else 0.0,
        }
        out.update({p + k: float(v) for k, v in vals.items()})
        for k in ("requests", "errors", "retries", "breaker_opens", "fallbacks", "cache_hits",
                  "thinking_stripped", "length_retries", "context_overflows"):
            tot[k] += vals[k]
    out.update({f"service/{k}": float(v) for k, v in tot.items()})
    asked = tot["requests"] + tot["cache_hits"]
    out["service/cache_hit_rate"] = round(tot["cache_hits"] / asked, 4) if asked else 0.0
    return out
