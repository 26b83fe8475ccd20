"""What wraps every call the chain makes, apart from choosing where it goes: scrubbing what
leaves the machine, the audit trail of each attempt on the wire, and alerts on how the service
is doing.

Each is a middleware, ``layer(call, proceed) -> Reply``: it may change the call, calls
``proceed(call)`` (the rest of the chain) and sees its reply or its failure. The chain
(``resilience.ResilientService``) runs scrubbing and alerts around each request and the audit
around each attempt, so a retried request leaves one audit row per try.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from components.llm.alerts import Alert, Alerts, AlertStop
from components.llm.audit import Audit, endpoint
from components.llm.errors import ServiceFailure
from components.llm.reply import Reply
from components.llm.telemetry import Target

log = logging.getLogger(__name__)


@dataclass
class Call:
    """One request as the chain sends it to one target."""

    target: Target
    messages: list[dict]
    schema: dict
    max_tokens: int
    temperature: float
    chunk_id: str | None
    scrubbed: int = 0  # values the scrubbing replaced in this request
    attempt: int = 1


Proceed = Callable[[Call], Reply]


class Scrubbing:
    """``service.privacy``: secrets and personal data replaced before a request leaves the
    machine (for a remote endpoint, or everywhere when the privacy config says so)."""

    def __init__(self, privacy: Any) -> None:
        self.privacy = privacy
        self._scrubber = privacy.scrubber() if privacy is not None else None
        self._lock = threading.Lock()
        self.counts: Counter = Counter()

    def __call__(self, call: Call, proceed: Proceed) -> Reply:
        url = getattr(call.target.service, "base_url", None) or "http://127.0.0.1"
        if self._scrubber is not None and self.privacy.should_scrub(url):
            call.messages, counts = self._scrubber.messages(call.messages)
            call.scrubbed = sum(counts.values())
            with self._lock:
                self.counts.update(counts)
        return proceed(call)

    def metrics(self) -> dict[str, float]:
        with self._lock:
            counts = dict(self.counts)
        return {"service/scrubbed": float(sum(counts.values())),
                **{f"service/scrubbed_{k}": float(v) for k, v in counts.items()}}


class AuditTrail:
    """``audit``: a row in ``audit.jsonl`` for each attempt on the wire and each cache hit."""

    def __init__(self, cfg: Audit | None) -> None:
        self.cfg = cfg
        self._log = None

    def bind(self, run_dir: str | Path) -> None:
        self.close()
        self._log = self.cfg.log(run_dir) if self.cfg is not None else None

    def __call__(self, call: Call, proceed: Proceed) -> Reply:
        t0 = time.perf_counter()
        base = dict(retries=call.attempt - 1, scrubbed=call.scrubbed)
        try:
            reply = proceed(call)
        except ServiceFailure as exc:
            self.row(call.target, call.chunk_id, status=exc.status or "error", failure=exc.failure,
                     error=type(exc).__name__, latency_s=time.perf_counter() - t0,
                     request_bytes=exc.request_bytes, response_bytes=exc.response_bytes, **base)
            raise
        self.row(call.target, call.chunk_id, status=200, latency_s=time.perf_counter() - t0,
                 request_bytes=reply.request_bytes, response_bytes=reply.response_bytes,
                 finish_reason=reply.finish_reason,
                 content={"messages": call.messages, "reply": reply.content}, **base)
        return reply

    def row(self, t: Target, chunk_id: str | None, *, content: dict | None = None, **fields) -> None:
        if self._log is None:
            return
        row = {"service": getattr(t.service, "name", None),
               "endpoint": endpoint(getattr(t.service, "base_url", None)), "model": t.model,
               "chunk_id": chunk_id, "request_bytes": 0, "response_bytes": 0, "retries": 0,
               "scrubbed": 0, "cache_hit": False}
        row.update(fields)
        if "latency_s" in row:
            row["latency_s"] = round(row["latency_s"], 4)
        self._log.write(row, content)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class Alarms:
    """``alerts``: a warning, a tag and a report row when a threshold is crossed (latency,
    error rate, memory, disk) or the service goes down; an alert in ``alerts.fail_on`` stops
    the next request with ``AlertStop``."""

    RESOURCE_EVERY_S = 10.0

    def __init__(self, cfg: Alerts | None, disk_path: str | None = None) -> None:
        self.cfg = cfg
        self.disk_path = disk_path
        self.fired: dict[str, Alert] = {}
        self.stop: AlertStop | None = None
        self._lock = threading.Lock()
        self._last_resource_check = float("-inf")

    def __call__(self, call: Call, proceed: Proceed) -> Reply:
        try:
            return proceed(call)
        finally:
            self.after(call.target)

    def fire(self, name: str, message: str) -> None:
        with self._lock:
            if name in self.fired:
                return
            self.fired[name] = Alert(name, message)
        log.warning("ALERT %s: %s", name, message)
        if self.cfg is not None and name in self.cfg.fail_on:
            self.stop = AlertStop(f"alert {name} is in alerts.fail_on: {message}")

    def check_resources(self, force: bool = False) -> None:
        if self.cfg is None:
            return
        now = time.monotonic()
        if not force and now - self._last_resource_check < self.RESOURCE_EVERY_S:
            return
        self._last_resource_check = now
        for a in self.cfg.resources(self.disk_path):
            self.fire(a.name, a.message)

    def after(self, t: Target) -> None:
        """A request to ``t`` ended (its statistics already counted)."""
        if self.cfg is None:
            return
        s = t.stats
        latencies = list(s.latencies)  # a copy: other requests append while this one reads
        p95 = float(np.percentile(latencies, 95)) if latencies else None
        for a in self.cfg.service(t.key, s.requests, s.errors, p95):
            self.fire(a.name, a.message)
        self.check_resources()

    def raise_if_stopping(self) -> None:
        if self.stop is not None:
            raise self.stop

    def metrics(self) -> dict[str, float]:
        with self._lock:
            return {f"alert/{a}": 1.0 for a in self.fired}

    def tags(self) -> dict[str, str]:
        with self._lock:
            return {f"alert.{a.name}": a.message[:500] for a in self.fired.values()}
