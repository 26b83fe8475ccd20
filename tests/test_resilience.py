"""The chain's logic with in-memory services: retries on transient failures only, breakers per
model with half-open probes, routing by complexity, fallback, cache, alerts, metrics. The same
behaviour against real servers: test_services (loopback fakes of Ollama / LM Studio) and
test_llm_faults (the real llama.cpp server killed and hung)."""
from __future__ import annotations

import logging
import time

import pytest

from components.llm.alerts import Alerts, AlertStop
from components.llm.cache import ResponseCache
from components.llm.errors import (CircuitOpen, InvalidResponse, ModelMissing, ServiceError,
                                   ServiceUnavailable)
from components.llm.breaker import CircuitBreaker
from components.llm.resilience import Resilience, ResilientService
from components.llm.routing import Routing
from tests.llm_fakes import Scripted


def fast(**kw):
    return dict(retries=3, backoff_initial_s=0.001, backoff_max_s=0.002, **kw)


def failing(times: int, exc=lambda: ServiceError("HTTP 503", status=503), models=None):
    def fail(n, model):
        if (models is None or model in models) and n <= times:
            return exc()
        return None
    return fail


def always(exc_factory, models=None):
    return lambda n, model: exc_factory() if models is None or model in models else None


def test_errors_say_transient_or_final():
    assert ServiceError("x", status=503).failure == "transient"
    assert ServiceError("x", status=429).failure == "transient"
    assert ServiceError("x", status=400).failure == "final"
    assert ServiceError("x", status=404).failure == "final"
    assert ServiceUnavailable("x").failure == "transient"
    assert InvalidResponse("x").failure == "final"
    assert ModelMissing("x").failure == "final"
    assert CircuitOpen("x").failure == "transient"


def test_transient_errors_are_retried_then_succeed():
    p = Scripted(fail=failing(2))
    svc = ResilientService(p, **fast())
    svc.start()
    reply = svc.chat_json([], {}, 8)
    assert reply.content == "primary:m ok" and reply.retries == 2
    assert len(p.calls) == 3 and svc.requests_retried == 2
    assert svc.breaker.state == "closed"


def test_final_errors_are_not_retried_and_do_not_trip_the_breaker():
    p = Scripted(fail=always(lambda: ServiceError("HTTP 400 bad schema", status=400)))
    fb = Scripted(name="embedded")
    svc = ResilientService(p, fb, breaker=CircuitBreaker(failures=1), **fast())
    with pytest.raises(ServiceError) as e:
        svc.chat_json([], {}, 8)
    assert e.value.failure == "final" and len(p.calls) == 1
    assert svc.breaker.state == "closed" and fb.calls == []  # a wrong request: no one else helps


def test_retry_after_is_honoured():
    p = Scripted(fail=failing(1, lambda: ServiceError("HTTP 429", status=429, retry_after=0.3)))
    svc = ResilientService(p, **fast())
    t0 = time.perf_counter()
    svc.chat_json([], {}, 8)
    assert time.perf_counter() - t0 >= 0.3 and len(p.calls) == 2


def test_retries_are_bounded():
    p = Scripted(fail=always(lambda: ServiceError("HTTP 500", status=500)))
    svc = ResilientService(p, **fast())
    with pytest.raises(ServiceError):
        svc.chat_json([], {}, 8)
    assert len(p.calls) == 3


def test_unreachable_primary_falls_back_loudly_at_start(caplog):
    p = Scripted(start_error=ServiceUnavailable("primary: cannot reach it"))
    fb = Scripted(name="embedded", model="smol")
    svc = ResilientService(p, fallback=fb, **fast())
    with caplog.at_level(logging.WARNING):
        svc.start()
    assert fb.started == 1 and svc.fallback is fb
    assert "SERVICE FALLBACK" in caplog.text and "cannot reach" in svc.fallback_reason
    reply = svc.chat_json([], {}, 8)
    assert reply.service == "embedded" and reply.fallback and svc.name == "embedded"
    assert p.calls == []  # the primary's breaker was opened at start
    assert svc.tags()["service.fallback"] == "true" and "alert.service_down" in svc.tags()
    svc.close()
    assert p.closed == 1 and fb.closed == 1


