"""Retries, a circuit breaker and a fallback around an LLM service.

A local server on a laptop goes away (sleep, model swap, OOM). Requests are retried with
exponential backoff; after repeated failures the breaker opens so the run stops hammering a dead
server, and the configured fallback (the embedded llama.cpp server by default) takes over —
loudly, and recorded, so a run never silently mixes models without saying so.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from tenacity import (Retrying, retry_if_exception_type, stop_after_attempt,
                      wait_exponential_jitter)

from pydantic import Field

from components.llm.services import Reply, ServiceError, ServiceUnavailable
from components.settings import Settings

log = logging.getLogger(__name__)


class CircuitOpen(ServiceUnavailable):
    pass


class CircuitBreaker:
    def __init__(self, failures: int = 5, reset_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = failures
        self.reset_s = reset_s
        self.clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        with self._lock:
            return self._state()

    def _state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self._opened_at >= self.reset_s else "open"

    def allow(self) -> bool:
        with self._lock:
            return self._state() != "open"

    def success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._state() == "half-open" or self._failures >= self.max_failures:
                self._opened_at = self.clock()


class Resilience(Settings):
    """``service.resilience``: retries with backoff and a circuit breaker around a service."""

    retries: int = Field(3, ge=1)
    backoff_initial_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(8.0, ge=0)
    breaker_failures: int = Field(5, ge=1)  # consecutive failures that open the circuit
    breaker_reset_s: float = Field(30.0, ge=0)

    def wrap(self, primary: Any, fallback: Any = None) -> "ResilientService":
        return ResilientService(primary, fallback, retries=self.retries,
                                backoff_initial_s=self.backoff_initial_s,
                                backoff_max_s=self.backoff_max_s,
                                breaker=CircuitBreaker(self.breaker_failures, self.breaker_reset_s))


class ResilientService:
    """Wraps a primary service; ``used`` says which one actually served. The fallback is built
    from config but started only when the primary fails."""

    def __init__(self, primary: Any, fallback: Any = None,
                 retries: int = 3, backoff_initial_s: float = 0.5, backoff_max_s: float = 8.0,
                 breaker: CircuitBreaker | None = None) -> None:
        self.primary = primary
        self._standby = fallback
        self.fallback: Any = None
        self.retries = max(1, retries)
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.breaker = breaker or CircuitBreaker()
        self.fallback_reason: str | None = None
        self.requests_retried = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> Any:
        return self.fallback if self.fallback is not None else self.primary

    @property
    def name(self) -> str:
        return getattr(self.used, "name", "?")

    def start(self) -> None:
        try:
            self.primary.start()
        except ServiceUnavailable as exc:
            self._switch(str(exc))

    def _switch(self, reason: str) -> None:
        with self._lock:
            if self.fallback is not None:
                return
            if self._standby is None:
                raise ServiceUnavailable(f"{reason} (no fallback configured)")
            fb = self._standby
            log.warning("=" * 72)
            log.warning("SERVICE FALLBACK: %s", reason)
            log.warning("Using fallback service '%s' instead of '%s' for the rest of this run.",
                        getattr(fb, "name", "?"), getattr(self.primary, "name", "?"))
            log.warning("=" * 72)
            fb.start()
            self.fallback = fb
            self.fallback_reason = reason

    def chat_json(self, messages: list[dict], schema: dict, max_tokens: int,
                  temperature: float = 0.0) -> Reply:
        if self.fallback is None and not self.breaker.allow():
            if self._standby is not None:
                self._switch(f"circuit open after {self.breaker.max_failures} consecutive "
                             f"failures of '{getattr(self.primary, 'name', '?')}'")
            else:
                raise CircuitOpen(f"circuit open: '{getattr(self.primary, 'name', '?')}' failed "
                                  f"{self.breaker.max_failures} times in a row")
        target = self.used
        attempt = 0
        try:
            for attempt_ctx in Retrying(
                    stop=stop_after_attempt(self.retries),
                    wait=wait_exponential_jitter(initial=self.backoff_initial_s,
                                                 max=self.backoff_max_s, jitter=0.1),
                    retry=retry_if_exception_type((ServiceError, ServiceUnavailable)),
                    reraise=True):
                with attempt_ctx:
                    attempt += 1
                    if attempt > 1:
                        self.requests_retried += 1
                    reply = target.chat_json(messages, schema, max_tokens, temperature)
        except (ServiceError, ServiceUnavailable):
            if target is self.primary:
                self.breaker.failure()
            raise
        if target is self.primary:
            self.breaker.success()
        return reply

    def close(self) -> None:
        for s in (self.fallback, self.primary):
            if s is not None:
                s.close()
