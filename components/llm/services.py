"""LLM services that answer a chat request with JSON constrained by a schema.

Three wire formats cover what users run: the embedded llama.cpp server (xllamacpp, offline),
Ollama's native ``/api/chat``, and any OpenAI-compatible server (LM Studio, vLLM, llama-server).
An adapter is small: ``start()`` checks the server and its models (raising ServiceUnavailable
with the exact step that fixes it), ``chat_json(..., model=)`` sends one request, ``health()``
reports status, version and models. Routing, retries, breakers, cache, scrubbing, audit and
alerts are the chain's (``components.llm.resilience``), composed by ``chain()``.
"""
from __future__ import annotations

import email.utils
import json
import logging
import os
import re
import threading
import time
from typing import Any

import httpx

from components.llm import connections, credentials
from components.llm.chain_config import ChainConfig
from components.llm.errors import (CircuitOpen, EndpointRefused, InvalidResponse, ModelMissing,  # noqa: F401
                                   ServiceError, ServiceFailure, ServiceUnavailable)
from components.llm.privacy import Privacy, is_loopback
from components.llm.reply import Reply
from components.versions import installed

log = logging.getLogger(__name__)


_THINK = re.compile(r"^\s*<think>(.*?)(?:</think>|$)\s*", re.S)


def split_thinking(content: str, thinking: str | None = None) -> tuple[str, int]:
    """(answer, characters of reasoning removed): a ``<think>`` block that older servers put in
    front of the answer, and a separate ``thinking``/``reasoning_content`` field."""
    stripped = len(thinking or "")
    m = _THINK.match(content or "")
    if m:
        stripped += max(1, len(m.group(1)))
        content = content[m.end():]
    return content or "", stripped


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def has_model(name: str, available: set[str]) -> bool:
    return name in available or f"{name}:latest" in available


