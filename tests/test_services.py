"""Wire formats of the LLM services.

Ollama and OpenAI-compatible servers: their documented wire format through httpx MockTransport
(edge cases), plus a real `ollama` when one is on PATH. The embedded llama.cpp server is real.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time

import httpx
import pytest

from components.llm.extraction import json_schema, parse
from components.llm.services import (EmbeddedLlamaService, OllamaService, OpenAICompatibleService,
                                 ServiceError, ServiceUnavailable)

SCHEMA = json_schema()
MSGS = [{"role": "user", "content": "Extract from: RRC (Radio Resource Control) per TS 38.331."}]
GOOD = {"acronyms": [{"acronym": "RRC", "expansion": "Radio Resource Control"}],
        "spec_refs": ["TS 38.331"], "qa": {"question": "What is RRC?", "answer": "Radio Resource Control"}}


def ollama_transport(seen: list, models=("qwen3:1.7b",), chat_status=200, chat_body=None):
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/api/tags":
            return httpx.Response(200, json={"models": [{"name": m, "model": m} for m in models]})
        if request.url.path == "/api/chat":
            if chat_status != 200:
                return httpx.Response(chat_status, json={"error": "model 'nope' not found"})
            return httpx.Response(200, json=chat_body or {
                "model": "qwen3:1.7b", "created_at": "2026-01-01T00:00:00Z",
                "message": {"role": "assistant", "content": json.dumps(GOOD)},
                "done": True, "done_reason": "stop", "prompt_eval_count": 42, "eval_count": 17})
        return httpx.Response(404)
    return httpx.MockTransport(handler)


def test_ollama_request_follows_the_native_chat_api():
    seen: list[httpx.Request] = []
    svc = OllamaService(base_url="http://ollama.test:11434", transport=ollama_transport(seen))
    svc.start()
    reply = svc.chat_json(MSGS, SCHEMA, max_tokens=64, temperature=0.0)
    body = json.loads(seen[-1].content)
    assert seen[-1].method == "POST" and seen[-1].url.path == "/api/chat"
    assert body["stream"] is False
    assert body["format"] == SCHEMA  # structured output: the schema goes in `format`
    assert body["options"] == {"temperature": 0.0, "num_predict": 64}
    assert body["messages"] == MSGS and body["model"] == "qwen3:1.7b"
    assert (reply.prompt_tokens, reply.completion_tokens, reply.finish_reason) == (42, 17, "stop")
    data, err, _ = parse(reply.content)
    assert err is None and data["acronyms"][0]["acronym"] == "RRC"


def test_ollama_host_without_scheme_is_accepted():
    assert OllamaService(base_url="127.0.0.1:11434").base_url == "http://127.0.0.1:11434"


def test_ollama_model_not_pulled_is_unavailable_with_the_pull_command():
    svc = OllamaService(model="llama3.2:1b", transport=ollama_transport([], models=("qwen3:1.7b",)))
    with pytest.raises(ServiceUnavailable, match="ollama pull llama3.2:1b"):
        svc.start()


def test_ollama_http_error_is_a_retryable_service_error():
    svc = OllamaService(transport=ollama_transport([], chat_status=500))
    with pytest.raises(ServiceError, match="HTTP 500"):
        svc.chat_json(MSGS, SCHEMA, 32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ollama_unreachable_is_unavailable_quickly():
    svc = OllamaService(base_url=f"http://127.0.0.1:{free_port()}", timeout_s=2)
    t0 = time.perf_counter()
    with pytest.raises(ServiceUnavailable, match="cannot reach Ollama"):
        svc.start()
    assert time.perf_counter() - t0 < 5


def openai_transport(seen: list, status=200):
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "x"}]})
        if status != 200:
            return httpx.Response(status, json={"error": {"message": "overloaded", "type": "server_error"}})
        return httpx.Response(200, json={
            "id": "c1", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": json.dumps(GOOD)}}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}})
    return httpx.MockTransport(handler)


def test_openai_compatible_sends_json_schema_response_format_and_the_key():
    seen: list[httpx.Request] = []
    svc = OpenAICompatibleService(base_url="http://lmstudio.test:1234/v1", model="m",
                                  api_key="sk-test-secret", transport=openai_transport(seen))
    svc.start()
    reply = svc.chat_json(MSGS, SCHEMA, 64)
    req = seen[-1]
    body = json.loads(req.content)
    assert req.url.path == "/v1/chat/completions"
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == SCHEMA
    assert body["max_tokens"] == 64
    assert req.headers["authorization"] == "Bearer sk-test-secret"
    assert (reply.prompt_tokens, reply.completion_tokens) == (30, 12)
    assert "sk-test-secret" not in repr(vars(svc).get("name")) and not hasattr(svc, "api_key")


def test_openai_compatible_5xx_is_a_service_error():
    svc = OpenAICompatibleService(base_url="http://x.test/v1", model="m",
                                  transport=openai_transport([], status=503))
    with pytest.raises(ServiceError, match="503"):
        svc.chat_json(MSGS, SCHEMA, 16)


def test_openai_compatible_unreachable_is_unavailable():
    svc = OpenAICompatibleService(base_url=f"http://127.0.0.1:{free_port()}/v1", model="m", timeout_s=2)
    with pytest.raises(ServiceUnavailable):
        svc.start()


@pytest.mark.skipif(shutil.which("ollama") is None,
                    reason="no `ollama` binary on PATH (not obtainable on this machine); the wire "
                           "format is covered by the MockTransport tests above")
def test_real_ollama_answers_with_schema_json():
    host = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434")
    proc = None
    try:
        svc = OllamaService(base_url=host, model=os.environ.get("OLLAMA_TEST_MODEL", "qwen3:1.7b"))
        try:
            svc.start()
        except ServiceUnavailable:
            proc = subprocess.Popen(["ollama", "serve"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(3)
            svc.start()
        data, err, _ = parse(svc.chat_json(MSGS, SCHEMA, 128).content)
        assert err is None, err
    finally:
        if proc:
            proc.terminate()


def test_embedded_llama_cpp_server_answers_schema_valid_json():
    svc = EmbeddedLlamaService(n_ctx=2048, n_parallel=1, threads=2)
    svc.start()
    try:
        assert svc.base_url.startswith("http://127.0.0.1:")
        # The server speaks the OpenAI API on loopback, as a client outside this process sees it.
        models = httpx.get(f"{svc.base_url}/v1/models", timeout=10).json()
        assert any(m["id"] == svc.model for m in models["data"])
        reply = svc.chat_json(MSGS, SCHEMA, max_tokens=160)
        assert reply.completion_tokens > 0
        raw = json.loads(reply.content) if reply.finish_reason == "stop" else None
        if raw is not None:  # constrained by the grammar: keys exactly as the schema says
            assert set(raw) == {"acronyms", "spec_refs", "qa"}
        base = svc.base_url
    finally:
        svc.close()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base}/v1/models", timeout=2)
