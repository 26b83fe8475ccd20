"""The chain around an LLM service: routing, retries, a breaker per service and model, the
fallback and the response cache; scrubbing, the audit log and alerts are middleware it runs
around each request (``middleware.py``).

A local server on a laptop goes away (sleep, model swap, OOM) or hangs. Transient failures are
retried with exponential backoff and jitter (honouring ``Retry-After``); after repeated failures a
target's breaker opens so the run stops hammering it, and the next target serves: the primary
model for a complex chunk, then ``routing.fallback_model``, then the fallback service (the
embedded llama.cpp server by default) — loudly, and recorded. After ``breaker_reset_s`` one
half-open probe goes back to the failed target; when it answers, traffic returns to it.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from pydantic import Field
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from components.llm.alerts import Alert
from components.llm.breaker import CircuitBreaker
from components.llm.errors import Aborted, CircuitOpen, ServiceFailure, ServiceUnavailable
from components.llm.middleware import Alarms, AuditTrail, Call, Scrubbing
from components.llm.reply import Reply, schema_token_budget
from components.llm.telemetry import Target, target_metrics
from components.settings import Settings

log = logging.getLogger(__name__)


class Resilience(Settings):
    """``service.resilience``: retries with backoff, the breakers, the truncation retry."""

    retries: int = Field(3, ge=1)                 # attempts per target, the first included
    backoff_initial_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(8.0, ge=0)
    retry_after_max_s: float = Field(60.0, ge=0)  # a server's Retry-After is honoured up to this
    breaker_failures: int = Field(5, ge=1)        # consecutive failures that open a breaker
    breaker_reset_s: float = Field(30.0, ge=0)    # open this long, then one half-open probe
    length_retry_max_tokens: int = Field(2048, ge=0)  # a cut answer is asked again with up to this

    def wrap(self, primary: Any, fallback: Any = None, **around: Any) -> "ResilientService":
        return ResilientService(
            primary, fallback, **around, retries=self.retries, backoff_initial_s=self.backoff_initial_s,
            backoff_max_s=self.backoff_max_s, retry_after_max_s=self.retry_after_max_s,
            breaker=CircuitBreaker(self.breaker_failures, self.breaker_reset_s),
            length_retry_max_tokens=self.length_retry_max_tokens)


def chain(service: Any) -> "ResilientService":
    """A ``service`` group's client behind the routing, retries, per-model breakers, cache and
    fallback its config composes (``service.chain_config``)."""
    c = service.chain_config
    fallback = None if c.on_unavailable == "fail" else c.fallback
    return (c.resilience or Resilience()).wrap(
        service, fallback, routing=c.routing, cache=c.cache, privacy=getattr(service, "privacy", None),
        audit=c.audit, alerts=c.alerts, on_unavailable=c.on_unavailable)


class ResilientService:
    """The chain the extract stage uses (``chat_json``, ``metrics``, ``tags``, ``bind``).

    ``primary`` is the configured service; its models (``service.model`` and the routed ones) are
    tried in the routing order, then the ``fallback`` service, built from config but started only
    when first needed."""

    def __init__(self, primary: Any, fallback: Any = None, *, routing: Any = None, cache: Any = None,
                 privacy: Any = None, audit: Any = None, alerts: Any = None,
                 on_unavailable: str = "fallback", retries: int = 3,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 8.0,
                 breaker: CircuitBreaker | None = None, retry_after_max_s: float = 60.0,
                 length_retry_max_tokens: int = 2048, clock: Callable[[], float] | None = None) -> None:
        self.primary = primary
        self._standby = fallback
        self.retries = max(1, retries)
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_max_s = retry_after_max_s
        self.length_retry_max_tokens = length_retry_max_tokens
        proto = breaker or CircuitBreaker()
        self._clock = clock or proto.clock
        self.routing = routing
        self.cache = cache
        self.on_unavailable = on_unavailable
        self.scrubbing = Scrubbing(privacy)
        self.audit = AuditTrail(audit)
        self.alarms = Alarms(alerts, getattr(cache, "dir", None))
        self._lock = threading.Lock()
        self._fallback_lock = threading.Lock()
        self._aborted = threading.Event()
        self.fallback_started = False
        self.fallback_reason: str | None = None
        self.requests_retried = 0
        self._last: Target | None = None
        self._budget_checked: set = set()

        def breaker_for(key: str) -> CircuitBreaker:
            b = CircuitBreaker(proto.max_failures, proto.reset_s, clock=proto.clock)
            b.on_change = lambda before, after, key=key: self._breaker_changed(key, before, after)
            return b

        models = self.routing.models(primary.model) if self.routing else [getattr(primary, "model", "?")]
        self.targets: dict[str, Target] = {}
        for m in models:
            t = Target(primary, m, None, False)  # type: ignore[arg-type]
            t.breaker = breaker_for(t.key)
            self.targets[t.key] = t
        self._fallback_target: Target | None = None
        if fallback is not None:
            t = Target(fallback, getattr(fallback, "model", "?"), None, True)  # type: ignore[arg-type]
            t.key = f"fallback:{t.key}" if t.key in self.targets else t.key
            t.breaker = breaker_for(t.key)
            self._fallback_target = t
            self.targets[t.key] = t
        self._primary_target = next(iter(self.targets.values()))

    # -- compatibility and introspection ----------------------------------------------------
    @property
    def breaker(self) -> CircuitBreaker:
        """The primary model's breaker."""
        return self._primary_target.breaker

    @property
    def used(self) -> Any:
        """The service that served last (before any request: the one that will serve first)."""
        if self._last is not None:
            return self._last.service
        if self.fallback_started and self._primary_target.breaker.state != "closed":
            return self._standby
        return self.primary

    @property
    def fallback(self) -> Any:
        """The fallback service once it has been started, else None."""
        return self._standby if self.fallback_started else None

    @property
    def name(self) -> str:
        return getattr(self.used, "name", "?")

    @property
    def alerts(self) -> dict[str, Alert]:
        """The alerts fired so far, by name."""
        return self.alarms.fired

    def bind(self, run_dir: str | Path | None) -> "ResilientService":
        """Write ``audit.jsonl`` into ``run_dir`` and watch its disk."""
        if run_dir is not None:
            self.audit.bind(run_dir)
            self.alarms.disk_path = str(run_dir)
        return self

    # -- start -----------------------------------------------------------------------------
    def start(self) -> None:
        """Check the primary (server, version, models) and, when it cannot serve, fail with the
        reason (``service.on_unavailable=fail`` or no fallback) or start the fallback now."""
        self.alarms.check_resources(force=True)
        try:
            self.primary.start()
        except ServiceUnavailable as exc:
            self.alarms.fire("service_down", str(exc))
            if self.on_unavailable == "fail":
                raise ServiceUnavailable(f"{exc} (service.on_unavailable=fail: not falling back)",
                                         transient=False) from None
            if self._standby is None:
                raise ServiceUnavailable(f"{exc} (no fallback configured)", transient=exc.transient) from None
            for t in self.targets.values():
                if not t.is_fallback_service:
                    t.breaker.force_open(str(exc))
            self._start_fallback(str(exc))
        else:
            for model, step in getattr(self.primary, "missing_models", {}).items():
                key = f"{getattr(self.primary, 'name', '?')}/{model}"
                if key in self.targets:
                    self.targets[key].breaker.force_open(f"model {model} missing: {step}")
        self.alarms.raise_if_stopping()

    def _start_fallback(self, reason: str) -> None:
        with self._fallback_lock:
            if self.fallback_started:
                return
            fb = self._standby
            log.warning("=" * 72)
            log.warning("SERVICE FALLBACK: %s", reason)
            log.warning("Using fallback service '%s' (%s) while '%s' cannot serve; half-open probes "
                        "send traffic back when it recovers.", getattr(fb, "name", "?"),
                        getattr(fb, "model", "?"), getattr(self.primary, "name", "?"))
            log.warning("=" * 72)
            try:
                fb.start()
            except ServiceUnavailable as exc:
                self._fallback_target.breaker.force_open(str(exc))
                raise ServiceUnavailable(f"{reason}; and the fallback '{getattr(fb, 'name', '?')}' "
                                         f"cannot serve either: {exc}") from None
            self.fallback_started = True
            self.fallback_reason = self.fallback_reason or reason

    # -- requests --------------------------------------------------------------------------
    def _order(self, complexity: float | None) -> list[Target]:
        name = getattr(self.primary, "name", "?")
        models = (self.routing.order(self.primary.model, complexity) if self.routing
                  else [self._primary_target.model])
        order = [self.targets[f"{name}/{m}"] for m in models]
        if self._fallback_target is not None:
            order.append(self._fallback_target)
        return order

    def chat_json(self, messages: list[dict], schema: dict, max_tokens: int,
                  temperature: float = 0.0, *, complexity: float | None = None,
                  chunk_id: str | None = None) -> Reply:
        self.alarms.raise_if_stopping()
        self._check_budget(schema, max_tokens)
        order = self._order(complexity)
        first = order[0]
        hit = self._cache_get(first, messages, schema, max_tokens, temperature)
        if hit is not None:
            self.audit.row(first, chunk_id, status="cache", cache_hit=True, latency_s=0.0)
            return hit
        last_exc: ServiceFailure | None = None
        skipped = []
        for t in order:
            if not t.breaker.allow():
                skipped.append(t.key)
                continue
            try:
                if t.is_fallback_service and not self.fallback_started:
                    self._start_fallback(str(last_exc) if last_exc else
                                         f"circuit open for {', '.join(skipped)}")
                reply = self._call(t, messages, schema, max_tokens, temperature, chunk_id)
            except ServiceFailure as exc:
                if isinstance(exc, Aborted) or (not isinstance(exc, ServiceUnavailable) and not exc.transient):
                    raise  # stopping, or the request itself is wrong (4xx, invalid answer): no one else helps
                last_exc = exc
                continue
            except BaseException:
                t.breaker.abandon()
                raise
            if t is not first:
                reply.fallback = True
                with self._lock:
                    t.stats.fallbacks += 1
                reason = str(last_exc) if last_exc else f"circuit open for {', '.join(skipped)}"
                self.fallback_reason = self.fallback_reason or reason
            self._cache_put(t, messages, schema, max_tokens, temperature, reply)
            self._last = t
            return reply
        if last_exc is None:
            raise CircuitOpen("every configured model's circuit is open (" + "; ".join(
                f"{t.key}: {t.breaker.reason or 'recent failures'}" for t in order) + ")")
        raise last_exc

    def _check_budget(self, schema: dict, max_tokens: int) -> None:
        key = (id(schema), max_tokens)
        if key in self._budget_checked:
            return
        self._budget_checked.add(key)
        need = schema_token_budget(schema)
        if max_tokens < need:
            log.warning("max_tokens=%d is below the ~%d tokens the schema's largest answer needs; "
                        "long answers will be cut (and asked once more with up to %d)", max_tokens,
                        need, self.length_retry_max_tokens)

    def _wait(self, rs) -> float:
        base = wait_exponential_jitter(initial=self.backoff_initial_s, max=self.backoff_max_s,
                                       jitter=self.backoff_initial_s)(rs)
        ra = getattr(rs.outcome.exception(), "retry_after", None)
        return max(base, min(ra, self.retry_after_max_s)) if ra else base

    def _call(self, t: Target, messages, schema, max_tokens, temperature, chunk_id) -> Reply:
        call = Call(t, messages, schema, max_tokens, temperature, chunk_id)
        return self.scrubbing(call, lambda c: self.alarms(c, self._request))

    def _request(self, call: Call) -> Reply:
        """One request to one target: its attempts, a second ask when the answer was cut, and
        what they tell the target's breaker and statistics."""
        t, max_tokens = call.target, call.max_tokens
        svc = t.service
        overflow = svc.context_overflow(call.messages, max_tokens) if hasattr(svc, "context_overflow") else 0
        if overflow:
            log.warning("%s: chunk %s: prompt plus %d answer tokens exceed the context window by ~%d "
                        "tokens; the server will cut the chunk (raise num_ctx or lower chunk size)",
                        t.key, call.chunk_id or "?", max_tokens, overflow)
        t0 = time.perf_counter()
        with self._lock:
            t.stats.requests += 1
            t.stats.context_overflows += bool(overflow)
        try:
            reply = self._attempts(call)
            length_retried = False
            if (reply.finish_reason == "length" and self.length_retry_max_tokens > max_tokens):
                more = min(self.length_retry_max_tokens, max_tokens * 2)
                log.info("%s: chunk %s cut at %d tokens; asking once more with %d", t.key,
                         call.chunk_id or "?", max_tokens, more)
                again = self._attempts(replace(call, max_tokens=more))
                again.thinking_stripped += reply.thinking_stripped
                again.retries += reply.retries
                reply, length_retried = again, True
        except Aborted:
            raise  # says nothing about the target
        except ServiceFailure as exc:
            with self._lock:
                t.stats.errors += 1
            if isinstance(exc, ServiceUnavailable) or exc.transient:
                t.breaker.failure(str(exc))
            else:
                t.breaker.success()  # the server answered: it is up, the request was wrong
            raise
        t.breaker.success()
        reply.length_retried = length_retried
        reply.seconds = time.perf_counter() - t0
        with self._lock:
            s = t.stats
            s.ok += 1
            s.latencies.append(reply.seconds)
            s.prompt_tokens += reply.prompt_tokens
            s.completion_tokens += reply.completion_tokens
            s.seconds += reply.seconds
            s.thinking_stripped += bool(reply.thinking_stripped)
            s.length_retries += length_retried
        return reply

    def _attempts(self, call: Call) -> Reply:
        """Transient failures tried again with backoff; each attempt through the audit trail."""
        t = call.target
        n = 0
        for attempt in Retrying(stop=stop_after_attempt(self.retries), wait=self._wait,
                                retry=retry_if_exception(lambda e: isinstance(e, ServiceFailure) and e.transient
                                                         and not isinstance(e, Aborted)),
                                reraise=True):
            with attempt:
                n += 1
                if n > 1:
                    with self._lock:
                        t.stats.retries += 1
                        self.requests_retried += 1
                reply = self.audit(replace(call, attempt=n), self._wire)
        return reply

    def _wire(self, call: Call) -> Reply:
        # A stop cut the connections (abort_requests): no attempt after it may open a new one,
        # or the server, on its way down, waits for that request's generation.
        if self._aborted.is_set():
            raise Aborted("the run is stopping; not sent")
        t = call.target
        reply = t.service.chat_json(call.messages, call.schema, call.max_tokens, call.temperature, model=t.model)
        reply.retries = call.attempt - 1
        reply.model = reply.model or t.model
        reply.service = reply.service or getattr(t.service, "name", None)
        return reply

    # -- cache -----------------------------------------------------------------------------
    def _cache_key(self, t: Target, messages, schema, max_tokens, temperature) -> str:
        opts = t.service.options(max_tokens, temperature) if hasattr(t.service, "options") else {
            "max_tokens": max_tokens, "temperature": temperature}
        return self.cache.key(getattr(t.service, "name", "?"), t.model, messages, schema, opts)

    def _cache_get(self, t: Target, messages, schema, max_tokens, temperature) -> Reply | None:
        if self.cache is None or not self.cache.active:
            return None
        data = self.cache.get(self._cache_key(t, messages, schema, max_tokens, temperature))
        if data is None:
            return None
        try:
            reply = replace(Reply(content=""), **data)
        except TypeError:
            return None
        reply.cached = True
        with self._lock:
            t.stats.cache_hits += 1
        self._last = t
        return reply

    def _cache_put(self, t: Target, messages, schema, max_tokens, temperature, reply: Reply) -> None:
        # Only complete answers: a cut or empty one should be asked again next time.
        if (self.cache is None or not self.cache.active or reply.finish_reason not in ("stop", None)
                or not reply.content):
            return
        self.cache.put(self._cache_key(t, messages, schema, max_tokens, temperature), reply.cacheable())

    # -- breakers ------------------------------------------------------------------------
    def _breaker_changed(self, key: str, before: str, after: str) -> None:
        t = self.targets.get(key)
        level = logging.WARNING if after == "open" else logging.INFO
        log.log(level, "breaker %s: %s -> %s%s", key, before, after,
                f" ({t.breaker.reason})" if t and after == "open" and t.breaker.reason else "")
        if t is None:
            return
        with self._lock:
            if after == "open" and before != "open":
                t.stats.breaker_opens += 1
            if after == "closed" and before != "closed":
                t.stats.breaker_recoveries += 1
        if after == "open":
            self.alarms.fire("breaker_open", f"{key}: circuit open ({t.breaker.reason or 'failures'})")
            if t is self._primary_target:
                self.alarms.fire("service_down", f"{key}: {t.breaker.reason or 'not answering'}")

    def check_alerts(self) -> None:
        """Raise AlertStop when an alert listed in ``alerts.fail_on`` has fired."""
        self.alarms.raise_if_stopping()

    # -- what MLflow gets ------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        with self._lock:
            out = target_metrics(self.targets.values())
        return {**out, **self.scrubbing.metrics(), **self.alarms.metrics()}

    def tags(self) -> dict[str, str]:
        """The run's service tags, made here only: ``service.used`` the services that answered
        (their names; before any answer, the one that will), ``service.targets`` the
        service/model pairs, ``service.fallback`` whether anything but the routed first choice
        served (``extract/fallback_used`` is the same fact)."""
        with self._lock:
            served = {t.key: t.stats.ok + t.stats.cache_hits for t in self.targets.values()}
            fell_back = self.fallback_started or any(t.stats.fallbacks for t in self.targets.values())
        targets = [k for k, n in served.items() if n]
        tags = {"service.configured": str(getattr(self.primary, "name", "?")),
                "service.used": ",".join(sorted({k.split("/")[0] for k in targets})) or self.name,
                "service.targets": ",".join(targets) or "none",
                "service.models": json.dumps({k: n for k, n in served.items() if n}, sort_keys=True),
                "service.fallback": str(fell_back).lower(),
                "service.breakers": ",".join(f"{k}={t.breaker.state}" for k, t in self.targets.items())}
        if self.fallback_reason:
            tags["service.fallback_reason"] = self.fallback_reason[:500]
        tags.update(self.alarms.tags())
        return tags

    def abort_requests(self) -> int:
        """Cut this process's open connections to the serving endpoint, so the server cancels
        their generations, and send nothing more (no retry, no second ask of a cut answer:
        ``Aborted``). Without it the embedded server's close would wait for them, holding the GIL
        their replies need (``EmbeddedLlamaService.close``)."""
        self._aborted.set()
        cut = getattr(self.used, "cut_connections", None)
        return cut() if cut else 0

    def close(self) -> None:
        for s in (self._standby, self.primary):
            if s is not None:
                s.close()
        self.audit.close()