class ChatService:
    """What the ``service`` group builds: one server's client. What the group composes around it
    (fallback, resilience, routing, cache, audit, alerts) is kept untouched in ``chain_config``
    for ``resilience.chain``; ``privacy`` is the client's own (TLS, which endpoints it may reach)
    and the chain's scrubbing reads it too."""

    server = "openai-compatible"
    model: str
    base_url: str | None = None

    def __init__(self, *, name: str, model: str, base_url: str | None, timeout_s: float = 120.0,
                 connect_timeout_s: float = 5.0, max_concurrency: int = 4,
                 context_tokens: int | None = None, api_key: str | None = None,
                 fallback: "ChatService | None" = None, resilience: Any = None, routing: Any = None,
                 cache: Any = None, on_unavailable: str = "fallback", privacy: Privacy | None = None,
                 audit: Any = None, alerts: Any = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.chain_config = ChainConfig(fallback, resilience, routing, cache, on_unavailable, audit, alerts)
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.name = name
        self.model = model
        self.privacy = privacy or Privacy()
        # The embedded server is ours, on loopback: no key, no endpoint to look up.
        key, url = (None, base_url) if self.server == "embedded" else credentials.resolve(name, api_key, base_url)
        self._key = key
        self.base_url = url.rstrip("/") if url else None
        if self.base_url:
            self.privacy.check_endpoint(self.base_url, name)
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_concurrency = max_concurrency
        self.context_tokens = context_tokens
        # The models this server will be asked for (the routed ones too): what start() checks.
        self.models = routing.models(model) if routing else [model]
        self.missing_models: dict[str, str] = {}  # model -> the step that gets it
        self._transport = transport
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()
        # Bounded concurrency per service: a laptop server with 2 slots gains nothing from 8
        # requests in flight, and queues them where our timeouts count.
        self._slots = threading.BoundedSemaphore(max_concurrency)

    def models_needed(self) -> list[str]:
        return list(self.models)

    @property
    def remote(self) -> bool:
        return bool(self.base_url) and not is_loopback(self.base_url)

    # -- HTTP ------------------------------------------------------------------------------
    @property
    def http(self) -> httpx.Client:
        with self._client_lock:
            if self._client is None:
                headers = {"authorization": f"Bearer {self._key.reveal()}"} if self._key else {}
                self._client = httpx.Client(
                    base_url=self.base_url or "", headers=headers, transport=self._transport,
                    verify=self.privacy.verify(),
                    timeout=httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s),
                    limits=httpx.Limits(max_connections=self.max_concurrency,
                                        max_keepalive_connections=self.max_concurrency))
            return self._client

    def _safe(self, text: str) -> str:
        """A server's error text, cut, with our key removed should the server echo it."""
        text = str(text)[:300]
        if self._key and self._key.reveal() in text:
            text = text.replace(self._key.reveal(), "***")
        return text

    def _get(self, path: str, timeout: float = 5.0) -> tuple[Any, float]:
        t0 = time.perf_counter()
        try:
            r = self.http.get(path, timeout=timeout)
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"{self.name}: cannot reach {self.label()} "
                                     f"({type(exc).__name__}){self.reach_hint()}") from None
        if r.status_code != 200:
            raise self._status_error(r, path)
        try:
            return r.json(), time.perf_counter() - t0
        except ValueError:
            raise InvalidResponse(f"{self.name}: {path} answered with malformed JSON") from None

    def _post(self, path: str, body: dict) -> tuple[dict, float, int, int]:
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        with self._slots:
            t0 = time.perf_counter()
            try:
                r = self.http.post(path, content=payload, headers={"content-type": "application/json"})
            except httpx.TimeoutException as exc:
                raise ServiceUnavailable(
                    f"{self.name}: no answer from {self.base_url} within {self.timeout_s:g} s "
                    f"({type(exc).__name__})", request_bytes=len(payload)) from None
            except httpx.TransportError as exc:
                raise ServiceUnavailable(f"{self.name}: connection to {self.base_url} failed: "
                                         f"{type(exc).__name__}", request_bytes=len(payload)) from None
            seconds = time.perf_counter() - t0
        if r.status_code != 200:
            err = self._status_error(r, path)
            err.request_bytes, err.response_bytes = len(payload), len(r.content)
            raise err
        try:
            data = r.json()
        except ValueError:
            raise InvalidResponse(f"{self.name}: malformed JSON from {path} (HTTP 200, "
                                  f"{len(r.content)} bytes)", request_bytes=len(payload),
                                  response_bytes=len(r.content)) from None
        if not isinstance(data, dict):
            raise InvalidResponse(f"{self.name}: {path} answered {type(data).__name__}, not an object")
        return data, seconds, len(payload), len(r.content)

    def _status_error(self, r: httpx.Response, path: str) -> ServiceError:
        try:
            err = r.json().get("error", r.text)
            detail = err.get("message", err) if isinstance(err, dict) else err
        except (ValueError, AttributeError):
            detail = r.text
        detail = self._safe(detail)
        if r.status_code == 404 and "model" in detail.lower():
            return ModelMissing(f"{self.name}: {detail}", status=404)
        return ServiceError(f"{self.name}: HTTP {r.status_code} from {path}: {detail}",
                            status=r.status_code, retry_after=_retry_after(r.headers.get("retry-after")))

    # -- checks ----------------------------------------------------------------------------
    def label(self) -> str:
        names = {"ollama": "Ollama", "lmstudio": "LM Studio"}
        return f"{names[self.server]} at {self.base_url}" if self.server in names else str(self.base_url)

    def reach_hint(self) -> str:
        return ""

    def missing_step(self, model: str, available: set[str]) -> str:
        served = ", ".join(sorted(available)[:10]) or "none"
        return f"the server at {self.base_url} does not serve '{model}' (it serves: {served})"

    def list_models(self) -> tuple[set[str], float]:
        data, seconds = self._get("/models")
        return {m.get("id") for m in data.get("data", []) if m.get("id")}, seconds

    def version(self) -> str | None:
        return None

    def health(self) -> dict[str, Any]:
        """Status, latency, version and models, for ``python -m runner.health`` and ``start()``."""
        row: dict[str, Any] = {"component": f"service {self.name}", "endpoint": self.base_url,
                               "status": "up", "latency_ms": None, "version": None, "models": [],
                               "missing": {}, "detail": ""}
        try:
            available, seconds = self.list_models()
            row["version"] = self.version()
        except ServiceFailure as exc:
            row.update(status="down", detail=str(exc))
            return row
        row["latency_ms"] = round(seconds * 1000, 1)
        row["models"] = sorted(available)
        row["missing"] = {m: self.missing_step(m, available) for m in self.models_needed()
                          if not has_model(m, available)}
        if row["missing"]:
            row["detail"] = "; ".join(f"missing {m}: {step}" for m, step in row["missing"].items())
        return row

    def start(self) -> None:
        row = self.health()
        if row["status"] != "up":
            raise ServiceUnavailable(row["detail"])
        self.missing_models = dict(row["missing"])
        if self.model in self.missing_models:
            raise ModelMissing(f"{self.name}: model '{self.model}' is not available at "
                               f"{self.base_url}; {self.missing_models[self.model]}")
        for m, step in self.missing_models.items():
            log.warning("%s: routed model '%s' is not available (%s); its chunks go to '%s'",
                        self.name, m, step, self.model)
        log.info("%s at %s: up (%s ms)%s, models: %s", self.name, self.base_url, row["latency_ms"],
                 f", version {row['version']}" if row["version"] else "", ", ".join(self.models_needed()))

    def context_overflow(self, messages: list[dict], max_tokens: int) -> int:
        """Estimated tokens by which the prompt plus the answer budget exceed the context window
        (0 when it fits or the window is unknown); the server would silently cut the chunk."""
        if not self.context_tokens:
            return 0
        prompt = sum(len(str(m.get("content", ""))) for m in messages) // 3 + 8 * len(messages)
        return max(0, prompt + max_tokens - self.context_tokens)

    def options(self, max_tokens: int, temperature: float) -> dict[str, Any]:
        """Everything besides messages and schema that decides the answer (the cache key)."""
        return {"max_tokens": max_tokens, "temperature": temperature}

    def chat_json(self, messages: list[dict], schema: dict, max_tokens: int,
                  temperature: float = 0.0, *, model: str | None = None) -> Reply:
        raise NotImplementedError

    def cut_connections(self) -> int:
        """Shut down this process's open connections to this server, so the server sees its
        clients gone and cancels their generations, and the threads blocked reading a reply wake
        with an error. Returns how many were cut."""
        return connections.cut(self.base_url)

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None


