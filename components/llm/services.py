"""LLM services that answer a chat request with JSON constrained by a schema.

Three wire formats cover what users run: the embedded llama.cpp server (xllamacpp, offline),
Ollama's native ``/api/chat``, and any OpenAI-compatible server (LM Studio, vLLM, llama-server).
Each service is small: ``start()`` (raise ServiceUnavailable when it cannot serve),
``chat_json()`` and ``close()``. Resilience lives in ``components.llm.resilience``.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

log = logging.getLogger(__name__)


class ServiceUnavailable(RuntimeError):
    """The service cannot be reached or started (a reason to fall back)."""


class ServiceError(RuntimeError):
    """A request failed (a reason to retry)."""


@dataclass
class Reply:
    content: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    finish_reason: str | None = None


class LLMService(Protocol):
    name: str

    def start(self) -> None: ...

    def chat_json(self, messages: list[dict], schema: dict, max_tokens: int,
                  temperature: float = 0.0) -> Reply: ...

    def close(self) -> None: ...


class ChatService:
    """What the ``service`` group builds: one server's client, plus the fallback and resilience
    policy that config composes around it (``chain``)."""

    name: str
    fallback: "ChatService | None" = None
    resilience: Any = None

    def chain(self):
        """This service behind retries, its circuit breaker and its fallback."""
        from components.llm.resilience import Resilience

        return (self.resilience or Resilience()).wrap(self, self.fallback)


class OpenAICompatibleService(ChatService):
    """OpenAI ``/v1/chat/completions`` with ``response_format: json_schema``."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None,
                 timeout_s: float = 120.0, name: str = "openai", fallback: ChatService | None = None,
                 resilience: Any = None, transport: httpx.BaseTransport | None = None) -> None:
        self.name = name
        self.resilience = resilience
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.fallback = fallback
        self._transport = transport
        self._client = None

    def _openai(self):
        if self._client is None:
            import openai

            self._client = openai.OpenAI(
                base_url=self.base_url, api_key=self._api_key or "not-needed",
                timeout=self.timeout_s, max_retries=0,  # retries are ours (tenacity)
                http_client=httpx.Client(transport=self._transport, timeout=self.timeout_s))
        return self._client

    def start(self) -> None:
        try:
            self._openai().models.list()
        except Exception as exc:
            raise ServiceUnavailable(f"{self.name}: cannot reach {self.base_url} "
                                     f"({type(exc).__name__}: {exc})") from None

    def chat_json(self, messages: list[dict], schema: dict, max_tokens: int,
                  temperature: float = 0.0) -> Reply:
        import openai

        t0 = time.perf_counter()
        try:
            resp = self._openai().chat.completions.create(
                model=self.model, messages=messages, max_tokens=max_tokens,
                temperature=temperature,
                response_format={"type": "json_schema",
                                 "json_schema": {"name": "extraction", "schema": schema,
                                                 "strict": True}})
        except openai.APIConnectionError as exc:
            raise ServiceUnavailable(f"{self.name}: connection to {self.base_url} failed: {exc}") from None
        except openai.APIStatusError as exc:
            raise ServiceError(f"{self.name}: HTTP {exc.status_code}: {str(exc)[:300]}") from None
        except openai.APIError as exc:
            raise ServiceError(f"{self.name}: {exc}") from None
        choice = resp.choices[0]
        usage = resp.usage
        return Reply(content=choice.message.content or "",
                     prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                     completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
                     seconds=time.perf_counter() - t0, finish_reason=choice.finish_reason)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class OllamaService(ChatService):
    """Ollama's native API: ``POST /api/chat`` with the JSON schema in ``format``."""

    def __init__(self, base_url: str = "http://127.0.0.1:11434", model: str = "qwen3:1.7b",
                 timeout_s: float = 120.0, keep_alive: str | None = "5m", name: str = "ollama",
                 fallback: ChatService | None = None, resilience: Any = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.name = name
        self.resilience = resilience
        if "://" not in base_url:  # OLLAMA_HOST is often "host:port"
            base_url = f"http://{base_url}"
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self.keep_alive = keep_alive
        self.fallback = fallback
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s, transport=transport)

    def start(self) -> None:
        try:
            r = self._http.get("/api/tags", timeout=5.0)
            r.raise_for_status()
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(f"{self.name}: cannot reach Ollama at {self.base_url} "
                                     f"({type(exc).__name__}); is `ollama serve` running?") from None
        names = {m.get("name") for m in r.json().get("models", [])} | {
            m.get("model") for m in r.json().get("models", [])}
        if self.model not in names and f"{self.model}:latest" not in names:
            raise ServiceUnavailable(f"{self.name}: model '{self.model}' is not pulled in Ollama "
                                     f"at {self.base_url}; run `ollama pull {self.model}`")

    def chat_json(self, messages: list[dict], schema: dict, max_tokens: int,
                  temperature: float = 0.0) -> Reply:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": False,
                                "format": schema,
                                "options": {"temperature": temperature, "num_predict": max_tokens}}
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        t0 = time.perf_counter()
        try:
            r = self._http.post("/api/chat", json=body)
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"{self.name}: connection to {self.base_url} failed: "
                                     f"{type(exc).__name__}") from None
        if r.status_code != 200:
            try:
                detail = r.json().get("error", r.text)
            except ValueError:
                detail = r.text
            raise ServiceError(f"{self.name}: HTTP {r.status_code}: {str(detail)[:300]}")
        data = r.json()
        msg = data.get("message") or {}
        return Reply(content=msg.get("content", ""),
                     prompt_tokens=int(data.get("prompt_eval_count") or 0),
                     completion_tokens=int(data.get("eval_count") or 0),
                     seconds=time.perf_counter() - t0, finish_reason=data.get("done_reason"))

    def close(self) -> None:
        self._http.close()


class EmbeddedLlamaService(ChatService):
    """A real llama.cpp server (xllamacpp) in this process, on a free loopback port."""

    def __init__(self, gguf: str | None = None, model_alias: str = "embedded", n_ctx: int = 4096,
                 n_parallel: int = 2, threads: int | None = None, timeout_s: float = 120.0,
                 name: str = "embedded", fallback: ChatService | None = None,
                 resilience: Any = None) -> None:
        self.name = name
        self.fallback = fallback
        self.resilience = resilience
        self.gguf = gguf
        self.model = model_alias
        self.n_ctx = n_ctx
        self.n_parallel = n_parallel
        self.threads = threads
        self.timeout_s = timeout_s
        self.base_url: str | None = None
        self._server = None
        self._client: OpenAICompatibleService | None = None

    def start(self) -> None:
        if self._server is not None:
            return
        try:
            import xllamacpp
        except ImportError as exc:
            raise ServiceUnavailable(f"embedded: xllamacpp is not installed ({exc})") from None
        from components.training.gguf import embedded_gguf_path

        path = self.gguf or str(embedded_gguf_path())
        if not os.path.isfile(path):
            raise ServiceUnavailable(f"embedded: GGUF model {path} not found")
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
        self._client = OpenAICompatibleService(base_url=f"{self.base_url}/v1", model=self.model,
                                               timeout_s=self.timeout_s, name=self.name)

    def chat_json(self, messages: list[dict], schema: dict, max_tokens: int,
                  temperature: float = 0.0) -> Reply:
        if self._client is None:
            self.start()
        assert self._client is not None
        return self._client.chat_json(messages, schema, max_tokens, temperature)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._server is not None:
            server, self._server = self._server, None
            del server  # the destructor stops llama.cpp's loop and frees the model
            log.info("embedded llama.cpp server stopped")