def test_unreachable_primary_without_fallback_raises():
    svc = ResilientService(Scripted(start_error=ServiceUnavailable("down")), **fast())
    with pytest.raises(ServiceUnavailable, match="no fallback"):
        svc.start()


def test_on_unavailable_fail_does_not_fall_back():
    p = Scripted(start_error=ServiceUnavailable("ollama: cannot reach it"))
    fb = Scripted(name="embedded")
    svc = ResilientService(p, fallback=fb, on_unavailable="fail", **fast())
    with pytest.raises(ServiceUnavailable, match="on_unavailable=fail") as e:
        svc.start()
    assert e.value.failure == "final" and fb.started == 0


def test_breaker_opens_after_consecutive_failures_and_fallback_takes_over():
    p, fb = Scripted(fail=always(lambda: ServiceUnavailable("refused"))), Scripted(name="embedded")
    svc = ResilientService(p, fallback=fb, breaker=CircuitBreaker(failures=2, reset_s=60), **fast())
    r1 = svc.chat_json([], {}, 8)  # primary fails 3 attempts -> fallback serves
    assert r1.service == "embedded" and r1.fallback
    svc.chat_json([], {}, 8)
    assert svc.breaker.state == "open"
    calls = len(p.calls)
    assert svc.chat_json([], {}, 8).service == "embedded"
    assert len(p.calls) == calls  # the dead primary is not called again
    m = svc.metrics()
    assert m["service/primary/m/breaker_opens"] == 1 and m["service/embedded/m/fallbacks"] == 3
    assert m["service/primary/m/error_rate"] == 1.0 and m["alert/breaker_open"] == 1.0


def test_half_open_probe_returns_traffic_to_the_recovered_primary():
    now = [0.0]
    down = [True]
    p = Scripted(fail=lambda n, model: ServiceUnavailable("refused") if down[0] else None)
    fb = Scripted(name="embedded")
    svc = ResilientService(p, fb, breaker=CircuitBreaker(failures=1, reset_s=10, clock=lambda: now[0]),
                           **fast())
    assert svc.chat_json([], {}, 8).service == "embedded"
    assert svc.breaker.state == "open"
    now[0] = 11  # half-open; the primary is still down: the probe fails and opens it again
    assert svc.chat_json([], {}, 8).service == "embedded"
    assert svc.breaker.state == "open"
    down[0] = False
    now[0] = 22
    reply = svc.chat_json([], {}, 8)  # the probe succeeds: closed, primary serves again
    assert reply.service == "primary" and not reply.fallback
    assert svc.breaker.state == "closed"
    assert svc.chat_json([], {}, 8).service == "primary"
    assert svc.metrics()["service/primary/m/breaker_recoveries"] == 1


def test_half_open_lets_one_probe_through():
    now = [0.0]
    br = CircuitBreaker(failures=1, reset_s=10, clock=lambda: now[0])
    br.failure()
    assert br.state == "open" and not br.allow()
    now[0] = 11
    assert br.state == "half-open"
    assert br.allow() and not br.allow()  # the second caller waits for the probe's verdict
    br.failure()
    assert br.state == "open"
    now[0] = 22
    assert br.allow()
    br.success()
    assert br.state == "closed" and br.allow() and br.allow()


def test_open_breakers_without_fallback_fail_fast():
    p = Scripted(fail=always(lambda: ServiceUnavailable("refused")))
    svc = ResilientService(p, breaker=CircuitBreaker(failures=1, reset_s=60), **fast())
    with pytest.raises(ServiceUnavailable):
        svc.chat_json([], {}, 8)
    calls = len(p.calls)
    with pytest.raises(CircuitOpen, match="refused"):
        svc.chat_json([], {}, 8)
    assert len(p.calls) == calls


def routed(fail=None, fallback=True, **kw):
    p = Scripted(name="ollama", model="qwen3:1.7b", fail=fail)
    routing = Routing(complex_model="gemma3:4b", complex_above=0.6, fallback_model="llama3.2:1b")
    fb = Scripted(name="embedded", model="smol") if fallback else None
    return p, fb, ResilientService(p, fb, routing=routing, breaker=CircuitBreaker(failures=2, reset_s=60),
                                   **fast(**kw))