class OpenAICompatibleService(ChatService):
    """OpenAI ``/v1/chat/completions`` with ``response_format: json_schema`` (LM Studio, vLLM,
    llama-server, gateways). Reasoning in ``reasoning_content`` is stripped and counted."""

    def __init__(self, base_url: str | None = None, model: str = "default", api_key: str | None = None,
                 timeout_s: float = 120.0, name: str = "openai", server: str = "openai-compatible",
                 top_p: float | None = None, seed: int | None = None, **common: Any) -> None:
        self.server = server
        self.top_p = top_p
        self.seed = seed
        super().__init__(name=name, model=model, base_url=base_url, api_key=api_key,
                         timeout_s=timeout_s, **common)
        if not self.base_url:  # neither config, <NAME>_BASE_URL nor the credentials file
            self.base_url = self.LOCAL_DEFAULT

    LOCAL_DEFAULT = "http://127.0.0.1:8000/v1"  # vLLM's and llama-server's usual local address

    def reach_hint(self) -> str:
        if self.server == "lmstudio":
            return "; start LM Studio's server (Developer tab -> Start server, or `lms server start`)"
        return ""

    def missing_step(self, model: str, available: set[str]) -> str:
        if self.server == "lmstudio":
            return (f"load it in LM Studio (Developer tab -> Select a model) or run `lms get {model}` "
                    f"then `lms load {model}`")
        return super().missing_step(model, available)

    def options(self, max_tokens: int, temperature: float) -> dict[str, Any]:
        return {"max_tokens": max_tokens, "temperature": temperature, "top_p": self.top_p,
                "seed": self.seed}

    def chat_json(self, messages: list[dict], schema: dict, max_tokens: int,
                  temperature: float = 0.0, *, model: str | None = None) -> Reply:
        model = model or self.model
        body: dict[str, Any] = {
            "model": model, "messages": messages, "max_tokens": max_tokens,
            "temperature": temperature, "stream": False,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "extraction", "schema": schema, "strict": True}}}
        if self.top_p is not None:
            body["top_p"] = self.top_p
        if self.seed is not None:
            body["seed"] = self.seed
        data, seconds, sent, got = self._post("/chat/completions", body)
        try:
            choice = data["choices"][0]
            msg = choice.get("message") or {}
        except (KeyError, IndexError, TypeError):
            raise InvalidResponse(f"{self.name}: answer has no choices", request_bytes=sent,
                                  response_bytes=got) from None
        thinking = msg.get("reasoning_content") or msg.get("reasoning")
        content, stripped = split_thinking(msg.get("content") or "", thinking if isinstance(thinking, str) else None)
        usage = data.get("usage") or {}
        timings = data.get("timings") or {}  # llama.cpp's server
        server = ((timings.get("prompt_ms") or 0) + (timings.get("predicted_ms") or 0)) / 1000 if timings else None
        return Reply(content=content, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                     completion_tokens=int(usage.get("completion_tokens") or 0), seconds=seconds,
                     finish_reason=choice.get("finish_reason"), model=model, service=self.name,
                     thinking_stripped=stripped, request_bytes=sent, response_bytes=got,
                     server_seconds=server)


