"""Retries, circuit breaker and fallback; the real fallback path (Ollama down -> embedded
llama.cpp) runs in test_e2e."""
from __future__ import annotations

import logging

import pytest

from components.llm.resilience import CircuitBreaker, CircuitOpen, ResilientService
from components.llm.services import Reply, ServiceError, ServiceUnavailable


class Flaky:
    """Fails the first `fail` calls with `exc`, then answers."""

    def __init__(self, name="primary", fail=0, exc=ServiceError, unavailable_on_start=False):
        self.name, self.fail, self.exc = name, fail, exc
        self.unavailable_on_start = unavailable_on_start
        self.calls = self.started = self.closed = 0

    def start(self):
        self.started += 1
        if self.unavailable_on_start:
            raise ServiceUnavailable(f"{self.name}: cannot reach it")

    def chat_json(self, messages, schema, max_tokens, temperature=0.0):
        self.calls += 1
        if self.calls <= self.fail:
            raise self.exc(f"{self.name} failure {self.calls}")
        return Reply(content=f"{self.name} ok")

    def close(self):
        self.closed += 1


def fast(**kw):
    return dict(retries=3, backoff_initial_s=0.001, backoff_max_s=0.002, **kw)


def test_transient_errors_are_retried_then_succeed():
    p = Flaky(fail=2)
    svc = ResilientService(p, **fast())
    svc.start()
    assert svc.chat_json([], {}, 8).content == "primary ok"
    assert p.calls == 3 and svc.requests_retried == 2
    assert svc.breaker.state == "closed"


def test_retries_are_bounded():
    p = Flaky(fail=100)
    svc = ResilientService(p, **fast())
    with pytest.raises(ServiceError):
        svc.chat_json([], {}, 8)
    assert p.calls == 3


def test_unreachable_primary_falls_back_loudly_at_start(caplog):
    p, fb = Flaky(unavailable_on_start=True), Flaky(name="embedded")
    svc = ResilientService(p, fallback=fb, **fast())
    with caplog.at_level(logging.WARNING):
        svc.start()
    assert svc.used is fb and svc.name == "embedded" and fb.started == 1
    assert "SERVICE FALLBACK" in caplog.text and "cannot reach" in svc.fallback_reason
    assert svc.chat_json([], {}, 8).content == "embedded ok"
    svc.close()
    assert p.closed == 1 and fb.closed == 1


def test_unreachable_primary_without_fallback_raises():
    svc = ResilientService(Flaky(unavailable_on_start=True), **fast())
    with pytest.raises(ServiceUnavailable, match="no fallback"):
        svc.start()


def test_breaker_opens_after_consecutive_failures_and_fallback_takes_over():
    p, fb = Flaky(fail=10**6), Flaky(name="embedded")
    svc = ResilientService(p, fallback=fb,
                           breaker=CircuitBreaker(failures=2, reset_s=60), **fast())
    for _ in range(2):
        with pytest.raises(ServiceError):
            svc.chat_json([], {}, 8)
    assert svc.breaker.state == "open"
    calls = p.calls
    assert svc.chat_json([], {}, 8).content == "embedded ok"
    assert p.calls == calls  # the dead primary is not called again
    assert "circuit open" in svc.fallback_reason


def test_open_breaker_without_fallback_fails_fast():
    p = Flaky(fail=10**6)
    svc = ResilientService(p, breaker=CircuitBreaker(failures=1, reset_s=60), **fast())
    with pytest.raises(ServiceError):
        svc.chat_json([], {}, 8)
    calls = p.calls
    with pytest.raises(CircuitOpen):
        svc.chat_json([], {}, 8)
    assert p.calls == calls


def test_breaker_half_opens_after_reset_and_closes_on_success():
    now = [0.0]
    br = CircuitBreaker(failures=1, reset_s=10, clock=lambda: now[0])
    br.failure()
    assert br.state == "open" and not br.allow()
    now[0] = 11
    assert br.state == "half-open" and br.allow()
    br.failure()  # the trial failed: open again
    assert br.state == "open"
    now[0] = 22
    br.success()
    assert br.state == "closed"