def test_routing_by_complexity_and_model_fallback_per_model_breakers():
    p, fb, svc = routed(fail=always(lambda: ServiceUnavailable("qwen crashed"), models={"qwen3:1.7b"}))
    assert svc.chat_json([], {}, 8, complexity=0.9).model == "gemma3:4b"
    simple = svc.chat_json([], {}, 8, complexity=0.1)
    assert simple.model == "llama3.2:1b" and simple.fallback  # the primary failed: fallback model
    assert svc.chat_json([], {}, 8).model == "llama3.2:1b"    # no score: primary route
    breakers = svc.tags()["service.breakers"]
    assert "ollama/qwen3:1.7b=open" in breakers and "ollama/gemma3:4b=closed" in breakers
    m = svc.metrics()
    assert m["service/ollama/gemma3_4b/requests"] == 1
    assert m["service/ollama/llama3.2_1b/fallbacks"] == 2
    assert fb.calls == []  # the same server's fallback model served; no need for the embedded one


def test_complex_model_failure_goes_to_primary_then_service_fallback():
    p, fb, svc = routed(fail=always(lambda: ServiceUnavailable("ollama gone")))
    reply = svc.chat_json([], {}, 8, complexity=0.95)
    assert reply.service == "embedded"
    tried = [m for m, _ in p.calls]
    assert tried[:3] == ["gemma3:4b"] * 3 and set(tried[3:]) == {"qwen3:1.7b", "llama3.2:1b"}


def test_missing_routed_model_at_start_is_skipped():
    p, fb, svc = routed()
    p.missing_models = {"gemma3:4b": "run `ollama pull gemma3:4b`"}
    svc.start()
    reply = svc.chat_json([], {}, 8, complexity=0.99)
    assert reply.model == "qwen3:1.7b" and ("gemma3:4b", 8) not in p.calls


def test_truncated_answer_is_asked_once_more_with_more_room():
    from components.llm.reply import Reply

    p = Scripted()
    answers = iter([Reply(content='{"acr', finish_reason="length"), Reply(content="{}", finish_reason="stop")])
    p.chat_json = lambda m, s, max_tokens, t=0.0, *, model=None: (p.calls.append((model, max_tokens)), next(answers))[1]
    svc = ResilientService(p, length_retry_max_tokens=1000, **fast())
    reply = svc.chat_json([], {}, 300)
    assert reply.content == "{}" and reply.length_retried
    assert [mt for _, mt in p.calls] == [300, 600]
    assert svc.metrics()["service/primary/m/length_retries"] == 1


def test_response_cache_serves_a_repeat_without_a_request(tmp_path):
    p = Scripted()
    cache = ResponseCache(dir=str(tmp_path), ttl_s=3600)
    svc = ResilientService(p, cache=cache, **fast())
    msgs = [{"role": "user", "content": "chunk 1"}]
    a = svc.chat_json(msgs, {"type": "object"}, 8)
    b = svc.chat_json(msgs, {"type": "object"}, 8)
    assert not a.cached and b.cached and b.content == a.content and len(p.calls) == 1
    svc.chat_json(msgs, {"type": "object"}, 9)  # other options: another entry
    svc.chat_json([{"role": "user", "content": "chunk 2"}], {"type": "object"}, 8)
    assert len(p.calls) == 3
    m = svc.metrics()
    assert m["service/cache_hits"] == 1 and m["service/cache_hit_rate"] == 0.25
    # Expired entries are asked again.
    key = ResponseCache.key("primary", "m", msgs, {"type": "object"}, p.options(8, 0.0))
    assert cache.get(key) is not None and cache.get(key, now=time.time() + 7200) is None


def test_error_rate_alert_and_fail_on_stop_the_run():
    p = Scripted(fail=lambda n, model: ServiceError("HTTP 400", status=400) if n % 2 else None)
    svc = ResilientService(p, alerts=Alerts(error_rate=0.2, min_requests=4, fail_on=["error_rate"]), **fast())
    for _ in range(4):
        try:
            svc.chat_json([], {}, 8)
        except ServiceError:
            pass
    assert "alert.error_rate" in svc.tags() and svc.metrics()["alert/error_rate"] == 1.0
    with pytest.raises(AlertStop) as e:
        svc.chat_json([], {}, 8)
    assert e.value.stop_run and "fail_on" in str(e.value)