class OllamaService(ChatService):
    """Ollama's native API: ``POST /api/chat`` with the JSON schema in ``format`` and ``think``
    off for extraction (Qwen3 thinks by default and would spend the budget reasoning)."""

    server = "ollama"

    def __init__(self, base_url: str = "http://127.0.0.1:11434", model: str = "qwen3:1.7b",
                 timeout_s: float = 120.0, keep_alive: str | None = "5m", name: str = "ollama",
                 think: bool | None = False, num_ctx: int | None = None, top_p: float | None = None,
                 seed: int | None = None, pull_missing: bool = False, **common: Any) -> None:
        if base_url and "://" not in base_url:  # OLLAMA_HOST is often "host:port"
            base_url = f"http://{base_url}"
        self.keep_alive = keep_alive
        self.think = think
        self.num_ctx = num_ctx
        self.top_p = top_p
        self.seed = seed
        self.pull_missing = pull_missing
        self._no_think: set[str] = set()  # models that reject the `think` field
        common.setdefault("context_tokens", num_ctx)
        super().__init__(name=name, model=model, base_url=base_url, timeout_s=timeout_s, **common)

    def reach_hint(self) -> str:
        return "; is `ollama serve` running (or the Ollama app open)?"

    def missing_step(self, model: str, available: set[str]) -> str:
        return f"run `ollama pull {model}` (or service.pull_missing=true)"

    def list_models(self) -> tuple[set[str], float]:
        data, seconds = self._get("/api/tags")
        names = set()
        for m in data.get("models", []):
            names |= {m.get("name"), m.get("model")}
        return names - {None}, seconds

    def version(self) -> str | None:
        try:
            return self._get("/api/version")[0].get("version")
        except ServiceFailure:
            return None

    def start(self) -> None:
        if self.pull_missing:
            try:
                available, _ = self.list_models()
            except ServiceFailure as exc:
                raise ServiceUnavailable(str(exc)) from None
            for m in self.models_needed():
                if not has_model(m, available):
                    self.pull(m)
        super().start()

    def pull(self, model: str, progress: bool = True) -> None:
        """``POST /api/pull``, streaming: one JSON status line after another, with a progress bar."""
        from tqdm import tqdm

        log.info("%s: pulling %s", self.name, model)
        bar = None
        try:
            with self.http.stream("POST", "/api/pull", json={"model": model, "stream": True},
                                  timeout=httpx.Timeout(None, connect=self.connect_timeout_s)) as r:
                if r.status_code != 200:
                    r.read()
                    raise self._status_error(r, "/api/pull")
                for line in r.iter_lines():
                    if not line.strip():
                        continue
                    try:
                        ev = json.loads(line)
                    except ValueError:
                        raise InvalidResponse(f"{self.name}: /api/pull sent a malformed line") from None
                    if "error" in ev:
                        raise ModelMissing(f"{self.name}: pulling {model} failed: {self._safe(ev['error'])}")
                    if ev.get("total") and progress:
                        if bar is None or bar.desc != ev.get("digest", "")[:19]:
                            if bar is not None:
                                bar.close()
                            bar = tqdm(total=ev["total"], unit="B", unit_scale=True,
                                       desc=ev.get("digest", "")[:19], leave=False)
                        bar.n = ev.get("completed", 0)
                        bar.refresh()
                    if ev.get("status") == "success":
                        log.info("%s: pulled %s", self.name, model)
                        return
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"{self.name}: pulling {model}: {type(exc).__name__}") from None
        finally:
            if bar is not None:
                bar.close()
        raise ModelMissing(f"{self.name}: pulling {model} ended without success")

    def options(self, max_tokens: int, temperature: float) -> dict[str, Any]:
        return {"max_tokens": max_tokens, "temperature": temperature, "top_p": self.top_p,
                "seed": self.seed, "num_ctx": self.num_ctx, "think": self.think}

    def chat_json(self, messages: list[dict], schema: dict, max_tokens: int,
                  temperature: float = 0.0, *, model: str | None = None) -> Reply:
        model = model or self.model
        opts: dict[str, Any] = {"temperature": temperature, "num_predict": max_tokens}
        for k in ("num_ctx", "top_p", "seed"):
            if getattr(self, k) is not None:
                opts[k] = getattr(self, k)
        body: dict[str, Any] = {"model": model, "messages": messages, "stream": False,
                                "format": schema, "options": opts}
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        if self.think is not None and model not in self._no_think:
            body["think"] = self.think
        try:
            data, seconds, sent, got = self._post("/api/chat", body)
        except ServiceError as exc:
            # Models without a thinking mode reject the field on some Ollama versions.
            if exc.status == 400 and "think" in str(exc).lower() and "think" in body:
                self._no_think.add(model)
                return self.chat_json(messages, schema, max_tokens, temperature, model=model)
            raise
        msg = data.get("message")
        if not isinstance(msg, dict):
            raise InvalidResponse(f"{self.name}: answer has no message", request_bytes=sent,
                                  response_bytes=got)
        content, stripped = split_thinking(msg.get("content") or "", msg.get("thinking"))
        return Reply(content=content, prompt_tokens=int(data.get("prompt_eval_count") or 0),
                     completion_tokens=int(data.get("eval_count") or 0), seconds=seconds,
                     finish_reason=data.get("done_reason"), model=model, service=self.name,
                     thinking_stripped=stripped, request_bytes=sent, response_bytes=got,
                     server_seconds=(data["total_duration"] / 1e9) if data.get("total_duration") else None)


