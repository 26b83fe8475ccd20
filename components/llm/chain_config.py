"""What the ``service`` group composes around a server's client: the fallback service, retries
and breakers, routing, the response cache, the audit log and alerts.

The client (``services``) takes these keys because they sit in its config group, and keeps them
here untouched for ``resilience.chain``, which builds the chain from them; the client itself
reads none of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChainConfig:
    fallback: Any = None        # the fallback service's client, built but not started
    resilience: Any = None      # resilience.Resilience: retries, backoff, breakers
    routing: Any = None         # routing.Routing: more models on the same server
    cache: Any = None           # cache.ResponseCache
    on_unavailable: str = "fallback"  # or "fail"
    audit: Any = None           # audit.Audit
    alerts: Any = None          # alerts.Alerts

    def __post_init__(self) -> None:
        if self.on_unavailable not in ("fallback", "fail"):
            raise ValueError(f"on_unavailable must be 'fallback' or 'fail' (got {self.on_unavailable!r})")