def test_resource_alerts_fire_at_start(tmp_path):
    p = Scripted()
    svc = ResilientService(p, alerts=Alerts(memory_percent=0.1, disk_free_gb=10**9, fail_on=["disk"]),
                           **fast()).bind(tmp_path)
    with pytest.raises(AlertStop, match="GB free"):
        svc.start()
    assert {"memory", "disk"} <= set(svc.alerts)


def test_resilience_settings_reject_a_wrong_key():
    with pytest.raises(Exception, match="retrys"):
        Resilience(retrys=3)


def test_a_budget_below_the_schemas_largest_answer_is_warned_once(caplog):
    from components.llm.extraction import json_schema
    from components.llm.reply import schema_token_budget

    schema = json_schema()
    need = schema_token_budget(schema)
    assert need > schema_token_budget(json_schema(max_acronyms=1, max_spec_refs=1))
    svc = ResilientService(Scripted(), **fast())
    svc.chat_json([], schema, need - 1)
    svc.chat_json([], schema, need - 1)
    svc.chat_json([], schema, need)
    assert caplog.text.count("largest answer needs") == 1


def test_middleware_wraps_each_request_and_the_audit_sees_each_attempt(tmp_path):
    """Scrubbing and alerts wrap a request, the audit trail each attempt on the wire: a request
    retried twice leaves three rows, each with the request's scrubbed count, and the alert on
    the error rate sees the request's outcome."""
    import json

    from components.llm.audit import Audit
    from components.llm.privacy import Privacy

    p = Scripted(fail=failing(2))
    p.base_url = "https://gw.example/v1"  # remote: scrubbed
    svc = ResilientService(p, privacy=Privacy(local_only=False), audit=Audit(),
                           alerts=Alerts(error_rate=0.0, min_requests=1), **fast()).bind(tmp_path)
    svc.start()
    reply = svc.chat_json([{"role": "user", "content": "mail a@b.org"}], {}, 8, chunk_id="c1")
    svc.close()
    rows = [json.loads(l) for l in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(r["status"], r["retries"], r["scrubbed"], r["chunk_id"]) for r in rows] == \
        [(503, 0, 1, "c1"), (503, 1, 1, "c1"), (200, 2, 1, "c1")]
    assert reply.retries == 2 and svc.metrics()["service/scrubbed_email"] == 1
    assert "error_rate" not in svc.alerts  # the request succeeded: 0 errors of 1

    p2 = Scripted(fail=always(lambda: ServiceError("HTTP 400", status=400)))
    svc2 = ResilientService(p2, alerts=Alerts(error_rate=0.5, min_requests=1), **fast())
    with pytest.raises(ServiceError):
        svc2.chat_json([], {}, 8)
    assert "error_rate" in svc2.alerts and svc2.tags()["alert.error_rate"].startswith("primary/m: 1/1")


def test_after_an_abort_nothing_more_leaves_the_chain():
    """A stop cuts the connections; a retry or a second ask of a cut answer that comes after it
    must not open a new one (the server, on its way down, would wait for it), nor start the
    fallback. The failure is transient: the next run asks again."""
    from components.llm.errors import Aborted

    p = Scripted()
    fb = Scripted(name="embedded")
    svc = ResilientService(p, fb, **fast())
    svc.start()
    calls_before_abort = []

    def abort_then_fail(n, model):
        calls_before_abort.append(n)
        svc.abort_requests()
        return ServiceError("HTTP 503", status=503)

    p.fail = abort_then_fail
    with pytest.raises(Aborted) as e:
        svc.chat_json([], {}, 8)
    assert e.value.transient and calls_before_abort == [1] and len(p.calls) == 1
    assert fb.started == 0 and fb.calls == []
    # The first attempt failed and the abort came during it: the retry is not sent.
    assert svc.metrics()["service/errors"] == 0 and svc.breaker.state == "closed"
