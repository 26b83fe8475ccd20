"""Loopback fakes of Ollama and LM Studio for the service tests: small threaded HTTP servers that
replay the shapes of the documented APIs (Ollama: /api/version, /api/tags, /api/chat with format,
think and done_reason, streaming /api/pull; LM Studio: OpenAI-compatible /v1/models and
/v1/chat/completions), with scripted faults. Real sockets, real HTTP: the client under test
cannot tell them from the servers."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

GOOD = {"acronyms": [{"acronym": "RRC", "expansion": "Radio Resource Control"}],
        "spec_refs": ["TS 38.331"], "qa": {"question": "What is RRC?", "answer": "Radio Resource Control"}}


class FakeServer:
    """Routes (method, path) to ``handle(req) -> (status, headers, body)``; body is bytes, a JSON
    object, or a list of JSON lines streamed one by one. Records every request."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _do(self):
                n = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                req = {"method": self.command, "path": self.path, "body": body,
                       "headers": dict(self.headers), "raw": raw}
                with fake.lock:
                    fake.requests.append(req)
                status, headers, out = fake.handle(req)
                if isinstance(out, list):  # a stream of JSON lines (Ollama's /api/pull)
                    self.send_response(status)
                    self.send_header("content-type", "application/x-ndjson")
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    for item in out:
                        line = (json.dumps(item) + "\n").encode()
                        self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                    return
                data = out if isinstance(out, bytes) else json.dumps(out).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = _do

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, req: dict) -> tuple[int, dict, Any]:
        return 404, {}, {"error": "not found"}

    def posts(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == "POST" and r["path"] == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class FakeOllama(FakeServer):
    """``models``: pulled models. ``script``: per model, a list of actions consumed one per
    /api/chat (then "ok"): "ok", "thinking" (reasoning in message.thinking), "think_tag" (an
    older server's <think> block in content), "thinking_only", "length", ("status", code, text),
    "no_think_support" (400 when `think` is sent)."""

    def __init__(self, models=("qwen3:1.7b",), script: dict[str, list] | None = None,
                 pullable=("gemma3:4b", "llama3.2:1b")) -> None:
        self.models = list(models)
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.pullable = set(pullable)
        super().__init__()

    def _tag(self, name: str) -> dict:
        return {"name": name, "model": name, "modified_at": "2026-01-01T00:00:00Z", "size": 1_400_000_000,
                "digest": "a" * 64, "details": {"format": "gguf", "family": name.split(":")[0],
                                                "parameter_size": "1.7B", "quantization_level": "Q4_K_M"}}

    def handle(self, req):
        path, body = req["path"], req["body"]
        if path == "/api/version":
            return 200, {}, {"version": "0.9.6"}
        if path == "/api/tags":
            return 200, {}, {"models": [self._tag(m) for m in self.models]}
        if path == "/api/pull":
            m = body["model"]
            if m not in self.pullable:
                return 200, {}, [{"status": "pulling manifest"},
                                 {"error": f"pull model manifest: file does not exist"}]
            self.models.append(m)
            total = 3_000_000
            return 200, {}, [{"status": "pulling manifest"}] + [
                {"status": f"pulling {'b' * 12}", "digest": "sha256:" + "b" * 64, "total": total,
                 "completed": c} for c in (0, total // 2, total)] + [
                {"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]
        if path == "/api/chat":
            model = body["model"]
            if model not in self.models and f"{model}:latest" not in self.models:
                return 404, {}, {"error": f"model '{model}' not found"}
            queue = self.script.get(model) or []
            action = queue.pop(0) if queue else "ok"
            if action == "no_think_support":
                if "think" in body:
                    return 400, {}, {"error": f'"{model}" does not support thinking'}
                action = "ok"
            if isinstance(action, tuple) and action[0] == "status":
                return action[1], {}, {"error": action[2]}
            if isinstance(action, tuple) and action[0] == "sleep":
                time.sleep(action[1])
                action = "ok"
            content, thinking, reason = json.dumps(GOOD), None, "stop"
            if action == "thinking":
                thinking = "Okay, the user wants acronyms. RRC is SECRET-REASONING."
            elif action == "think_tag":
                content = "<think>SECRET-REASONING about RRC</think>\n" + content
            elif action == "thinking_only":
                content, thinking, reason = "", "SECRET-REASONING that never ends", "length"
            elif action == "length":
                content, reason = content[:20], "length"
            msg = {"role": "assistant", "content": content}
            if thinking is not None:
                msg["thinking"] = thinking
            return 200, {}, {"model": model, "created_at": "2026-01-01T00:00:00Z", "message": msg,
                             "done_reason": reason, "done": True, "total_duration": 1_000_000,
                             "load_duration": 1000, "prompt_eval_count": 42, "prompt_eval_duration": 1000,
                             "eval_count": 17, "eval_duration": 1000}
        return 404, {}, {"error": "not found"}


class FakeLMStudio(FakeServer):
    """OpenAI-compatible. ``script``: actions consumed one per chat request (then "ok"): "ok",
    ("429", retry_after), ("status", code), "malformed", "thinking_only", "reasoning",
    "think_tag", "truncated", ("slow", seconds), "no_choices"."""

    def __init__(self, models=("qwen3-1.7b",), script: list | None = None) -> None:
        self.models = list(models)
        self.script = list(script or [])
        super().__init__()

    def handle(self, req):
        path, body = req["path"], req["body"]
        if path == "/v1/models":
            return 200, {}, {"object": "list", "data": [
                {"id": m, "object": "model", "owned_by": "organization_owner"} for m in self.models]}
        if path == "/v1/chat/completions":
            if body["model"] not in self.models:
                return 404, {}, {"error": {"message": f"Model '{body['model']}' not found. Please load it.",
                                           "type": "invalid_request_error", "code": "model_not_found"}}
            with self.lock:
                action = self.script.pop(0) if self.script else "ok"
            if isinstance(action, tuple) and action[0] == "429":
                return 429, {"retry-after": str(action[1])}, {"error": {"message": "Too many requests"}}
            if isinstance(action, tuple) and action[0] == "status":
                return action[1], {}, {"error": {"message": f"error {action[1]}"}}
            if action == "malformed":
                return 200, {}, b'{"id": "x", "choices": [{"message": {"content": "{\\"acr'
            if action == "no_choices":
                return 200, {}, {"id": "x", "object": "chat.completion", "choices": []}
            if isinstance(action, tuple) and action[0] == "slow":
                time.sleep(action[1])
            content, reasoning, reason = json.dumps(GOOD), None, "stop"
            if action == "thinking_only":
                content, reasoning, reason = "", "SECRET-REASONING step by step", "length"
            elif action == "reasoning":
                reasoning = "SECRET-REASONING: RRC appears"
            elif action == "think_tag":
                content = "<think>SECRET-REASONING</think>" + content
            elif action == "truncated":
                content, reason = content[:25], "length"
            msg = {"role": "assistant", "content": content}
            if reasoning is not None:
                msg["reasoning_content"] = reasoning
            return 200, {}, {"id": "chatcmpl-1", "object": "chat.completion", "created": 0,
                             "model": body["model"], "system_fingerprint": body["model"],
                             "choices": [{"index": 0, "logprobs": None, "finish_reason": reason,
                                          "message": msg}],
                             "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}}
        return 404, {}, {"error": {"message": "Unexpected endpoint or method."}}


class Scripted:
    """An in-memory service for chain unit tests: ``script`` of exceptions/replies per call."""

    def __init__(self, name="primary", model="m", fail: Callable[[int, str], Exception | None] | None = None,
                 start_error: Exception | None = None) -> None:
        self.name, self.model = name, model
        self.base_url = "http://127.0.0.1:1"
        self.fail = fail or (lambda n, model: None)
        self.start_error = start_error
        self.calls: list[tuple[str, int]] = []
        self.started = self.closed = 0
        self.privacy = None
        self.missing_models: dict = {}

    def start(self):
        self.started += 1
        if self.start_error:
            raise self.start_error

    def chat_json(self, messages, schema, max_tokens, temperature=0.0, *, model=None):
        from components.llm.reply import Reply

        model = model or self.model
        self.calls.append((model, max_tokens))
        exc = self.fail(len(self.calls), model)
        if exc is not None:
            raise exc
        return Reply(content=f"{self.name}:{model} ok", finish_reason="stop", model=model,
                     service=self.name, completion_tokens=3, prompt_tokens=5, seconds=0.01)

    def context_overflow(self, messages, max_tokens):
        return 0

    def options(self, max_tokens, temperature):
        return {"max_tokens": max_tokens, "temperature": temperature}

    def close(self):
        self.closed += 1
