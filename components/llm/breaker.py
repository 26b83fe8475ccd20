"""A circuit breaker per service and model: after repeated failures it opens, so a run stops
hammering a server that is down; after ``reset_s`` one half-open probe may go through."""
from __future__ import annotations

import threading
import time
from typing import Callable


class CircuitBreaker:
    """closed -> (``failures`` in a row) open -> (after ``reset_s``) half-open: one probe at a
    time; its success closes the breaker, its failure opens it again."""

    def __init__(self, failures: int = 5, reset_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[str, str], None] | None = None) -> None:
        self.max_failures = failures
        self.reset_s = reset_s
        self.clock = clock
        self.on_change = on_change
        self.reason: str | None = None
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        with self._lock:
            return self._state()

    def _state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self._opened_at >= self.reset_s else "open"

    def _changed(self, before: str) -> None:
        after = self._state()
        if after != before and self.on_change:
            self.on_change(before, after)

    def allow(self) -> bool:
        """May a request go now? In half-open, only the first caller (the probe) may."""
        with self._lock:
            state = self._state()
            if state == "closed":
                return True
            if state == "half-open" and not self._probing:
                self._probing = True
                if self.on_change:
                    self.on_change("open", "half-open")
                return True
            return False

    def success(self) -> None:
        with self._lock:
            before = self._state()
            self._failures = 0
            self._opened_at = None
            self._probing = False
            self.reason = None
            self._changed(before)

    def failure(self, reason: str | None = None) -> None:
        with self._lock:
            before = "half-open" if self._probing else self._state()
            self._failures += 1
            if self._probing or before == "half-open" or self._failures >= self.max_failures:
                self._opened_at = self.clock()
                self.reason = reason or self.reason
            self._probing = False
            if before != self._state() and self.on_change:
                self.on_change(before, self._state())

    def force_open(self, reason: str) -> None:
        """Open now (the server or model is known to be missing at start)."""
        with self._lock:
            before = self._state()
            self._opened_at = self.clock()
            self._failures = max(self._failures, self.max_failures)
            self._probing = False
            self.reason = reason
            self._changed(before)

    def abandon(self) -> None:
        """A probe that ended without a verdict (a bug, an interrupt) frees the probe slot."""
        with self._lock:
            self._probing = False