class EmbeddedLlamaService(ChatService):
    """A real llama.cpp server (xllamacpp) in this process, on a free loopback port."""

    server = "embedded"

    def __init__(self, gguf: str | None = None, model_alias: str = "embedded", n_ctx: int = 2048,
                 n_parallel: int = 1, threads: int | None = None, batch_tokens: int | None = None,
                 timeout_s: float = 120.0, name: str = "embedded", **common: Any) -> None:
        common.setdefault("context_tokens", n_ctx // max(1, n_parallel))  # slots split the window
        common.setdefault("max_concurrency", n_parallel)
        super().__init__(name=name, model=model_alias, base_url=None, timeout_s=timeout_s, **common)
        self.gguf = gguf
        self.n_ctx = n_ctx
        self.n_parallel = n_parallel
        self.threads = threads
        if batch_tokens is not None and batch_tokens < 1:
            raise ValueError(f"batch_tokens must be at least 1 (got {batch_tokens})")
        self.batch_tokens = batch_tokens
        self._server = None
        self._inner: OpenAICompatibleService | None = None
        self._start_lock = threading.Lock()

    def list_models(self) -> tuple[set[str], float]:
        self.start()
        assert self._inner is not None
        return self._inner.list_models()

    def health(self) -> dict[str, Any]:
        try:
            self.start()
        except ServiceFailure as exc:
            return {"component": f"service {self.name}", "endpoint": None, "status": "down",
                    "latency_ms": None, "version": None, "models": [], "missing": {}, "detail": str(exc)}
        row = super().health()
        row["version"] = f"llama.cpp (xllamacpp {installed('xllamacpp') or '?'})"
        return row

    def start(self) -> None:
        with self._start_lock:
            if self._server is not None:
                return
            try:
                import xllamacpp
            except ImportError as exc:
                raise ServiceUnavailable(f"embedded: xllamacpp is not installed ({exc})", transient=False) from None
            from components.training.gguf import embedded_gguf_path

            path = self.gguf or str(embedded_gguf_path())
            if not os.path.isfile(path):
                raise ServiceUnavailable(f"embedded: GGUF model {path} not found", transient=False)
            p = xllamacpp.CommonParams()
            p.model.path = path
            p.model_alias = {self.model}
            p.n_ctx = self.n_ctx
            p.n_parallel = self.n_parallel
            p.port = 0  # the OS picks a free port
            p.hostnames = ["127.0.0.1"]
            threads = self.threads or max(1, (os.cpu_count() or 2))
            p.cpuparams.n_threads = threads
            p.cpuparams_batch.n_threads = threads
            if self.batch_tokens:
                # llama.cpp's teardown (and so a stop) waits for the decode call in progress, and
                # a call decodes up to n_batch prompt tokens (2,048 by default): a smaller batch
                # stops sooner on a slow CPU, at some throughput (benchmarks/embedded_stop.py).
                p.n_batch = self.batch_tokens
                p.n_ubatch = min(p.n_ubatch, self.batch_tokens)
            p.verbosity = 0 if not log.isEnabledFor(logging.DEBUG) else 3
            p.warmup = False
            t0 = time.perf_counter()
            try:
                self._server = xllamacpp.Server(p)
            except Exception as exc:
                raise ServiceUnavailable(f"embedded: llama.cpp server failed to start: {exc}") from None
            self.base_url = self._server.listening_address.rstrip("/")
            log.info("embedded llama.cpp server (%s) on %s in %.1fs", os.path.basename(path),
                     self.base_url, time.perf_counter() - t0)
            self._inner = OpenAICompatibleService(
                base_url=f"{self.base_url}/v1", model=self.model, timeout_s=self.timeout_s,
                name=self.name, server="embedded", max_concurrency=self.max_concurrency,
                connect_timeout_s=self.connect_timeout_s, privacy=self.privacy)

    def chat_json(self, messages: list[dict], schema: dict, max_tokens: int,
                  temperature: float = 0.0, *, model: str | None = None) -> Reply:
        if self._inner is None:
            self.start()
        assert self._inner is not None
        return self._inner.chat_json(messages, schema, max_tokens, temperature)

    def close(self) -> None:
        if self._server is not None:
            # llama.cpp's destructor holds the GIL while it waits for the requests in flight,
            # and a reply cannot be handed over without the GIL: with one still running, `del`
            # did not return in 15 minutes (measured, for a reply that takes 4 s when left alone).
            # Cut them first, whoever forgot to (the extract stage does, on a stop), and before
            # the client closes their sockets, after which they cannot be found.
            n = self.cut_connections()  # idle keep-alive connections are among them
            log.debug("embedded: %d connection(s) to the server cut before it stops", n)
        if self._inner is not None:
            self._inner.close()
            self._inner = None
        if self._server is not None:
            server, self._server = self._server, None
            del server  # the destructor stops llama.cpp's loop and frees the model
            log.info("embedded llama.cpp server stopped")
